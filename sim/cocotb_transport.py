"""The host driver's :class:`~mchsm.sw.driver.Transport` over the cocotb Wishbone master.

With this, :class:`~mchsm.sw.driver.HsmDriver` - the same code that talks to the golden model and
to a board - drives the RTL inside a cocotb test, word for word on the real bus.  The bus model's
errors are the driver's own (:class:`~mchsm.sim.wishbone_bfm.WishboneBusError` is a
:class:`~mchsm.sw.errors.BusRefusedError`, every other one a
:class:`~mchsm.sw.errors.TransportError`), as on every other transport.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer

from mchsm.sim.wishbone_bfm import WishboneMaster
from mchsm.sw.driver import Transport

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
        self._period: int | None = None  # clock period in simulator steps, once measured

    @classmethod
    def for_dut(cls, dut: Any, *, prefix: str = "bus", **kwargs: Any) -> CocotbTransport:
        """A transport over a new :class:`WishboneMaster` on ``dut`` (kwargs go to it), that
        waits on ``dut.irq`` when the DUT has one."""
        return cls(WishboneMaster(dut, prefix, **kwargs), getattr(dut, "irq", None))

    async def wait_irq(self) -> bool:
        """Let the simulator run until irq rises (or IRQ_WAIT_CYCLES pass) without waking
        Python in between: the timeout is a Timer, not ClockCycles (which counts the cycles in
        Python, one wake-up each), and polling STATUS would cost a bus read per few cycles."""
        if self.irq is None:
            return False
        if self.irq.value != 1:
            clock = self.bfm.clock
            period = await self._clock_period()
            if self.irq.value != 1:
                await First(RisingEdge(self.irq), Timer(IRQ_WAIT_CYCLES * period, unit="step"))
            await RisingEdge(clock)  # back on a clock edge, where the bus model starts cycles
        return bool(self.irq.value == 1)

    async def _clock_period(self) -> int:
        """The clock's period in simulator steps, measured over one cycle the first time (a
        command that raises the interrupt computes for longer than that)."""
        if self._period is None:
            clock = self.bfm.clock
            await RisingEdge(clock)
            began = get_sim_time("step")
            await RisingEdge(clock)
            self._period = get_sim_time("step") - began
        return self._period

    async def read(self, addr: int, caller: int) -> int:
        return await self.bfm.read(addr, caller)

    async def write(self, addr: int, value: int, caller: int) -> None:
        await self.bfm.write(addr, value, caller)

    async def write_burst(self, addr: int, values: Sequence[int], caller: int) -> None:
        await self.bfm.write_burst(addr, values, caller)


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
