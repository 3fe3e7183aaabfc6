"""SHA-256 engine with hardware padding, one round per clock.

The hash core of the HSM: plain SHA-256 of a message, and HMAC-SHA256 by resuming from a stored
ipad/opad midstate.  It is written to be small on an iCE40UP5K, where it shares 5280 logic cells
(LCs, one LUT4 + one flip-flop each) with everything else, and to sustain one 512-bit block per
64 clocks when message words arrive at full rate.

Why it looks the way it does
----------------------------
On a LUT4 fabric a flip-flop whose input needs at most one LUT costs one LC either way, a
flip-flop with a plain shift costs one LC for nothing, and every further LUT costs an LC of its
own.  So the design puts its logic *in front of* registers and avoids logic between them.

* **Chaining add folded into round 63.**  After the last round the new working state is
  ``(a..h) + H``.  Round 63 itself adds ``H`` into every register it writes (``a <- T1 + T2 +
  H0``, ``b <- a + H1``, ..., ``h <- g + H7``): every working register is fed by an adder
  whose second operand is ``H`` gated by one select, the adder shares the LC of its flip-flop,
  and a block takes exactly 64 clocks with the next block's round 0 right after round 63.
  ``H`` copies ``a..h`` one cycle later (in round 0, or in the ``fin`` cycle after the final
  block) from the registers, not from the adders, which would otherwise need LCs of their own.
* **The gate disappears on iCE40.**  Generic logic spends a LUT per bit on ``H & select``.  An
  iCE40 carry cell's LUT has a spare input that yosys never uses; with ``SB_LUT4``/``SB_CARRY``
  instances (:func:`_add_if`, chosen automatically for an iCE40 platform) the select goes there
  and the 256 gate LUTs vanish.  Both netlists are proven equivalent by the tests (yosys
  ``equiv_*``).
* **Midstate load is a round of zeros.**  While idle the working registers and ``W`` are held
  at zero (cleared when the final block is done).  Loading ``a..h := H`` is then the same gated
  add with ``K = 0`` (entry 64 of the constant ROM) and ``W = 0``: no 256-bit load multiplexer.
* **Message schedule in block RAM.**  The 16-word window of earlier schedule words is written
  into two 16 x 32 block RAMs (2 EBRs each on iCE40), whose read ports give ``W[t-5]`` and
  ``W[t-13]`` of round ``t``; ``W[t-14]`` is the second port's word of the round before.  So
  round ``t`` computes ``W[t+2]`` into the register ``acc[1]`` one round ahead, its last adder
  in front of that flip-flop, and ``W[t]`` of the running round is a register (``acc[0]``),
  which keeps the schedule off the critical path.  The earlier transposed form (16 partial
  sums in flip-flops, every adder in front of one) cost about 350 logic cells more.
* **No input buffer.**  A message word goes straight into ``acc[0]`` while the previous round
  runs (one word of look-ahead, nothing more); ``ready`` is "``acc[0]`` is free for word 0..15
  of a block that still takes message words".
* **Round constants in block RAM.**  The 64 constants (plus the zero word) are a
  :class:`~amaranth.lib.memory.Memory` with a synchronous read port addressed with the *next*
  round number; ``rom_style`` keeps yosys from turning them into ~200 LUTs.
* **H is a ring.**  Read-out and midstate load share one word-serial path
  ``H0 <- H1 <- ... <- H7 <- (shift_in | H0)``: a 2:1 multiplexer in front of each ``H``
  flip-flop, which costs nothing extra.
* **Kept nets.**  Multi-operand sums and wide selects are built from explicitly kept nets
  (:func:`_add`, :func:`_net`): yosys would otherwise turn the sums into carry-save trees and
  ABC would re-derive the selects inside every bit's LUT, each doubling the LUTs involved.

Cost (yosys 0.70 ``synth_ice40`` + nextpnr 0.11 packing, iCE40UP5K)
------------------------------------------------------------------
About 1,300 LUT4s and 654 flip-flops with the iCE40 carry-cell gates, 6 EBRs (2 for the
constants, 4 for the message schedule); before packing, in the HSM (``mchsm build``'s per-module
table).  The round path ``h -> T1 -> a`` is the engine's longest.

Timing contract (clock cycles; a pulse is "at ``t``" when it is high in cycle ``t``)
----------------------------------------------------------------------------------
* ``resume`` at ``t`` (idle, without ``shift``): ``a..h := H`` in cycle ``t`` itself; ``ready``
  is already high in ``t`` (combinationally from ``resume``), so word 0 can be presented together
  with ``resume``; round 0 runs at ``t+1`` at the earliest.  ``busy`` is high from ``t+1``.
* ``resume`` together with ``shift`` (the 8th midstate word) or ``start`` (``H := IV``) at
  ``t``: the load is cycle ``t+1`` (``busy`` = 1, ``ready`` = 1 for word 0), round 0 at ``t+2``
  at the earliest.  Do not combine ``start`` with ``shift``.
* Word ``k`` of a block is taken while round ``k-1`` runs (word 0 during the load cycle or
  round 63 of the previous block); round ``k`` (``k`` < 16) runs once its word is in, so a word
  that is late by ``n`` cycles delays the block by ``n`` cycles and no more.  Rounds 16..63 take
  one clock each: 64 clocks per block at full rate, back-to-back blocks included.
* Final block: round 63 at ``T``, the ``fin`` cycle (``H`` takes the digest, ``busy`` still 1)
  at ``T+1``, ``done`` at ``T+2`` (one cycle, first idle cycle, ``busy`` = 0).  ``digest`` =
  ``H0`` is valid then, and ``shift``/``start``/``resume`` are already accepted in that cycle.
* Last word taken at cycle ``c`` as word ``r`` of a block, full rate: ``done`` at ``c + 66 - r``
  if the length still fits in the block (``nbytes`` < 4 and ``r`` <= 13, or ``nbytes`` = 4 and
  ``r`` <= 12), else one padding block later, at ``c + 130 - r``.  A one-block message takes
  ``start`` to ``done`` 67 cycles, ``resume`` to ``done`` 66.
* ``cut`` (held) after word 15 of a block was taken at ``c``: ``done`` at ``c + 51``; ``cut``
  while the engine waits for word 0 of a block: ``done`` 2 cycles later.
* HMAC-SHA256 with stored midstates (8 x ``shift & load``, ``resume`` with the 8th; message;
  from the ``done`` cycle on 8 x ``shift & load`` reading the inner digest and loading the
  opad midstate, ``resume`` with the 8th; the 8 digest words): 8 + 1 (load) + 64 n + 1 (fin)
  + 8 + 1 (load) + 64 + 1 (fin) + 1 (``done``) = 64 n + 85 cycles for n inner blocks, 213 for
  a 64-byte message (n = 2).
"""

