"""Another caller's bus accesses between a victim's: races on any transport, scripted.

The mailbox must hold whatever another caller does between two accesses of the holder
(``docs/protocol.md`` section 9).  :class:`Interposer` wraps any :class:`Transport` and, after
chosen accesses of the victim, lets a hostile caller make its own - on the model, either RTL
simulator, the UART simulation or a board alike.  The demo's race step and the isolation tests
use it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from mchsm.constants import Reg
from mchsm.sw.command import REFUSED, Outcome, Read, Write
from mchsm.sw.driver import Transport
from mchsm.sw.errors import BusRefusedError

__all__ = ["Interposer", "perform", "shown"]


async def perform(transport: Transport, caller: int, op: Read | Write) -> Outcome:
    """One access; a refusal comes back as :data:`~mchsm.sw.command.REFUSED`."""
    try:
        if isinstance(op, Read):
            return await transport.read(op.addr, caller)
        await transport.write(op.addr, op.value, caller)
    except BusRefusedError:
        return REFUSED
    return None


def shown(op: Read | Write, outcome: Outcome) -> int | str | None:
    """An outcome as it may be compared across backends: ``"refused"`` for ``err``, and only
    ``"read"`` for a CYCLES read (the model has no clock)."""
    if outcome is REFUSED:
        return "refused"
    if op.addr == Reg.CYCLES and isinstance(op, Read):
        return "read"
    return outcome  # type: ignore[return-value]  # not REFUSED (returned above): int or None


#: what the hostile caller does at one point: a coroutine function of the interposer
Move = Callable[["Interposer"], Awaitable[None]]


class Interposer(Transport):
    """Wraps ``inner``: after chosen accesses of ``victim``, a hostile caller gets its turn.

    ``moves`` maps the victim's access count (1 = after its first access) to a :data:`Move`,
    which acts through :meth:`poke`.  Everything the hostile caller saw is in ``seen``, as
    (label, :func:`shown` outcome).  Bursts of the victim go word by word, so the hostile
    caller may act between any two of its words.
    """

    name = "interposer"

    def __init__(self, inner: Transport, victim: int, moves: Mapping[int, Move]) -> None:
        self.inner = inner
        self.victim = victim
        self.moves = dict(moves)
        self.count = 0
        self.seen: list[tuple[str, int | str | None]] = []
        #: the victim's last access: (byte offset, value written, or None for a read)
        self.last: tuple[int, int | None] = (0, None)

    async def _after(self, caller: int, addr: int, value: int | None) -> None:
        if caller == self.victim:
            self.count += 1
            self.last = (addr, value)
            move = self.moves.get(self.count)
            if move is not None:
                await move(self)

    async def poke(self, caller: int, op: Read | Write, label: str = "") -> int | str | None:
        """One hostile access through the wrapped transport; returns and records what it saw."""
        outcome = shown(op, await perform(self.inner, caller, op))
        self.seen.append((label or f"{caller}:{type(op).__name__}@0x{op.addr:02x}", outcome))
        return outcome

    async def read(self, addr: int, caller: int) -> int:
        value = await self.inner.read(addr, caller)
        await self._after(caller, addr, None)
        return value

    async def write(self, addr: int, value: int, caller: int) -> None:
        await self.inner.write(addr, value, caller)
        await self._after(caller, addr, value)

    async def write_burst(self, addr: int, values: Sequence[int], caller: int) -> None:
        for value in values:
            await self.write(addr, value, caller)
