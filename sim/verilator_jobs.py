"""Host jobs in a cocotb + Verilator simulation: the same ``async def job(driver)`` everywhere.

:func:`run_job_on_verilator` runs the same ``async def job(driver)`` that the golden model runs
(see :mod:`mchsm.sim.backends`), against the RTL, in a cocotb simulation.  The job is named
``module:function`` because the simulator is another process that imports it
(:mod:`mchsm.sim.cocotb_job` is the test module on the other side).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pickle
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Generic, TypeVar

from mchsm.constants import DEFAULT_CONTEXTS
from mchsm.sim.verilator_build import BuildInfo, build
from mchsm.sim.verilator_env import tail
from mchsm.sim.verilator_run import SimRun, SimulationError, run
from mchsm.sw.errors import ArgumentError, MchsmError

__all__ = ["JobError", "JobRun", "launch_job", "run_job_on_verilator", "simulate_job"]

T = TypeVar("T")


class JobError(MchsmError, RuntimeError):
    """A job failed inside the simulation and its exception could not be brought back as is."""


@dataclasses.dataclass(frozen=True)
class JobRun(Generic[T]):
    """A job's value and what running it cost."""

    value: T
    cycles: int  #: clock cycles from the end of reset to the end of the job
    sim_time_ns: float  #: the same span in simulated time
    wall_seconds: float  #: host time of the whole simulation (process start to exit)
    job_wall_seconds: float  #: host time spent inside the job
    hsm_cycles: int  #: sum of the CYCLES register over the job's commands (driver.cycles)
    commands: int  #: HSM commands the driver issued
    bus_reads: int
    bus_writes: int
    build: BuildInfo
    run: SimRun

    @property
    def waves(self) -> Path | None:
        return self.run.waves


@lru_cache(maxsize=8)
def _default_verilog(contexts: int, toplevel: str) -> str:
    """The core's Verilog, exactly as `mchsm rtl export` writes it (converting takes seconds;
    the imported RTL cannot change in-process, hence the cache)."""
    from mchsm.export import TOP_NAME, verilog_text

    if toplevel != TOP_NAME:
        raise ArgumentError(f"the exported core's top module is {TOP_NAME!r}, not {toplevel!r}")
    return verilog_text(contexts)


def launch_job(
    info: BuildInfo,
    test_module: str,
    spec: str,
    args: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    waves: bool,
    timeout: float | None,
    run_dir: Path | str | None,
    keep: bool = False,
    waves_file: Path | str | None = None,
) -> tuple[dict[str, Any], SimRun]:
    """Run the job ``spec`` with ``args`` in the cocotb test module ``test_module`` (one that
    calls :func:`mchsm.sim.cocotb_job.record_job`) against a build, and return what it recorded.

    Arguments travel as JSON when JSON gives them back unchanged, else pickled.  An exception
    raised by the job is raised here again, with the simulator-side traceback as a note.  The
    run directory (``run_dir``, default a new temporary one) is deleted after a successful run
    unless it was given, ``keep`` is set or waves were asked for without a ``waves_file`` of
    their own (then they are in it); after a failure it stays for
    its log.
    """
    rundir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="mchsm-job-"))
    rundir.mkdir(parents=True, exist_ok=True)
    result_file = rundir / "job_result.pickle"
    full_env = {"MCHSM_JOB": spec, "MCHSM_RESULT": str(result_file), **env}
    try:
        args_json = json.dumps(dict(args))
        exact = json.loads(args_json) == dict(args)
    except (TypeError, ValueError):
        exact = False
    if exact:
        full_env["MCHSM_JOB_ARGS"] = args_json
    else:  # dataclasses, tuples, bytes...: JSON would lose or refuse them
        args_file = rundir / "job_args.pickle"
        args_file.write_bytes(pickle.dumps(dict(args)))
        full_env["MCHSM_JOB_ARGS_PICKLE"] = str(args_file)
    sim = run(
        info,
        test_module,
        env=full_env,
        waves=waves,
        timeout=timeout,
        run_dir=rundir,
        check=False,
        waves_file=waves_file,
    )
    try:
        outcome: dict[str, Any] = pickle.loads(result_file.read_bytes())
    except FileNotFoundError:
        raise SimulationError(
            f"the simulation of job {spec} ended without a result (crash?); exit code "
            f"{sim.returncode}; log: {sim.log}\n{tail(sim.log, 25)}",
            sim,
        ) from None
    if not outcome["ok"]:
        exc = None
        if outcome.get("exception") is not None:
            with contextlib.suppress(Exception):
                exc = pickle.loads(outcome["exception"])
        note = (
            f"raised by job {spec} inside the simulation (log: {sim.log}):\n{outcome['traceback']}"
        )
        if isinstance(exc, BaseException):
            exc.add_note(note)
            raise exc
        raise JobError(f"{outcome['error']}\n{note}")
    if not (keep or (waves and waves_file is None) or run_dir is not None):
        shutil.rmtree(rundir, ignore_errors=True)
    return outcome, sim


