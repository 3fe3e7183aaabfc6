"""The microcode sequencer: the program ROM, where the engine is in it, and its return stack.

The engine (:class:`~mchsm.rtl.core.MchsmCore`) executes the microinstruction :attr:`word` and
says each cycle how the program goes on: ``advance`` to the next instruction, ``goto`` an
address (a command's entry, JUMP), ``call`` the instruction's target (pushing the return
address) or ``ret``.  Otherwise the instruction is still running and stays.  The ROM is read
at the next address in the same cycle (``pc_next``), so the next instruction is there when it
starts.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from mchsm.rtl import microcode as uc

__all__ = ["Sequencer"]

PC_BITS = 8


class Sequencer(wiring.Component):
    """The ROM of ``program`` and the program counter.

    Attributes
    ----------
    word : Out(uc.MicroWord)
        The running microinstruction.
    advance : In(1)
        It is complete: on to the next address.
    goto : In(1)
        Go to ``target`` instead (overrides ``advance``).
    target : In(PC_BITS)
    call : In(1)
        Go to the running instruction's ``target.addr``; the next address is pushed.
    ret : In(1)
        Go back to the last pushed address, popping it.
    pc : Signal
        The running instruction's address (for the formal proofs).
    ret0, ret1 : Signal
        The return stack: ``ret0`` is where the next ``ret`` goes, ``ret1`` the one below it.
    """

    def __init__(self, program: uc.Assembler) -> None:
        self.program = program
        self.pc = Signal(PC_BITS, name="pc")
        self.ret0 = Signal(PC_BITS, name="ret0")
        self.ret1 = Signal(PC_BITS, name="ret1")
        super().__init__(
            {
                "word": Out(uc.MicroWord),
                "advance": In(1),
                "goto": In(1),
                "target": In(PC_BITS),
                "call": In(1),
                "ret": In(1),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.ucode = ucode = memory.Memory(
            shape=uc.MicroWord, depth=len(self.program.code), init=self.program.consts()
        )
        u_rd = ucode.read_port()
        pc, ret0, ret1 = self.pc, self.ret0, self.ret1
        pc_next = Signal(PC_BITS, name="pc_next")
        m.d.comb += [self.word.eq(u_rd.data), pc_next.eq(Mux(self.advance, pc + 1, pc))]
        with m.If(self.goto):
            m.d.comb += pc_next.eq(self.target)
        with m.If(self.call):
            m.d.comb += pc_next.eq(self.word.target.addr)
            m.d.sync += [ret0.eq(pc + 1), ret1.eq(ret0)]
        with m.If(self.ret):
            m.d.comb += pc_next.eq(ret0)
            m.d.sync += ret0.eq(ret1)
        m.d.comb += u_rd.addr.eq(pc_next)
        m.d.sync += pc.eq(pc_next)
        return m
