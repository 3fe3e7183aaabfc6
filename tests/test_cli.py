"""The command line: the demo story, and hash/hmac printed like sha256sum."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from mchsm.cli import main
from mchsm.sw.verifier import Verifier


def test_demo_tells_the_whole_story(registry_path: Path) -> None:
    db = registry_path
    result = CliRunner().invoke(main, ["demo", "--backend", "model", "--db", str(db)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "FAIL" not in out
    for expected in (
        "control=failed",
        "ERR_VERSION",
        "ERR_ROLLBACK",
        "ERR_AUTH",
        "nonce already used",
        "ERR_DENIED",
        "every step went as the protocol says",
    ):
        assert expected in out
    assert out.count("PASS") >= 12
    with Verifier(db) as verifier:  # the registry file is real and holds the story
        kinds = {entry.kind for entry in verifier.audit()}
        assert {"attest", "update.confirm"} <= kinds


def test_demo_refuses_contexts_it_cannot_use() -> None:
    """The help says 4..32 (the story's tasks), and anything else is refused with that reason."""
    from mchsm.constants import MAX_CONTEXTS
    from mchsm.sw.demo import TASK_NAMES

    help_text = " ".join(CliRunner().invoke(main, ["demo", "--help"]).output.split())
    assert f"the story has {len(TASK_NAMES)} tasks, so {len(TASK_NAMES)}..{MAX_CONTEXTS}" in (
        help_text
    )
    for bad in ("3", "33"):
        result = CliRunner().invoke(main, ["demo", "--contexts", bad])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert f"it needs 4..32 contexts, not {bad}" in result.output


def test_backend_help_names_every_backend() -> None:
    from mchsm.sim.backends import BACKENDS

    for command in ("demo", "hash", "hmac"):
        text = " ".join(CliRunner().invoke(main, [command, "--help"]).output.split())
        for name in BACKENDS:
            assert f"{name}:" in text, (command, name)


def test_demo_port_refuses_simulator_options() -> None:
    """--port runs on a board; a --backend, --contexts or --waves beside it is refused, not
    silently ignored (nothing is opened: the check comes first)."""
    for extra, named in (
        (["--backend", "verilator"], "--backend does not apply"),
        (["--contexts", "8", "--waves", "w.vcd"], "--contexts and --waves do not apply"),
    ):
        result = CliRunner().invoke(main, ["demo", "--port", "/dev/nonexistent", *extra])
        assert result.exit_code == 2, result.output
        assert named in result.output and "Traceback" not in result.output


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    out = []
    for size in (0, 55, 56, 64, 1000, 1 << 20):
        path = tmp_path / f"f{size}.bin"
        path.write_bytes(os.urandom(size))
        out.append(path)
    return out


def test_hash_prints_sha256sum_lines(files: list[Path]) -> None:
    result = CliRunner().invoke(main, ["hash", *map(str, files)])
    assert result.exit_code == 0, result.output
    expected = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p}" for p in files]
    assert result.output.splitlines() == expected


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="no sha256sum on this machine")
def test_hash_on_verilator_prints_what_sha256sum_prints(
    files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0, 55, 56, 64, 1000 bytes and 1 MiB, hashed by the RTL under cocotb + Verilator.

    The names are relative, as a user types them: the simulation runs in its own directory.
    """
    monkeypatch.chdir(tmp_path)
    names = [p.name for p in files]
    result = CliRunner().invoke(main, ["hash", "--backend", "verilator", *names])
    assert result.exit_code == 0, result.output
    sha256sum = subprocess.run(
        ["sha256sum", *names], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert result.stdout == sha256sum.stdout


@pytest.mark.parametrize("key", ["", "00", "6b6579", "ab" * 64, "cd" * 65])
def test_hmac_matches_stdlib(files: list[Path], key: str) -> None:
    result = CliRunner().invoke(main, ["hmac", "--key-hex", key, *map(str, files[:4])])
    assert result.exit_code == 0, result.output
    raw = bytes.fromhex(key)
    expected = [
        f"{hmac.new(raw, p.read_bytes(), hashlib.sha256).hexdigest()}  {p}" for p in files[:4]
    ]
    assert result.output.splitlines() == expected


def test_hash_reports_missing_files_and_bad_keys(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["hash", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "no such file" in result.output
    result = CliRunner().invoke(main, ["hmac", "--key-hex", "xyz", str(tmp_path)])
    assert result.exit_code != 0 and "hexadecimal" in result.output


def test_unknown_backend_is_refused() -> None:
    result = CliRunner().invoke(main, ["hash", "--backend", "fpga", "x"])
    assert result.exit_code != 0 and "fpga" in result.output


def test_verifier_commands_rotate_the_kek_and_say_what_is_wrong_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MCHSM_VERIFIER_KEK", raising=False)
    monkeypatch.delenv("MCHSM_VERIFIER_KEK_FILE", raising=False)
    db = tmp_path / "v.sqlite"
    with Verifier(db) as verifier:
        dev = verifier.register_device(4)
    runner = CliRunner()
    result = runner.invoke(main, ["verifier", "info", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "devices:" in result.output and "v.sqlite.kek" in result.output
    old = (tmp_path / "v.sqlite.kek").read_text()
    result = runner.invoke(main, ["verifier", "rotate-kek", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "re-wrapped 1 root key(s)" in result.output
    assert (tmp_path / "v.sqlite.kek").read_text() != old
    new = tmp_path / "new.kek"
    assert runner.invoke(main, ["verifier", "new-kek", str(new)]).exit_code == 0
    assert os.stat(new).st_mode & 0o777 == 0o600
    result = runner.invoke(
        main, ["verifier", "rotate-kek", "--db", str(db), "--new-kek-file", str(new)]
    )
    assert result.exit_code == 0, result.output
    with Verifier(db, kek=new) as verifier:
        assert verifier.device(dev.dev_id).root_key == dev.root_key
    # the default KEK file no longer matches: one line that says so, no traceback
    for args in (
        ["verifier", "info", "--db", str(db)],
        ["verifier", "new-kek", str(new)],
        ["verifier", "info", "--db", str(tmp_path / "missing" / "x.sqlite")],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output and result.output.count("\n") == 1, result.output
    os.chmod(db, 0o644)
    result = runner.invoke(main, ["verifier", "info", "--db", str(db), "--kek-file", str(new)])
    assert result.exit_code == 1 and f"chmod 600 {db}" in result.output


# ---------------------------------------------------------------------------------------------
# Inputs whose size st_size does not tell: read to the end before the HSM hears their length
# ---------------------------------------------------------------------------------------------


def _sha256sum(path: str) -> str:
    done = subprocess.run(["sha256sum", path], capture_output=True, text=True, check=True)
    return done.stdout.split()[0]


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="no sha256sum on this machine")
def test_hash_of_proc_cpuinfo_is_what_sha256sum_says() -> None:
    """/proc/cpuinfo says it has 0 bytes (st_size).  Its "cpu MHz" lines may change between
    two reads, so up to five tries for mchsm and sha256sum to read the same text."""
    path = "/proc/cpuinfo"
    if not Path(path).exists():
        pytest.skip("no /proc/cpuinfo on this machine")
    assert os.stat(path).st_size == 0  # the trap: the length is not the size
    for _ in range(5):
        result = CliRunner().invoke(main, ["hash", path])
        assert result.exit_code == 0, result.output
        digest, name = result.stdout.split()
        assert name == path and digest != hashlib.sha256(b"").hexdigest()
        if digest == _sha256sum(path):
            return
    pytest.fail(f"mchsm hash and sha256sum never agreed on {path}")


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="no sha256sum on this machine")
def test_hash_of_proc_and_sysfs_files() -> None:
    """A /proc file (st_size 0) and a sysfs file (st_size 4096 whatever it holds) that do not
    change: mchsm agrees with sha256sum."""
    candidates = [
        "/proc/version",
        "/proc/sys/kernel/ostype",
        "/sys/kernel/address_bits",
        "/sys/devices/system/cpu/possible",
        "/sys/kernel/mm/transparent_hugepage/enabled",
    ]
    found = [p for p in candidates if os.access(p, os.R_OK)]
    if not found:
        pytest.skip("none of the /proc and sysfs files to try is here")
    result = CliRunner().invoke(main, ["hash", *found])
    assert result.exit_code == 0, result.output
    for line, path in zip(result.stdout.splitlines(), found, strict=True):
        assert line == f"{_sha256sum(path)}  {path}"
        assert os.stat(path).st_size != len(Path(path).read_bytes())  # st_size would be wrong


def test_hash_of_a_pipe_and_of_stdin(tmp_path: Path) -> None:
    """A named pipe (no size at all) fed by a thread, and `-` (standard input), in one call."""
    data = os.urandom(200_000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    result = CliRunner().invoke(main, ["hash", str(fifo), "-"], input=data[:777])
    writer.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{hashlib.sha256(data).hexdigest()}  {fifo}",
        f"{hashlib.sha256(data[:777]).hexdigest()}  -",
    ]


@pytest.mark.skipif(
    shutil.which("sha256sum") is None or shutil.which("bash") is None,
    reason="needs bash and sha256sum",
)
def test_hash_in_a_shell_pipeline_matches_sha256sum(tmp_path: Path) -> None:
    """As a user types it: `cat f | mchsm hash -` and `mchsm hash <(cat f)` (a /dev/fd pipe,
    which only the process that opened it can read), against `sha256sum`."""
    f = tmp_path / "data.bin"
    f.write_bytes(os.urandom(70_000))
    mchsm = f"{sys.executable} -c 'from mchsm.cli import main; main()'"
    script = f"cat {f} | {mchsm} hash - && {mchsm} hmac --key-hex 00 <(cat {f}) | cut -c1-64"
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{_sha256sum(str(f))}  -"
    assert lines[1] == hmac.new(b"\0", f.read_bytes(), hashlib.sha256).hexdigest()


def test_hash_limits_are_in_the_help() -> None:
    from mchsm.inputs import size_text
    from mchsm.sim.backends import INPUT_LIMITS

    for command in ("hash", "hmac"):
        text = " ".join(CliRunner().invoke(main, [command, "--help"]).output.split())
        assert "read to its end" in text
        for backend, limit in INPUT_LIMITS.items():
            assert f"{backend} {size_text(limit)}" in text, (command, backend)
    assert size_text(INPUT_LIMITS["model"]) == "4 GiB - 1 B"


def test_input_at_the_limit_is_taken_and_one_more_byte_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound is exact: a limit of 100 bytes takes 100 and refuses 101, from a file and
    from standard input (which has no size to check first)."""
    from mchsm.sim import backends

    monkeypatch.setitem(backends.INPUT_LIMITS, "model", 100)
    ok, over = tmp_path / "ok", tmp_path / "over"
    ok.write_bytes(bytes(100))
    over.write_bytes(bytes(101))
    result = CliRunner().invoke(main, ["hash", str(ok)])
    assert result.exit_code == 0 and hashlib.sha256(bytes(100)).hexdigest() in result.stdout
    for args, stdin in (([str(over)], None), (["-"], bytes(101))):
        result = CliRunner().invoke(main, ["hash", *args], input=stdin)
        assert result.exit_code == 2 and "larger than the 100 bytes" in result.stderr