from typing import cast

from amaranth.hdl import Cat, Const, Instance, Module, Mux, Signal, Value
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.vendor import LatticeICE40Platform

from mchsm.rtl.observe import ShaProbes
from mchsm.rtl.ram import NO_RW_CHECK, read_port

__all__ = ["IV", "MESSAGE_WORD", "SHA256", "K", "MessageStreamNames"]

#: one word of the engine's message stream (``SHA256.msg``): a big-endian 32-bit word, ``last``
#: on the final word of a message, and ``nbytes`` (0..4), the valid bytes of that final word
MESSAGE_WORD = data.StructLayout({"data": 32, "last": 1, "nbytes": 3})


#: SHA-256 initial hash value (FIPS 180-4, 5.3.3).
IV = (
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
    0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
)  # fmt: skip

#: SHA-256 round constants (FIPS 180-4, 4.2.2).
K = (
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4, 0xAB1C5ED5,
    0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE, 0x9BDC06A7, 0xC19BF174,
    0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F, 0x4A7484AA, 0x5CB0A9DC, 0x76F988DA,
    0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7, 0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967,
    0x27B70A85, 0x2E1B2138, 0x4D2C6DFC, 0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85,
    0xA2BFE8A1, 0xA81A664B, 0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070,
    0x19A4C116, 0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7, 0xC67178F2,
)  # fmt: skip


