"""The HSM's mailbox: the bus registers and the rule that one caller holds them at a time.

This component is everything a caller on the bus can touch: ``LEN``, ``CMD``, ``DATA``,
``STATUS``, ``CTRL``, ``IRQ_EN``, ``CYCLES``, ``OWNER`` and the result window.  It decides, for
every bus cycle, whether the access is allowed (``docs/protocol.md`` section 9): a caller claims
the mailbox, only the holder writes ``LEN``/``CMD``/``DATA`` and reads what its command left, and
an access that is not allowed ends with ``err`` and changes nothing.  The command engine behind
it sees one command at a time through :class:`CommandSignature`, always from the holder.

Writes complete only when their effect is complete: a ``CMD`` is acked once the command has
passed its checks (it then takes data) or failed them (it is done), a ``RELEASE`` or a
preempting ``CLAIM`` after the 32-word result window has been erased, an ``ABORT`` after the
engine has ended the command.  The next access therefore sees the new state,
exactly as on the golden model (``sw/mailbox.py``), which has no time.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Shape, Signal, Value, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from mchsm.constants import (
    BUS_ADDR_WIDTH,
    CALLER_BITS,
    MAGIC,
    MANAGER,
    PROTOCOL_VERSION,
    RESULT_WORDS,
    CmdReg,
    Ctrl,
    InfoReg,
    OwnerReg,
    Reg,
    Status,
    StatusReg,
)
from mchsm.rtl import wishbone
from mchsm.rtl.observe import MailboxProbes
from mchsm.rtl.ram import NO_RW_CHECK, read_port

__all__ = ["FIFO_DEPTH", "FLAWS", "CommandSignature", "Mailbox", "ResultSignature"]

#: words of command data the mailbox buffers ahead of the engine
FIFO_DEPTH = 16

#: Deliberate flaws, one per rule, that the isolation tests and the formal proofs must catch
#: (a test fails if a flawed mailbox passes).  Never used in a build.
FLAWS = {
    "len_unowned": "any caller may write LEN while no command runs (the first version's bug)",
    "result_unowned": "any caller may read the result window",
    "stale_results": "RELEASE and reset do not erase the window, and words beyond the result "
    "length are not hidden",
    "abort_early": "ABORT is acked before the command has ended",
    "preempt_running": "the manager takes the mailbox even while a command computes",
    "ack_without_stb": "the bus is answered for cyc alone, without stb (Wishbone B4)",
}
_RESULT_ADDR_BITS = (RESULT_WORDS - 1).bit_length()


class ResultSignature(wiring.Signature):
    """A write port into the result window, driven by the engine."""

    def __init__(self) -> None:
        super().__init__({"addr": Out(_RESULT_ADDR_BITS), "data": Out(32), "en": Out(1)})


class CommandSignature(wiring.Signature):
    """The mailbox's end of its link to the command engine (the engine has it flipped).

    Members
    -------
    start : Out(1)
        Pulse: the holder issued a command; ``code``, ``ctx``, ``length`` and ``caller`` stay
        as they are until ``done``.
    code, ctx, length, caller : Out
        The command, its context argument, its declared data length, and who issued it (the
        holder: the kernel-driven caller id of the ``CMD`` write).
    data : Out(stream.Signature(32))
        The command data, one big-endian word per transfer, only the holder's.
    abort : Out(1)
        End the command now with ``ERR_ABORTED`` (only raised while it takes data).
    accept : In(1)
        Pulse: checks 1-6 passed, the command takes its ``length`` bytes.
    busy : In(1)
        The engine runs a command (from the cycle after ``start`` to the cycle after ``done``).
    done, status, reslen : In
        Pulse with the final status and result length (0 unless the status is OK).
    result : In(ResultSignature())
        The engine's writes into the result window.
    """

    def __init__(self) -> None:
        super().__init__(
            {
                "start": Out(1),
                # any byte, not a Cmd: unknown codes reach the engine, which refuses them
                # (check 1), and a Cmd-shaped register would need a reset value among its codes
                "code": Out(8),
                "ctx": Out(8),
                "length": Out(32),
                "caller": Out(CALLER_BITS),
                "data": Out(stream.Signature(unsigned(32))),
                "abort": Out(1),
                "accept": In(1),
                "busy": In(1),
                "done": In(1),
                "status": In(Status),
                "reslen": In(8),
                "result": In(ResultSignature()),
            }
        )


class Mailbox(wiring.Component):
    """The bus side of the HSM: registers, holder rules, data FIFO and result window.

    Parameters
    ----------
    contexts : int
        Number of task contexts N, reported in ``INFO``.

    Attributes
    ----------
    bus : In(wishbone.Signature(addr_width=6, data_width=32, features={"err"}))
        The register map of ``docs/registers.md``; ``err`` ends a refused access.
    caller : In(CALLER_BITS)
        Caller id of the current bus cycle, driven by the trusted kernel side.
    irq : Out(1)
        High while the holder's command is done and the manager enabled the interrupt.
    cmd : Out(CommandSignature())
        The one command at a time, to the engine.
    probes : MailboxProbes
        Internal signals the formal properties name (set by ``elaborate``).
    """

    def __init__(self, contexts: int, *, flaws: frozenset[str] = frozenset()) -> None:
        self._MustUse__silence = True  # refused below: no "never used" warning (as MchsmCore)
        unknown = set(flaws) - set(FLAWS)
        if unknown:
            raise ValueError(f"flaws must be among {', '.join(FLAWS)}, not {sorted(unknown)!r}")
        self.contexts = contexts
        self.flaws = frozenset(flaws)
        super().__init__(
            {
                "bus": In(
                    wishbone.Signature(addr_width=BUS_ADDR_WIDTH, data_width=32, features={"err"})
                ),
                "caller": In(CALLER_BITS),
                "irq": Out(1),
                "cmd": Out(CommandSignature()),
            }
        )
        self._MustUse__silence = False  # accepted: warn again if it is never elaborated

    def elaborate(self, platform: object) -> Module:
        m = Module()
        bus, cmd = self.bus, self.cmd
        flaw = {name: name in self.flaws for name in FLAWS}

        dfifo = fifo.SyncFIFOBuffered(width=32, depth=FIFO_DEPTH)
        fifo_rst = Signal()
        m.submodules.fifo = ResetInserter(fifo_rst)(dfifo)
        m.submodules.resmem = resmem = memory.Memory(
            shape=32, depth=RESULT_WORDS, init=[], attrs=NO_RW_CHECK
        )
        # read by the bus only in READY, written by the engine only while it runs (the bus then
        # reads 0: r_reslen is 0 until the command is done) and by the wipe outside READY
        res_rd, res_wr = read_port(m, resmem, "res_rd"), resmem.write_port()

        # ---- state -----------------------------------------------------------------------
        held = Signal()
        holder = Signal(CALLER_BITS)
        r_len = Signal(32)
        r_code = Signal(8)  # any byte (see CommandSignature)
        r_ctx = Signal(8)
        r_status = Signal(Status)
        r_done = Signal()
        r_reslen = Signal(8)
        r_cycles = Signal(32)
        # what the holder may still write to DATA: r_inwords whole words and, after them, a
        # word of r_infrac bytes (the rest of LEN / 4); one decrement, no saturating subtract
        r_inwords = Signal(30)
        r_infrac = Signal()
        r_irq_en = Signal()
        wipe = Signal(_RESULT_ADDR_BITS)
        # what a stalled CTRL write does once the window is erased
        then_release = Signal()
        then_preempt = Signal()
        late_abort = Signal()  # only with the abort_early flaw
        if flaw["abort_early"]:
            m.d.comb += cmd.abort.eq(late_abort)
            with m.If(cmd.done):
                m.d.sync += late_abort.eq(0)

        mine = held & (self.caller == holder)
        expects = (r_inwords != 0) | r_infrac
        running = cmd.busy & ~expects  # phase *run*: nothing may interrupt it
        m.d.comb += [
            cmd.code.eq(r_code),
            cmd.ctx.eq(r_ctx),
            cmd.length.eq(r_len),
            cmd.caller.eq(holder),
            cmd.data.payload.eq(dfifo.r_data),
            cmd.data.valid.eq(dfifo.r_rdy),
            dfifo.r_en.eq(cmd.data.ready),
            self.irq.eq(r_done & r_irq_en),
        ]

        # ---- the engine's side -------------------------------------------------------------
        # CYCLES is assigned in one place (a counter with one load, not a multiplexer per
        # state): 1 when a command is issued, 0 when the mailbox is cleared, else +1 while busy
        cycles_load, cycles_one = Signal(), Signal()
        with m.If(cycles_load):
            m.d.sync += r_cycles.eq(cycles_one)
        with m.Elif(cmd.busy):
            m.d.sync += r_cycles.eq(r_cycles + 1)
        with m.If(cmd.accept):
            m.d.sync += [r_inwords.eq(r_len[2:]), r_infrac.eq(r_len[:2] != 0)]
        with m.If(cmd.done):
            m.d.comb += fifo_rst.eq(1)  # words an aborted command left behind
            m.d.sync += [
                r_status.eq(cmd.status),
                r_done.eq(1),
                r_reslen.eq(cmd.reslen),
                r_inwords.eq(0),
                r_infrac.eq(0),
            ]

        # ---- the result window: the engine writes it, a wipe erases it ---------------------
        wiping = Signal()
        erase = wiping & (not flaw["stale_results"])
        m.d.comb += [
            res_wr.addr.eq(Mux(erase, wipe, cmd.result.addr)),
            res_wr.data.eq(Mux(erase, 0, cmd.result.data)),
            res_wr.en.eq(erase | cmd.result.en),
        ]

        # ---- the bus -----------------------------------------------------------------------
        req = bus.cyc & bus.stb & ~bus.ack & ~bus.err
        if flaw["ack_without_stb"]:
            req = bus.cyc & ~bus.ack & ~bus.err
        ack, err = Signal(), Signal()  # this cycle's answer, registered onto the bus
        m.d.sync += [bus.ack.eq(ack), bus.err.eq(err)]
        rd_q = Signal(32)
        rd_res = Signal()
        m.d.comb += [
            res_rd.addr.eq(bus.adr[:_RESULT_ADDR_BITS]),
            bus.dat_r.eq(Mux(rd_res, res_rd.data, rd_q)),
        ]
        word = {reg: reg.value >> 2 for reg in Reg}
        status_view = data.View(StatusReg, Signal(32))
        m.d.comb += [
            status_view.held.eq(held),
            status_view.mine.eq(mine),
            status_view.status.eq(Mux(mine, r_status, 0)),
            status_view.busy.eq(mine & cmd.busy),
            status_view.done.eq(mine & r_done),
            status_view.expects.eq(mine & expects),
            status_view.reslen.eq(Mux(mine, r_reslen, 0)),
        ]
        cmd_write = data.View(CmdReg, bus.dat_w)  # a write of CMD
        owner_view = data.View(OwnerReg, Signal(32))
        info_view = data.View(InfoReg, Signal(32))
        m.d.comb += [
            owner_view.caller.eq(Mux(held, holder, 0)),
            owner_view.held.eq(held),
            info_view.version.eq(PROTOCOL_VERSION),
            info_view.contexts.eq(self.contexts),
        ]
        ctrl_width = Shape.cast(Ctrl).width
        action = bus.dat_w[:ctrl_width]
        one_action = bus.dat_w[ctrl_width:] == 0

        def answer(allowed: Value) -> None:
            m.d.comb += [ack.eq(allowed), err.eq(~allowed)]

        def clear() -> None:
            """What nobody may see after the holder: its LEN, status, result and cycles."""
            m.d.sync += [
                r_len.eq(0),
                r_status.eq(Status.OK),
                r_done.eq(0),
                r_reslen.eq(0),
            ]
            m.d.comb += cycles_load.eq(1)

        with m.FSM(name="mailbox") as fsm:
            with m.State("WIPE"):  # the reset state: the window starts erased too
                m.d.comb += wiping.eq(1)
                m.d.sync += wipe.eq(wipe + 1)
                with m.If(wipe == RESULT_WORDS - 1):
                    clear()
                    with m.If(then_release):
                        m.d.sync += held.eq(0)
                    with m.If(then_preempt):
                        m.d.sync += [held.eq(1), holder.eq(MANAGER)]
                    with m.If(then_release | then_preempt):
                        m.d.comb += ack.eq(1)  # the CTRL write that asked for it
                    m.d.sync += [then_release.eq(0), then_preempt.eq(0)]
                    m.next = "READY"

            with m.State("ABORT"):  # the engine ends the command that takes data
                m.d.comb += cmd.abort.eq(1)
                with m.If(cmd.done):
                    with m.If(then_preempt):
                        m.next = "WIPE"
                    with m.Else():
                        m.d.comb += ack.eq(1)
                        m.next = "READY"

            with m.State("ISSUE"):  # checks 1-6: it takes data, or it is done already
                with m.If(cmd.accept | cmd.done):
                    m.d.comb += ack.eq(1)
                    m.next = "READY"

            with m.State("READY"):
                with m.If(req & bus.we):
                    with m.Switch(bus.adr):
                        with m.Case(word[Reg.LEN]):
                            may = (mine | flaw["len_unowned"]) & ~cmd.busy
                            answer(may)
                            with m.If(may):
                                m.d.sync += r_len.eq(bus.dat_w)
                        with m.Case(word[Reg.CMD]):
                            with m.If(mine & ~cmd.busy):  # acked once its checks are done
                                m.next = "ISSUE"
                                m.d.comb += [cmd.start.eq(1), fifo_rst.eq(1)]
                                m.d.sync += [
                                    r_code.eq(cmd_write.code),
                                    r_ctx.eq(cmd_write.ctx),
                                    r_status.eq(Status.OK),
                                    r_done.eq(0),
                                    r_reslen.eq(0),
                                ]
                                m.d.comb += [cycles_load.eq(1), cycles_one.eq(1)]
                            with m.Else():
                                m.d.comb += err.eq(1)
                        with m.Case(word[Reg.DATA]):
                            with m.If(mine & expects):
                                with m.If(dfifo.w_rdy):  # else the bus waits for room
                                    m.d.comb += [
                                        ack.eq(1),
                                        dfifo.w_en.eq(1),
                                        dfifo.w_data.eq(bus.dat_w),
                                    ]
                                    with m.If(r_inwords != 0):
                                        m.d.sync += r_inwords.eq(r_inwords - 1)
                                    with m.Else():
                                        m.d.sync += r_infrac.eq(0)
                            with m.Else():
                                m.d.comb += err.eq(1)
                        with m.Case(word[Reg.CTRL]):  # exactly one action, or refused
                            with m.If(~one_action):
                                m.d.comb += err.eq(1)
                            with m.Elif(action == Ctrl.CLAIM):
                                with m.If(~held | mine):
                                    m.d.comb += ack.eq(1)
                                    m.d.sync += [held.eq(1), holder.eq(self.caller)]
                                with m.Elif(
                                    (self.caller == MANAGER) & (~running | flaw["preempt_running"])
                                ):
                                    m.d.sync += then_preempt.eq(1)  # acked once it is done
                                    with m.If(expects):
                                        m.next = "ABORT"
                                    with m.Else():
                                        m.next = "WIPE"
                                with m.Else():
                                    m.d.comb += err.eq(1)
                            with m.Elif(action == Ctrl.RELEASE):
                                with m.If(mine & ~cmd.busy):
                                    m.d.sync += then_release.eq(1)
                                    m.next = "WIPE"
                                with m.Else():
                                    m.d.comb += err.eq(1)
                            with m.Elif(action == Ctrl.ABORT):
                                with m.If(mine & expects):
                                    if flaw["abort_early"]:  # acked now, ends later
                                        m.d.comb += ack.eq(1)
                                        m.d.sync += late_abort.eq(1)
                                    else:
                                        m.next = "ABORT"
                                with m.Else():
                                    m.d.comb += err.eq(1)
                            with m.Elif(action == Ctrl.CLEAR):
                                answer(mine)
                                with m.If(mine):
                                    m.d.sync += r_done.eq(0)
                            with m.Else():
                                m.d.comb += err.eq(1)
                        with m.Case(word[Reg.IRQ_EN]):
                            answer(self.caller == MANAGER)
                            with m.If(self.caller == MANAGER):
                                m.d.sync += r_irq_en.eq(bus.dat_w[0])
                        with m.Default():
                            m.d.comb += ack.eq(1)  # read-only or unmapped: ignored

                with m.If(req & ~bus.we):
                    m.d.sync += [rd_q.eq(0), rd_res.eq(0)]
                    with m.Switch(bus.adr):
                        with m.Case(word[Reg.ID]):
                            m.d.comb += ack.eq(1)
                            m.d.sync += rd_q.eq(MAGIC)
                        with m.Case(word[Reg.INFO]):
                            m.d.comb += ack.eq(1)
                            m.d.sync += rd_q.eq(info_view.as_value())
                        with m.Case(word[Reg.LEN]):
                            answer(mine)
                            m.d.sync += rd_q.eq(Mux(mine, r_len, 0))
                        with m.Case(word[Reg.STATUS]):
                            m.d.comb += ack.eq(1)
                            m.d.sync += rd_q.eq(status_view.as_value())
                        with m.Case(word[Reg.IRQ_EN]):
                            m.d.comb += ack.eq(1)
                            m.d.sync += rd_q.eq(r_irq_en)
                        with m.Case(word[Reg.CYCLES]):
                            answer(mine)
                            m.d.sync += rd_q.eq(Mux(mine, r_cycles, 0))
                        with m.Case(word[Reg.OWNER]):
                            m.d.comb += ack.eq(1)
                            m.d.sync += rd_q.eq(owner_view.as_value())
                        with m.Default():
                            in_window = bus.adr >= word[Reg.RESULT]
                            reader = mine | flaw["result_unowned"]
                            answer(~in_window | reader)
                            # words at or beyond the result length read 0
                            below = Cat(Const(0, 2), bus.adr[:_RESULT_ADDR_BITS]) < r_reslen
                            if flaw["stale_results"]:
                                below = Const(1)
                            m.d.sync += rd_res.eq(in_window & reader & below)

        stalled = (
            fsm.ongoing("ISSUE")
            | fsm.ongoing("ABORT")
            | (fsm.ongoing("WIPE") & (then_release | then_preempt))
        )
        self.probes = MailboxProbes(
            state=fsm.state,
            ready=fsm.ongoing("READY"),
            wiping=fsm.ongoing("WIPE"),
            stalled=stalled,
            issuing=fsm.ongoing("ISSUE"),
            aborting=fsm.ongoing("ABORT"),
            releasing=then_release,
            preempting=then_preempt,
            held=held,
            holder=holder,
            expects=expects,
            done=r_done,
            reslen=r_reslen,
        )
        return m
