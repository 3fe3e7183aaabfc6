"""The C driver (mchsm/c/mchsm_hsm.c) run against the exported Verilog under Verilator: its
results equal the Python driver's for the same scenario, they are right (checked against
hashlib, hmac and the protocol's message builders), a planted bug in the driver is caught, and
the driver is freestanding C99 without magic numbers."""

from __future__ import annotations

import hashlib
import hmac
import re
import subprocess
from pathlib import Path

import pytest

from mchsm.constants import KDF_ATT, KDF_UPD, CtxFlag, Status, ctx_bit
from mchsm.export import c_driver_sources, c_header
from mchsm.sim.backends import run_on_backend
from mchsm.sim.cdriver import inputs_text, make_inputs, scenario_job
from mchsm.sim.cdriver_build import (
    C_FLAGS,
    CONTEXTS,
    BenchBuild,
    BenchRun,
    build_testbench,
    c_compiler,
    relink,
    run_testbench,
)
from mchsm.sw.protocol import ZERO_DIGEST, ack_message, att_message, derive_task_key, reference

Inputs = dict[str, list[str]]


@pytest.fixture(scope="module")
def inputs() -> Inputs:
    return make_inputs()


@pytest.fixture(scope="module")
def build() -> BenchBuild:
    return build_testbench()


@pytest.fixture(scope="module")
def c_run(build: BenchBuild, inputs: Inputs) -> BenchRun:
    return run_testbench(build, inputs_text(inputs))


def _diff(c: list[str], py: list[str]) -> str:
    for i, (a, b) in enumerate(zip(c, py, strict=False)):
        if a != b:
            return f"line {i + 1} differs:\n  C:      {a}\n  Python: {b}"
    return f"C printed {len(c)} lines, Python {len(py)}"


@pytest.mark.parametrize("backend", ["model", "amaranth"])
def test_c_driver_on_verilator_agrees_with_the_python_driver(
    c_run: BenchRun, inputs: Inputs, backend: str
) -> None:
    """Every result line (status, bytes, refusals, preemptions) of the C driver on the
    Verilated core equals the Python driver's on the model and on the RTL in Amaranth."""
    py = run_on_backend(backend, scenario_job, CONTEXTS, job_args={"inputs": inputs_text(inputs)})
    assert c_run.lines == py.value, _diff(c_run.lines, py.value)
    assert len(c_run.lines) >= 60
    assert c_run.stats["refused"] >= 8  # the refusals and preemptions did happen on the bus


