"""Every bad input gets one clear line and a non-zero exit: a sweep of every `mchsm` command.

A table of cases: each runs one subcommand against one kind of bad input (missing, unreadable,
special or oversized files, a directory where a file is wanted, bad hex, outputs that cannot be
written, damaged registries, missing tools, unknown boards and backends, a simulator that fails
to build, HSM and mailbox errors, a bug) and checks what a person sees: the exit status (2 for
a command line that cannot be used, 1 for a command that ran and failed, 70 for a bug), one
line on stderr that names the thing, nothing on stdout, no traceback, and nothing changed in
the directory the inputs live in.  Another test checks that the table reaches every command
``mchsm --help`` lists, so a new command cannot be added without its bad inputs.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from mchsm.cli import main
from mchsm.constants import Cmd, Status
from mchsm.failures import EXIT_BUG
from mchsm.sim.backends import INPUT_LIMITS
from mchsm.sw.errors import (
    BusRefusedError,
    HsmError,
    MailboxBusyError,
    MailboxLostError,
    TransportError,
)

# a VCD with the mailbox signals `mchsm waves` reads commands from: one HASH by caller 2
HSM_VCD = """$timescale 1ps $end
$scope module top $end
$var wire 1 ! clk $end
$scope module mailbox $end
$var wire 1 " cmd__start $end
$var wire 8 # r_code $end
$var wire 1 $ r_done $end
$var wire 8 % r_status $end
$var wire 6 & holder $end
$upscope $end
$upscope $end
$enddefinitions $end
#0
0!
0"
b0 #
0$
b0 %
b10 &
#5
1!
#10
0!
1"
b1000000 #
#15
1!
#20
0!
0"
#25
1!
#30
0!
1$
#35
1!
#40
0!
#45
1!
"""


@dataclass
class Place:
    """The inputs of the sweep, made once: ``{name}`` in a case's arguments is ``paths[name]``."""

    root: Path
    paths: dict[str, str] = field(default_factory=dict)


def _unreadable(root: Path) -> str | None:
    """A file that exists and cannot be opened for reading: mode 000 (not for root, whom
    permission bits do not stop: then a /proc file the kernel refuses to read)."""
    path = root / "unreadable"
    path.write_bytes(b"secret")
    path.chmod(0)
    for candidate in (str(path), "/proc/sys/vm/drop_caches"):
        try:
            with open(candidate, "rb"):
                pass
        except PermissionError:
            return candidate
        except OSError:
            continue
    return None


def _read_only_dir(root: Path) -> str | None:
    """A directory nothing can be created in: mode 555 (not for root: then sysfs)."""
    path = root / "read-only"
    path.mkdir()
    path.chmod(0o555)
    for candidate in (path, Path("/sys/kernel")):
        try:
            with tempfile.TemporaryFile(dir=candidate):
                pass
        except OSError:
            return str(candidate)
    return None


def _registries(root: Path) -> None:
    """Registries damaged in ways SQLite does not notice: a renamed column, a schema version
    from the future; and an SQLite file of another program."""
    from mchsm.sw.verifier import Verifier

    for name, change in (
        ("renamed", "ALTER TABLE devices RENAME COLUMN name TO nom"),
        ("newer", "UPDATE schema_version SET version = 999"),
    ):
        with Verifier(root / f"{name}.sqlite"):
            pass
        conn = sqlite3.connect(root / f"{name}.sqlite")
        conn.execute(change)
        conn.commit()
        conn.close()
    conn = sqlite3.connect(root / "foreign.sqlite")
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, jpeg BLOB)")
    conn.commit()
    conn.close()
    # owner-only, as the verifier wants its files: what is wrong with each is its content
    for name in ("renamed", "newer", "foreign"):
        (root / f"{name}.sqlite").chmod(0o600)
    conn = sqlite3.connect(root / "shared.sqlite")
    conn.close()
    (root / "shared.sqlite").chmod(0o644)  # readable by others: refused for that


