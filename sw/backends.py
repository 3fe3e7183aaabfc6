"""Where the HSM runs: the golden model, or the RTL in Amaranth's simulator or in Verilator.

Every backend takes the same job, a module-level ``async def job(driver, **job_args)``, and runs
it to completion against a fresh HSM: the host software is the same whatever is underneath.
Jobs must be module-level functions because the Verilator backend runs them in another process
(cocotb) and finds them by name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from mchsm.constants import DEFAULT_CONTEXTS
from mchsm.sw.driver import HsmDriver, ModelTransport
from mchsm.sw.mailbox import ModelMailbox
from mchsm.sw.model import HsmModel

__all__ = ["BACKENDS", "BackendRun", "run_on_backend"]

T = TypeVar("T")
Job = Callable[..., Awaitable[T]]


@dataclass(frozen=True)
class BackendRun(Generic[T]):
    """A job's value and what it cost on its backend."""

    backend: str
    value: T
    wall_seconds: float
    sim_cycles: int  #: simulated clock cycles (0 on the model)
    waves: Path | None = None


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
        vcd = waves if waves.suffix == ".vcd" else waves / "mchsm_amaranth.vcd"
        vcd.parent.mkdir(parents=True, exist_ok=True)
    run = run_on_amaranth(lambda driver: job(driver, **job_args), contexts, vcd=vcd)
    return BackendRun("amaranth", run.result, run.seconds, run.cycles, vcd)


def _place_waves(made: Path | None, wanted: Path | None) -> Path | None:
    """Move a simulator's waveform to where the user asked: a file name or a directory."""
    if made is None or wanted is None:
        return made
    target = wanted if wanted.suffix in (".vcd", ".fst") else wanted / Path(made).name
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(made).replace(target)


def _run_verilator(
    job: Job[T], contexts: int, job_args: dict[str, Any], waves: Path | None
) -> BackendRun[T]:
    from mchsm.sim.verilator import simulate_job

    run = simulate_job(job, contexts, job_args=job_args, waves=waves is not None)
    return BackendRun(
        "verilator", run.value, run.wall_seconds, run.cycles, _place_waves(run.waves, waves)
    )


def _run_uart_sim(
    job: Job[T], contexts: int, job_args: dict[str, Any], waves: Path | None
) -> BackendRun[T]:
    """The board design (core + UART bridge) in Verilator, the host on its UART pins."""
    from mchsm.sim.uart_sim import simulate_uart_job

    run = simulate_uart_job(job, contexts, job_args=job_args, waves=waves is not None)
    return BackendRun(
        "uart-sim", run.value, run.wall_seconds, run.cycles, _place_waves(run.waves, waves)
    )


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

    ``waves`` (RTL backends) writes a waveform there: a ``.vcd``/``.fst`` path or a directory.
    """
    try:
        runner = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}") from None
    return runner(job, contexts, dict(job_args or {}), waves)
