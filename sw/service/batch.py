"""Group commit: the requests that arrive while one batch commits go into the next.

A worker process has one registry connection, used by one thread (the ``Verifier`` is not
thread-safe and SQLite wants its connection on one thread).  Challenges and attempts are queued
by the event loop; whenever the thread is idle it takes everything queued (up to
``max_batch`` of each) and runs :meth:`~mchsm.sw.verifier.Verifier.serve_batch`: one
transaction and one commit for all of them.  Under load a batch fills while the previous one
commits, so the cost of a commit (an fsync) is shared by every request in it; a lone request
waits for nobody.  No answer is given before its batch has committed.

Everything else the service asks of the registry (admin calls, reads) runs on the same thread,
between batches, through :meth:`Batcher.call`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mchsm.sw.verifier import AttestationReport, Challenge, Verifier

__all__ = ["MAX_BATCH", "Batcher"]

T = TypeVar("T")
#: challenges, and attempts, per transaction at most
MAX_BATCH = 1024


class Batcher:
    """Queues challenges and attempts and commits them in batches on the registry's thread."""

    def __init__(
        self,
        opener: Callable[[], Verifier],
        *,
        max_batch: int = MAX_BATCH,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self._opener = opener
        self.verifier: Verifier | None = None
        self.max_batch = max_batch
        self._observe = observe
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mchsm-registry")
        self._challenges: list[tuple[bytes, int | None, asyncio.Future[Any]]] = []
        self._attempts: list[tuple[bytes, bytes, bytes, asyncio.Future[Any]]] = []
        self._running: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Open the registry, on the thread that will use it."""
        loop = asyncio.get_running_loop()
        self.verifier = await loop.run_in_executor(self._executor, self._opener)

    def challenge(self, dev_id: bytes, sel: int | None) -> asyncio.Future[Any]:
        """A future of the :class:`Challenge` (or the VerifierError that refused it)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._challenges.append((dev_id, sel, fut))
        self._kick()
        return fut

    def attempt(self, dev_id: bytes, nonce: bytes, evidence: bytes) -> asyncio.Future[Any]:
        """A future of the :class:`AttestationReport` (or the VerifierError that rejected it)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._attempts.append((dev_id, nonce, evidence, fut))
        self._kick()
        return fut

    async def call(self, fn: Callable[[Verifier], T]) -> T:
        """Run ``fn(verifier)`` on the registry's thread (between batches)."""
        loop = asyncio.get_running_loop()
        assert self.verifier is not None
        return await loop.run_in_executor(self._executor, fn, self.verifier)

    def _kick(self) -> None:
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.verifier is not None
        try:
            while self._challenges or self._attempts:
                challenges = self._challenges[: self.max_batch]
                del self._challenges[: self.max_batch]
                attempts = self._attempts[: self.max_batch]
                del self._attempts[: self.max_batch]
                began = time.perf_counter()
                try:
                    issued, judged = await loop.run_in_executor(
                        self._executor,
                        self.verifier.serve_batch,
                        [(d, s) for d, s, _ in challenges],
                        [(d, n, e) for d, n, e, _ in attempts],
                    )
                except Exception as exc:  # the whole batch rolled back: every request fails
                    for fut in [c[-1] for c in challenges] + [a[-1] for a in attempts]:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                if self._observe is not None:
                    self._observe(len(challenges) + len(attempts), time.perf_counter() - began)
                for (*_, fut), issue in zip(challenges, issued, strict=True):
                    if not fut.done():
                        fut.set_result(issue)
                for (*_, fut), judgement in zip(attempts, judged, strict=True):
                    if not fut.done():
                        fut.set_result(judgement)
        finally:
            self._running = None

    async def close(self) -> None:
        """Finish what is queued, then close the registry (on its own thread)."""
        while self._running is not None:
            await asyncio.shield(self._running)
        if not self._closed and self.verifier is not None:
            self._closed = True
            await asyncio.get_running_loop().run_in_executor(self._executor, self.verifier.close)
            self._executor.shutdown(wait=True)


__all__ += ["AttestationReport", "Challenge"]