@pytest.fixture(scope="module")
def place() -> Iterator[Place]:
    # a short path: a UNIX socket's name is limited to about 100 bytes
    root = Path(tempfile.mkdtemp(prefix="mchsm-bad-"))
    p = Place(root)
    (root / "file.bin").write_bytes(b"some bytes\n")
    (root / "dir").mkdir()
    (root / "junk.txt").write_text("not a waveform, not a registry\n")
    (root / "corrupt.sqlite").write_bytes(b"SQLite format 3\0" + bytes(range(256)) * 8)
    for name in ("junk.txt", "corrupt.sqlite"):
        (root / name).chmod(0o600)
    (root / "hsm.vcd").write_text(HSM_VCD)
    (root / "nohsm.vcd").write_text(
        "$scope module t $end\n$var wire 1 ! clk $end\n$upscope $end\n$enddefinitions $end\n"
    )
    big = root / "big.bin"  # one byte over the Amaranth backend's limit
    big.write_bytes(bytes(INPUT_LIMITS["amaranth"] + 1))
    huge = root / "huge.bin"  # sparse: over the model's 4 GiB - 1 without using the disk
    with huge.open("wb") as f:
        f.truncate(INPUT_LIMITS["model"] + 1)
    _registries(root)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "socket"))
    p.paths.update(
        file=str(root / "file.bin"),
        dir=str(root / "dir"),
        junk=str(root / "junk.txt"),
        corrupt=str(root / "corrupt.sqlite"),
    )
    p.paths.update(
        hsm_vcd=str(root / "hsm.vcd"),
        nohsm_vcd=str(root / "nohsm.vcd"),
        big=str(big),
        huge=str(huge),
        socket=str(root / "socket"),
        missing=str(root / "missing"),
        under_file=str(root / "file.bin" / "out"),
        in_missing_dir=str(root / "no-such-dir" / "v.sqlite"),
        **{
            name: str(root / f"{name}.sqlite") for name in ("renamed", "newer", "foreign", "shared")
        },
    )
    if (unreadable := _unreadable(root)) is not None:
        p.paths["unreadable"] = unreadable
    if (read_only := _read_only_dir(root)) is not None:
        p.paths["read_only"] = read_only
    try:
        os.mkdir("/proc/mchsm-test")
    except OSError:
        p.paths["proc"] = "/proc/mchsm-test"
    yield p
    sock.close()
    (root / "read-only").chmod(0o755)
    shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Bad:
    """One bad input: ``argv`` (``{name}`` filled from the place), the exit status, and words
    the one line must contain (they name the thing and what to do)."""

    id: str
    argv: tuple[str, ...]
    code: int
    says: tuple[str, ...]
    stdin: bytes | None = None
    env: tuple[tuple[str, str], ...] = ()
    inject: Exception | None = None  #: raised by the HSM port's HASH (an HSM-side failure)
    needs: tuple[str, ...] = ()  #: place entries the case needs (skipped where there are none)


def bad(id: str, *argv: str, code: int, says: str | tuple[str, ...], **kw: object) -> Bad:
    words = (says,) if isinstance(says, str) else says
    needs = tuple(
        name for a in argv for name in ("unreadable", "read_only", "proc") if f"{{{name}}}" in a
    )
    return Bad(id, argv, code, words, needs=needs, **kw)  # type: ignore[arg-type]  # kw: the optional fields


USAGE, FAILED = 2, 1

