"""Example: the mchsm core inside your own Amaranth SoC (see docs/integrate.md).

A small SoC of the kind a user writes: one Wishbone initiator port (where a CPU would sit), an
address decoder, the HSM at 0x000 and a 64-word scratchpad RAM at 0x100.  Accesses to any other
address are acknowledged and read as zero, so a stray pointer cannot hang the bus.  The caller
id sideband goes to the HSM only: in a real SoC the bus fabric drives it from the task that
owns the bus cycle (the microkernel programs it, a task cannot), never from the data a task
writes.  The test suite simulates this SoC and talks to both peripherals through it
(``tests/test_integrate.py``).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from mchsm.constants import BUS_ADDR_WIDTH, CALLER_BITS
from mchsm.rtl import wishbone
from mchsm.rtl.core import MchsmCore

__all__ = ["HSM_BASE", "RAM_BASE", "RAM_WORDS", "MySoC", "Scratchpad"]

HSM_BASE = 0x000  #: byte address of the HSM's register window (256 bytes)
RAM_BASE = 0x100  #: byte address of the scratchpad
RAM_WORDS = 64
SOC_ADDR_WIDTH = 8  #: word address bits of the SoC bus: 1 KiB


class Scratchpad(wiring.Component):
    """The second peripheral: RAM_WORDS words of RAM as a Wishbone target, one wait state."""

    def __init__(self) -> None:
        super().__init__({"bus": In(wishbone.Signature(addr_width=6, data_width=32))})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=32, depth=RAM_WORDS, init=[])
        rd, wr = mem.read_port(), mem.write_port()
        bus = self.bus
        m.d.comb += [
            rd.addr.eq(bus.adr),
            wr.addr.eq(bus.adr),
            wr.data.eq(bus.dat_w),
            bus.dat_r.eq(rd.data),
        ]
        m.d.sync += bus.ack.eq(0)
        with m.If(bus.cyc & bus.stb & ~bus.ack):
            m.d.comb += wr.en.eq(bus.we)
            m.d.sync += bus.ack.eq(1)
        return m


class MySoC(wiring.Component):
    """The SoC: an initiator port ``bus`` with its ``caller`` id, and the HSM's ``irq``.

    Parameters
    ----------
    contexts : int
        Task contexts of the HSM.
    """

    def __init__(self, contexts: int = 4) -> None:
        self.contexts = contexts
        super().__init__(
            {
                "bus": In(
                    wishbone.Signature(addr_width=SOC_ADDR_WIDTH, data_width=32, features={"err"})
                ),
                "caller": In(CALLER_BITS),
                "irq": Out(1),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.hsm = hsm = MchsmCore(self.contexts)
        m.submodules.ram = ram = Scratchpad()
        bus = self.bus

        # decode: the HSM's window is 2**BUS_ADDR_WIDTH words, the RAM's the next 64
        page = bus.adr[BUS_ADDR_WIDTH:]
        to_hsm = page == HSM_BASE >> (BUS_ADDR_WIDTH + 2)
        to_ram = page == RAM_BASE >> (BUS_ADDR_WIDTH + 2)
        for target, selected in ((hsm.bus, to_hsm), (ram.bus, to_ram)):
            m.d.comb += [
                target.adr.eq(bus.adr[:BUS_ADDR_WIDTH]),
                target.dat_w.eq(bus.dat_w),
                target.sel.eq(bus.sel),
                target.we.eq(bus.we),
                target.cyc.eq(bus.cyc & selected),
                target.stb.eq(bus.stb & selected),
            ]
        m.d.comb += hsm.caller.eq(self.caller)

        # nothing mapped there: acknowledge, read zero
        nothing = Signal()
        m.d.sync += nothing.eq(bus.cyc & bus.stb & ~to_hsm & ~to_ram & ~nothing)
        m.d.comb += [
            bus.ack.eq(hsm.bus.ack | ram.bus.ack | nothing),
            bus.err.eq(hsm.bus.err),  # the HSM refuses what its mailbox rules do not allow
            bus.dat_r.eq(Mux(to_hsm, hsm.bus.dat_r, Mux(to_ram, ram.bus.dat_r, 0))),
            self.irq.eq(hsm.irq),
        ]
        return m