def _fields(lines: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for line in lines:
        label, *rest = line.split()
        out[label] = dict(w.split("=", 1) for w in rest if "=" in w)
        out[label]["_words"] = " ".join(w for w in rest if "=" not in w)
    return out


def test_c_driver_results_are_right(c_run: BenchRun, inputs: Inputs) -> None:
    """Hashes, HMACs, measurements, the update acknowledgements and the attestation tag,
    recomputed here with hashlib and hmac from the inputs the testbench was given."""
    got = _fields(c_run.lines)

    def data(name: str) -> bytes:
        return bytes.fromhex(inputs[name][0])

    def sha(b: bytes) -> bytes:
        return hashlib.sha256(b).digest()

    def mac(key: bytes, msg: bytes) -> bytes:
        return hmac.new(key, msg, hashlib.sha256).digest()

    dev_id, root = data("dev_id"), data("root_key")
    images = {1: data("image.1"), 2: data("image.2"), 3: data("wrong.3"), 4: b""}
    refs = {i: sha(ZERO_DIGEST + sha(data(f"image.{i}"))) for i in (1, 2, 3)} | {4: ZERO_DIGEST}
    assert refs[1] == reference(data("image.1"))
    k_upd = mac(root, KDF_UPD)
    for ctx in (1, 2, 3):
        line = got[f"update.{ctx}"]
        assert line["rc"] == "OK" and line["new"] == "1"
        assert line["ack"] == mac(k_upd, ack_message(dev_id, ctx, 0, 1, refs[ctx])).hex()
    assert got["update.4.forged"] == {"rc": "STATUS", "status": "08", "_words": ""}
    for ctx, image in images.items():
        label = next(k for k in got if k.startswith(f"measure.{ctx}"))
        assert got[label]["digest"] == sha(image).hex(), label
        ctx_line = got[f"read_ctx.{ctx}"]
        assert ctx_line["measurement"] == sha(ZERO_DIGEST + sha(image)).hex()
        assert ctx_line["reference"] == refs[ctx].hex()
    trusted = CtxFlag.LOADED | CtxFlag.MATCH | CtxFlag.OK
    assert [int(got[f"read_ctx.{i}"]["flags"], 16) for i in (1, 2, 3, 4)] == [
        trusted,
        trusted,
        CtxFlag.LOADED,
        CtxFlag.LOADED,
    ]

    sel = int(inputs["sel"][0])
    ok = ctx_bit(1) | ctx_bit(2)
    attest = got["attest"]
    assert (int(attest["sel"], 16), int(attest["ok"], 16), attest["ctr"]) == (sel, ok, "1")
    digest = sha(b"".join(refs[i] for i in (1, 2, 3, 4)))
    message = att_message(dev_id, data("nonce"), sel, ok, 1, digest)
    assert attest["tag"] == mac(mac(root, KDF_ATT), message).hex()

    k_task = derive_task_key(root, 1, refs[1])
    assert got["task_mac.1"]["tag"] == mac(k_task, data("message")).hex()
    assert got["hash"]["digest"] == sha(data("hash_data")).hex()
    assert got["hash.empty"]["digest"] == sha(b"").hex()
    assert got["hmac"]["tag"] == mac(data("hmac_key"), data("hmac_data")).hex()
    assert got["preempt.data.retried"]["digest"] == sha(data("block")).hex()
    assert got["preempt.data"]["rc"] == "LOST" and got["preempt.result"]["rc"] == "LOST_RAN"
    assert got["hash.task2.busy"]["rc"] == "BUSY"
    assert got["status.end"]["counter"] == "1"  # the preempted commands changed nothing


def test_c_only_calls(c_run: BenchRun, inputs: Inputs) -> None:
    """What only the C driver has: calls out of order, too little or too much data, a bus
    fault of the access function."""
    got = dict(line.split(" ", 1) for line in c_run.c_only)
    assert got["data.unbegun"] == got["end.unbegun"] == "rc=STATE"
    assert got["run.null_result"] == "rc=ARG"
    assert got["short.data"] == "rc=OK" and got["short.end"] == "rc=ARG"
    # too little data: the driver aborted the command, which ended ERR_ABORTED, mailbox kept
    assert got["short.status"] == "ack 00001a0e"
    assert got["long.data"] == "rc=ARG" and got["long.data.fits"] == "rc=OK"
    short = bytes.fromhex(inputs["hash_data"][0])[:8]
    assert got["long.end"] == f"rc=OK digest={hashlib.sha256(short).hexdigest()}"
    assert got["release"] == "rc=OK"
    assert got["bus.fault"] == got["bus.fault.call"] == "rc=BUS"
    # a slow caller's ATTEST whose selection fails at its first word: the command's status
    # (the rest of its data was refused), not a lost mailbox
    assert got["slow.data"] == "rc=OK"
    assert got["slow.end"] == f"rc=STATUS status={int(Status.ERR_SELECT):02x}"
    assert got["slow.release"] == "rc=OK"


#: planted bugs, each one a mistake a driver author could make: (name, text, replacement)
MUTANTS = [
    (
        "last word not padded",
        "h->st_carry <<= BYTE_BITS * (WORD_BYTES - h->st_carried);",
        "(void)0;",
    ),
    (
        "a lost result read as 'not ran' (the command is repeated)",
        "rd(h, MCHSM_REG_RESULT + i, &value, MCHSM_RC_LOST_RAN)",
        "rd(h, MCHSM_REG_RESULT + i, &value, MCHSM_RC_LOST)",
    ),
    (
        "retries the command that ran instead of the one that did not",
        "if (rc == MCHSM_RC_LOST && attempt < h->retries)",
        "if (rc == MCHSM_RC_LOST_RAN && attempt < h->retries)",
    ),
    (
        "result words little-endian",
        "(value >> (BYTE_BITS * (WORD_BYTES - 1u - j)))",
        "(value >> (BYTE_BITS * j))",
    ),
    (
        "context in the code field",
        "((uint32_t)ctx << MCHSM_CMD_CTX_SHIFT)",
        "((uint32_t)ctx << MCHSM_CMD_CODE_SHIFT)",
    ),
]


def test_the_comparison_catches_planted_bugs(
    build: BenchBuild, c_run: BenchRun, tmp_path: Path
) -> None:
    source = c_driver_sources()["mchsm_hsm.c"]
    for i, (name, text, replacement) in enumerate(MUTANTS):
        assert source.count(text) == 1, f"mutant {name!r} is stale: {text!r} not in the driver"
        exe = relink(build, source.replace(text, replacement), tmp_path / f"m{i}")
        mutant = run_testbench(build, inputs_text(make_inputs()), executable=exe, timeout=120)
        assert mutant.lines != c_run.lines, f"planted bug not caught: {name}"
    # and the unmutated driver, relinked the same way, agrees (the relink is faithful)
    exe = relink(build, source, tmp_path / "same")
    assert run_testbench(build, inputs_text(make_inputs()), executable=exe).lines == c_run.lines


def test_driver_is_freestanding_c99_without_magic_numbers(tmp_path: Path) -> None:
    """The driver compiles as strict, freestanding C99 for a 32-bit target too, needs no
    library function at all, and takes every number from mchsm_regs.h (the only literals
    outside #define lines are 0 and 1)."""
    for name, text in c_driver_sources().items():
        (tmp_path / name).write_text(text)
    (tmp_path / "mchsm_regs.h").write_text(c_header(CONTEXTS))
    warnings = ["-Wshadow", "-Wcast-qual", "-Wstrict-prototypes", "-Wmissing-prototypes"]
    cc = c_compiler()
    for extra in (["-ffreestanding"], ["-ffreestanding", "-Os", "-m32"]):
        obj = tmp_path / "hsm.o"
        done = subprocess.run(
            [cc, *C_FLAGS, *warnings, *extra, "-c", "mchsm_hsm.c", "-o", str(obj)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode and "-m32" in extra and "stubs-32.h" in done.stderr:
            continue  # no 32-bit libc headers here: the 64-bit build stands
        assert done.returncode == 0, done.stderr
        nm = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True)
        undefined = {line.split()[-1] for line in nm.stdout.splitlines() if line.strip()}
        # GCC may call these four in any environment, freestanding included; and the GOT is
        # the linker's
        allowed = {"memcpy", "memmove", "memset", "memcmp", "_GLOBAL_OFFSET_TABLE_"}
        assert undefined <= allowed, f"the driver calls library functions: {undefined - allowed}"

    code = c_driver_sources()["mchsm_hsm.c"]
    code = re.sub(r"/\*.*?\*/", "", code, flags=re.DOTALL)
    code = re.sub(r'"[^"\n]*"', '""', code)
    literals = [
        (n + 1, m.group())
        for n, line in enumerate(code.splitlines())
        if not line.lstrip().startswith("#")
        for m in re.finditer(r"\b(0x[0-9a-fA-F]+|\d+)[uUlL]*\b", line)
        if m.group().rstrip("uUlL") not in ("0", "1")
    ]
    assert literals == [], f"magic numbers in mchsm_hsm.c (line, literal): {literals}"


def test_the_porting_example_in_the_docs_compiles(tmp_path: Path) -> None:
    """docs/integrate.md's port (the two access functions and a measurement) compiles with the
    driver and the header as strict C99."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "integrate.md").read_text()
    section = text[text.index("## C driver") :]
    example = re.search(r"```c\n(.*?)```", section, re.DOTALL)
    assert example is not None and "mchsm_init" in example[1]
    for name, source in c_driver_sources().items():
        (tmp_path / name).write_text(source)
    (tmp_path / "mchsm_regs.h").write_text(c_header(CONTEXTS))
    (tmp_path / "port.c").write_text(example[1])
    for source in ("port.c", "mchsm_hsm.c"):
        done = subprocess.run(
            [c_compiler(), *C_FLAGS, "-c", source, "-o", source.replace(".c", ".o")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