CASES = [
    # -- the top level ----------------------------------------------------------------------
    bad("unknown-command", "frobnicate", code=USAGE, says="No such command 'frobnicate'"),
    bad("unknown-global-option", "--frob", "hash", code=USAGE, says="No such option"),
    # -- hash / hmac: files ---------------------------------------------------------------------
    bad("hash-no-file", "hash", code=USAGE, says="Missing argument"),
    bad("hash-missing", "hash", "{missing}", code=USAGE, says=("missing", "no such file")),
    bad("hash-directory", "hash", "{dir}", code=USAGE, says=("dir", "is a directory")),
    bad("hash-unreadable", "hash", "{unreadable}", code=USAGE, says="permission denied"),
    bad("hash-socket", "hash", "{socket}", code=USAGE, says=("socket", "is a socket")),
    bad("hash-device", "hash", "/dev/zero", code=USAGE, says=("/dev/zero", "character device")),
    bad(
        "hash-oversized-model",
        "hash",
        "{huge}",
        code=USAGE,
        says=("huge.bin", "larger than the 4 GiB - 1 B the model backend takes", "LEN register"),
    ),
    bad(
        "hash-oversized-amaranth",
        "hash",
        "--backend",
        "amaranth",
        "{big}",
        code=USAGE,
        says=("big.bin", "256 KiB the amaranth backend takes", "--backend model"),
    ),
    bad(
        "hash-oversized-stdin",
        "hash",
        "--backend",
        "amaranth",
        "-",
        code=USAGE,
        says=("standard input", "256 KiB"),
        stdin=bytes(INPUT_LIMITS["amaranth"] + 1),
    ),
    bad(
        "hash-oversized-together",
        "hash",
        "--backend",
        "amaranth",
        "{file}",
        "-",
        code=USAGE,
        says=("standard input, with the files before it, is over", "256 KiB"),
        stdin=bytes(INPUT_LIMITS["amaranth"] - 5),
    ),
    bad("hash-missing-among-good", "hash", "{file}", "{missing}", code=USAGE, says="missing"),
    bad("hash-unknown-backend", "hash", "--backend", "fpga", "{file}", code=USAGE, says="fpga"),
    bad(
        "hash-waves-on-model",
        "hash",
        "--waves",
        "w.vcd",
        "{file}",
        code=USAGE,
        says="the model has no waveform",
    ),
    bad(
        "hash-waves-fst",
        "hash",
        "--backend",
        "amaranth",
        "--waves",
        "w.fst",
        "{file}",
        code=USAGE,
        says="the waveform is a VCD",
    ),
    bad(
        "hash-waves-under-file",
        "hash",
        "--backend",
        "amaranth",
        "--waves",
        "{under_file}",
        "{file}",
        code=USAGE,
        says=("--waves", "not a directory"),
    ),
    bad(
        "hash-waves-under-proc",
        "hash",
        "--backend",
        "verilator",
        "--waves",
        "{proc}/w.vcd",
        "{file}",
        code=USAGE,
        says=("--waves", "/proc/mchsm-test"),
    ),
    bad("hmac-bad-hex", "hmac", "--key-hex", "xyz", "{file}", code=USAGE, says="hexadecimal"),
    bad("hmac-odd-hex", "hmac", "--key-hex", "abc", "{file}", code=USAGE, says="odd number of hex"),
    bad("hmac-no-key", "hmac", "{file}", code=USAGE, says="Missing option '--key-hex'"),
    bad("hmac-directory", "hmac", "--key-hex", "00", "{dir}", code=USAGE, says="is a directory"),
    bad("hmac-unreadable", "hmac", "--key-hex", "00", "{unreadable}", code=USAGE, says="denied"),
    # -- hash: the HSM side fails (injected into the port: the CLI's mapping is under test) -----
    bad(
        "hash-hsm-error",
        "hash",
        "{file}",
        code=FAILED,
        says="HASH failed with ERR_LENGTH",
        inject=HsmError(Cmd.HASH, Status.ERR_LENGTH),
    ),
    bad(
        "hash-mailbox-busy",
        "hash",
        "{file}",
        code=FAILED,
        says="another caller holds it",
        inject=MailboxBusyError(
            "caller 0 could not claim the HSM mailbox in 100000 attempts: another caller holds "
            "it (the OWNER register says who)"
        ),
    ),
    bad(
        "hash-mailbox-lost",
        "hash",
        "{file}",
        code=FAILED,
        says="lost the HSM mailbox to the manager",
        inject=MailboxLostError(Cmd.HASH, ran=True),
    ),
    bad(
        "hash-bus-refused",
        "hash",
        "{file}",
        code=FAILED,
        says="refused",
        inject=BusRefusedError("the HSM refused a write of DATA by caller 0"),
    ),
    bad(
        "hash-transport",
        "hash",
        "{file}",
        code=FAILED,
        says="did not finish",
        inject=TransportError("the HSM did not finish a command within 10 status polls\nmore"),
    ),
    bad(
        "hash-bug",
        "hash",
        "{file}",
        code=EXIT_BUG,
        says=("internal error", "ZeroDivisionError", "--debug"),
        inject=ZeroDivisionError("division by zero"),
    ),
    # -- demo ---------------------------------------------------------------------------------
    bad("demo-few-contexts", "demo", "--contexts", "3", code=USAGE, says="needs 4..32 contexts"),
    bad("demo-bad-seed", "demo", "--seed", "abc", code=USAGE, says="'abc' is not a valid integer"),
    bad("demo-unknown-backend", "demo", "--backend", "fpga", code=USAGE, says="'fpga'"),
    bad(
        "demo-db-directory",
        "demo",
        "--db",
        "{dir}",
        code=USAGE,
        says=("--db", "not a regular file"),
    ),
    bad(
        "demo-db-readable-by-others",
        "demo",
        "--backend",
        "model",
        "--db",
        "{shared}",
        code=USAGE,
        says=("--db", "shared.sqlite", "chmod 600"),
    ),
    bad(
        "demo-db-in-missing-dir",
        "demo",
        "--backend",
        "model",
        "--db",
        "{in_missing_dir}",
        code=USAGE,
        says=("--db", "no-such-dir", "does not exist", "create it"),
    ),
    bad(
        "demo-db-corrupt",
        "demo",
        "--backend",
        "model",
        "--db",
        "{corrupt}",
        code=USAGE,
        says=("--db", "corrupt.sqlite", "not a SQLite database"),
    ),
    bad(
        "demo-db-not-sqlite",
        "demo",
        "--backend",
        "model",
        "--db",
        "{junk}",
        code=USAGE,
        says=("--db", "junk.txt", "not a SQLite database"),
    ),
    bad(
        "demo-db-renamed-column",
        "demo",
        "--backend",
        "model",
        "--db",
        "{renamed}",
        code=USAGE,
        says=("renamed.sqlite", "table devices has columns"),
    ),
    bad(
        "demo-db-newer-schema",
        "demo",
        "--backend",
        "model",
        "--db",
        "{newer}",
        code=USAGE,
        says=("newer.sqlite", "schema version 999", "upgrade mchsm"),
    ),
    bad(
        "demo-db-foreign-sqlite",
        "demo",
        "--backend",
        "model",
        "--db",
        "{foreign}",
        code=USAGE,
        says=("foreign.sqlite", "tables (photos)", "not an mchsm registry", "left untouched"),
    ),
    bad(
        "demo-db-under-proc",
        "demo",
        "--backend",
        "model",
        "--db",
        "{proc}/v.sqlite",
        code=USAGE,
        says=("--db", "does not exist"),
    ),
    bad(
        "demo-waves-on-model",
        "demo",
        "--backend",
        "model",
        "--waves",
        "w.vcd",
        code=USAGE,
        says="the model has no waveform",
    ),
    bad(
        "demo-waves-read-only",
        "demo",
        "--waves",
        "{read_only}/w.vcd",
        code=USAGE,
        says=("--waves", "cannot write there"),
    ),
    bad("demo-baud-without-port", "demo", "--baud", "9600", code=USAGE, says="--baud goes with"),
    bad(
        "demo-port-missing",
        "demo",
        "--port",
        "{missing}",
        code=FAILED,
        says=("cannot open", "missing"),
    ),
    # -- rtl ----------------------------------------------------------------------------------
    bad("rtl-no-subcommand-arg", "rtl", "frob", code=USAGE, says="No such command 'frob'"),
    bad("rtl-export-no-out", "rtl", "export", code=USAGE, says="Missing option '--out'"),
    bad(
        "rtl-export-under-file",
        "rtl",
        "export",
        "--out",
        "{under_file}",
        code=USAGE,
        says=("--out", "file.bin", "not a directory"),
    ),
    bad(
        "rtl-export-under-proc",
        "rtl",
        "export",
        "--out",
        "{proc}",
        code=USAGE,
        says=("--out", "/proc/mchsm-test", "cannot write there"),
    ),
    bad(
        "rtl-export-read-only",
        "rtl",
        "export",
        "--out",
        "{read_only}/out",
        code=USAGE,
        says=("--out", "cannot write there"),
    ),
    bad(
        "rtl-export-onto-file",
        "rtl",
        "export",
        "--out",
        "{file}",
        code=USAGE,
        says=("--out", "file.bin"),
    ),
    bad(
        "rtl-export-bad-name",
        "rtl",
        "export",
        "--out",
        "{dir}",
        "--name",
        "9lives",
        code=USAGE,
        says="must be a Verilog identifier",
    ),
    bad(
        "rtl-export-bad-contexts",
        "rtl",
        "export",
        "--out",
        "{dir}",
        "--contexts",
        "0",
        code=USAGE,
        says="'--contexts'",
    ),
    bad("rtl-regdoc-extra", "rtl", "regdoc", "x", code=USAGE, says="unexpected extra argument"),
    # -- waves ----------------------------------------------------------------------------------
    bad("waves-missing", "waves", "{missing}", code=USAGE, says="does not exist"),
    bad("waves-directory", "waves", "{dir}", code=USAGE, says="is a directory"),
    bad("waves-unreadable", "waves", "{unreadable}", code=USAGE, says="is not readable"),
    bad("waves-not-a-vcd", "waves", "{junk}", code=FAILED, says=("junk.txt", "not a VCD")),
    bad("waves-special", "waves", "/dev/null", code=FAILED, says="not a VCD"),
    bad(
        "waves-no-hsm-signals",
        "waves",
        "{nohsm_vcd}",
        code=FAILED,
        says="no signal 'mailbox.cmd__start'",
    ),
    bad(
        "waves-unknown-command",
        "waves",
        "{hsm_vcd}",
        "--command",
        "ATTEST",
        code=FAILED,
        says="no 'ATTEST' among the commands",
    ),
    bad(
        "waves-command-index",
        "waves",
        "{hsm_vcd}",
        "--command",
        "7",
        code=FAILED,
        says="the VCD has 1 commands",
    ),
    bad(
        "waves-unknown-signal",
        "waves",
        "{hsm_vcd}",
        "--command",
        "0",
        "-s",
        "sha.rndd",
        "--out",
        "{dir}/x.png",
        code=FAILED,
        says="no signal 'sha.rndd'",
    ),
    bad(
        "waves-out-under-file",
        "waves",
        "{hsm_vcd}",
        "--command",
        "0",
        "--out",
        "{under_file}/x.png",
        code=USAGE,
        says=("--out", "not a directory"),
    ),
    bad(
        "waves-out-under-proc",
        "waves",
        "{hsm_vcd}",
        "--command",
        "0",
        "--out",
        "{proc}/x.png",
        code=USAGE,
        says=("--out", "/proc/mchsm-test"),
    ),
    bad(
        "waves-out-read-only",
        "waves",
        "{hsm_vcd}",
        "--command",
        "0",
        "--out",
        "{read_only}/x.png",
        code=USAGE,
        says=("--out", "cannot write there"),
    ),
    bad(
        "waves-out-directory",
        "waves",
        "{hsm_vcd}",
        "--command",
        "0",
        "--out",
        "{dir}",
        code=USAGE,
        says=("--out", "is a directory"),
    ),
    bad("waves-bad-start", "waves", "{hsm_vcd}", "--start", "-1", code=USAGE, says="'--start'"),
    # -- build (argument and tool checks only: no bitstream) -----------------------------------
    bad("build-no-board", "build", code=USAGE, says="Missing option '--board'"),
    bad("build-unknown-board", "build", "--board", "arty", code=USAGE, says="'arty'"),
    bad(
        "build-missing-tool",
        "build",
        "--board",
        "icebreaker",
        "--out",
        "{dir}/ice",
        code=FAILED,
        says=("NEXTPNR_ICE40=/nonexistent/nextpnr-ice40 names no executable", "unset it"),
        env=(("NEXTPNR_ICE40", "/nonexistent/nextpnr-ice40"),),
    ),
    bad(
        "build-out-under-file",
        "build",
        "--board",
        "ulx3s",
        "--out",
        "{under_file}",
        code=USAGE,
        says=("--out", "not a directory"),
        env=(("YOSYS", sys.executable), ("NEXTPNR_ECP5", sys.executable), ("ECPPACK", "true")),
    ),
    bad(
        "build-out-read-only",
        "build",
        "--board",
        "icebreaker",
        "--out",
        "{read_only}/ice",
        code=USAGE,
        says=("--out", "cannot write there"),
        env=(("YOSYS", sys.executable), ("NEXTPNR_ICE40", sys.executable), ("ICEPACK", "true")),
    ),
    bad(
        "build-bad-contexts", "build", "--board", "ulx3s", "--contexts", "33", code=USAGE, says="33"
    ),
    # -- prove, anomaly-eval, verilator-env ------------------------------------------------------
    bad(
        "prove-missing-tool",
        "prove",
        "--proverif",
        "/nonexistent/proverif",
        code=FAILED,
        says=("ProVerif not installed", "opam install proverif"),
    ),
    bad("prove-bad-jobs", "prove", "--jobs", "0", code=USAGE, says="'--jobs'"),
    bad("prove-bad-timeout", "prove", "--timeout", "soon", code=USAGE, says="'soon'"),
    bad("anomaly-eval-jobs", "anomaly-eval", "--jobs", "0", code=USAGE, says="'--jobs'"),
    bad(
        "anomaly-eval-roc-under-file",
        "anomaly-eval",
        "--roc",
        "{under_file}.png",
        code=USAGE,
        says=("--roc", "not a directory"),
    ),
    bad(
        "anomaly-eval-json-out-directory",
        "anomaly-eval",
        "--no-roc",
        "--json-out",
        "{dir}",
        code=USAGE,
        says=("--json-out", "is a directory"),
    ),
    # -- anomaly profile tools ---------------------------------------------------------------
    bad(
        "anomaly-trace-out-under-file",
        "anomaly",
        "trace",
        "--out",
        "{under_file}.json",
        code=USAGE,
        says=("--out", "not a directory"),
    ),
    bad(
        "anomaly-trace-variant",
        "anomaly",
        "trace",
        "--out",
        "t.json",
        "--variant",
        "nobody=x",
        code=USAGE,
        says="TASK=VARIANT",
    ),
    bad("anomaly-profile-missing", "anomaly", "profile", "{missing}", code=USAGE, says="missing"),
    bad(
        "anomaly-profile-junk",
        "anomaly",
        "profile",
        "{junk}",
        "--out",
        "p",
        code=FAILED,
        says="junk.txt",
    ),
    bad(
        "anomaly-embed-missing",
        "anomaly",
        "embed",
        "{missing}",
        "{file}",
        "--out",
        "x.img",
        code=USAGE,
        says="missing",
    ),
    bad("anomaly-show-junk", "anomaly", "show", "{junk}", code=FAILED, says="carries no profile"),
    bad("anomaly-check-no-profiles", "anomaly", "check", "{file}", code=USAGE, says="PROFILES"),
    # -- verifier administration -------------------------------------------------------------
    bad(
        "verifier-info-missing-dir",
        "verifier",
        "info",
        "--db",
        "{in_missing_dir}",
        code=FAILED,
        says=("no-such-dir", "not a directory"),
    ),
    bad(
        "verifier-info-foreign",
        "verifier",
        "info",
        "--db",
        "{foreign}",
        code=FAILED,
        says=("not an mchsm registry", "untouched"),
    ),
    bad(
        "verifier-new-kek-exists",
        "verifier",
        "new-kek",
        "{file}",
        code=FAILED,
        says="refusing to overwrite",
    ),
    bad(
        "verifier-rotate-kek-corrupt",
        "verifier",
        "rotate-kek",
        "--db",
        "{corrupt}",
        code=FAILED,
        says="corrupt.sqlite",
    ),
    # -- the verifier service and its operator commands ---------------------------------------
    bad(
        "verifier-serve-missing-dir",
        "verifier",
        "serve",
        "--db",
        "{in_missing_dir}",
        code=FAILED,
        says=("no-such-dir", "not a directory"),
    ),
    bad(
        "verifier-serve-listen",
        "verifier",
        "serve",
        "--db",
        "v.sqlite",
        "--listen",
        "nohost",
        code=FAILED,
        says="HOST:PORT",
    ),
    *(
        bad(
            f"verifier-{command}-no-token",
            "verifier",
            command,
            "--url",
            "http://127.0.0.1:9",
            *extra,
            code=FAILED,
            says="--token-file",
            env=(("MCHSM_VERIFIER_TOKEN_FILE", ""),),
        )
        for command, extra in (
            ("enrol", ()),
            ("audit", ()),
            ("sessions", ()),
            ("cancel", ("--device", "00" * 16, "--ctx", "1")),
            ("confirm", ("--device", "00" * 16, "--ack", "00" * 40)),
        )
    ),
    bad(
        "verifier-update-missing-image",
        "verifier",
        "update",
        "--url",
        "http://127.0.0.1:9",
        "--device",
        "00",
        "--ctx",
        "1",
        "--image",
        "{missing}",
        code=USAGE,
        says=("--image", "missing"),
    ),
    bad(
        "verifier-audit-bad-url",
        "verifier",
        "audit",
        "--url",
        "notaurl",
        code=FAILED,
        says="http(s)://HOST:PORT",
    ),
    bad("formal-unknown-property", "formal", "--only", "nosuch", code=FAILED, says="nosuch"),
    bad("formal-bad-jobs", "formal", "--jobs", "0", code=USAGE, says="'--jobs'"),
    bad("verilator-env-extra", "verilator-env", "x", code=USAGE, says="unexpected extra argument"),
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.is_dir() else set()


def check_one_line(result: Result, case_id: str) -> str:
    """The line a failure prints: alone on stderr, after nothing on stdout, no traceback."""
    assert isinstance(result.exception, SystemExit), (case_id, result.exception, result.output)
    assert "Traceback" not in result.output, (case_id, result.output)
    assert result.stdout == "", (case_id, result.stdout)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, (case_id, lines)
    assert lines[0].startswith("Error: "), (case_id, lines)
    assert 20 <= len(lines[0]) <= 400, (case_id, lines)
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_line(
    case: Bad, place: Place, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in case.needs:
        if name not in place.paths:
            pytest.skip(f"no {name.replace('_', '-')} path can be made on this machine")
    monkeypatch.chdir(tmp_path)  # relative outputs (w.vcd) land here, not in the checkout
    for var, value in case.env:
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("MCHSM_DEBUG", raising=False)
    if case.inject is not None:
        from mchsm.sw.driver import HsmPort

        async def failing(*args: object, **kwargs: object) -> bytes:
            raise case.inject  # type: ignore[misc]  # set where this runs

        monkeypatch.setattr(HsmPort, "hash", failing)
    argv = [a.format(**place.paths) for a in case.argv]
    before = _tree(place.root)
    result = CliRunner().invoke(main, argv, input=case.stdin)
    assert result.exit_code == case.code, (case.id, result.exit_code, result.output)
    line = check_one_line(result, case.id)
    for word in case.says:
        assert word in line, (case.id, word, line)
    assert _tree(place.root) == before, case.id  # a refused command changed nothing


def test_another_programs_sqlite_file_is_not_touched(place: Place) -> None:
    """Refusing a file must not change it: the verifier would switch it to WAL journaling."""
    foreign = Path(place.paths["foreign"])
    before = foreign.read_bytes()
    result = CliRunner().invoke(main, ["demo", "--backend", "model", "--db", str(foreign)])
    assert result.exit_code == 2 and "not an mchsm registry" in result.stderr
    assert foreign.read_bytes() == before


def test_the_sweep_reaches_every_command() -> None:
    """Every command `mchsm --help` lists (and every one of its groups) has bad inputs above,
    so a new command cannot come without them."""

    def commands(group: click.Group, prefix: str = "") -> Iterator[str]:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from commands(command, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}"

    groups = {name for name, c in main.commands.items() if isinstance(c, click.Group)}
    swept = {" ".join(c.argv[:2]) if c.argv[0] in groups else c.argv[0] for c in CASES}
    missing = set(commands(main)) - swept
    assert not missing, f"commands without bad-input cases: {sorted(missing)}"
    assert len(CASES) >= 60


def test_a_group_without_a_command_shows_its_help() -> None:
    for argv in ([], ["rtl"]):
        result = CliRunner().invoke(main, argv)
        assert result.exit_code in (0, 2)  # click 8.2 on: 2, with the help
        assert "Usage:" in result.output and "Commands:" in result.output
        assert "Error:" not in result.output


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--debug (or MCHSM_DEBUG=1) lets the exception out, for a bug report; without it the
    same failure is one line."""
    junk = tmp_path / "junk.vcd"
    junk.write_text("junk\n")
    from mchsm.sim.waveplot import WaveError

    result = CliRunner().invoke(main, ["--debug", "waves", str(junk)])
    assert isinstance(result.exception, WaveError)
    monkeypatch.setenv("MCHSM_DEBUG", "1")
    result = CliRunner().invoke(main, ["waves", str(junk)])
    assert isinstance(result.exception, WaveError)
    monkeypatch.setenv("MCHSM_DEBUG", "0")
    result = CliRunner().invoke(main, ["waves", str(junk)])
    assert result.exit_code == 1 and check_one_line(result, "debug-off")
    help_text = CliRunner().invoke(main, ["--help"]).output
    assert "--debug" in help_text and "Exit status" in help_text


def _mchsm(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from mchsm.cli import main; main()", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=cwd,
        timeout=300,
        check=False,
    )


@pytest.mark.skipif(sys.platform != "linux", reason="a broken compiler stands in on Linux")
def test_a_simulator_that_fails_to_build(tmp_path: Path) -> None:
    """A C++ compiler that fails, and a fresh build cache: `mchsm hash --backend verilator`
    says which build failed and where its log is, in one line after the build's progress line
    (a subprocess: the compiler is chosen once per process)."""
    cxx = tmp_path / "broken-g++"
    cxx.write_text(
        '#!/bin/sh\nif [ "$1" = "--version" ]; then echo "g++ (broken) 0.0"; exit 0; fi\n'
        'echo "broken compiler refuses $*" >&2\nexit 1\n'
    )
    cxx.chmod(0o755)
    (tmp_path / "small").write_bytes(b"abc")
    done = _mchsm(
        ["hash", "--backend", "verilator", "small"],
        {"CXX": str(cxx), "MCHSM_CACHE": str(tmp_path / "cache"), "MCHSM_DEBUG": ""},
        tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    progress = [line for line in lines if line.startswith("mchsm.sim: ")]
    (error,) = [line for line in lines if line not in progress]
    assert error.startswith("Error: ") and "build of mchsm_core failed" in error, lines
    log = Path(error.split("log: ", 1)[1])
    assert log.is_file() and "broken compiler refuses" in log.read_text()


def test_missing_perl_is_one_line(tmp_path: Path) -> None:
    """Verilator needs perl and make: without them on PATH, `mchsm verilator-env` says so."""
    done = _mchsm(["verilator-env"], {"PATH": str(tmp_path), "MCHSM_DEBUG": ""}, tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == ["Error: Verilator needs `perl` on PATH; install it"]
