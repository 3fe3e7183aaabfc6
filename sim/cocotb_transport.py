"""The host driver's :class:`~mchsm.sw.driver.Transport` over the cocotb Wishbone master.

With this, :class:`~mchsm.sw.driver.HsmDriver` - the same code that talks to the golden model and
to a board - drives the RTL inside a cocotb test, word for word on the real bus.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge

from mchsm.sim.wishbone_bfm import WishboneBusError, WishboneError, WishboneMaster
from mchsm.sw.driver import Transport
from mchsm.sw.errors import BusRefusedError, TransportError

__all__ = ["IRQ_WAIT_CYCLES", "CocotbTransport", "reset_and_clock"]

#: the longest a command is waited for on the interrupt before the driver polls again
IRQ_WAIT_CYCLES = 1_000_000


class CocotbTransport(Transport):
    """Register reads and writes as Wishbone transfers; bursts become one block cycle."""

    name = "cocotb"

    def __init__(self, bfm: WishboneMaster, irq: Any = None) -> None:
        self.bfm = bfm
        self.irq = irq
        self.sees_irq = irq is not None

    @classmethod
    def for_dut(cls, dut: Any, *, prefix: str = "bus", **kwargs: Any) -> CocotbTransport:
        """A transport over a new :class:`WishboneMaster` on ``dut`` (kwargs go to it), that
        waits on ``dut.irq`` when the DUT has one."""
        return cls(WishboneMaster(dut, prefix, **kwargs), getattr(dut, "irq", None))

    async def wait_irq(self) -> bool:
        """Let Verilator run until irq rises (or IRQ_WAIT_CYCLES pass): no Python wakes up
        every cycle, which is what makes polling STATUS slow under cocotb."""
        if self.irq is None:
            return False
        if self.irq.value != 1:
            clock = self.bfm.clock
            await First(RisingEdge(self.irq), ClockCycles(clock, IRQ_WAIT_CYCLES))
            await RisingEdge(clock)  # back on a clock edge, where the bus model starts cycles
        return bool(self.irq.value == 1)

    async def read(self, addr: int, caller: int) -> int:
        with _typed_errors():
            return await self.bfm.read(addr, caller)

    async def write(self, addr: int, value: int, caller: int) -> None:
        with _typed_errors():
            await self.bfm.write(addr, value, caller)

    async def write_burst(self, addr: int, values: Sequence[int], caller: int) -> None:
        with _typed_errors():
            await self.bfm.write_burst(addr, values, caller)


@contextmanager
def _typed_errors() -> Iterator[None]:
    """The bus model's errors as the driver's: err is a refusal, anything else the link's."""
    try:
        yield
    except WishboneBusError as e:
        raise BusRefusedError(str(e)) from None
    except WishboneError as e:
        raise TransportError(str(e)) from None


async def reset_and_clock(
    dut: Any, period_ns: float = 10, *, reset_cycles: int = 2, clock: Any = None, reset: Any = None
) -> Clock:
    """Start a clock on ``dut.clk`` and pulse Amaranth's synchronous, active-high ``dut.rst``.

    Returns just after the rising edge that samples ``rst`` low for the first time, so the DUT is
    out of reset and the caller may drive transfers at once.  The :class:`Clock` is returned so
    the caller can stop it.
    """
    clk = clock if clock is not None else dut.clk
    rst = reset if reset is not None else dut.rst
    clk.value = 0
    rst.value = 1
    clk_driver = Clock(clk, period_ns, unit="ns")
    clk_driver.start(start_high=False)
    await ClockCycles(clk, reset_cycles)
    rst.value = 0
    await RisingEdge(clk)
    return clk_driver