def _add(m: Module, name: str, *terms: Value, net: bool = True) -> Value:
    """32-bit modular sum as a chain of two-input adders, one kept net per partial sum.

    Without the ``keep`` yosys' ``alumacc`` merges a multi-operand sum into one ``$macc`` and
    maps it as a carry-save tree of full adders, which costs about twice the LUTs of iCE40
    carry chains (one LUT4 + SB_CARRY per bit and operand).  A sum that only feeds a register
    (``net=False``) is left as an expression: keeping it would force yosys to rebuild the net
    whenever it moves logic into the flip-flop's enable or reset.
    """
    acc = terms[0]
    for i, t in enumerate(terms[1:]):
        if i == len(terms) - 2 and not net:
            return cast(Value, (acc + t)[:32])
        s = Signal(32, name=f"{name}_{i}" if len(terms) > 2 else name, attrs={"keep": 1})
        m.d.comb += s.eq(acc + t)
        acc = s
    return acc


# LUT4 of an iCE40 carry cell computing "I1 + I2 + CI if I0 else I1"; the SB_CARRY beside it
# always adds I1 + I2 + CI, and its carry is simply not used by the output when I0 is low.
_ADD_IF_INIT = sum(
    (((i >> 1) ^ (i >> 2) ^ (i >> 3)) & 1 if i & 1 else (i >> 1) & 1) << i for i in range(16)
)


def _add_if(m: Module, name: str, g: Value, x: Value, y: Value, ice40: bool) -> Value:
    """``x + y`` if ``g`` else ``x`` (32 bits), as one logic cell per bit on iCE40.

    Generic logic needs a gating LUT per bit in front of the adder (``x + (g ? y : 0)``).  An
    iCE40 carry cell's LUT has a fourth input that yosys leaves unused; driving it with ``g``
    folds the gate into the adder, which saves 32 logic cells per use.
    """
    if not ice40:
        return cast(Value, (x + Mux(g, y, 0))[:32])
    o = Signal(32, name=name)
    ci: Value = Const(0)
    for i in range(32):
        m.submodules[f"{name}_lut{i}"] = Instance(
            "SB_LUT4", p_LUT_INIT=Const(_ADD_IF_INIT, 16),
            i_I0=g, i_I1=x[i], i_I2=y[i], i_I3=ci, o_O=o[i],
        )  # fmt: skip
        if i < 31:
            co = Signal(name=f"{name}_c{i}")
            m.submodules[f"{name}_cy{i}"] = Instance(
                "SB_CARRY", i_I0=x[i], i_I1=y[i], i_CI=ci, o_CO=co
            )
            ci = co
    return o


def _net(m: Module, name: str, value: Value) -> Signal:
    """A kept 1-bit control net.

    ABC (delay-driven) otherwise re-derives a select from its inputs inside every bit's LUT of
    a 32- or 256-bit wide gate, which doubles those LUTs.
    """
    s = Signal(name=name, attrs={"keep": 1})
    m.d.comb += s.eq(value)
    return s


def _big_sigma0(x: Value) -> Value:
    return cast(Value, x.rotate_right(2) ^ x.rotate_right(13) ^ x.rotate_right(22))


def _big_sigma1(x: Value) -> Value:
    return cast(Value, x.rotate_right(6) ^ x.rotate_right(11) ^ x.rotate_right(25))


def _small_sigma0(x: Value) -> Value:
    return cast(Value, x.rotate_right(7) ^ x.rotate_right(18) ^ (x >> 3))


