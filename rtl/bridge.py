"""UART-to-Wishbone bridge: the board's only way into the HSM, one checked frame at a time.

A request frame (``docs/boards.md``; constants in :mod:`mchsm.constants`, ``LINK_*``) is

``LINK_SYNC op caller addr count data[4*count, writes only] crc_hi crc_lo``

and every frame is answered by ``LINK_REPLY_SYNC status count data[4*count] crc_hi crc_lo``.

Why it is built like this:

* **Nothing runs before the whole frame is checked.**  The bytes of a write go into a block
  RAM; the opcode, caller, address and count are checked as they arrive and the CRC when the
  last byte is in, and only then does the first bus cycle start.  A bad frame - wrong CRC,
  impossible count, unknown opcode, out-of-range field, or a byte lost in the middle (the
  line goes idle before the frame is complete) - is answered with an error status and has
  changed nothing, so the host may simply send it again.
* **Resynchronisation by silence.**  Bytes outside a frame that are not ``LINK_SYNC`` are
  dropped without a reply.  After any bad frame the bridge drops every byte until the line
  has been idle for the timeout and only then replies: whatever was left of the frame cannot
  be mistaken for the start of the next one, and the error reply reaches a host that has
  stopped sending.
* **Small**: with its CRC and the UART about 380 LUT4s and 140 flip-flops on the iCE40,
  some 7 % of the iCE40UP5K that the HSM core mostly fills.  The frame buffer is a block RAM,
  one 32-bit word per row: bytes from the line go into their byte lane, words from the bus go
  in whole, the bus takes its write data straight from the read port, and the reply picks the
  byte lane back out, so there is no word register.  The CRC is byte-parallel (an XOR matrix
  derived from the polynomial) and serves both directions, which never overlap; folding the
  reply's CRC high byte into it shifts the low byte up, so both CRC bytes come from the same
  eight bits.  The idle timeout is the top bit of one saturating counter with a single
  restart condition, and doubles as the bus watchdog.  The status register, the byte sent
  and the byte folded into the CRC are each assigned in one place: scattered assignments in
  state-machine branches are what make multiplexers big.  The opcodes are a shaped enum from
  the constants module, used in ``m.Case`` here and packed by the host codec
  (``sw/uart_link.py``): nothing is copied by hand.
* **The caller id comes from the frame.**  That is what makes a board a development setup
  and not a secure deployment: anyone on the serial line can claim any caller, the manager
  included (see ``docs/boards.md``).
"""

from amaranth.hdl import Array, C, Cat, Const, Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from mchsm.constants import (
    BUS_ADDR_WIDTH,
    CALLER_BITS,
    LINK_CRC_INIT,
    LINK_CRC_POLY,
    LINK_MAX_BURST,
    LINK_REPLY_SYNC,
    LINK_SYNC,
    LinkOp,
    LinkStatus,
)
from mchsm.rtl import wishbone
from mchsm.rtl.ram import NO_RW_CHECK, read_port

__all__ = ["Crc16", "UartBridge", "crc_update_matrix"]


def crc_update_matrix(poly: int) -> list[tuple[int, int]]:
    """For each bit of the next CRC: (mask of CRC bits, mask of data bits) to XOR together.

    One byte through an MSB-first CRC-16 is linear in (crc, data), so the update is a fixed
    XOR matrix, derived here from the polynomial by feeding the bit-serial algorithm unit
    vectors.
    """

    def step(crc: int, data: int) -> int:
        for i in range(8):
            feedback = ((crc >> 15) ^ (data >> (7 - i))) & 1
            crc = ((crc << 1) & 0xFFFF) ^ (poly if feedback else 0)
        return crc

    return [
        (
            sum(1 << i for i in range(16) if step(1 << i, 0) >> bit & 1),
            sum(1 << j for j in range(8) if step(0, 1 << j) >> bit & 1),
        )
        for bit in range(16)
    ]


