"""The multi-context HSM core: mailbox, command engine, context store and key store.

One SHA-256 engine does every hash and MAC.  A command is a sequence of small steps run by one
state machine: stream words from a source (the data FIFO, the context store, the scratch memory,
a label constant or a register) into the engine, read its digest out word by word into a
destination, load an HMAC midstate from the key store.  Everything is word-serial through block
RAM, which is what keeps the core small enough for an iCE40UP5K.

Memories (all block RAM, one read and one write port each):

``ctxmem``
    per context 32 words: ``M`` (0..7), reference bank 0 (8..15) and bank 1 (16..23), the
    version of each bank (24, 25).  A per-context bank bit says which bank is current; an UPDATE
    writes the new reference and version into the other bank and then flips the bit together
    with clearing LOADED in one clock edge: a reset at any point leaves the old or the new state.
``keymem``
    HMAC ipad/opad midstates of K_root, K_att, K_upd, the imported HMAC key and the current task
    key.  Its read port is wired to the SHA engine's midstate input and nowhere else: the bus
    has no path to it.
``scratch``
    the device id, a digest buffer, the key block being turned into midstates and the reference
    of an update in flight.  Only the device id words are ever copied to the result window.
``resmem``
    the result window, readable by the bus (by the command's owner only).

Persistent state (keys, references, versions, MATCH, the attestation counter, the provisioned
flag) survives the logic reset, like non-volatile storage would; a warm reset clears the mailbox,
any running command and the LOADED/ANOMALY flags, so every task must be measured again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from amaranth.hdl import Array, Cat, Const, Module, Mux, ResetInserter, Signal, Value
from amaranth.lib import fifo, memory, wiring
from amaranth.lib.wiring import In, Out

from mchsm.constants import (
    ACK_LABEL,
    ATT_LABEL,
    BUS_ADDR_WIDTH,
    CALLER_BITS,
    CTRL_ABORT,
    CTRL_CLEAR,
    DEFAULT_CONTEXTS,
    KDF_ATT,
    KDF_TASK,
    KDF_UPD,
    MAGIC,
    MANAGER,
    MAX_CONTEXTS,
    MONITOR_BUDGET,
    MONITOR_FAIL_LIMIT,
    PROTOCOL_VERSION,
    RESULT_SIZE,
    RESULT_WORDS,
    STATUS_BUSY,
    STATUS_DONE,
    STATUS_RESULT_LEN_SHIFT,
    UPD_LABEL,
    Access,
    Cmd,
    CtxFlag,
    Reg,
    Status,
    command_spec,
)
from mchsm.rtl import wishbone
from mchsm.rtl.sha256 import SHA256

__all__ = ["MchsmCore"]

# context store layout (words)
CTX_STRIDE = 32
CTX_M = 0
CTX_R = 8  # + 8 * bank
CTX_V = 24  # + bank
# scratch layout (words)
S_DEV = 0
S_T = 8
S_K = 16  # 16 words
S_U = 32  # 8 words
SCRATCH_DEPTH = 40
# key store slots (word address of the ipad midstate; the opad one follows at +8)
KS_ROOT = 0
KS_ATT = 16
KS_UPD = 32
KS_HMAC = 48
KS_TASK = 64
KEY_DEPTH = 80

FIFO_DEPTH = 16
IPAD = 0x36363636
OPAD = 0x5C5C5C5C
U32_MAX = 0xFFFF_FFFF


def _words(data: bytes) -> list[int]:
    """Big-endian 32-bit words of ``data`` (a whole number of words)."""
    assert len(data) % 4 == 0, data
    return [int.from_bytes(data[i : i + 4], "big") for i in range(0, len(data), 4)]


def _lowest_set(bits: Value, width: int) -> Value:
    """Index of the lowest set bit of ``bits`` (0 when none is set)."""
    out: Value = Const(0, 6)
    for i in reversed(range(width)):
        out = Mux(bits[i], i, out)
    return out


class MchsmCore(wiring.Component):
    """The HSM as a Wishbone B4 target with a caller-id sideband.

    Parameters
    ----------
    contexts : int
        Number of task contexts N (1..32).
    budget : int
        Monitor: commands a task may issue per monitoring period (0: no limit).
    fail_limit : int
        Monitor: failed commands of a task since its last RESET that flag it (0: no limit).

    Attributes
    ----------
    bus : In(wishbone.Signature(addr_width=6, data_width=32))
        The mailbox (see ``docs/registers.md``).
    caller : In(6)
        Caller id of the current bus cycle, driven by the trusted kernel side.
    irq : Out(1)
        High while a command is done and the interrupt is enabled.
    """

    def __init__(self, contexts: int = DEFAULT_CONTEXTS, *, budget: int = MONITOR_BUDGET,
                 fail_limit: int = MONITOR_FAIL_LIMIT) -> None:
        if not isinstance(contexts, int) or not 1 <= contexts <= MAX_CONTEXTS:
            raise ValueError(f"contexts must be an integer in 1..{MAX_CONTEXTS}, not {contexts!r}")
        for name, value in (("budget", budget), ("fail_limit", fail_limit)):
            if not isinstance(value, int) or not 0 <= value <= 255:
                raise ValueError(f"{name} must be an integer in 0..255, not {value!r}")
        self.contexts = contexts
        self.budget = budget
        self.fail_limit = fail_limit
        super().__init__({
            "bus": In(wishbone.Signature(addr_width=BUS_ADDR_WIDTH, data_width=32)),
            "caller": In(CALLER_BITS),
            "irq": Out(1),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        n = self.contexts
        iw = max(1, (n - 1).bit_length())  # context index width

        # ---- submodules ----------------------------------------------------------------------
        sha = SHA256()
        sha_rst = Signal()
        m.submodules.sha = ResetInserter(sha_rst)(sha)
        dfifo = fifo.SyncFIFOBuffered(width=32, depth=FIFO_DEPTH)
        fifo_rst = Signal()
        m.submodules.fifo = ResetInserter(fifo_rst)(dfifo)

        m.submodules.ctxmem = ctxmem = memory.Memory(shape=32, depth=n * CTX_STRIDE, init=[])
        m.submodules.scratch = scratch = memory.Memory(shape=32, depth=SCRATCH_DEPTH, init=[])
        m.submodules.keymem = keymem = memory.Memory(shape=32, depth=KEY_DEPTH, init=[])
        m.submodules.resmem = resmem = memory.Memory(shape=32, depth=RESULT_WORDS, init=[])
        ctx_rd, ctx_wr = ctxmem.read_port(), ctxmem.write_port()
        ctx_rd2 = ctxmem.read_port()  # M and R side by side for the MATCH check
        scr_rd, scr_wr = scratch.read_port(), scratch.write_port()
        key_rd, key_wr = keymem.read_port(), keymem.write_port()
        res_rd, res_wr = resmem.read_port(), resmem.write_port()

        # ---- mailbox registers ---------------------------------------------------------------
        r_len = Signal(32)
        r_cmd = Signal(8)
        r_ctx = Signal(8)
        r_owner = Signal(CALLER_BITS)
        r_status = Signal(8)
        r_done = Signal()
        r_reslen = Signal(8)
        r_irq_en = Signal()
        r_cycles = Signal(32)
        r_inbytes = Signal(32)  # bytes the bus may still deliver to this command
        r_abort = Signal()

        # ---- engine registers ----------------------------------------------------------------
        r_fin = Signal(8)  # status the command ends with
        r_left = Signal(32)  # bytes of a data stream not yet fed to the engine
        k = Signal(6)
        primed = Signal()
        r_sel = Signal(32)
        r_ok = Signal(32)
        r_vold = Signal(32)
        r_vnew = Signal(32)
        r_ci = Signal(6)  # context being streamed by ATTEST
        r_klen = Signal(7)  # bytes of the key block in scratch K
        r_slot = Signal(7)  # key store slot a subroutine works on
        r_lbl = Signal(2)  # which KDF label DERIVE uses
        r_ret_mid = Signal(3)
        r_ret_der = Signal(2)
        r_ret_tail = Signal(3)

        # ---- persistent state (survives the logic reset) -------------------------------------
        provisioned = Signal(reset_less=True)
        counter = Signal(32, reset_less=True)
        bank = Signal(n, reset_less=True)
        match = Signal(n, reset_less=True)
        hk_valid = Signal(reset_less=True)
        hk_owner = Signal(CALLER_BITS, reset_less=True)
        loaded = Signal(n)
        anomaly = Signal(n)
        okmask = Signal(n)
        m.d.comb += okmask.eq(loaded & match & ~anomaly)

        idx = (r_ctx - 1)[:iw]  # context index of a context command
        cidx = (r_owner - 1)[:iw]  # context index of the calling task
        bank_i = bank.bit_select(idx, 1)

        # Addresses are concatenations, not sums: every region starts on a power of two, so no
        # address needs an adder.
        def m_at(i: Value, w: Value) -> Value:
            """Word ``w`` of M of context index ``i``."""
            return Cat(w[:3], Const(CTX_M >> 3, 2), i[:iw])

        def r_at(i: Value, w: Value, b: Value) -> Value:
            """Word ``w`` of the reference in bank ``b`` of context index ``i``."""
            return Cat(w[:3], ~b, b, i[:iw])

        def v_at(i: Value, b: Value) -> Value:
            """The version in bank ``b`` of context index ``i``."""
            return Cat(b, Const(CTX_V >> 1, 4), i[:iw])

        def active_r(i: Value, w: Value) -> Value:
            return r_at(i, w, bank.bit_select(i, 1))

        def at(base: int, w: Value, bits: int) -> Value:
            """``base + w`` for a ``base`` that is a multiple of ``2**bits``."""
            assert base % (1 << bits) == 0
            return Cat(w[:bits], Const(base >> bits, 8))

        # ---- the bus -------------------------------------------------------------------------
        bus = self.bus
        busy = Signal()
        start_cmd = Signal()
        req = bus.cyc & bus.stb & ~bus.ack
        is_owner = self.caller == r_owner
        rd_q = Signal(32)
        rd_res = Signal()
        m.d.sync += bus.ack.eq(0)
        m.d.comb += [
            res_rd.addr.eq(bus.adr[:5]),
            bus.dat_r.eq(Mux(rd_res, res_rd.data, rd_q)),
            self.irq.eq(r_done & r_irq_en),
        ]
        reg_idx = {reg: reg.value >> 2 for reg in Reg}
        with m.If(req & bus.we):
            with m.Switch(bus.adr):
                with m.Case(reg_idx[Reg.LEN]):
                    m.d.sync += bus.ack.eq(1)
                    with m.If(~busy):
                        m.d.sync += r_len.eq(bus.dat_w)
                with m.Case(reg_idx[Reg.CMD]):
                    m.d.sync += bus.ack.eq(1)
                    with m.If(~busy):
                        m.d.comb += start_cmd.eq(1)
                        m.d.sync += [
                            r_cmd.eq(bus.dat_w[:8]),
                            r_ctx.eq(bus.dat_w[8:16]),
                            r_owner.eq(self.caller),
                            r_done.eq(0),
                            r_inbytes.eq(r_len),
                        ]
                with m.Case(reg_idx[Reg.DATA]):
                    with m.If(busy & is_owner & (r_inbytes != 0)):
                        with m.If(dfifo.w_rdy):
                            m.d.comb += [dfifo.w_en.eq(1), dfifo.w_data.eq(bus.dat_w)]
                            m.d.sync += [
                                bus.ack.eq(1),
                                r_inbytes.eq(Mux(r_inbytes > 4, r_inbytes - 4, 0)),
                            ]
                    with m.Else():
                        m.d.sync += bus.ack.eq(1)  # nobody's data: dropped
                with m.Case(reg_idx[Reg.CTRL]):
                    m.d.sync += bus.ack.eq(1)
                    with m.If(is_owner | (self.caller == MANAGER)):
                        with m.If(bus.dat_w[CTRL_ABORT.bit_length() - 1] & busy
                                  & (r_inbytes != 0)):
                            m.d.sync += r_abort.eq(1)
                        with m.If(bus.dat_w[CTRL_CLEAR.bit_length() - 1]):
                            m.d.sync += r_done.eq(0)
                with m.Case(reg_idx[Reg.IRQ_EN]):
                    m.d.sync += [bus.ack.eq(1), r_irq_en.eq(bus.dat_w[0])]
                with m.Default():
                    m.d.sync += bus.ack.eq(1)
        with m.If(req & ~bus.we):
            m.d.sync += [bus.ack.eq(1), rd_q.eq(0), rd_res.eq(0)]
            with m.Switch(bus.adr):
                with m.Case(reg_idx[Reg.ID]):
                    m.d.sync += rd_q.eq(MAGIC)
                with m.Case(reg_idx[Reg.INFO]):
                    m.d.sync += rd_q.eq(PROTOCOL_VERSION | n << 8)
                with m.Case(reg_idx[Reg.LEN]):
                    m.d.sync += rd_q.eq(r_len)
                with m.Case(reg_idx[Reg.STATUS]):
                    m.d.sync += rd_q.eq(
                        r_status
                        | Mux(busy, STATUS_BUSY, 0)
                        | Mux(r_done, STATUS_DONE, 0)
                        | (r_reslen << STATUS_RESULT_LEN_SHIFT)
                    )
                with m.Case(reg_idx[Reg.IRQ_EN]):
                    m.d.sync += rd_q.eq(r_irq_en)
                with m.Case(reg_idx[Reg.CYCLES]):
                    m.d.sync += rd_q.eq(r_cycles)
                with m.Case(reg_idx[Reg.OWNER]):
                    m.d.sync += rd_q.eq(r_owner)
                with m.Default():
                    m.d.sync += rd_res.eq(
                        (bus.adr >= reg_idx[Reg.RESULT]) & is_owner & ~busy & ~start_cmd
                    )

        # ---- the monitor: per task, commands this period and failures since RESET -----------
        commands = Array([Signal(range(self.budget + 2), name=f"commands{i + 1}")
                          for i in range(n)])
        failures = Array([Signal(range(self.fail_limit + 1), name=f"failures{i + 1}")
                          for i in range(n)])
        caller_task = (self.caller >= 1) & (self.caller <= n)
        with m.If(start_cmd & caller_task):
            count = commands[(self.caller - 1)[:iw]]
            if self.budget:  # this command takes the count above the budget: flagged
                with m.If(count >= self.budget):
                    m.d.sync += anomaly.bit_select((self.caller - 1)[:iw], 1).eq(1)
                with m.If(count <= self.budget):  # saturates at budget + 1
                    m.d.sync += count.eq(count + 1)

        # ---- engine --------------------------------------------------------------------------
        m.d.comb += fifo_rst.eq(start_cmd)
        m.d.comb += sha_rst.eq(start_cmd)
        with m.If(busy):
            m.d.sync += r_cycles.eq(r_cycles + 1)
        with m.If(start_cmd):
            m.d.sync += [r_cycles.eq(1), r_reslen.eq(0), r_abort.eq(0), k.eq(0),
                         primed.eq(0), r_left.eq(r_len)]

        # ---- datapath ------------------------------------------------------------------------
        # Every wide value (the engine's input word, a result word, memory write data) is chosen
        # once, here, by a narrow code that the current state sets.  The state machine itself
        # never drives a 32-bit value: that is what keeps the command engine small.
        _none, src_fifo, src_ctx, src_scr, src_key, src_word = range(6)
        dsrc = Signal(3)  # what the SHA engine takes
        widx = Signal(5)  # which entry of the word table
        rsrc = Signal(2)  # result window data: digest, word, context store, scratch
        cwsrc = Signal(2)  # context store data: zero, digest, scratch, word
        swsrc = Signal()  # scratch data: command data (0) or digest (1)
        opad = Signal()  # the key block is XORed with opad, else ipad
        pop = Signal()  # take a word of command data without hashing it
        neq = Signal()  # sticky "some compared words differed"

        counter_next = Signal(32)
        m.d.comb += counter_next.eq(counter + 1)
        visible = Mux(r_owner == MANAGER, Const((1 << n) - 1, n), (Const(1, n) << cidx)[:n])
        info = Cat(provisioned, Const(0, 7), Const(n, 8), Const(PROTOCOL_VERSION, 8))
        flag_bits = {CtxFlag.LOADED: loaded, CtxFlag.ANOMALY: anomaly, CtxFlag.MATCH: match,
                     CtxFlag.OK: okmask}
        flags = Cat(*(flag_bits[f].bit_select(idx, 1) for f in sorted(CtxFlag)))
        kdf = [w for label in (KDF_ATT, KDF_UPD, KDF_TASK) for w in _words(label)]
        # runs that states stream in one go are adjacent: (sel, ok, ctr+1), (ctx, v, v'),
        # (info, ctr, ok, loaded, anomaly), and the three 3-word KDF labels
        table: list[tuple[str, Value | int]] = [
            ("zero", 0),
            ("att", _words(ATT_LABEL)[0]),
            ("upd", _words(UPD_LABEL)[0]),
            ("ack", _words(ACK_LABEL)[0]),
            *((f"kdf{i}", w) for i, w in enumerate(kdf)),
            ("sel", r_sel), ("ok", r_ok), ("ctr1", counter_next),
            ("ctx", r_ctx), ("vold", r_vold), ("vnew", r_vnew),
            ("owner", r_owner),
            ("info", info), ("ctr", counter), ("okv", okmask & visible),
            ("loadedv", loaded & visible), ("anomalyv", anomaly & visible),
            ("flags", flags),
        ]
        assert len(table) <= 32
        WORD = {name: i for i, (name, _) in enumerate(table)}
        word = Signal(32)
        m.d.comb += word.eq(Array([v if isinstance(v, Value) else Const(v, 32)
                                   for _, v in table])[widx])

        masks = []
        for j in range(4):  # byte j of key word k is key byte 4k+j: zero beyond r_klen
            masks.append(Mux(Cat(Const(j, 2), k[:4]) < r_klen, 0xFF, 0) << (24 - 8 * j))
        key_word = (scr_rd.data & (masks[0] | masks[1] | masks[2] | masks[3])) \
            ^ Mux(opad, OPAD, IPAD)

        with m.Switch(dsrc):
            with m.Case(src_fifo):
                m.d.comb += [sha.data.eq(dfifo.r_data), sha.valid.eq(dfifo.r_rdy)]
            with m.Case(src_ctx):
                m.d.comb += [sha.data.eq(ctx_rd.data), sha.valid.eq(primed)]
            with m.Case(src_scr):
                m.d.comb += [sha.data.eq(scr_rd.data), sha.valid.eq(primed)]
            with m.Case(src_key):
                m.d.comb += [sha.data.eq(key_word), sha.valid.eq(primed)]
            with m.Case(src_word):
                m.d.comb += [sha.data.eq(word), sha.valid.eq(1)]
        fire = Signal()  # a word moves into the engine this cycle
        m.d.comb += [
            fire.eq(sha.valid & sha.ready),
            dfifo.r_en.eq(((dsrc == src_fifo) & fire) | pop),
            res_wr.data.eq(Array([sha.digest, word, ctx_rd.data,
                                  Mux(provisioned, scr_rd.data, 0)])[rsrc]),
            ctx_wr.data.eq(Array([Const(0, 32), sha.digest, scr_rd.data, word])[cwsrc]),
            scr_wr.data.eq(Mux(swsrc, sha.digest, dfifo.r_data)),
            key_wr.data.eq(sha.digest),
        ]
        rsrc_digest, rsrc_word, rsrc_ctx, rsrc_scr = range(4)
        cw_zero, cw_digest, cw_scr, cw_word = range(4)

        def finish(status: Status | Value) -> None:
            m.d.sync += r_fin.eq(status)
            m.next = "FINISH"

        @contextmanager
        def state(name: str) -> Iterator[None]:
            with m.State(name):
                yield
                with m.If(r_abort):
                    m.next = "ABORTED"

        def goto(nxt: str | Callable[[], None]) -> None:
            if callable(nxt):
                nxt()
            else:
                m.next = nxt

        def goto_if(cond: Value, yes: str, no: str) -> None:
            with m.If(cond):
                m.next = yes
            with m.Else():
                m.next = no

        def step_done(count: int | Value, nxt: str | Callable[[], None]) -> None:
            """Advance k over ``count`` words; at the end, reset k/primed and go on."""
            with m.If(k == count - 1):
                m.d.sync += [k.eq(0), primed.eq(0)]
                goto(nxt)
            with m.Else():
                m.d.sync += k.eq(k + 1)

        Addr = Callable[[Value], Value]
        Next = str | Callable[[], None]

        def feed_mem(name: str, src: int, addr: Addr, count: int, nxt: Next,
                     last: bool = False) -> None:
            """Stream ``count`` words at ``addr(k)`` of a memory into the engine."""
            rd = ctx_rd if src == src_ctx else scr_rd
            with state(name):
                m.d.comb += [dsrc.eq(src), rd.addr.eq(addr(Mux(fire, k + 1, k))),
                             sha.last.eq(int(last) & (k == count - 1)), sha.nbytes.eq(4)]
                with m.If(~primed):
                    m.d.sync += primed.eq(1)
                with m.Elif(fire):
                    step_done(count, nxt)

        def feed_words(name: str, index: int | Value, count: int, nxt: Next,
                       last: bool | Value = False, tee_res: int | None = None) -> None:
            """Stream entries ``index ..`` of the word table (labels, registers)."""
            with state(name):
                m.d.comb += [dsrc.eq(src_word), widx.eq(index + k),
                             sha.last.eq(last & (k == count - 1)), sha.nbytes.eq(4)]
                if tee_res is not None:
                    m.d.comb += [rsrc.eq(rsrc_word), res_wr.addr.eq(tee_res + k),
                                 res_wr.en.eq(fire)]
                with m.If(fire):
                    step_done(count, nxt)

        def feed_fifo(name: str, count: int, nxt: Next, last: bool = False,
                      on_word: Callable[[], None] | None = None) -> None:
            """Stream ``count`` whole words of command data into the engine."""
            with state(name):
                m.d.comb += [dsrc.eq(src_fifo), sha.last.eq(int(last) & (k == count - 1)),
                             sha.nbytes.eq(4)]
                with m.If(fire):
                    if on_word is not None:
                        on_word()
                    step_done(count, nxt)

        def feed_stream(name: str, nxt: str) -> None:
            """Stream the whole command data (``LEN`` bytes, any length) into the engine."""
            with state(name):
                with m.If(r_left == 0):  # empty message: one empty last word
                    m.d.comb += [dsrc.eq(src_word), widx.eq(WORD["zero"]), sha.last.eq(1),
                                 sha.nbytes.eq(0)]
                    with m.If(fire):
                        m.next = nxt
                with m.Else():
                    tail = r_left <= 4
                    m.d.comb += [dsrc.eq(src_fifo), sha.last.eq(tail),
                                 sha.nbytes.eq(Mux(tail, r_left[:3], 4))]
                    with m.If(fire):
                        m.d.sync += r_left.eq(Mux(tail, 0, r_left - 4))
                        with m.If(tail):
                            m.next = nxt

        def fifo_to_scratch(name: str, base: int, count: int | Value, nxt: Next,
                            extra: Callable[[], None] | None = None) -> None:
            """Copy words of command data into scratch (no hashing)."""
            with state(name):
                if extra is not None:
                    extra()
                m.d.comb += [pop.eq(1), scr_wr.addr.eq(at(base, k, 4)), scr_wr.en.eq(dfifo.r_rdy)]
                with m.If(dfifo.r_rdy):
                    step_done(count, nxt)

        def feed_keypad(name: str, outer: bool, nxt: str) -> None:
            """Stream the 64-byte key block (scratch K, r_klen bytes, zero-padded) XOR a pad."""
            with state(name):
                m.d.comb += [dsrc.eq(src_key), opad.eq(int(outer)), sha.nbytes.eq(4),
                             scr_rd.addr.eq(at(S_K, Mux(fire, k + 1, k), 4))]
                with m.If(~primed):
                    m.d.sync += primed.eq(1)
                with m.Elif(fire):
                    step_done(16, nxt)

        def sha_start(name: str, nxt: str) -> None:
            with state(name):
                m.d.comb += sha.start.eq(1)
                m.next = nxt

        def sha_wait(name: str, nxt: Next) -> None:
            with state(name), m.If(sha.done):
                goto(nxt)

        def sha_cut(name: str, nxt: str) -> None:
            """End the message at this block boundary without padding: H is a midstate."""
            with state(name):
                m.d.comb += sha.cut.eq(1)
                with m.If(sha.done):
                    m.next = nxt

        def slot_at(slot: int | Value, outer: bool = False) -> Addr:
            """Word addresses of a key store slot (``outer``: its opad midstate)."""
            if isinstance(slot, int):
                return lambda i: Cat(i[:3], Const((slot >> 3) | int(outer), 5))
            return lambda i: Cat(i[:3], Const(int(outer), 1), slot[4:])

        def ring(name: str, slot: Addr | None, nxt: Next, dsts: Sequence[tuple[str, Addr]] = (),
                 resume: bool = False, extra: Callable[[], None] | None = None) -> None:
            """Eight shifts of the engine's H ring: read the digest out into ``dsts`` and/or load
            a midstate from the key store at ``slot``; optionally ``resume`` with the last
            shift."""
            with state(name):
                if slot is not None:
                    m.d.comb += key_rd.addr.eq(slot(Mux(primed, k + 1, 0)))
                    active = primed
                    with m.If(~primed):
                        m.d.sync += primed.eq(1)
                else:
                    active = Const(1)
                m.d.comb += [sha.shift.eq(active), sha.load.eq(int(slot is not None)),
                             sha.shift_in.eq(key_rd.data)]
                for mem, where in dsts:
                    port = {"ctx": ctx_wr, "scr": scr_wr, "key": key_wr, "res": res_wr}[mem]
                    m.d.comb += [port.addr.eq(where(k)), port.en.eq(active)]
                    if mem == "res":
                        m.d.comb += rsrc.eq(rsrc_digest)
                    elif mem == "ctx":
                        m.d.comb += cwsrc.eq(cw_digest)
                    elif mem == "scr":
                        m.d.comb += swsrc.eq(1)
                if extra is not None:
                    extra()
                with m.If(active):
                    if resume:
                        m.d.comb += sha.resume.eq(k == 7)
                    step_done(8, nxt)

        def to_t(i: Value) -> Value:
            return at(S_T, i, 3)

        def to_k(i: Value) -> Value:
            return at(S_K, i, 3)

        def res_at(base: int) -> Addr:
            return lambda i: base + i[:3]

        def copy_to_res(name: str, src: int, addr: Addr, res_base: int, count: int,
                        nxt: Next) -> None:
            """Copy ``count`` words from the context store or scratch into the result window."""
            rd = ctx_rd if src == src_ctx else scr_rd
            with state(name):
                m.d.comb += [rd.addr.eq(addr(k)), res_wr.addr.eq(res_base + k - 1),
                             rsrc.eq(rsrc_ctx if src == src_ctx else rsrc_scr),
                             res_wr.en.eq(k != 0)]
                with m.If(k == count):
                    m.d.sync += k.eq(0)
                    goto(nxt)
                with m.Else():
                    m.d.sync += k.eq(k + 1)

        def write_res(name: str, index: int, count: int, base: int, nxt: Next) -> None:
            with state(name):
                m.d.comb += [widx.eq(index + k), rsrc.eq(rsrc_word), res_wr.addr.eq(base + k),
                             res_wr.en.eq(1)]
                step_done(count, nxt)

        def succeed(reslen: int) -> None:
            m.d.sync += r_reslen.eq(reslen)
            finish(Status.OK)

        # return points of the subroutines
        mid_ret = ["P_DER_ATT", "P_DER_UPD", "P_FIN", "T_MAC", "K_FIN"]
        der_ret = ["P_MID_ATT", "P_MID_UPD", "T_MID"]
        tail_ret = ["DER_STORE", "A_RES", "U_CMP", "U_ACK_RES", "T_RES", "H_RES"]

        def call(entry: str, ret_reg: Signal, table: list[str], ret: str,
                 **params: int | Value) -> None:
            m.d.sync += ret_reg.eq(table.index(ret))
            for reg, value in params.items():
                m.d.sync += {"slot": r_slot, "lbl": r_lbl}[reg].eq(value)
            m.next = entry

        def ret(ret_reg: Signal, table: list[str]) -> Callable[[], None]:
            def go() -> None:
                with m.Switch(ret_reg):
                    for i, target in enumerate(table):
                        with m.Case(i):
                            m.next = target
            return go

        # ---- prechecks (checks 1-6 of the spec, all before any data) -------------------------
        pre = Signal(8)
        caller_bad = r_owner > n
        ctx_in_range = (r_ctx >= 1) & (r_ctx <= n)
        with m.Switch(r_cmd):
            for cmd in Cmd:
                spec = command_spec(cmd)
                with m.Case(cmd):
                    denied = caller_bad
                    if spec.access is Access.MANAGER:
                        denied = denied | (r_owner != MANAGER)
                    elif spec.access is Access.TASK:
                        denied = denied | (r_owner == MANAGER)
                    elif spec.access is Access.MANAGER_OR_OWN:
                        denied = denied | ((r_owner != MANAGER) & (r_ctx != r_owner))
                    checks: list[tuple[Value, Status]] = [(denied, Status.ERR_DENIED)]
                    if spec.provisioned is True:
                        checks.append((~provisioned, Status.ERR_NOT_PROVISIONED))
                    elif spec.provisioned is False:
                        checks.append((provisioned, Status.ERR_PROVISIONED))
                    checks.append((~ctx_in_range if spec.context else r_ctx != 0,
                                   Status.ERR_CONTEXT))
                    if spec.length is not None:
                        checks.append((r_len != spec.length, Status.ERR_LENGTH))
                    if cmd is Cmd.TASK_MAC:
                        checks.append((~okmask.bit_select(cidx, 1), Status.ERR_NOT_TRUSTED))
                    if cmd is Cmd.HMAC:
                        checks.append((~hk_valid | (hk_owner != r_owner), Status.ERR_NO_KEY))
                    with m.If(checks[0][0]):
                        m.d.comb += pre.eq(checks[0][1])
                    for cond, status in checks[1:]:
                        with m.Elif(cond):
                            m.d.comb += pre.eq(status)
            with m.Default():
                m.d.comb += pre.eq(Status.ERR_UNKNOWN_CMD)

        entry = {
            Cmd.PROVISION: "P_DEV", Cmd.STATUS: "S_REGS", Cmd.READ_CTX: "R_COPY",
            Cmd.RESET: "Z_M", Cmd.EXTEND: "E_START", Cmd.MEASURE: "M_START",
            Cmd.SET_ANOMALY: "N_SET", Cmd.NEW_PERIOD: "W_PERIOD", Cmd.ATTEST: "A_SEL",
            Cmd.UPDATE: "U_MID",
            Cmd.TASK_MAC: "T_DER", Cmd.HASH: "H_START", Cmd.HMAC_KEY: "K_MODE",
            Cmd.HMAC: "C_MID",
        }

        with m.FSM(name="engine") as fsm:
            m.d.comb += busy.eq(~fsm.ongoing("IDLE"))

            with m.State("IDLE"), m.If(start_cmd):
                m.next = "PRECHECK"

            with m.State("PRECHECK"):
                with m.If(pre != Status.OK):
                    finish(pre)
                with m.Else(), m.Switch(r_cmd):
                    for cmd, first in entry.items():
                        with m.Case(cmd):
                            m.next = first

            with m.State("ABORTED"):
                finish(Status.ERR_ABORTED)

            with m.State("FINISH"):
                m.d.comb += [fifo_rst.eq(1), sha_rst.eq(1)]
                owner_task = (r_owner >= 1) & (r_owner <= n)
                if self.fail_limit:
                    with m.If((r_fin != Status.OK) & owner_task):
                        fails = failures[cidx]
                        with m.If(fails >= self.fail_limit - 1):
                            m.d.sync += anomaly.bit_select(cidx, 1).eq(1)
                        with m.If(fails != self.fail_limit):
                            m.d.sync += fails.eq(fails + 1)
                m.d.sync += [r_status.eq(r_fin), r_done.eq(1), r_inbytes.eq(0), r_abort.eq(0),
                             k.eq(0), primed.eq(0)]
                with m.If(r_fin != Status.OK):
                    m.d.sync += r_reslen.eq(0)
                m.next = "IDLE"

            # ---- subroutine MID: key block (scratch K) -> ipad/opad midstates at r_slot ------
            sha_start("MID_I0", "MID_I1")
            feed_keypad("MID_I1", False, "MID_I2")
            sha_cut("MID_I2", "MID_I3")
            ring("MID_I3", None, "MID_O0", dsts=[("key", slot_at(r_slot))])
            sha_start("MID_O0", "MID_O1")
            feed_keypad("MID_O1", True, "MID_O2")
            sha_cut("MID_O2", "MID_O3")
            ring("MID_O3", None, ret(r_ret_mid, mid_ret),
                 dsts=[("key", slot_at(r_slot, outer=True))])

            # ---- subroutine TAIL: outer hash of HMAC with the opad midstate at r_slot --------
            ring("TAIL0", slot_at(r_slot, outer=True), "TAIL1", dsts=[("scr", to_t)], resume=True)
            feed_mem("TAIL1", src_scr, to_t, 8, "TAIL2", last=True)
            sha_wait("TAIL2", ret(r_ret_tail, tail_ret))

            # ---- subroutine DERIVE: scratch K := HMAC(K_root, label [|| u32 i || R[i]]) ------
            is_task = r_lbl == 2
            ring("DER0", slot_at(KS_ROOT), "DER1", resume=True)
            feed_words("DER1", WORD["kdf0"] + r_lbl * 3, 3,
                       lambda: goto_if(is_task, "DER2", "DER4"), last=~is_task)
            feed_words("DER2", WORD["owner"], 1, "DER3")
            feed_mem("DER3", src_ctx, lambda i: active_r(cidx, i), 8, "DER4", last=True)
            sha_wait("DER4", lambda: call("TAIL0", r_ret_tail, tail_ret, "DER_STORE",
                                          slot=KS_ROOT))

            def key_is_a_digest() -> None:
                m.d.sync += r_klen.eq(32)

            ring("DER_STORE", None, ret(r_ret_der, der_ret), dsts=[("scr", to_k)],
                 extra=key_is_a_digest)

            # ---- subroutine MATCH: MATCH[idx] := v > 0 && M == R, then succeed --------------
            with state("MATCH"):  # port 1 reads M[k], port 2 R[k] (k < 8), then v
                m.d.comb += [ctx_rd.addr.eq(m_at(idx, k)),
                             ctx_rd2.addr.eq(Mux(k == 8, v_at(idx, bank_i),
                                                 r_at(idx, k, bank_i)))]
                with m.If(k == 0):
                    m.d.sync += neq.eq(0)
                with m.Elif(k <= 8):
                    m.d.sync += neq.eq(neq | (ctx_rd.data != ctx_rd2.data))
                with m.If(k == 9):
                    m.d.sync += [match.bit_select(idx, 1).eq(~neq & (ctx_rd2.data != 0)),
                                 k.eq(0)]
                    finish(Status.OK)  # r_reslen was set by the command (0 for RESET)
                with m.Else():
                    m.d.sync += k.eq(k + 1)

            # ---- PROVISION ------------------------------------------------------------------
            fifo_to_scratch("P_DEV", S_DEV, 4, "P_KEY", extra=key_is_a_digest)
            fifo_to_scratch("P_KEY", S_K, 8, lambda: call(
                "MID_I0", r_ret_mid, mid_ret, "P_DER_ATT", slot=KS_ROOT))
            with state("P_DER_ATT"):
                call("DER0", r_ret_der, der_ret, "P_MID_ATT", lbl=0)
            with state("P_MID_ATT"):
                call("MID_I0", r_ret_mid, mid_ret, "P_DER_UPD", slot=KS_ATT)
            with state("P_DER_UPD"):
                call("DER0", r_ret_der, der_ret, "P_MID_UPD", lbl=1)
            with state("P_MID_UPD"):
                call("MID_I0", r_ret_mid, mid_ret, "P_FIN", slot=KS_UPD)
            with state("P_FIN"):
                m.d.sync += provisioned.eq(1)
                succeed(RESULT_SIZE[Cmd.PROVISION])

            # ---- STATUS ---------------------------------------------------------------------
            write_res("S_REGS", WORD["info"], 5, 0, "S_DEV")
            copy_to_res("S_DEV", src_scr, lambda i: at(S_DEV, i, 2), 5, 4,
                        lambda: succeed(RESULT_SIZE[Cmd.STATUS]))

            # ---- READ_CTX -------------------------------------------------------------------
            def read_ctx_addr(i: Value) -> Value:
                return Mux(i == 0, v_at(idx, bank_i),
                           Mux(i <= 8, m_at(idx, i - 1), r_at(idx, i - 9, bank_i)))

            copy_to_res("R_COPY", src_ctx, read_ctx_addr, 1, 17, "R_FLAGS")
            write_res("R_FLAGS", WORD["flags"], 1, 0, lambda: succeed(RESULT_SIZE[Cmd.READ_CTX]))

            # ---- RESET ----------------------------------------------------------------------
            with state("Z_M"):
                m.d.comb += [ctx_wr.addr.eq(m_at(idx, k)), cwsrc.eq(cw_zero), ctx_wr.en.eq(1)]
                with m.If(k == 7):
                    m.d.sync += [k.eq(0), loaded.bit_select(idx, 1).eq(0),
                                 anomaly.bit_select(idx, 1).eq(0), failures[idx].eq(0)]
                    m.next = "MATCH"
                with m.Else():
                    m.d.sync += k.eq(k + 1)

            # ---- NEW_PERIOD -----------------------------------------------------------------
            with state("W_PERIOD"):
                m.d.sync += [count.eq(0) for count in commands]
                succeed(RESULT_SIZE[Cmd.NEW_PERIOD])

            # ---- SET_ANOMALY ----------------------------------------------------------------
            with state("N_SET"):
                m.d.sync += anomaly.bit_select(idx, 1).eq(1)
                succeed(RESULT_SIZE[Cmd.SET_ANOMALY])

            # ---- EXTEND ---------------------------------------------------------------------
            sha_start("E_START", "E_M")
            feed_mem("E_M", src_ctx, lambda i: m_at(idx, i), 8, "E_D")
            feed_fifo("E_D", 8, "E_WAIT", last=True)
            sha_wait("E_WAIT", "E_STORE")

            def digest_result() -> None:
                m.d.sync += r_reslen.eq(RESULT_SIZE[Cmd.EXTEND])

            ring("E_STORE", None, "MATCH",
                 dsts=[("ctx", lambda i: m_at(idx, i)), ("res", res_at(0))], extra=digest_result)

            # ---- MEASURE --------------------------------------------------------------------
            sha_start("M_START", "M_IMG")
            feed_stream("M_IMG", "M_WAIT")
            sha_wait("M_WAIT", "M_H")
            ring("M_H", None, "M_START2", dsts=[("res", res_at(0)), ("scr", to_t)])
            sha_start("M_START2", "M_M")
            feed_mem("M_M", src_ctx, lambda i: m_at(idx, i), 8, "M_T")
            feed_mem("M_T", src_scr, to_t, 8, "M_WAIT2", last=True)
            sha_wait("M_WAIT2", "M_STORE")

            def measured() -> None:
                m.d.sync += r_reslen.eq(RESULT_SIZE[Cmd.MEASURE])
                with m.If(k == 7):
                    m.d.sync += loaded.bit_select(idx, 1).eq(1)

            ring("M_STORE", None, "MATCH", dsts=[("ctx", lambda i: m_at(idx, i))], extra=measured)

            # ---- ATTEST ---------------------------------------------------------------------
            valid_sel = Const((1 << n) - 1, 32)
            with state("A_SEL"):
                m.d.comb += pop.eq(1)
                with m.If(dfifo.r_rdy):
                    m.d.sync += r_sel.eq(dfifo.r_data)
                    m.next = "A_CHECK"
            with state("A_CHECK"):
                with m.If((r_sel == 0) | ((r_sel & ~valid_sel) != 0)):
                    finish(Status.ERR_SELECT)
                with m.Elif(counter == U32_MAX):
                    finish(Status.ERR_COUNTER)
                with m.Else():
                    m.d.comb += sha.start.eq(1)
                    m.d.sync += [r_ok.eq(r_sel & okmask), r_ci.eq(_lowest_set(r_sel, n)),
                                 k.eq(0), primed.eq(0)]
                    m.next = "A_REFS"
            higher = Cat(*[r_sel[i] & (r_ci < i) for i in range(n)])
            next_ci = _lowest_set(higher, n)
            with state("A_REFS"):
                wrap = k == 7
                more = higher != 0
                m.d.comb += [
                    dsrc.eq(src_ctx),
                    ctx_rd.addr.eq(Mux(fire & wrap, active_r(next_ci, Const(0, 3)),
                                       active_r(r_ci, Mux(fire, k + 1, k)))),
                    sha.last.eq(wrap & ~more),
                    sha.nbytes.eq(4),
                ]
                with m.If(~primed):
                    m.d.sync += primed.eq(1)
                with m.Elif(fire):
                    with m.If(wrap):
                        m.d.sync += [k.eq(0), r_ci.eq(next_ci)]
                        with m.If(~more):
                            m.d.sync += primed.eq(0)
                            m.next = "A_WAIT_D"
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
            sha_wait("A_WAIT_D", "A_SWAP")
            ring("A_SWAP", slot_at(KS_ATT), "A_LABEL", dsts=[("scr", to_t)], resume=True)
            feed_words("A_LABEL", WORD["att"], 1, "A_DEV")
            feed_mem("A_DEV", src_scr, lambda i: at(S_DEV, i, 2), 4, "A_NONCE")
            feed_fifo("A_NONCE", 8, "A_REGS")
            feed_words("A_REGS", WORD["sel"], 3, "A_D", tee_res=0)  # sel, ok, ctr+1
            feed_mem("A_D", src_scr, to_t, 8, "A_WAIT_M", last=True)
            sha_wait("A_WAIT_M", lambda: call("TAIL0", r_ret_tail, tail_ret, "A_RES",
                                              slot=KS_ATT))

            def attested() -> None:
                with m.If(k == 7):
                    m.d.sync += [counter.eq(counter_next), r_reslen.eq(RESULT_SIZE[Cmd.ATTEST]),
                                 r_fin.eq(Status.OK)]

            ring("A_RES", None, "FINISH", dsts=[("res", res_at(3))], extra=attested)

            # ---- UPDATE ---------------------------------------------------------------------
            ring("U_MID", slot_at(KS_UPD), "U_LABEL", resume=True)
            feed_words("U_LABEL", WORD["upd"], 1, "U_DEV")
            feed_mem("U_DEV", src_scr, lambda i: at(S_DEV, i, 2), 4, "U_CTX")
            feed_words("U_CTX", WORD["ctx"], 1, "U_DATA")

            def capture() -> None:
                with m.If(k == 0):
                    m.d.sync += r_vold.eq(dfifo.r_data)
                with m.Elif(k == 1):
                    m.d.sync += r_vnew.eq(dfifo.r_data)
                with m.Else():
                    m.d.comb += [scr_wr.addr.eq(at(S_U, k - 2, 3)), scr_wr.en.eq(1)]

            feed_fifo("U_DATA", 10, "U_WAIT", last=True, on_word=capture)
            sha_wait("U_WAIT", lambda: call("TAIL0", r_ret_tail, tail_ret, "U_CMP",
                                            slot=KS_UPD))
            with state("U_CMP"):  # constant time: all 8 words, whatever they hold
                m.d.comb += [pop.eq(1), sha.shift.eq(dfifo.r_rdy),
                             ctx_rd.addr.eq(v_at(idx, bank_i))]
                with m.If(dfifo.r_rdy):
                    m.d.sync += neq.eq(Mux(k == 0, 0, neq) | (sha.digest != dfifo.r_data))
                    step_done(8, "U_CHECK")
            with state("U_CHECK"):
                m.d.comb += ctx_rd.addr.eq(v_at(idx, bank_i))
                with m.If(neq):
                    finish(Status.ERR_AUTH)
                with m.Elif(r_vold != ctx_rd.data):
                    finish(Status.ERR_VERSION)
                with m.Elif(r_vnew <= r_vold):
                    finish(Status.ERR_ROLLBACK)
                with m.Else():
                    m.next = "U_ACK_MID"
            ring("U_ACK_MID", slot_at(KS_UPD), "U_ACK_LABEL", resume=True)
            feed_words("U_ACK_LABEL", WORD["ack"], 1, "U_ACK_DEV")
            feed_mem("U_ACK_DEV", src_scr, lambda i: at(S_DEV, i, 2), 4, "U_ACK_REGS")
            feed_words("U_ACK_REGS", WORD["ctx"], 3, "U_ACK_R")  # ctx, v, v'
            feed_mem("U_ACK_R", src_scr, lambda i: at(S_U, i, 3), 8, "U_ACK_WAIT", last=True)
            sha_wait("U_ACK_WAIT", lambda: call("TAIL0", r_ret_tail, tail_ret, "U_ACK_RES",
                                                slot=KS_UPD))
            ring("U_ACK_RES", None, "U_ACK_V", dsts=[("res", res_at(1))])
            write_res("U_ACK_V", WORD["vnew"], 1, 0, "U_COMMIT")
            # the new reference goes into the other bank; MATCH for it is computed on the way
            with state("U_COMMIT"):
                m.d.comb += [
                    scr_rd.addr.eq(at(S_U, k, 3)),
                    ctx_rd.addr.eq(m_at(idx, k)),
                    ctx_wr.addr.eq(r_at(idx, k - 1, ~bank_i)),
                    cwsrc.eq(cw_scr),
                    ctx_wr.en.eq((k != 0) & (k <= 8)),
                ]
                with m.If(k == 0):
                    m.d.sync += neq.eq(0)
                with m.Elif(k <= 8):
                    m.d.sync += neq.eq(neq | (scr_rd.data != ctx_rd.data))
                with m.If(k == 8):
                    m.d.sync += k.eq(0)
                    m.next = "U_COMMIT_V"
                with m.Else():
                    m.d.sync += k.eq(k + 1)
            with state("U_COMMIT_V"):
                m.d.comb += [ctx_wr.addr.eq(v_at(idx, ~bank_i)), cwsrc.eq(cw_word),
                             widx.eq(WORD["vnew"]), ctx_wr.en.eq(1)]
                m.next = "U_FLIP"
            with m.State("U_FLIP"):  # the one clock edge at which the update takes effect
                m.d.sync += [
                    bank.bit_select(idx, 1).eq(~bank_i),
                    loaded.bit_select(idx, 1).eq(0),
                    match.bit_select(idx, 1).eq(~neq),
                ]
                succeed(RESULT_SIZE[Cmd.UPDATE])

            # ---- TASK_MAC -------------------------------------------------------------------
            with state("T_DER"):
                call("DER0", r_ret_der, der_ret, "T_MID", lbl=2)
            with state("T_MID"):
                call("MID_I0", r_ret_mid, mid_ret, "T_MAC", slot=KS_TASK)
            ring("T_MAC", slot_at(KS_TASK), "T_DATA", resume=True)
            feed_stream("T_DATA", "T_WAIT")
            sha_wait("T_WAIT", lambda: call("TAIL0", r_ret_tail, tail_ret, "T_RES",
                                            slot=KS_TASK))

            def digest_done() -> None:
                m.d.sync += [r_reslen.eq(RESULT_SIZE[Cmd.HASH]), r_fin.eq(Status.OK)]

            ring("T_RES", None, "FINISH", dsts=[("res", res_at(0))], extra=digest_done)

            # ---- HASH -----------------------------------------------------------------------
            sha_start("H_START", "H_DATA")
            feed_stream("H_DATA", "H_WAIT")
            sha_wait("H_WAIT", "H_RES")
            ring("H_RES", None, "FINISH", dsts=[("res", res_at(0))], extra=digest_done)

            # ---- HMAC_KEY: short keys are the key block, long ones are hashed first --------
            with state("K_MODE"):
                with m.If(r_len > 64):
                    m.next = "K_HSTART"
                with m.Elif(r_len == 0):
                    m.d.sync += r_klen.eq(0)
                    call("MID_I0", r_ret_mid, mid_ret, "K_FIN", slot=KS_HMAC)
                with m.Else():
                    m.d.sync += r_klen.eq(r_len)
                    m.next = "K_COPY"
            fifo_to_scratch("K_COPY", S_K, ((r_len + 3) >> 2)[:5],
                            lambda: call("MID_I0", r_ret_mid, mid_ret, "K_FIN", slot=KS_HMAC))
            sha_start("K_HSTART", "K_HDATA")
            feed_stream("K_HDATA", "K_HWAIT")
            sha_wait("K_HWAIT", "K_HSTORE")
            ring("K_HSTORE", None, "K_HMID", dsts=[("scr", to_k)], extra=key_is_a_digest)
            with state("K_HMID"):
                call("MID_I0", r_ret_mid, mid_ret, "K_FIN", slot=KS_HMAC)
            with state("K_FIN"):
                m.d.sync += [hk_valid.eq(1), hk_owner.eq(r_owner)]
                succeed(RESULT_SIZE[Cmd.HMAC_KEY])

            # ---- HMAC -----------------------------------------------------------------------
            ring("C_MID", slot_at(KS_HMAC), "C_DATA", resume=True)
            feed_stream("C_DATA", "C_WAIT")
            sha_wait("C_WAIT", lambda: call("TAIL0", r_ret_tail, tail_ret, "H_RES",
                                            slot=KS_HMAC))

        return m