def simulate_job(
    job: Callable[..., Awaitable[T]],
    contexts: int = DEFAULT_CONTEXTS,
    *,
    waves: bool | str = False,
    verilog: str | None = None,
    job_args: Mapping[str, Any] | None = None,
    toplevel: str = "mchsm_core",
    timeout: float | None = None,
    clock_ns: float = 10,
    bus_prefix: str = "bus",
    keep: bool = False,
    extra_args: Sequence[str] = (),
    run_dir: Path | str | None = None,
    waves_file: Path | str | None = None,
) -> JobRun[T]:
    """Run ``job(driver, **job_args)`` against the design in a cocotb + Verilator simulation.

    ``job`` must be a module-level ``async def`` (the simulator is another process and imports
    it by name); its arguments travel as JSON (pickled when JSON would not give them back
    unchanged: tuples, bytes, dataclasses) and its value comes back pickled.  ``verilog``
    defaults to ``MchsmCore(contexts=contexts)``.  The run directory (``run_dir``, default a new
    ``mchsm-job-*`` temporary directory) is deleted after a successful run unless it was given,
    ``keep`` is set or waves were asked for (``waves_file`` puts the VCD elsewhere, and then the
    directory goes); after a failure it stays for its log.  An exception
    raised by the job is raised here again, with the simulator-side traceback as a note.  Also
    ``toplevel`` (the Verilog module name), ``timeout`` (wall-clock seconds), ``clock_ns``,
    ``bus_prefix`` and ``extra_args`` (for :func:`build`).
    """
    from mchsm.sim.cocotb_job import job_spec

    spec = job_spec(job)
    args = dict(job_args or {})
    if verilog is None:
        verilog = _default_verilog(contexts, toplevel)
    info = build(verilog, toplevel, waves=waves, extra_args=extra_args)
    outcome, sim = launch_job(
        info,
        "mchsm.sim.cocotb_job",
        spec,
        args,
        {
            "MCHSM_CLOCK_NS": f"{clock_ns:g}",
            "MCHSM_CONTEXTS": str(contexts),
            "MCHSM_BUS_PREFIX": bus_prefix,
        },
        waves=bool(waves),
        timeout=timeout,
        run_dir=run_dir,
        keep=keep,
        waves_file=waves_file,
    )
    return JobRun(
        value=outcome["value"],
        cycles=outcome["cycles"],
        sim_time_ns=outcome["sim_time_ns"],
        wall_seconds=sim.wall_seconds,
        job_wall_seconds=outcome["job_wall_seconds"],
        hsm_cycles=outcome["hsm_cycles"],
        commands=outcome["commands"],
        bus_reads=outcome["bus_reads"],
        bus_writes=outcome["bus_writes"],
        build=info,
        run=sim,
    )


def run_job_on_verilator(
    job: Callable[..., Awaitable[T]],
    contexts: int = DEFAULT_CONTEXTS,
    *,
    waves: bool = False,
    verilog: str | None = None,
    job_args: dict[str, Any] | None = None,
    **kwargs: Any,
) -> T:
    """Run ``job`` on the RTL in Verilator and return its value (see :func:`simulate_job`).

    This has the shape of a :data:`mchsm.sim.backends.BACKENDS` runner; use
    :func:`simulate_job` for cycles and wall time as well.
    """
    return simulate_job(
        job, contexts, waves=waves, verilog=verilog, job_args=job_args, **kwargs
    ).value
