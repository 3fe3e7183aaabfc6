"""The RTL in Amaranth's own simulator, driven through the same async driver as the model.

:class:`AmaranthTransport` is a Wishbone initiator written as an Amaranth 0.5 testbench: each
register access puts the address, data and caller id on the bus and waits for ``ack``.  Because
the host driver awaits nothing but its transport, a whole job (the demo, a test scenario) runs
inside one testbench coroutine.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from amaranth.sim import Simulator

from mchsm.constants import DEFAULT_CONTEXTS
from mchsm.rtl.core import MchsmCore
from mchsm.sw.driver import HsmDriver, Transport
from mchsm.sw.errors import ArgumentTypeError, BusRefusedError, TransportError

__all__ = ["AmaranthRun", "AmaranthTransport", "run_on_amaranth"]

T = TypeVar("T")

#: 12 MHz, the iCE40 board clock (only matters for waveform time stamps)
CLOCK_PERIOD = 1 / 12e6
#: cycles to wait for ack before declaring the bus hung
ACK_TIMEOUT = 10_000


class AmaranthTransport(Transport):
    """Wishbone B4 classic initiator for an Amaranth testbench context.

    By default it drives ``core``'s own bus and caller sideband.  In a bigger design (a SoC
    with the HSM behind an address decoder, see ``docs/integrate.md``) pass the initiator
    side's ``bus`` and ``caller`` signals and the HSM's ``base`` byte address instead; the
    transport then adds ``base`` to every register offset.  ``irq`` (default: the core's) lets
    the driver wait for a command instead of polling ``STATUS``.
    """

    name = "amaranth"

    def __init__(
        self,
        ctx: Any,
        core: MchsmCore | None = None,
        *,
        bus: Any = None,
        caller: Any = None,
        base: int = 0,
        irq: Any = None,
    ) -> None:
        if bus is None or caller is None:
            if core is None:
                raise ArgumentTypeError("AmaranthTransport needs the core, or both bus and caller")
            bus = core.bus if bus is None else bus
            caller = core.caller if caller is None else caller
        self.ctx = ctx
        self.core = core
        self.bus = bus
        self.caller = caller
        self.base = base
        self.irq = irq if irq is not None else (core.irq if core is not None else None)
        self.sees_irq = self.irq is not None
        self.cycles = 0  #: clock cycles spent in bus accesses and waiting for the interrupt

    async def wait_irq(self) -> bool:
        """Let the simulator run until the irq line is high.  The driver asks only while its
        own command computes with the interrupt enabled, so the line does rise; no bus cycle a
        poll, which is most of what polling costs here."""
        if self.irq is None:
            return False
        while not self.ctx.get(self.irq):
            await self.ctx.tick()
            self.cycles += 1
        return True

    async def _cycle(self, addr: int, caller: int, we: bool, value: int = 0) -> int:
        ctx, bus = self.ctx, self.bus
        ctx.set(bus.adr, (self.base + addr) >> 2)
        ctx.set(bus.dat_w, value)
        ctx.set(bus.we, int(we))
        ctx.set(bus.sel, (1 << len(bus.sel)) - 1)
        ctx.set(self.caller, caller)
        ctx.set(bus.cyc, 1)
        ctx.set(bus.stb, 1)
        for _ in range(ACK_TIMEOUT):
            await ctx.tick()
            self.cycles += 1
            ack, err = ctx.get(bus.ack), ctx.get(bus.err)
            if ack or err:
                data = ctx.get(bus.dat_r)
                ctx.set(bus.cyc, 0)
                ctx.set(bus.stb, 0)
                if err:
                    raise BusRefusedError(
                        f"the HSM refused the {'write' if we else 'read'} of 0x{addr:02x} by "
                        f"caller {caller} (err)"
                    )
                return int(data)
        raise TransportError(
            f"no Wishbone ack within {ACK_TIMEOUT} cycles at 0x{self.base + addr:02x}"
        )

    async def read(self, addr: int, caller: int) -> int:
        return await self._cycle(addr, caller, False)

    async def write(self, addr: int, value: int, caller: int) -> None:
        await self._cycle(addr, caller, True, value)

    async def write_burst(self, addr: int, values: Sequence[int], caller: int) -> None:
        for value in values:
            await self._cycle(addr, caller, True, value)


@dataclass
class AmaranthRun:
    """What a job returned, and what it cost."""

    result: Any
    cycles: int
    seconds: float


def run_on_amaranth(
    job: Callable[[HsmDriver], Awaitable[T]],
    contexts: int = DEFAULT_CONTEXTS,
    *,
    vcd: Path | None = None,
    flaws: frozenset[str] = frozenset(),
) -> AmaranthRun:
    """Run ``job`` against a fresh :class:`MchsmCore` in Amaranth's simulator.

    ``vcd`` writes a waveform (VCD) of the whole run, to open in GTKWave or Surfer.  ``flaws``
    builds a deliberately broken core (:data:`mchsm.rtl.mailbox.FLAWS`), for tests that must
    catch it.
    """
    core = MchsmCore(contexts, flaws=flaws)
    sim = Simulator(core)
    sim.add_clock(CLOCK_PERIOD)
    out: dict[str, Any] = {}

    async def testbench(ctx: Any) -> None:
        transport = AmaranthTransport(ctx, core)
        try:
            out["result"] = await job(HsmDriver(transport))
        except BaseException as exc:  # re-raised outside the simulator
            out["error"] = exc
        out["cycles"] = transport.cycles

    sim.add_testbench(testbench)
    began = time.perf_counter()
    if vcd is not None:
        with sim.write_vcd(str(vcd)):
            sim.run()
    else:
        sim.run()
    seconds = time.perf_counter() - began
    if "error" in out:
        raise out["error"]
    return AmaranthRun(result=out["result"], cycles=out["cycles"], seconds=seconds)
