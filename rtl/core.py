"""The multi-context HSM core: the mailbox, the command engine, context store and key store.

The bus side - registers, the rule that one caller holds the mailbox, the data FIFO and the
result window - is :class:`~mchsm.rtl.mailbox.Mailbox`; the engine here sees one command at a
time through its :class:`~mchsm.rtl.mailbox.CommandSignature`, always from the holder.

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
    HMAC ipad/opad midstates of K_root, K_att, K_upd, the current task key and one imported HMAC
    key per caller (manager and every task: no caller can replace another's).  Its read port is
    wired to the SHA engine's midstate input and nowhere else: the bus has no path to it.
``scratch``
    the device id, a digest buffer, the key block being turned into midstates and the reference
    of an update in flight.  Only the device id words are ever copied to the result window.
``resmem`` (in the mailbox)
    the result window, readable by the bus (by the mailbox's holder only), erased whenever the
    mailbox changes hands.

Persistent state (keys, references, versions, MATCH, the attestation counter, the provisioned
flag) survives the logic reset, like non-volatile storage would; a warm reset clears the mailbox,
any running command and the LOADED/ANOMALY flags, so every task must be measured again.
"""

from __future__ import annotations

from collections.abc import Callable

from amaranth.hdl import Array, Cat, Const, Module, Mux, ResetInserter, Signal, Value
from amaranth.lib import data, enum, memory, wiring
from amaranth.lib.wiring import In, Out

from mchsm.constants import (
    ACK_LABEL,
    ATT_LABEL,
    BUS_ADDR_WIDTH,
    CALLER_BITS,
    DEFAULT_CONTEXTS,
    KDF_ATT,
    KDF_TASK,
    KDF_UPD,
    MANAGER,
    MONITOR_BUDGET,
    MONITOR_FAIL_LIMIT,
    PROTOCOL_VERSION,
    UPD_LABEL,
    Access,
    Cmd,
    CtxFlag,
    Status,
    StatusInfoWord,
    check_build,
    command_spec,
)
from mchsm.rtl import microcode as uc
from mchsm.rtl import wishbone
from mchsm.rtl.mailbox import FLAWS, Mailbox
from mchsm.rtl.monitor import Monitor
from mchsm.rtl.observe import CoreProbes
from mchsm.rtl.ram import NO_RW_CHECK, read_port
from mchsm.rtl.sequencer import Sequencer
from mchsm.rtl.sha256 import SHA256

__all__ = ["CORE_FLAWS", "MchsmCore"]

#: Deliberate flaws of the engine, one for each property of the formal proofs that no
#: mailbox flaw (:data:`mchsm.rtl.mailbox.FLAWS`) breaks.  The proofs must reject each (see
#: ``docs/proofs.md``); no build ever sets one, and without them the engine elaborates to exactly
#: the logic it has without this parameter.
CORE_FLAWS = {
    "key_to_result": "a debug path: the key store's read port is ORed into the device-id words "
    "STATUS copies to the result window",
    "reprovision": "PROVISION is not refused once provisioned: keys and device id can be "
    "written again",
    "flip_split": "UPDATE flips the reference bank and clears LOADED one clock edge apart",
    "counter_wraps": "the monitor's command count does not saturate: it wraps to 0",
    "shared_hmac_slot": "every caller's imported HMAC key goes into the manager's slot",
    "empty_stream_hangs": "a command with streamed data of length 0 waits for a data word "
    "that never comes",
    "done_late": "a command that completes with OK is held 16 cycles before it is done",
    "key_timing": "loading a key midstate stalls a cycle when bit 0 of its first word is set "
    "(a timing leak of the key store)",
}

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
# key store: 16-word slots (ipad midstate, then opad midstate) of K_root, K_att, K_upd, the
# current task key, then one HMAC key slot per caller (manager, tasks 1..N)
KEY_SLOT_WORDS = 16
HMAC_SLOT0 = 4  # slot index of the manager's HMAC key; caller c has HMAC_SLOT0 + c


def key_depth(contexts: int) -> int:
    """Words of the key store for ``contexts`` task contexts."""
    return KEY_SLOT_WORDS * (HMAC_SLOT0 + contexts + 1)


class DataSrc(enum.Enum, shape=3):
    """What the SHA engine takes this cycle (``dsrc``)."""

    NONE = 0  #: nothing (no word is valid)
    FIFO = 1  #: the command data
    CTX = 2  #: the context store's read port
    SCR = 3  #: the scratch memory's read port
    KEY = 4  #: the key block XOR ipad/opad
    WORD = 5  #: the word table


class ResultSrc(enum.Enum, shape=2):
    """What the result window's write port writes (``rsrc``)."""

    DIGEST = 0
    WORD = 1  #: the word table
    CTX = 2  #: the context store's read port
    DEV = 3  #: a device id word (zero until provisioned)


class CtxSrc(enum.Enum, shape=2):
    """What the context store's write port writes (``cwsrc``)."""

    ZERO = 0
    DIGEST = 1
    SCR = 2  #: the scratch memory's read port
    WORD = 3  #: the word table


