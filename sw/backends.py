"""Where the HSM runs: the golden model or a simulation of the RTL.

Every backend takes the same job, an async function of an :class:`HsmDriver`, and runs it to
completion against its HSM: the host software is the same whatever is underneath.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mchsm.constants import DEFAULT_CONTEXTS
from mchsm.sw.driver import HsmDriver, ModelTransport
from mchsm.sw.mailbox import ModelMailbox
from mchsm.sw.model import HsmModel

__all__ = ["BACKENDS", "run_on_backend"]

T = TypeVar("T")
Job = Callable[[HsmDriver], Awaitable[T]]


def _run_model(contexts: int, job: Job[T]) -> T:
    driver = HsmDriver(ModelTransport(ModelMailbox(HsmModel(contexts))))
    return asyncio.run(job(driver))


#: backend name -> runner; the CLI's --backend choices come from here
BACKENDS: dict[str, Callable[[int, Job], object]] = {"model": _run_model}


def run_on_backend(backend: str, job: Job[T], contexts: int = DEFAULT_CONTEXTS) -> T:
    """Run ``job`` against a fresh HSM with ``contexts`` contexts on ``backend``."""
    try:
        runner = BACKENDS[backend]
    except KeyError:
        raise ValueError(
            f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}"
        ) from None
    return runner(contexts, job)  # type: ignore[return-value]