class Crc16(wiring.Component):
    """Byte-parallel CRC-16 (``LINK_CRC_POLY``, MSB first): one byte per clock.

    Sixteen flip-flops and their XOR trees, about forty LUTs: no bigger than a bit-serial one
    once that one's shift register and counter are counted, and with no busy state to wait
    for.

    Attributes
    ----------
    clear : In(1)
        Load ``LINK_CRC_INIT`` (wins over ``start``).
    data, start : In(8), In(1)
        Fold ``data`` into the CRC at the next clock edge.
    crc : Out(16)
        The CRC so far.  Over a whole frame including its own CRC bytes it is 0.
    """

    clear: In(1)
    data: In(8)
    start: In(1)
    crc: Out(16, init=LINK_CRC_INIT)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        # an MSB-first CRC-16 of one byte is (crc << 8) ^ table[(crc >> 8) ^ data], and the
        # table is linear: each bit an XOR of bits of that index
        index = self.crc[8:] ^ self.data
        nxt = Cat(C(0, 8), self.crc[:8]) ^ Cat(
            (index & data_mask).xor() for _, data_mask in crc_update_matrix(LINK_CRC_POLY)
        )
        with m.If(self.clear):
            m.d.sync += self.crc.eq(LINK_CRC_INIT)
        with m.Elif(self.start):
            m.d.sync += self.crc.eq(nxt)
        return m