def _small_sigma1(x: Value) -> Value:
    return cast(Value, x.rotate_right(17) ^ x.rotate_right(19) ^ (x >> 10))


class MessageStreamNames:
    """The fields of ``msg`` under the names the engine's loose ports had (``data``, ``valid``,
    ``last``, ``nbytes``, ``ready``), read and driven by the formal harnesses in
    :mod:`mchsm.rtl.formal` (edited on another branch).  Not ports: the port is ``msg``."""

    msg: stream.Interface

    @property
    def _word(self) -> data.View:
        return cast(data.View, self.msg.payload)

    @property
    def data(self) -> Value:
        return cast(Value, self._word.data)

    @property
    def last(self) -> Value:
        return cast(Value, self._word.last)

    @property
    def nbytes(self) -> Value:
        return cast(Value, self._word.nbytes)

    @property
    def valid(self) -> Value:
        return self.msg.valid

    @property
    def ready(self) -> Value:
        return self.msg.ready


class SHA256(MessageStreamNames, wiring.Component):
    """SHA-256 engine: message stream in, chaining value ``H`` out through a word ring.

    Ports
    -----
    msg : In(stream.Signature(MESSAGE_WORD))
        Message stream of big-endian 32-bit words (``payload.data``); a word moves in a cycle
        where ``valid & ready``.  ``payload.last`` marks the final word, which carries
        ``payload.nbytes`` (0..4) valid bytes in its most significant bytes; ``nbytes`` = 0
        only terminates a message whose length is a multiple of 4 (including the empty
        message).  The engine appends ``0x80``,
        zeros and the 64-bit bit length itself, with an extra block when needed.
    start, resume
        Sampled only while idle.  ``start`` begins a message from the IV (byte count 0);
        ``resume`` begins one from the current ``H`` (a midstate loaded through the ring), with
        byte count 64, i.e. one block already hashed.
    cut
        Ends the message at a block boundary *without* padding, so that ``H`` is a midstate
        (e.g. of the 64-byte ipad/opad key block).  A level, honoured while ``busy`` once all
        16 words of a block are in (and no ``last`` was given), or while the engine waits for
        word 0 of a block; ``ready`` is low while it is honoured.  ``done`` then follows as for
        a final block: 2 cycles after round 63, or 2 cycles after ``cut`` between blocks.
    shift, load, shift_in, digest
        While idle, ``shift`` rotates ``H0 <- H1 <- ... <- H7 <- (shift_in if load else H0)``;
        ``digest`` is ``H0``.  Eight plain shifts read the digest out and leave ``H`` as it was;
        eight ``shift & load`` replace it; both at once read one value out while writing another.
    busy, done
        ``busy`` from the cycle after ``start``/``resume`` until the final block is compressed;
        ``done`` pulses in the first idle cycle after, when ``H`` holds the digest.

    See the module docstring for the exact cycle timing.

    Parameters
    ----------
    ice40 : bool or None
        Fold the ``H`` gates into the carry LUTs with ``SB_LUT4``/``SB_CARRY`` instances
        (about 250 LCs less).  ``None`` (default) decides by the platform: on for an iCE40
        platform, off otherwise (simulation, other FPGAs).  ``True`` gets the iCE40 netlist
        from ``rtlil.convert`` without a platform.
    """

    msg: In(stream.Signature(MESSAGE_WORD))

    start: In(1)
    resume: In(1)
    cut: In(1)
    shift: In(1)
    load: In(1)
    shift_in: In(32)
    digest: Out(32)
    busy: Out(1)
    done: Out(1)

    def __init__(self, *, ice40: bool | None = None) -> None:
        self.ice40 = ice40
        super().__init__()

    def _ice40(self, platform: object) -> bool:
        if self.ice40 is None:
            return isinstance(platform, LatticeICE40Platform)
        return self.ice40

    def elaborate(self, platform: object) -> Module:
        m = Module()
        word = self._word  # the message stream's payload

        # Round constants, plus a zero at index 64 that is addressed whenever the next cycle
        # is not a round: the midstate-load cycle then computes T1 = K + W = 0 for free.
        # `rom_style`: yosys would otherwise judge 65 x 32 bits small enough for LUTs (~200).
        m.submodules.krom = krom = memory.Memory(
            shape=32, depth=65, init=[*K, 0], attrs={"rom_style": "block"}
        )
        kport = krom.read_port()
        k = kport.data

        # ---- registers -----------------------------------------------------------------------
        # Those that need no reset are reset_less, so that the domain reset does not take the
        # flip-flops' synchronous set/reset inputs away from the uses below.
        st = [Signal(32, name=f"st_{n}") for n in "abcdefgh"]  # zero while idle
        hv = [Signal(32, name=f"h{i}", reset_less=True) for i in range(8)]
        # Message schedule: acc[0] is W[t] of the round being executed (a register, zero while
        # idle), acc[1] the next schedule word W[t+1] (t >= 15), computed one round ahead so
        # that the three schedule adders are off the round's path.  The window of earlier words
        # is in block RAM (see the "schedule" section below); only W[t-14] is a register.
        acc = [Signal(32, name=f"acc{i}", reset_less=i > 0) for i in range(2)]
        w14 = Signal(32, reset_less=True)  # W[rnd-14] while round rnd executes (rnd >= 14)
        count = Signal(32, reset_less=True)  # message bytes so far

        busy = Signal()
        ldpend = Signal()  # load a..h in this cycle: after `start`, or `resume` with `shift`
        fin = Signal()  # cycle after the final round 63: H takes the digest, a..h clear
        done = Signal()
        rnd = Signal(6)  # round to execute next
        wv = Signal()  # acc[0] holds W[rnd] (always true in rounds 16..63)
        pad = Signal()  # message input finished, words are generated
        need80 = Signal()  # the 0x80 marker still has to be emitted as a whole word
        lenblk = Signal()  # this block ends with the length: it is the final one

        # ---- control -------------------------------------------------------------------------
        idle = ~busy
        cmd_start = idle & self.start
        cmd_resume = idle & self.resume & ~self.start
        do_shift = idle & self.shift & ~self.start
        # a..h := H in this cycle.  A `resume` that comes with the last midstate `shift` is
        # deferred by one cycle (through `ldpend`, like `start`), so that the adders only ever
        # see H itself and never the value H is about to take.
        ld_now = (cmd_resume & ~self.shift) | ldpend

        run = busy & ~ldpend & ~fin
        exe = run & wv  # round `rnd` executes in this cycle
        q = Mux(exe, rnd + 1, rnd)[:6]  # round whose word acc[0] must hold next
        q_in = q[4:] == 0  # ... and it is a message word (0..15), not a schedule word
        # acc[0] can take a word from the stream or the pad generator: it is empty or its word
        # is consumed in this cycle.  During the load cycle (`resume`, or the one after `start`)
        # that is word 0, so a message can be presented together with `resume`.
        slot = (ld_now | run) & q_in & (~wv | exe)
        # `cut`: all words of this block are in (the block becomes the final one, unpadded), or
        # the last block is already chained and word 0 of the next one has not come (finish).
        cut_ok = self.cut & run & ~pad
        cut_blk = cut_ok & wv & ((rnd[4:] != 0) | (rnd[:4] == 15))
        cut_gap = cut_ok & ~wv & (rnd == 0)
        take = slot & ~pad & ~cut_ok & self.msg.valid
        gen = slot & pad
        chain = exe & (rnd == 63)
        finish = chain & (lenblk | cut_blk)

        m.d.comb += [
            self.msg.ready.eq(slot & ~pad & ~cut_ok),
            self.busy.eq(busy),
            self.done.eq(done),
            self.digest.eq(hv[0]),
        ]

        # ---- next message word: stream data, 0x80 marker, zeros, length ----------------------
        # Every select is zero outside its case, so the word is a plain OR of gated terms.
        nb = word.nbytes
        tlast = take & word.last
        # byte j is bits 31-8j..24-8j of the big-endian word
        keep = [_net(m, f"keep{j}", take & (~word.last | (nb > j))) for j in range(4)]
        mark = [
            _net(m, f"mark{j}", (tlast & (nb == j)) | (gen & need80 if j == 0 else 0))
            for j in range(4)
        ]
        sel_hi = _net(m, "sel_hi", gen & lenblk & (q[:4] == 14))
        sel_lo = _net(m, "sel_lo", gen & lenblk & (q[:4] == 15))
        bits = []
        for bit in range(32):
            j = 3 - bit // 8
            v = word.data[bit] & keep[j]
            if bit % 8 == 7:
                v = v | mark[j]
            length = sel_hi & count[29 + bit] if bit < 3 else sel_lo & count[bit - 3]
            bits.append(v | length)
        w_in = Cat(*bits)

        # ---- message schedule ----------------------------------------------------------------
        # W[j] = s1(W[j-2]) + W[j-7] + s0(W[j-15]) + W[j-16].  Round s (14 <= s <= 61) computes
        # W[s+2] into acc[1] from W[s] (acc[0]), W[s-5] and W[s-13] (two block RAM copies of
        # the 16-word window, read a cycle ahead) and W[s-14] (w14: W[s-13] of round s-1).
        # Every executed round writes its W[s] into slot s mod 16.  A read port is addressed
        # with `q` (the next round), so its data in a cycle is that of `rnd`, stalled or not;
        # the slots read, (q - 5) and (q - 13) mod 16, are never the slot written in the same
        # cycle (rnd = q - 1), so the ports need no read-during-write logic (mchsm.rtl.ram).
        # Only schedule words are ever read: rounds 0..15 take message words, and each of
        # W[s-5], W[s-13], W[s-14] for s >= 14 was written by this block's rounds.
        w_r = acc[0]
        wmem_attrs = {**NO_RW_CHECK, "ram_style": "block"}
        m.submodules.wmem_a = wmem_a = memory.Memory(shape=32, depth=16, init=[], attrs=wmem_attrs)
        m.submodules.wmem_b = wmem_b = memory.Memory(shape=32, depth=16, init=[], attrs=wmem_attrs)
        w5 = read_port(m, wmem_a, "w5")  # W[rnd-5]
        w13 = read_port(m, wmem_b, "w13")  # W[rnd-13]
        m.d.comb += [w5.addr.eq((q - 5)[:4]), w13.addr.eq((q - 13)[:4])]
        for mem in (wmem_a, wmem_b):
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(rnd[:4]), wp.data.eq(w_r), wp.en.eq(exe)]
        with m.If(exe | take | gen):
            m.d.sync += [acc[0].eq(Mux(q_in, w_in, acc[1])), wv.eq(~q_in | take | gen)]
        with m.If(exe):
            m.d.sync += [
                w14.eq(w13.data),
                acc[1].eq(
                    _add(m, "w_next", _small_sigma1(w_r), w5.data, _small_sigma0(w13.data), w14,
                         net=False)
                ),
            ]  # fmt: skip

        # ---- one round, with H folded in -----------------------------------------------------
        # H enters the adders on the last round and in the load cycle (a kept net, see `_net`).
        g_any = _net(m, "g_any", chain | ld_now)
        a, b, c, d, e, f, g, h = st
        ch = (e & f) ^ (~e & g)
        maj = (a & b) ^ (a & c) ^ (b & c)
        t1 = _add(m, "t1", h, k, w_r, _big_sigma1(e), ch)
        t2 = _add(m, "t2", _big_sigma0(a), maj)
        pre = [_add(m, "ta", t1, t2), a, b, c, _add(m, "te", d, t1), e, f, g]
        nxt = [
            _add_if(m, f"n{n}", g_any, x, y, self._ice40(platform))
            for n, x, y in zip("abcdefgh", pre, hv, strict=True)
        ]
        with m.If(exe | ld_now):
            m.d.sync += [s.eq(n) for s, n in zip(st, nxt, strict=True)]

        # H takes the chained state from the registers in the cycle after round 63 (round 0 of
        # the next block, or the `fin` cycle), not from the adders: an adder output that also
        # fed the H multiplexer could not share a logic cell with its a..h flip-flop.
        capture = busy & ~ldpend & (rnd == 0)
        ring = [*hv[1:], Mux(self.load, self.shift_in, hv[0])]  # what H[i] takes on a shift
        with m.If(do_shift):
            m.d.sync += [hv[i].eq(ring[i]) for i in range(8)]
        with m.Elif(capture):
            m.d.sync += [hv[i].eq(st[i]) for i in range(8)]
        with m.If(cmd_start):
            m.d.sync += [hv[i].eq(IV[i]) for i in range(8)]

        # ---- constant ROM: K[rnd] in every round cycle, the zero word otherwise -------------
        round_next = (run & ~finish) | ld_now
        m.d.comb += kport.addr.eq(Mux(round_next, q, 64))

        # ---- sequencing ----------------------------------------------------------------------
        m.d.sync += [done.eq(fin), ldpend.eq(0), fin.eq(finish | cut_gap)]
        with m.If(exe):
            m.d.sync += rnd.eq(q)
        with m.If(tlast):
            m.d.sync += pad.eq(1)
            with m.If(nb[2]):  # 4 bytes: the marker is the next word
                m.d.sync += need80.eq(1)
            with m.Else():
                m.d.sync += lenblk.eq(q[:4] <= 13)
        with m.If(gen & need80):
            m.d.sync += [need80.eq(0), lenblk.eq(q[:4] <= 13)]
        with m.If(chain & pad & ~need80):
            m.d.sync += lenblk.eq(1)  # marker already out: the next block carries the length
        with m.If(cut_blk):
            m.d.sync += [pad.eq(1), lenblk.eq(1)]  # no more input; this block is the last
        with m.If(fin):
            # idle invariants: a..h = 0 and W = 0, so a load computes 0 + H
            m.d.sync += [s.eq(0) for s in st]
            m.d.sync += [acc[0].eq(0), wv.eq(0), busy.eq(0), pad.eq(0), lenblk.eq(0)]

        # `pad`, `need80` and `lenblk` are already clear while idle; word 0 may be taken in
        # the `resume` cycle itself, and its bytes count on top of the 64 of the midstate.
        inc = Mux(word.last, nb, 4)
        with m.If(cmd_start):
            m.d.sync += [busy.eq(1), ldpend.eq(1), count.eq(0)]
        with m.Elif(cmd_resume):
            m.d.sync += [busy.eq(1), ldpend.eq(self.shift), count.eq(Mux(take, inc, 0) | 64)]
        with m.Elif(take):
            # count + inc (inc <= 4) with the carry chain off the input's path: the upper 29
            # bits are count's own, or count's own + 1 (a chain from the register alone),
            # chosen by the carry out of a 3-bit add.  As one 32-bit add, the chain ran from
            # `valid`/`last`/`nbytes` (the core's stream) into `count`: the design's critical
            # path on the iCE40.
            low = count[:3] + inc
            m.d.sync += count.eq(Cat(low[:3], Mux(low[3], count[3:] + 1, count[3:])))

        # the control registers, for the formal proof of the engine's handshake
        # (mchsm.rtl.sha_contract); naming them adds no logic
        self.probes = ShaProbes(
            busy=busy, ldpend=ldpend, fin=fin, rnd=rnd, wv=wv, pad=pad, need80=need80,
            lenblk=lenblk,
        )  # fmt: skip
        return m
