"""Jobs and the register map of the Wishbone stand-in used by ``test_sim_infra.py``.

A job has to live at module level in an importable module: the simulator is another process and
imports it by name (``sim_jobs:scratch_job``).  The stand-in's map follows the first mailbox
registers (ID and INFO answer like the HSM, so ``HsmDriver.probe`` works on it); the rest are test
hooks.  Byte offsets.
"""

from __future__ import annotations

from typing import Any

from mchsm.constants import MANAGER
from mchsm.sw.driver import HsmDriver, Transport

ID = 0x00  #: R: MAGIC
INFO = 0x04  #: R: protocol version | contexts << 8
SCRATCH0 = 0x08  #: RW
SCRATCH1 = 0x0C  #: RW
DATA = 0x10  #: W: acked after DATA_WAIT wait states; counted and folded into ACC
COUNT = 0x14  #: R: DATA words written
ACC = 0x18  #: R: fold of the DATA words, see :func:`fold`
WR_CALLER = 0x1C  #: R: caller id of the last write
RD_CALLER = 0x20  #: R: the caller id of this very read
NO_ACK = 0x3C  #: never acknowledged (for the timeout test)
DATA_WAIT = 3


def fold(words: list[int], acc: int = 0) -> int:
    """What the stand-in's ACC register holds after ``words``: rotate left by one, xor."""
    for w in words:
        acc = (((acc << 1) | (acc >> 31)) & 0xFFFF_FFFF) ^ w
    return acc


class Registers:
    """A minimal Transport user: named register access for one caller."""

    def __init__(self, transport: Transport, caller: int) -> None:
        self.transport = transport
        self.caller = caller

    async def get(self, addr: int) -> int:
        return await self.transport.read(addr, self.caller)

    async def set(self, addr: int, value: int) -> None:
        await self.transport.write(addr, value, self.caller)

    async def stream(self, addr: int, values: list[int]) -> None:
        await self.transport.write_burst(addr, values, self.caller)


async def scratch_job(
    driver: HsmDriver, words: list[int], caller: int = 3, scratch: int = 0x1234_5678
) -> dict[str, Any]:
    """Probe, write/read a scratch register, stream words to DATA, read everything back."""
    info = await driver.probe()
    regs = Registers(driver.transport, caller)
    await regs.set(SCRATCH0, scratch)
    await regs.stream(DATA, words)
    return {
        "contexts": info.contexts,
        "protocol_version": info.protocol_version,
        "scratch0": await regs.get(SCRATCH0),
        "count": await regs.get(COUNT),
        "acc": await regs.get(ACC),
        "wr_caller": await Registers(driver.transport, MANAGER).get(WR_CALLER),
        "rd_caller": await regs.get(RD_CALLER),
    }


async def failing_job(driver: HsmDriver, message: str = "boom") -> None:
    """Reads a register, then fails: the exception must come back to the host."""
    await driver.transport.read(ID, MANAGER)
    raise ValueError(message)


async def hang_job(driver: HsmDriver) -> None:
    """Polls for ever: only the wall-clock timeout ends it."""
    while True:
        await driver.transport.read(COUNT, MANAGER)


def not_async_job(driver: HsmDriver) -> int:
    """Not a coroutine function: refused before any simulation starts."""
    return 0