class UartBridge(wiring.Component):
    """Framed, CRC-checked UART link to a Wishbone target with a caller-id sideband.

    Parameters
    ----------
    timeout_log2 : int
        The line counts as idle after ``2**timeout_log2`` clock cycles without a byte; the same
        count bounds how long a bus cycle may wait for ``ack``.  Boards use about 10 ms
        (``LINK_IDLE_TIMEOUT_S``), simulations a few byte times.

    Attributes
    ----------
    rx : In(stream.Signature(8, always_ready=True))
        Bytes from the UART receiver.
    tx : Out(stream.Signature(8))
        Bytes to the UART transmitter.
    bus : Out(wishbone.Signature(addr_width=6, data_width=32, features={"err"}))
        Wishbone B4 classic initiator to the HSM's mailbox; a cycle ended by ``err`` (the
        HSM refused it) ends the frame with ``ERR_REFUSED``.
    caller : Out(6)
        Caller id of the frame being executed, for the HSM's sideband.
    active : Out(1)
        A frame is being received, executed or answered (for an LED).
    error : Out(1)
        One-cycle pulse when an error reply starts (for an LED).
    """

    rx: In(stream.Signature(8, always_ready=True))
    tx: Out(stream.Signature(8))
    bus: Out(wishbone.Signature(addr_width=BUS_ADDR_WIDTH, data_width=32, features={"err"}))
    caller: Out(CALLER_BITS)
    active: Out(1)
    error: Out(1)

    def __init__(self, *, timeout_log2: int) -> None:
        if not isinstance(timeout_log2, int) or not 6 <= timeout_log2 <= 30:
            raise ValueError(f"timeout_log2 must be an integer in 6..30, not {timeout_log2!r}")
        self.timeout_log2 = timeout_log2
        super().__init__()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.crc = crc = Crc16()
        # one word per row, written a byte lane at a time from the line or whole from the bus
        m.submodules.buf = buf = memory.Memory(
            shape=32, depth=LINK_MAX_BURST, init=[], attrs=NO_RW_CHECK
        )
        # The bridge never uses what it reads from a row in the cycle after it writes that row
        # (a read burst writes row ptr and moves on; the reply reads from row 0 again), so the
        # read port needs no read-during-write logic (rtl/ram.py).  Its data arrives one cycle
        # after the address: NEXT waits for it before a bus cycle, and a reply byte is sent at
        # most every ten bit times, long after the row it comes from was addressed.
        rd, wr = read_port(m, buf, "buf_rd"), buf.write_port(granularity=8)

        byte, got = self.rx.payload, self.rx.valid
        ptr = Signal(range(4 * LINK_MAX_BURST))  # byte index: word ptr[2:], lane ptr[:2]
        count_m1 = Signal(range(LINK_MAX_BURST))  # words in the frame, minus one
        we = Signal()
        single = Signal()  # READ/WRITE: count must be 1
        addr = Signal(BUS_ADDR_WIDTH)
        caller = Signal(CALLER_BITS)
        status = Signal(3)  # a LinkStatus; all of them fit three bits
        phase = Signal(range(6))  # reply byte: sync, status, count, data, crc hi, crc lo
        timer = Signal(self.timeout_log2 + 1)
        expired = timer[-1]
        last_word = ptr[2:] == count_m1
        last_byte = last_word & (ptr[:2] == 3)
        has_data = (status == LinkStatus.OK) & ~we  # the reply carries read data

        bus = self.bus
        m.d.comb += [
            rd.addr.eq(ptr[2:]),
            wr.addr.eq(ptr[2:]),
            # a burst read walks consecutive addresses, a burst write stays on one (DATA)
            bus.adr.eq(addr + Mux(we, 0, ptr[2:])),
            bus.dat_w.eq(rd.data),
            bus.sel.eq(0b1111),
            bus.we.eq(we),
            self.caller.eq(caller),
        ]

        # The timeout runs in the states that wait for the line or the bus and restarts on
        # every byte: one reset condition, not one per state.
        timed = Signal()
        with m.If(got | ~timed):
            m.d.sync += timer.eq(0)
        with m.Elif(~expired):
            m.d.sync += timer.eq(timer + 1)

        # Every byte of a request after the sync byte goes through the CRC, and every byte of a
        # reply from the status byte to the CRC's high byte.  One assignment each, so the
        # multiplexers stay small.
        take = Signal()  # a receiving state consumes the byte on rx
        replying = Signal()
        sent = Signal()
        tx_byte = Array(
            [
                Const(LINK_REPLY_SYNC, 8),
                status,
                Mux(has_data, count_m1 + 1, 0),
                Array([rd.data[24:], rd.data[16:24], rd.data[8:16], rd.data[:8]])[ptr[:2]],
                crc.crc[8:],
                crc.crc[8:],  # folding the CRC's high byte into it shifts the low byte up
            ]
        )[phase]
        m.d.comb += [
            self.tx.payload.eq(tx_byte),
            self.tx.valid.eq(replying),
            sent.eq(self.tx.valid & self.tx.ready),
            crc.data.eq(Mux(replying, tx_byte, byte)),
            crc.start.eq(Mux(replying, sent & (phase >= 1) & (phase <= 4), take & got)),
        ]

        # The status register is written in one place: the state that rejects a frame names
        # the code on ``fail_code``; a sync byte clears it (OK).
        fail = Signal()
        fail_code = Signal(3)
        with m.If(fail):
            m.d.sync += status.eq(fail_code)

        def reject(why: LinkStatus) -> None:
            """Drop the rest of the frame, then answer ``why``; nothing has been executed."""
            m.d.comb += [fail.eq(1), fail_code.eq(why)]
            m.next = "DRAIN"

        def reply() -> None:
            m.d.sync += [ptr.eq(0), phase.eq(0)]
            m.next = "REPLY"

        def receive(nxt: str | None = None) -> None:
            """A receiving state: consume bytes; a silent line means a byte was lost."""
            m.d.comb += take.eq(1)
            with m.If(expired & ~got):  # a byte in the very cycle of the timeout still counts
                reject(LinkStatus.ERR_TIMEOUT)
            if nxt is not None:
                with m.If(got):
                    m.next = nxt

        def header_field(target: Signal, nxt: str) -> None:
            receive()
            with m.If(got):
                m.d.sync += target.eq(byte)
                with m.If(byte[len(target) :] != 0):
                    reject(LinkStatus.ERR_FIELD)
                with m.Else():
                    m.next = nxt

        receiving = ("OP", "CALLER", "ADDR", "COUNT", "DATA", "CRC_HI", "CRC_LO")
        with m.FSM() as fsm:
            # ---- receive and check a request ------------------------------------------------
            with m.State("IDLE"):
                with m.If(got & (byte == LINK_SYNC)):
                    m.d.comb += crc.clear.eq(1)
                    m.d.sync += status.eq(LinkStatus.OK)
                    m.next = "OP"
            with m.State("OP"):
                receive("CALLER")
                with m.If(got):
                    with m.Switch(byte):
                        with m.Case(LinkOp.READ):
                            m.d.sync += [we.eq(0), single.eq(1)]
                        with m.Case(LinkOp.WRITE):
                            m.d.sync += [we.eq(1), single.eq(1)]
                        with m.Case(LinkOp.READ_BURST):
                            m.d.sync += [we.eq(0), single.eq(0)]
                        with m.Case(LinkOp.WRITE_BURST):
                            m.d.sync += [we.eq(1), single.eq(0)]
                        with m.Default():
                            reject(LinkStatus.ERR_OP)
            with m.State("CALLER"):
                header_field(caller, "ADDR")
            with m.State("ADDR"):
                header_field(addr, "COUNT")
            with m.State("COUNT"):
                receive()
                with m.If(got):
                    m.d.sync += [count_m1.eq(byte - 1), ptr.eq(0)]
                    with m.If((byte == 0) | (byte > LINK_MAX_BURST) | (single & (byte != 1))):
                        reject(LinkStatus.ERR_LENGTH)
                    with m.Elif(we):
                        m.next = "DATA"
                    with m.Else():
                        m.next = "CRC_HI"
            with m.State("DATA"):
                receive()
                with m.If(got):
                    m.d.comb += [wr.en.eq(Const(1, 4) << ~ptr[:2]), wr.data.eq(byte.replicate(4))]
                    m.d.sync += ptr.eq(ptr + 1)
                    with m.If(last_byte):
                        m.next = "CRC_HI"
            with m.State("CRC_HI"):
                receive("CRC_LO")
            with m.State("CRC_LO"):
                receive("CHECK")
            with m.State("CHECK"):  # the last CRC byte is in
                with m.If(crc.crc == 0):
                    m.d.sync += ptr.eq(0)
                    m.next = "NEXT"
                with m.Else():
                    reject(LinkStatus.ERR_CRC)
            with m.State("DRAIN"):
                with m.If(~got & expired):
                    reply()

            # ---- execute it: one bus cycle per word --------------------------------------------
            with m.State("NEXT"):  # the buffer's read port catches up with ptr
                m.next = "BUS"
            with m.State("BUS"):
                m.d.comb += [bus.cyc.eq(1), bus.stb.eq(1)]
                with m.If(bus.ack):
                    m.d.comb += [wr.en.eq(Mux(we, 0, 0b1111)), wr.data.eq(bus.dat_r)]
                    with m.If(last_word):
                        reply()
                    with m.Else():
                        m.d.sync += ptr.eq(ptr + 4)
                        m.next = "NEXT"
                with m.Elif(bus.err):  # refused: this word and the rest of the frame do not run
                    m.d.comb += [fail.eq(1), fail_code.eq(LinkStatus.ERR_REFUSED)]
                    reply()
                with m.Elif(expired):
                    m.d.comb += [fail.eq(1), fail_code.eq(LinkStatus.ERR_BUS)]
                    reply()

            # ---- answer -----------------------------------------------------------------------
            with m.State("REPLY"):
                m.d.comb += replying.eq(1)
                with m.If(phase == 0):
                    m.d.comb += crc.clear.eq(1)
                with m.If(sent):
                    m.d.sync += phase.eq(phase + 1)
                    with m.Switch(phase):
                        with m.Case(0):
                            m.d.comb += self.error.eq(status != LinkStatus.OK)
                        with m.Case(2):
                            with m.If(~has_data):
                                m.d.sync += phase.eq(4)
                        with m.Case(3):
                            m.d.sync += ptr.eq(ptr + 1)
                            with m.If(~last_byte):
                                m.d.sync += phase.eq(3)
                        with m.Case(5):
                            m.next = "IDLE"
            m.d.comb += [
                timed.eq(Cat(fsm.ongoing(name) for name in (*receiving, "DRAIN", "BUS")).any()),
                self.active.eq(~fsm.ongoing("IDLE")),
            ]
        return m