class ScratchSrc(enum.Enum, shape=1):
    """What the scratch memory's write port writes (``swsrc``)."""

    DATA = 0  #: the command data
    DIGEST = 1


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
    flaws : frozenset of str
        Deliberate flaws of the mailbox (:data:`mchsm.rtl.mailbox.FLAWS`) or the engine
        (:data:`CORE_FLAWS`) that the isolation tests and the proofs must catch; empty in
        every real build.
    engine : callable or None
        Makes the SHA-256 engine; ``None`` (every build) is :class:`~mchsm.rtl.sha256.SHA256`.
        The formal proofs pass an abstraction of it (:mod:`mchsm.rtl.sha_contract`).

    Attributes
    ----------
    bus : In(wishbone.Signature(addr_width=6, data_width=32, features={"err"}))
        The mailbox (see ``docs/registers.md``).
    caller : In(6)
        Caller id of the current bus cycle, driven by the trusted kernel side.
    irq : Out(1)
        High while a command is done and the interrupt is enabled.
    probes : CoreProbes
        Internal signals the formal properties name (set by ``elaborate``).
    """

    def __init__(
        self,
        contexts: int = DEFAULT_CONTEXTS,
        *,
        budget: int = MONITOR_BUDGET,
        fail_limit: int = MONITOR_FAIL_LIMIT,
        flaws: frozenset[str] = frozenset(),
        engine: Callable[[], wiring.Component] | None = None,
    ) -> None:
        # a core refused by the checks below was never meant to be built: no "created but
        # never used" warning for it when it is collected (Amaranth's own idiom, hdl._ir)
        self._MustUse__silence = True
        check_build(contexts, budget, fail_limit)
        unknown = set(flaws) - set(FLAWS) - set(CORE_FLAWS)
        if unknown:
            known = ", ".join([*FLAWS, *CORE_FLAWS])
            raise ValueError(f"flaws must be among {known}, not {sorted(unknown)!r}")
        self.flaws = frozenset(flaws)  #: deliberate flaws for the tests and proofs
        self.engine = engine
        self.contexts = contexts
        self.budget = budget
        self.fail_limit = fail_limit
        super().__init__(
            {
                "bus": In(
                    wishbone.Signature(addr_width=BUS_ADDR_WIDTH, data_width=32, features={"err"})
                ),
                "caller": In(CALLER_BITS),
                "irq": Out(1),
            }
        )
        self._MustUse__silence = False  # accepted: warn again if it is never elaborated

    def elaborate(self, platform: object) -> Module:
        m = Module()
        n = self.contexts
        iw = max(1, (n - 1).bit_length())  # context index width
        flaw = {name: name in self.flaws for name in CORE_FLAWS}

        # ---- submodules ----------------------------------------------------------------------
        sha = SHA256() if self.engine is None else self.engine()
        sha_rst = Signal()
        m.submodules.sha = ResetInserter(sha_rst)(sha)
        m.submodules.mailbox = mbox = Mailbox(n, flaws=self.flaws & set(FLAWS))
        wiring.connect(m, wiring.flipped(self.bus), mbox.bus)
        m.d.comb += [mbox.caller.eq(self.caller), self.irq.eq(mbox.irq)]
        link = mbox.cmd  # the one command at a time, from the mailbox's holder
        data_in = link.data  # its data words

        # No microinstruction reads a word in the cycle it writes it (RING writes digests while
        # it reads the key store only from a slot other than the one it fills; UPD_WRITE_R reads
        # M and writes the other bank's R): the read ports need no collision logic (rtl/ram.py).
        mem = {"init": [], "attrs": NO_RW_CHECK}
        m.submodules.ctxmem = ctxmem = memory.Memory(shape=32, depth=n * CTX_STRIDE, **mem)
        m.submodules.scratch = scratch = memory.Memory(shape=32, depth=SCRATCH_DEPTH, **mem)
        m.submodules.keymem = keymem = memory.Memory(shape=32, depth=key_depth(n), **mem)
        ctx_rd, ctx_wr = read_port(m, ctxmem, "ctx_rd"), ctxmem.write_port()
        ctx_rd2 = read_port(m, ctxmem, "ctx_rd2")  # M and R side by side for the MATCH check
        scr_rd, scr_wr = read_port(m, scratch, "scr_rd"), scratch.write_port()
        key_rd, key_wr = read_port(m, keymem, "key_rd"), keymem.write_port()
        res_wr = link.result  # the engine's writes into the mailbox's result window

        # ---- the command, as the mailbox holds it while it runs ----------------------------
        r_len = link.length
        r_cmd = link.code
        r_ctx = link.ctx
        r_owner = link.caller
        start_cmd = link.start
        r_reslen = Signal(8)  # result length the command ends with

        # ---- engine registers ----------------------------------------------------------------
        r_fin = Signal(Status)  # status the command ends with
        r_left = Signal(32)  # bytes of a data stream not yet fed to the engine
        r_long = Signal()  # LEN > 64: a key longer than a block (JUMP_IF_LONG)
        r_len_words = Signal(5)  # ceil(LEN / 4) for POP KEY_BY_LEN (LEN <= 64 then)
        k = Signal(6)
        primed = Signal()
        # ATTEST's selection: its N context bits, and whether any bit above them was set (then
        # ATT_CHECK refuses it, so only the N bits are ever hashed or returned)
        r_sel = Signal(n)
        r_sel_high = Signal()
        r_ok = Signal(n)
        r_vold = Signal(32)
        r_vnew = Signal(32)
        r_ci = Signal(6)  # context being streamed by ATTEST
        r_klen = Signal(7)  # bytes of the key block in scratch K
        kw = (key_depth(n) - 1).bit_length()  # key store address width
        r_slot = Signal(kw)  # key store slot a subroutine works on (word address)

        # ---- persistent state (survives the logic reset) -------------------------------------
        provisioned = Signal(reset_less=True)
        counter = Signal(32, reset_less=True)
        bank = Signal(n, reset_less=True)
        match = Signal(n, reset_less=True)
        hk_valid = Signal(n + 1, reset_less=True)  # caller c has imported an HMAC key
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

        busy = Signal()
        m.d.comb += link.busy.eq(busy)

        # ---- the monitor: per task, commands this period and failures since RESET -----------
        m.submodules.monitor = monitor = Monitor(
            n, self.budget, self.fail_limit, wraps=flaw["counter_wraps"]
        )
        m.d.comb += [
            monitor.caller.eq(r_owner),
            monitor.start.eq(start_cmd),
            monitor.status.eq(r_fin),
            monitor.index.eq(idx),
        ]
        with m.If(monitor.over_budget):  # flagged as the command starts (the engine is idle)
            m.d.sync += anomaly.bit_select((r_owner - 1)[:iw], 1).eq(1)

        # ---- engine --------------------------------------------------------------------------
        m.d.comb += sha_rst.eq(start_cmd)
        with m.If(start_cmd):
            m.d.sync += [
                r_reslen.eq(0),
                k.eq(0),
                primed.eq(0),
                r_left.eq(r_len),
                # LEN is fixed while the command runs: what the microcode asks of it is
                # registered here, off the path into the microcode ROM's address
                r_long.eq(r_len > 64),
                r_len_words.eq((r_len + 3) >> 2),
            ]

        # ---- datapath ------------------------------------------------------------------------
        # Every wide value (the engine's input word, a result word, memory write data) is chosen
        # once, here, by a narrow code that the running microinstruction sets.
        dsrc = Signal(DataSrc)  # what the SHA engine takes
        widx = Signal(5)  # which entry of the word table (a uc.Word)
        rsrc = Signal(ResultSrc)  # result window data
        cwsrc = Signal(CtxSrc)  # context store data
        swsrc = Signal(ScratchSrc)  # scratch data
        opad = Signal()  # the key block is XORed with opad, else ipad
        pop = Signal()  # take a word of command data without hashing it
        neq = Signal()  # sticky "some compared words differed"

        counter_next = Signal(32)
        m.d.comb += counter_next.eq(counter + 1)
        visible = Mux(r_owner == MANAGER, Const((1 << n) - 1, n), (Const(1, n) << cidx)[:n])
        info = data.View(StatusInfoWord, Signal(32, name="info"))  # STATUS's first result word
        m.d.comb += [
            info.provisioned.eq(provisioned),
            info.contexts.eq(n),
            info.version.eq(PROTOCOL_VERSION),
        ]
        flag_bits = {
            CtxFlag.LOADED: loaded,
            CtxFlag.ANOMALY: anomaly,
            CtxFlag.MATCH: match,
            CtxFlag.OK: okmask,
        }
        flags = Cat(*(flag_bits[f].bit_select(idx, 1) for f in sorted(CtxFlag)))
        kdf = [w for label in (KDF_ATT, KDF_UPD, KDF_TASK) for w in _words(label)]
        values: dict[str, Value | int] = {
            "zero": 0,
            "att": _words(ATT_LABEL)[0],
            "upd": _words(UPD_LABEL)[0],
            "ack": _words(ACK_LABEL)[0],
            **{
                f"kdf_{lab}{i}": kdf[3 * j + i]
                for j, lab in enumerate(("att", "upd", "tsk"))
                for i in range(3)
            },
            "sel": r_sel,
            "ok": r_ok,
            "ctr1": counter_next,
            "ctx": r_ctx,
            "vold": r_vold,
            "vnew": r_vnew,
            "owner": r_owner,
            "info": info.as_value(),
            "ctr": counter,
            "okv": okmask & visible,
            "loadedv": loaded & visible,
            "anomalyv": anomaly & visible,
            "flags": flags,
        }
        assert set(values) == set(uc.WORD_NAMES)
        word = Signal(32)
        m.d.comb += word.eq(
            Array(
                [
                    v if isinstance(v, Value) else Const(v, 32)
                    for v in (values[name] for name in uc.WORD_NAMES)
                ]
            )[widx]
        )

        masks = []
        for j in range(4):  # byte j of key word k is key byte 4k+j: zero beyond r_klen
            masks.append(Mux(Cat(Const(j, 2), k[:4]) < r_klen, 0xFF, 0) << (24 - 8 * j))
        dev_word = Mux(provisioned, scr_rd.data, 0)
        if flaw["key_to_result"]:
            dev_word = dev_word | key_rd.data
        key_word = (scr_rd.data & (masks[0] | masks[1] | masks[2] | masks[3])) ^ Mux(
            opad, OPAD, IPAD
        )

        with m.Switch(dsrc):
            with m.Case(DataSrc.FIFO):
                m.d.comb += [sha.data.eq(data_in.payload), sha.valid.eq(data_in.valid)]
            with m.Case(DataSrc.CTX):
                m.d.comb += [sha.data.eq(ctx_rd.data), sha.valid.eq(primed)]
            with m.Case(DataSrc.SCR):
                m.d.comb += [sha.data.eq(scr_rd.data), sha.valid.eq(primed)]
            with m.Case(DataSrc.KEY):
                m.d.comb += [sha.data.eq(key_word), sha.valid.eq(primed)]
            with m.Case(DataSrc.WORD):
                m.d.comb += [sha.data.eq(word), sha.valid.eq(1)]
        result_data = {
            ResultSrc.DIGEST: sha.digest,
            ResultSrc.WORD: word,
            ResultSrc.CTX: ctx_rd.data,
            ResultSrc.DEV: dev_word,
        }
        ctx_data = {
            CtxSrc.ZERO: Const(0, 32),
            CtxSrc.DIGEST: sha.digest,
            CtxSrc.SCR: scr_rd.data,
            CtxSrc.WORD: word,
        }
        fire = Signal()  # a word moves into the engine this cycle
        m.d.comb += [
            fire.eq(sha.valid & sha.ready),
            data_in.ready.eq(((dsrc == DataSrc.FIFO) & fire) | pop),
            res_wr.data.eq(Array([result_data[s] for s in ResultSrc])[Value.cast(rsrc)]),
            ctx_wr.data.eq(Array([ctx_data[s] for s in CtxSrc])[Value.cast(cwsrc)]),
            scr_wr.data.eq(Mux(swsrc == ScratchSrc.DIGEST, sha.digest, data_in.payload)),
            key_wr.data.eq(sha.digest),
        ]

        # ---- prechecks (checks 1-6 of the spec, all before any data) -------------------------
        pre = Signal(Status)
        caller_bad = r_owner > n
        ctx_in_range = (r_ctx >= 1) & (r_ctx <= n)
        # The command table decoded once into a few rule bits, then every check computed once
        # (in the order of the spec's table) instead of one chain of checks per command: the
        # same statuses for ~150 LUT4s less.
        known = Signal()
        by_manager = Signal()  # Access.MANAGER
        by_task = Signal()  # Access.TASK
        by_owner = Signal()  # Access.MANAGER_OR_OWN
        needs_prov = Signal()
        refuses_prov = Signal()
        on_context = Signal()
        fixed_len = Signal()
        lengths = [command_spec(cmd).length or 0 for cmd in Cmd]
        length = Signal(range(max(lengths) + 1))
        is_task_mac = Signal()
        is_hmac = Signal()
        with m.Switch(r_cmd):
            for cmd in Cmd:
                spec = command_spec(cmd)
                with m.Case(cmd):
                    m.d.comb += [
                        known.eq(1),
                        by_manager.eq(spec.access is Access.MANAGER),
                        by_task.eq(spec.access is Access.TASK),
                        by_owner.eq(spec.access is Access.MANAGER_OR_OWN),
                        needs_prov.eq(spec.provisioned is True),
                        refuses_prov.eq(spec.provisioned is False and not flaw["reprovision"]),
                        on_context.eq(spec.context),
                        fixed_len.eq(spec.length is not None),
                        length.eq(spec.length or 0),
                        is_task_mac.eq(cmd is Cmd.TASK_MAC),
                        is_hmac.eq(cmd is Cmd.HMAC),
                    ]
        denied = (
            caller_bad
            | (by_manager & (r_owner != MANAGER))
            | (by_task & (r_owner == MANAGER))
            | (by_owner & (r_owner != MANAGER) & (r_ctx != r_owner))
        )
        checks: list[tuple[Value, Status]] = [
            (~known, Status.ERR_UNKNOWN_CMD),
            (denied, Status.ERR_DENIED),
            (needs_prov & ~provisioned, Status.ERR_NOT_PROVISIONED),
            (refuses_prov & provisioned, Status.ERR_PROVISIONED),
            (Mux(on_context, ~ctx_in_range, r_ctx != 0), Status.ERR_CONTEXT),
            (fixed_len & (r_len != length), Status.ERR_LENGTH),
            (is_task_mac & ~okmask.bit_select(cidx, 1), Status.ERR_NOT_TRUSTED),
            (is_hmac & ~hk_valid.bit_select(r_owner, 1), Status.ERR_NO_KEY),
        ]
        with m.If(checks[0][0]):
            m.d.comb += pre.eq(checks[0][1])
        for cond, status in checks[1:]:
            with m.Elif(cond):
                m.d.comb += pre.eq(status)

        # ---- the microcoded engine -----------------------------------------------------------
        program = uc.assemble()
        m.submodules.sequencer = seq = Sequencer(program)
        u = seq.word  # the running microinstruction, a uc.MicroWord
        advance = Signal()  # the running microinstruction is complete
        m.d.comb += seq.advance.eq(advance)
        kk = Mux(fire, k + 1, k)  # the word after this cycle (memories answer a cycle late)

        def finish(status: Status | Value) -> None:
            m.d.sync += r_fin.eq(status)
            late = flaw["done_late"] and isinstance(status, Status) and status is Status.OK
            m.next = "LATE" if late else "FINISH"

        def step(last: Value | int) -> None:
            """Advance k; after word ``last``, complete the microinstruction."""
            with m.If(k == last):
                m.d.sync += [k.eq(0), primed.eq(0)]
                m.d.comb += advance.eq(1)
            with m.Else():
                m.d.sync += k.eq(k + 1)

        def primed_step(go: Value) -> None:
            """Memory sources: one cycle to present the first address, then a word per ``go``."""
            with m.If(~primed):
                m.d.sync += primed.eq(1)
            with m.Elif(go):
                step(u.cnt)

        def slot_address(load: Value) -> Value:
            """Key store address of a slot: fixed ones from the table, HMAC the caller's own."""
            slots = Array([Const(uc.SLOT_ADDRESS.get(code, 0), kw) for code in uc.Load])
            fixed = slots[load]
            own_hmac = Cat(Const(0, 4), HMAC_SLOT0 + r_owner)  # (HMAC_SLOT0 + caller) * 16
            if flaw["shared_hmac_slot"]:
                own_hmac = Const(HMAC_SLOT0 * KEY_SLOT_WORDS, kw)
            return Mux(load == uc.Load.HMAC, own_hmac, fixed)

        def feed(src: uc.Feed) -> None:
            m.d.comb += [sha.nbytes.eq(4), sha.last.eq(u.last & (k == u.cnt))]
            if src in (uc.Feed.FIFO, uc.Feed.FIFO_CAPTURE):
                m.d.comb += dsrc.eq(DataSrc.FIFO)
                with m.If(fire):
                    if src is uc.Feed.FIFO_CAPTURE:  # UPDATE: v, v', then R' kept for later
                        with m.If(k == 0):
                            m.d.sync += r_vold.eq(data_in.payload)
                        with m.Elif(k == 1):
                            m.d.sync += r_vnew.eq(data_in.payload)
                        with m.Else():
                            m.d.comb += [scr_wr.addr.eq(at(S_U, k - 2, 3)), scr_wr.en.eq(1)]
                    step(u.cnt)
            elif src is uc.Feed.WORD:
                m.d.comb += [dsrc.eq(DataSrc.WORD), widx.eq(u.wbase + k)]
                with m.If(u.tee):
                    m.d.comb += [
                        rsrc.eq(ResultSrc.WORD),
                        res_wr.addr.eq(u.rbase + k),
                        res_wr.en.eq(fire),
                    ]
                with m.If(fire):
                    step(u.cnt)
            elif src is uc.Feed.REFS:  # R of every selected context, in ascending order
                higher = Cat(*[r_sel[i] & (r_ci < i) for i in range(n)])
                next_ci = _lowest_set(higher, n)
                wrap = k == 7
                more = higher != 0
                m.d.comb += [
                    dsrc.eq(DataSrc.CTX),
                    ctx_rd.addr.eq(
                        Mux(fire & wrap, active_r(next_ci, Const(0, 3)), active_r(r_ci, kk))
                    ),
                    sha.last.eq(wrap & ~more),
                ]
                with m.If(~primed):
                    m.d.sync += primed.eq(1)
                with m.Elif(fire):
                    with m.If(wrap):
                        m.d.sync += [k.eq(0), r_ci.eq(next_ci)]
                        with m.If(~more):
                            m.d.sync += primed.eq(0)
                            m.d.comb += advance.eq(1)
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
            else:
                if src is uc.Feed.CTX_M:
                    m.d.comb += [dsrc.eq(DataSrc.CTX), ctx_rd.addr.eq(m_at(idx, kk))]
                elif src is uc.Feed.CTX_R_CALLER:
                    m.d.comb += [dsrc.eq(DataSrc.CTX), ctx_rd.addr.eq(active_r(cidx, kk))]
                elif src is uc.Feed.SCR_T:
                    m.d.comb += [dsrc.eq(DataSrc.SCR), scr_rd.addr.eq(at(S_T, kk, 3))]
                elif src is uc.Feed.SCR_DEV:
                    m.d.comb += [dsrc.eq(DataSrc.SCR), scr_rd.addr.eq(at(S_DEV, kk, 2))]
                elif src is uc.Feed.SCR_U:
                    m.d.comb += [dsrc.eq(DataSrc.SCR), scr_rd.addr.eq(at(S_U, kk, 3))]
                else:  # the key block XOR ipad or opad
                    m.d.comb += [
                        dsrc.eq(DataSrc.KEY),
                        opad.eq(src is uc.Feed.KEY_OPAD),
                        scr_rd.addr.eq(at(S_K, kk, 4)),
                    ]
                primed_step(fire)

        def stream() -> None:
            """The whole command data (``LEN`` bytes, any length) as the end of a message."""
            empty = Const(0) if flaw["empty_stream_hangs"] else r_left == 0
            with m.If(empty):  # empty message: one empty last word
                m.d.comb += [
                    dsrc.eq(DataSrc.WORD),
                    widx.eq(uc.Word.zero),
                    sha.last.eq(1),
                    sha.nbytes.eq(0),
                ]
                with m.If(fire):
                    m.d.comb += advance.eq(1)
            with m.Else():
                # r_left <= 4 without a 32-bit comparator: its carry chain fed the engine's
                # `last` and byte count, the design's critical path (rtl docs, "Timing")
                tail = (r_left[3:] == 0) & ~(r_left[2] & (r_left[:2] != 0))
                m.d.comb += [
                    dsrc.eq(DataSrc.FIFO),
                    sha.last.eq(tail),
                    sha.nbytes.eq(Mux(tail, r_left[:3], 4)),
                ]
                with m.If(fire):
                    m.d.sync += r_left.eq(Mux(tail, 0, Cat(r_left[:2], r_left[2:] - 1)))
                    m.d.comb += advance.eq(tail)

        def ring() -> None:
            """Eight shifts of H: digest out to the ``dst`` memories, a midstate in from the key
            store (``load``), ``resume`` with the last shift; they start once the engine is
            idle, so a RING after the last word of a message needs no WAIT."""
            load = u.load
            loading = load != uc.Load.NONE
            slot = Mux(load == uc.Load.SLOT_OPAD, r_slot | 8, slot_address(load))
            # the first key word is addressed while the engine still finishes a message, and
            # the first shift happens in the very cycle it is done: no cycle waits for another
            active = Mux(loading, primed, 1) & ~sha.busy
            if flaw["key_timing"]:
                stalled = Signal()
                stall = loading & (k == 0) & key_rd.data[0] & ~stalled
                m.d.sync += stalled.eq(stall)
                active = active & ~stall
            m.d.comb += key_rd.addr.eq(Cat(Mux(active, k + 1, k)[:3], slot[3:]))
            with m.If(loading & ~primed):
                m.d.sync += primed.eq(1)
            dst = u.dst
            m.d.comb += [
                sha.shift.eq(active),
                sha.load.eq(loading),
                sha.shift_in.eq(key_rd.data),
                sha.resume.eq(u.resume & active & (k == 7)),
                rsrc.eq(ResultSrc.DIGEST),
                res_wr.addr.eq(u.rbase + k),
                res_wr.en.eq(active & dst.res),
                cwsrc.eq(CtxSrc.DIGEST),
                ctx_wr.addr.eq(m_at(idx, k)),
                ctx_wr.en.eq(active & dst.ctx_m),
                swsrc.eq(ScratchSrc.DIGEST),
                scr_wr.addr.eq(Mux(dst.scr_k, at(S_K, k, 3), at(S_T, k, 3))),
                scr_wr.en.eq(active & (dst.scr_t | dst.scr_k)),
                key_wr.addr.eq(Cat(k[:3], u.src.opad, r_slot[4:])),
                key_wr.en.eq(active & dst.key),
            ]
            with m.If(active):
                step(7)

        def read_ctx_addr(i: Value) -> Value:
            return Mux(
                i == 0, v_at(idx, bank_i), Mux(i <= 8, m_at(idx, i - 1), r_at(idx, i - 9, bank_i))
            )

        def copy() -> None:
            """``cnt + 1`` words into the result window (memories answer a cycle late)."""
            with m.If(u.src.copy == uc.Copy.CTX_READ):
                m.d.comb += [ctx_rd.addr.eq(read_ctx_addr(k)), rsrc.eq(ResultSrc.CTX)]
            with m.Else():
                m.d.comb += [scr_rd.addr.eq(at(S_DEV, k, 2)), rsrc.eq(ResultSrc.DEV)]
            m.d.comb += [res_wr.addr.eq(u.rbase + k - 1), res_wr.en.eq(k != 0)]
            with m.If(k == u.cnt + 1):
                m.d.sync += k.eq(0)
                m.d.comb += advance.eq(1)
            with m.Else():
                m.d.sync += k.eq(k + 1)

        def pop_words() -> None:
            """Command data into scratch, as it arrives."""
            by_len = u.src.pop == uc.Pop.KEY_BY_LEN
            words = Mux(by_len, r_len_words, u.cnt + 1)
            m.d.comb += [
                pop.eq(1),
                swsrc.eq(ScratchSrc.DATA),
                scr_wr.en.eq(data_in.valid),
                scr_wr.addr.eq(Mux(u.src.pop == uc.Pop.DEV, at(S_DEV, k, 4), at(S_K, k, 4))),
            ]
            with m.If(by_len):
                m.d.sync += r_klen.eq(r_len[:7])
            with m.If(words == 0):
                m.d.comb += advance.eq(1)
            with m.Elif(data_in.valid):
                step(words - 1)

        def specials() -> None:
            sp = uc.Special
            with m.Switch(u.target.special):
                with m.Case(sp.MATCH):  # port 1 reads M[k], port 2 R[k] (k < 8), then v
                    m.d.comb += [
                        ctx_rd.addr.eq(m_at(idx, k)),
                        ctx_rd2.addr.eq(Mux(k == 8, v_at(idx, bank_i), r_at(idx, k, bank_i))),
                    ]
                    with m.If(k == 0):
                        m.d.sync += neq.eq(0)
                    with m.Elif(k <= 8):
                        m.d.sync += neq.eq(neq | (ctx_rd.data != ctx_rd2.data))
                    with m.If(k == 9):
                        m.d.sync += [
                            match.bit_select(idx, 1).eq(~neq & (ctx_rd2.data != 0)),
                            k.eq(0),
                        ]
                        m.d.comb += advance.eq(1)
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
                with m.Case(sp.ZERO_M):
                    m.d.comb += [
                        ctx_wr.addr.eq(m_at(idx, k)),
                        cwsrc.eq(CtxSrc.ZERO),
                        ctx_wr.en.eq(1),
                    ]
                    with m.If(k == 7):
                        m.d.sync += [
                            loaded.bit_select(idx, 1).eq(0),
                            anomaly.bit_select(idx, 1).eq(0),
                        ]
                        m.d.comb += monitor.forgive.eq(1)
                    step(7)
                with m.Case(sp.SET_ANOMALY):
                    m.d.sync += anomaly.bit_select(idx, 1).eq(1)
                    m.d.comb += advance.eq(1)
                with m.Case(sp.NEW_PERIOD):
                    m.d.comb += [monitor.new_period.eq(1), advance.eq(1)]
                with m.Case(sp.PROVISIONED):
                    m.d.sync += provisioned.eq(1)
                    m.d.comb += advance.eq(1)
                with m.Case(sp.SET_LOADED):
                    m.d.sync += loaded.bit_select(idx, 1).eq(1)
                    m.d.comb += advance.eq(1)
                with m.Case(sp.KLEN32):
                    m.d.sync += r_klen.eq(32)
                    m.d.comb += advance.eq(1)
                with m.Case(sp.KEY_DONE):
                    m.d.sync += hk_valid.bit_select(r_owner, 1).eq(1)
                    m.d.comb += advance.eq(1)
                with m.Case(sp.ATT_SEL):
                    m.d.comb += pop.eq(1)
                    with m.If(data_in.valid):
                        m.d.sync += [
                            r_sel.eq(data_in.payload[:n]),
                            r_sel_high.eq(data_in.payload[n:] != 0),
                        ]
                        m.d.comb += advance.eq(1)
                with m.Case(sp.ATT_CHECK):
                    with m.If((r_sel == 0) | r_sel_high):
                        finish(Status.ERR_SELECT)
                    with m.Elif(counter == U32_MAX):
                        finish(Status.ERR_COUNTER)
                    with m.Else():
                        m.d.comb += [sha.start.eq(1), advance.eq(1)]
                        m.d.sync += [r_ok.eq(r_sel & okmask), r_ci.eq(_lowest_set(r_sel, n))]
                with m.Case(sp.ATT_COUNT):
                    m.d.sync += counter.eq(counter_next)
                    m.d.comb += advance.eq(1)
                with m.Case(sp.UPD_COMPARE):  # constant time: all 8 words, whatever they hold
                    ready = data_in.valid & ~sha.busy
                    m.d.comb += [
                        pop.eq(ready),
                        sha.shift.eq(ready),
                        ctx_rd.addr.eq(v_at(idx, bank_i)),
                    ]
                    with m.If(ready):
                        m.d.sync += neq.eq(Mux(k == 0, 0, neq) | (sha.digest != data_in.payload))
                        step(7)
                with m.Case(sp.UPD_CHECK):
                    m.d.comb += ctx_rd.addr.eq(v_at(idx, bank_i))
                    with m.If(neq):
                        finish(Status.ERR_AUTH)
                    with m.Elif(r_vold != ctx_rd.data):
                        finish(Status.ERR_VERSION)
                    with m.Elif(r_vnew <= r_vold):
                        finish(Status.ERR_ROLLBACK)
                    with m.Else():
                        m.d.comb += advance.eq(1)
                with m.Case(sp.UPD_WRITE_R):  # R' into the other bank, comparing it with M
                    m.d.comb += [
                        scr_rd.addr.eq(at(S_U, k, 3)),
                        ctx_rd.addr.eq(m_at(idx, k)),
                        ctx_wr.addr.eq(r_at(idx, k - 1, ~bank_i)),
                        cwsrc.eq(CtxSrc.SCR),
                        ctx_wr.en.eq((k != 0) & (k <= 8)),
                    ]
                    with m.If(k == 0):
                        m.d.sync += neq.eq(0)
                    with m.Elif(k <= 8):
                        m.d.sync += neq.eq(neq | (scr_rd.data != ctx_rd.data))
                    with m.If(k == 8):
                        m.d.sync += k.eq(0)
                        m.d.comb += advance.eq(1)
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
                with m.Case(sp.UPD_WRITE_V):
                    m.d.comb += [
                        ctx_wr.addr.eq(v_at(idx, ~bank_i)),
                        cwsrc.eq(CtxSrc.WORD),
                        widx.eq(uc.Word.vnew),
                        ctx_wr.en.eq(1),
                        advance.eq(1),
                    ]
                with m.Case(sp.UPD_FLIP):  # the one clock edge at which the update takes effect
                    m.d.sync += [
                        bank.bit_select(idx, 1).eq(~bank_i),
                        match.bit_select(idx, 1).eq(~neq),
                    ]
                    if flaw["flip_split"]:  # LOADED a clock edge later
                        m.d.sync += late_clear.eq(1)
                    else:
                        m.d.sync += loaded.bit_select(idx, 1).eq(0)
                    m.d.comb += advance.eq(1)

        if flaw["flip_split"]:
            late_clear = Signal()
            with m.If(late_clear):
                m.d.sync += [loaded.bit_select(idx, 1).eq(0), late_clear.eq(0)]

        entry = {cmd: program.labels[uc.ENTRY[cmd]] for cmd in Cmd}

        with m.FSM(name="engine") as fsm:
            m.d.comb += busy.eq(~fsm.ongoing("IDLE"))

            with m.State("IDLE"), m.If(start_cmd):
                m.next = "PRECHECK"

            with m.State("PRECHECK"):
                with m.If(pre != Status.OK):
                    finish(pre)
                with m.Else():
                    m.d.comb += link.accept.eq(1)  # the mailbox now takes its data
                    with m.Switch(r_cmd):
                        for cmd, address in entry.items():
                            with m.Case(cmd):
                                m.d.comb += [seq.goto.eq(1), seq.target.eq(address)]
                    m.next = "RUN"

            with m.State("RUN"):
                op = uc.Op
                with m.Switch(u.op):
                    with m.Case(op.NEXT):
                        m.d.comb += advance.eq(1)
                    with m.Case(op.JUMP):
                        m.d.comb += [seq.goto.eq(1), seq.target.eq(u.target.addr)]
                    with m.Case(op.JUMP_IF_LONG):
                        with m.If(r_long):
                            m.d.comb += [seq.goto.eq(1), seq.target.eq(u.target.addr)]
                        with m.Else():
                            m.d.comb += advance.eq(1)
                    with m.Case(op.CALL):
                        m.d.comb += seq.call.eq(1)
                        with m.If(u.load != uc.Load.NONE):
                            m.d.sync += r_slot.eq(slot_address(u.load))
                    with m.Case(op.RET):
                        m.d.comb += seq.ret.eq(1)
                    with m.Case(op.FEED):
                        with m.Switch(u.src.feed):
                            for src in uc.Feed:
                                with m.Case(src):
                                    feed(src)
                    with m.Case(op.STREAM):
                        stream()
                    with m.Case(op.START):
                        m.d.comb += [sha.start.eq(1), advance.eq(1)]
                    with m.Case(op.WAIT):
                        m.d.comb += advance.eq(sha.done)
                    with m.Case(op.CUT):
                        m.d.comb += [sha.cut.eq(1), advance.eq(sha.done)]
                    with m.Case(op.RING):
                        ring()
                    with m.Case(op.COPY):
                        copy()
                    with m.Case(op.WRES):
                        m.d.comb += [
                            widx.eq(u.wbase + k),
                            rsrc.eq(ResultSrc.WORD),
                            res_wr.addr.eq(u.rbase + k),
                            res_wr.en.eq(1),
                        ]
                        step(u.cnt)
                    with m.Case(op.POP):
                        pop_words()
                    with m.Case(op.SPECIAL):
                        specials()
                    with m.Case(op.DONE):
                        m.d.sync += r_reslen.eq(u.target.reslen)
                        finish(Status.OK)
                with m.If(link.abort):
                    finish(Status.ERR_ABORTED)

            if flaw["done_late"]:
                late_count = Signal(4)
                with m.State("LATE"):
                    m.d.sync += late_count.eq(late_count + 1)
                    with m.If(late_count == 15):
                        m.next = "FINISH"

            with m.State("FINISH"):
                m.d.comb += [
                    sha_rst.eq(1),
                    link.done.eq(1),
                    link.status.eq(r_fin),
                    link.reslen.eq(Mux(r_fin == Status.OK, r_reslen, 0)),
                ]
                m.d.sync += [k.eq(0), primed.eq(0)]
                m.d.comb += monitor.finish.eq(1)
                with m.If(monitor.over_limit):
                    m.d.sync += anomaly.bit_select(cidx, 1).eq(1)
                m.next = "IDLE"

        self.probes = CoreProbes(
            mailbox_component=mbox,
            link=link,
            sha=sha,
            keymem=keymem,
            ctxmem=ctxmem,
            scratch=scratch,
            key_write=key_wr,
            ctx_write=ctx_wr,
            scratch_write=scr_wr,
            provisioned=provisioned,
            counter=counter,
            bank=bank,
            match=match,
            hk_valid=hk_valid,
            loaded=loaded,
            anomaly=anomaly,
            commands=monitor.commands,
            failures=monitor.failures,
            verdict=fsm.ongoing("RUN")
            & (u.op == uc.Op.SPECIAL)
            & (u.target.special == uc.Special.UPD_CHECK),
            tag_ok=~neq,
            running=fsm.ongoing("RUN"),
            pc=seq.pc,
            ret=(seq.ret0, seq.ret1),
            slot=r_slot,
        )
        return m
