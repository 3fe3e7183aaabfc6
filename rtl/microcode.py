"""The command engine's microcode: every HSM command as a short program of word-moving steps.

A command is a sequence of the same few steps: stream words from somewhere into the SHA engine,
read its digest out word by word into some memory, load an HMAC midstate from the key store,
wait for the engine.  Writing them as a program in block RAM rather than as ~110 states of a
state machine is what keeps the core small: a state costs logic (decoding, next-state terms,
a share of every control signal); a microinstruction costs 48 bits of a block RAM that the
design has to spare.  :class:`Assembler` turns the programs below into ROM words; the core
(``rtl/core.py``) reads them as :class:`MicroWord` views and runs them.

The layout of a microinstruction (LSB first) is :class:`MicroWord`: Amaranth's ``lib.data``
struct, so the assembler packs it with ``Layout.const`` and the core reads named, enum-shaped
fields (``u.op``, ``u.src.feed``, ``u.dst.res``); no bit offset is written by hand.
"""

# no `from __future__ import annotations`: data.Struct reads its field annotations as shapes
import enum as py_enum
from dataclasses import dataclass, field

from amaranth.hdl import Const
from amaranth.lib import data, enum

from mchsm.constants import RESULT_SIZE, Cmd

__all__ = [
    "ENTRY",
    "WORD_NAMES",
    "WORD_WIDTH",
    "Assembler",
    "Copy",
    "Dests",
    "Dst",
    "Feed",
    "Load",
    "MicroWord",
    "Op",
    "Pop",
    "Source",
    "Special",
    "Target",
    "U",
    "Word",
    "assemble",
]


class Op(enum.IntEnum, shape=4):
    """What a microinstruction does (it ends after ``cnt + 1`` words, or when its event comes)."""

    NEXT = 0  #: nothing: go on
    JUMP = 1  #: go to ``target``
    CALL = 2  #: push the return address, set ``r_slot`` from ``load``, go to ``target``
    RET = 3  #: go back
    FEED = 4  #: stream ``cnt + 1`` words from ``src`` into the SHA engine (``last`` ends it)
    STREAM = 5  #: stream the command's data, ``LEN`` bytes, into the SHA engine as its end
    START = 6  #: begin a message from the SHA-256 IV
    WAIT = 7  #: wait for the SHA engine's ``done`` (RING waits by itself)
    CUT = 8  #: end the message at this block boundary unpadded, wait for ``done``
    RING = 9  #: 8 shifts of H: digest out to ``dst``, midstate in from ``load``, ``resume``
    COPY = 10  #: copy ``cnt + 1`` words from ``src`` (a :class:`Copy`) to the result window
    WRES = 11  #: write words ``wbase ..`` of the word table to the result window
    POP = 12  #: command data into scratch (``src``: a :class:`Pop`)
    SPECIAL = 13  #: a hand-written step (``target``: a :class:`Special`)
    DONE = 14  #: finish with OK and a ``target``-byte result
    JUMP_IF_LONG = 15  #: go to ``target`` if the command's data is longer than a key block


class Feed(enum.IntEnum, shape=4):
    """Sources of a FEED."""

    FIFO = 0  #: command data
    FIFO_CAPTURE = 1  #: command data of UPDATE: v, v' to registers, R' to scratch U
    CTX_M = 2  #: M of the command's context
    CTX_R_CALLER = 3  #: current reference of the calling task's context
    SCR_T = 4  #: the digest buffer
    SCR_DEV = 5  #: the device id
    SCR_U = 6  #: the reference of an update in flight
    WORD = 7  #: the word table from ``wbase``
    KEY_IPAD = 8  #: the key block XOR ipad
    KEY_OPAD = 9  #: the key block XOR opad
    REFS = 10  #: the current references of every context selected by ATTEST


class Dst(py_enum.IntFlag):
    """Where RING puts the digest words (the assembler's spelling; the ROM word holds them as
    the named bits of :class:`Dests`)."""

    RES = 1  #: result window from ``rbase``
    CTX_M = 2  #: M of the command's context
    SCR_T = 4  #: the digest buffer
    SCR_K = 8  #: the key block (first 8 words)
    KEY = 16  #: the key store slot ``r_slot`` (``opad`` flag: its second half)


class Load(enum.IntEnum, shape=3):
    """Key store slots (ipad midstate; opad follows) RING loads, or CALL sets ``r_slot`` to."""

    NONE = 0
    ROOT = 1
    ATT = 2
    UPD = 3
    HMAC = 4  #: the calling caller's own HMAC key slot
    TASK = 5
    SLOT_OPAD = 6  #: the opad midstate of the slot in ``r_slot``


#: word address of each fixed slot's ipad midstate in the key store; the HMAC slot is the
#: calling caller's own, after these (rtl/core.py, ``HMAC_SLOT0``)
SLOT_ADDRESS = {Load.ROOT: 0, Load.ATT: 16, Load.UPD: 32, Load.TASK: 48}


# Copy and Pop are as wide as Feed: ``src`` is compared whole, whichever of them it holds
class Copy(enum.IntEnum, shape=4):
    CTX_READ = 0  #: v, M, R of the command's context (READ_CTX)
    SCR_DEV = 1  #: the device id, zero until provisioned


class Pop(enum.IntEnum, shape=4):
    DEV = 0  #: ``cnt + 1`` words to the device id
    KEY = 1  #: ``cnt + 1`` words to the key block
    KEY_BY_LEN = 2  #: ``ceil(LEN / 4)`` words to the key block, whose length becomes ``LEN``


class Special(enum.IntEnum, shape=8):
    MATCH = 0  #: MATCH[i] := v > 0 && M == R
    ZERO_M = 1  #: M[i] := 0, LOADED = ANOMALY = 0, failures = 0
    SET_ANOMALY = 2
    NEW_PERIOD = 3
    PROVISIONED = 4
    SET_LOADED = 5
    KLEN32 = 6  #: the key block is a 32-byte digest
    KEY_DONE = 7  #: the HMAC key slot belongs to the caller
    ATT_SEL = 8  #: take sel from the command data
    ATT_CHECK = 9  #: ERR_SELECT / ERR_COUNTER, else start hashing references
    ATT_COUNT = 10  #: the attestation counter moves on
    UPD_COMPARE = 11  #: the tag against the computed MAC, in constant time
    UPD_CHECK = 12  #: ERR_AUTH / ERR_VERSION / ERR_ROLLBACK
    UPD_WRITE_R = 13  #: R' into the other bank, MATCH for it on the way
    UPD_WRITE_V = 14  #: v' into the other bank
    UPD_FLIP = 15  #: the one clock edge at which the update takes effect


class Word(py_enum.IntEnum):
    """Entries of the word table (the core builds the values), as ``wbase`` and the core's word
    select number them; runs streamed together are adjacent."""

    zero = 0
    att = 1
    upd = 2
    ack = 3
    kdf_att0 = 4
    kdf_att1 = 5
    kdf_att2 = 6
    kdf_upd0 = 7
    kdf_upd1 = 8
    kdf_upd2 = 9
    kdf_tsk0 = 10
    kdf_tsk1 = 11
    kdf_tsk2 = 12
    sel = 13
    ok = 14
    ctr1 = 15
    ctx = 16
    vold = 17
    vnew = 18
    owner = 19
    info = 20
    ctr = 21
    okv = 22
    loadedv = 23
    anomalyv = 24
    flags = 25


#: the word table's entries in order
WORD_NAMES = tuple(w.name for w in Word)


# The ROM word.  Field annotations are Amaranth shapes, not Python types (mypy: valid-type,
# switched off for mchsm.rtl in pyproject.toml).
class Dests(data.Struct):
    """The memories a RING writes the digest words to, one bit each (:class:`Dst`'s order)."""

    res: 1  #: the result window from ``rbase``
    ctx_m: 1  #: M of the command's context
    scr_t: 1  #: the digest buffer
    scr_k: 1  #: the key block (first 8 words)
    key: 1  #: the key store slot ``r_slot`` (``src.opad``: its second half)


assert [name.upper() for name, _ in Dests.as_shape()] == [d.name for d in Dst], "as Dst"


class Source(data.Union):
    """``src``: what the operation reads, as its operation names it."""

    feed: Feed  #: FEED
    copy: Copy  #: COPY
    pop: Pop  #: POP
    opad: 1  #: RING into the key store: the opad half of the slot


class Target(data.Union):
    """``target``: an address (JUMP, CALL, JUMP_IF_LONG), a :class:`Special` or a result length
    in bytes (DONE)."""

    addr: 8
    special: Special
    reslen: 8


class MicroWord(data.Struct):
    """One microinstruction as the ROM holds it, least significant field first.  What each
    field means for each operation: :class:`Op`."""

    op: Op
    cnt: 5  #: words - 1
    src: Source
    wbase: 5  #: first entry of the word table (a :class:`Word`)
    rbase: 5  #: first word of the result window
    dst: Dests
    last: 1  #: the FEED's last word ends the message
    resume: 1  #: RING: the engine goes on from the loaded midstate
    tee: 1  #: FEED of words: also to the result window
    load: Load
    target: Target


WORD_WIDTH = MicroWord.as_shape().size
#: which member of :class:`Source` each operation that reads ``src`` names
_SOURCE_OF = {Op.FEED: "feed", Op.COPY: "copy", Op.POP: "pop", Op.RING: "opad"}


@dataclass(frozen=True)
class U:
    """One microinstruction.  ``target`` may be a label (str) until assembly."""

    op: Op
    cnt: int = 0
    src: int = 0
    wbase: int = 0
    rbase: int = 0
    dst: int = 0
    last: bool = False
    resume: bool = False
    tee: bool = False
    load: Load = Load.NONE
    target: int | str = 0


@dataclass
class Assembler:
    """Collects labelled programs and resolves labels to ROM addresses."""

    code: list[U] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)

    def label(self, name: str) -> None:
        if name in self.labels:
            raise ValueError(f"label {name!r} defined twice")
        self.labels[name] = len(self.code)

    def __call__(self, *program: U | str) -> None:
        for item in program:
            if isinstance(item, str):
                self.label(item)
            else:
                self.code.append(item)

    def consts(self) -> list[data.Const]:
        """The program as ROM words: one :class:`MicroWord` constant per instruction."""
        layout = MicroWord.as_shape()
        out = []
        for i, u in enumerate(self.code):
            target = u.target
            if isinstance(target, str):
                if target not in self.labels:
                    raise ValueError(f"instruction {i}: no label {target!r}")
                target = self.labels[target]
            raw = {
                "op": u.op,
                "cnt": u.cnt,
                "src": u.src,
                "wbase": u.wbase,
                "rbase": u.rbase,
                "dst": u.dst,
                "last": u.last,
                "resume": u.resume,
                "tee": u.tee,
                "load": u.load,
                "target": target,
            }
            # Layout.const would truncate what does not fit: refused here instead
            for name, value in raw.items():
                if not 0 <= int(value) < 1 << layout[name].width:
                    raise ValueError(f"instruction {i} ({u}): {name}={value} does not fit")
            src = {_SOURCE_OF[u.op]: u.src} if u.op in _SOURCE_OF else {}
            if u.src and not src:
                raise ValueError(f"instruction {i} ({u}): {u.op.name} reads no src")
            target_of = {Op.SPECIAL: "special", Op.DONE: "reslen"}.get(u.op, "addr")
            fields = {
                **raw,
                "src": src,
                "dst": {name.lower(): bool(u.dst & d) for name, d in Dst.__members__.items()},
                "target": {target_of: target},
            }
            out.append(layout.const(fields))
        return out

    def words(self) -> list[int]:
        """The ROM words as integers (the bits of :meth:`consts`)."""
        return [Const.cast(c).value for c in self.consts()]


def _w(name: str) -> int:
    return Word[name].value


def feed(
    src: Feed, count: int, *, last: bool = False, wbase: int = 0, tee: bool = False, rbase: int = 0
) -> U:
    return U(Op.FEED, cnt=count - 1, src=src, last=last, wbase=wbase, tee=tee, rbase=rbase)


def ring(
    *,
    load: Load = Load.NONE,
    dst: int = 0,
    rbase: int = 0,
    resume: bool = False,
    opad: bool = False,
) -> U:
    # for Dst.KEY, ``src`` says which half of the slot in r_slot receives the digest
    return U(Op.RING, load=load, dst=dst, rbase=rbase, resume=resume, src=int(opad))


def special(what: Special) -> U:
    return U(Op.SPECIAL, target=int(what))


def call(target: str, slot: Load = Load.NONE) -> U:
    return U(Op.CALL, target=target, load=slot)


def done(cmd: Cmd) -> U:
    return U(Op.DONE, target=RESULT_SIZE[cmd])


#: first instruction of every command
ENTRY: dict[Cmd, str] = {cmd: cmd.name for cmd in Cmd}


def assemble() -> Assembler:
    """The whole program: subroutines, then one program per command."""
    a = Assembler()
    # MID: the key block (scratch K, r_klen bytes) -> ipad/opad midstates at slot r_slot
    a(
        "MID",
        U(Op.START),
        feed(Feed.KEY_IPAD, 16),
        U(Op.CUT),
        ring(dst=Dst.KEY),
        U(Op.START),
        feed(Feed.KEY_OPAD, 16),
        U(Op.CUT),
        ring(dst=Dst.KEY, opad=True),
        U(Op.RET),
    )
    # TAIL: outer hash of an HMAC with the opad midstate of slot r_slot; the digest is the MAC
    a(
        "TAIL",
        ring(load=Load.SLOT_OPAD, dst=Dst.SCR_T, resume=True),
        feed(Feed.SCR_T, 8, last=True),
        U(Op.RET),
    )
    # DERIVE: scratch K := HMAC(K_root, label [|| u32 i || R[i]])
    a(
        "DER_ATT",
        ring(load=Load.ROOT, resume=True),
        feed(Feed.WORD, 3, wbase=_w("kdf_att0"), last=True),
        U(Op.JUMP, target="DER_END"),
    )
    a(
        "DER_UPD",
        ring(load=Load.ROOT, resume=True),
        feed(Feed.WORD, 3, wbase=_w("kdf_upd0"), last=True),
        U(Op.JUMP, target="DER_END"),
    )
    a(
        "DER_TSK",
        ring(load=Load.ROOT, resume=True),
        feed(Feed.WORD, 3, wbase=_w("kdf_tsk0")),
        feed(Feed.WORD, 1, wbase=_w("owner")),
        feed(Feed.CTX_R_CALLER, 8, last=True),
    )
    a("DER_END", call("TAIL", Load.ROOT), ring(dst=Dst.SCR_K), special(Special.KLEN32), U(Op.RET))

    a(
        ENTRY[Cmd.PROVISION],
        U(Op.POP, src=Pop.DEV, cnt=3),
        U(Op.POP, src=Pop.KEY, cnt=7),
        special(Special.KLEN32),
        call("MID", Load.ROOT),
        call("DER_ATT"),
        call("MID", Load.ATT),
        call("DER_UPD"),
        call("MID", Load.UPD),
        special(Special.PROVISIONED),
        done(Cmd.PROVISION),
    )
    a(
        ENTRY[Cmd.STATUS],
        U(Op.WRES, wbase=_w("info"), cnt=4, rbase=0),
        U(Op.COPY, src=Copy.SCR_DEV, cnt=3, rbase=5),
        done(Cmd.STATUS),
    )
    a(
        ENTRY[Cmd.READ_CTX],
        U(Op.COPY, src=Copy.CTX_READ, cnt=16, rbase=1),
        U(Op.WRES, wbase=_w("flags"), cnt=0, rbase=0),
        done(Cmd.READ_CTX),
    )
    a(ENTRY[Cmd.RESET], special(Special.ZERO_M), special(Special.MATCH), done(Cmd.RESET))
    a(ENTRY[Cmd.SET_ANOMALY], special(Special.SET_ANOMALY), done(Cmd.SET_ANOMALY))
    a(ENTRY[Cmd.NEW_PERIOD], special(Special.NEW_PERIOD), done(Cmd.NEW_PERIOD))
    a(
        ENTRY[Cmd.EXTEND],
        U(Op.START),
        feed(Feed.CTX_M, 8),
        feed(Feed.FIFO, 8, last=True),
        ring(dst=Dst.CTX_M | Dst.RES),
        special(Special.MATCH),
        done(Cmd.EXTEND),
    )
    a(
        ENTRY[Cmd.MEASURE],
        U(Op.START),
        U(Op.STREAM),
        ring(dst=Dst.RES | Dst.SCR_T),
        U(Op.START),
        feed(Feed.CTX_M, 8),
        feed(Feed.SCR_T, 8, last=True),
        ring(dst=Dst.CTX_M),
        special(Special.SET_LOADED),
        special(Special.MATCH),
        done(Cmd.MEASURE),
    )
    a(
        ENTRY[Cmd.ATTEST],
        special(Special.ATT_SEL),
        special(Special.ATT_CHECK),
        feed(Feed.REFS, 8, last=True),
        ring(load=Load.ATT, dst=Dst.SCR_T, resume=True),
        feed(Feed.WORD, 1, wbase=_w("att")),
        feed(Feed.SCR_DEV, 4),
        feed(Feed.FIFO, 8),
        feed(Feed.WORD, 3, wbase=_w("sel"), tee=True, rbase=0),  # sel, ok, ctr+1
        feed(Feed.SCR_T, 8, last=True),
        call("TAIL", Load.ATT),
        ring(dst=Dst.RES, rbase=3),
        special(Special.ATT_COUNT),
        done(Cmd.ATTEST),
    )
    a(
        ENTRY[Cmd.UPDATE],
        ring(load=Load.UPD, resume=True),
        feed(Feed.WORD, 1, wbase=_w("upd")),
        feed(Feed.SCR_DEV, 4),
        feed(Feed.WORD, 1, wbase=_w("ctx")),
        feed(Feed.FIFO_CAPTURE, 10, last=True),
        call("TAIL", Load.UPD),
        special(Special.UPD_COMPARE),
        special(Special.UPD_CHECK),
        ring(load=Load.UPD, resume=True),
        feed(Feed.WORD, 1, wbase=_w("ack")),
        feed(Feed.SCR_DEV, 4),
        feed(Feed.WORD, 3, wbase=_w("ctx")),  # ctx, v, v'
        feed(Feed.SCR_U, 8, last=True),
        call("TAIL", Load.UPD),
        ring(dst=Dst.RES, rbase=1),
        U(Op.WRES, wbase=_w("vnew"), cnt=0, rbase=0),
        special(Special.UPD_WRITE_R),
        special(Special.UPD_WRITE_V),
        special(Special.UPD_FLIP),
        done(Cmd.UPDATE),
    )
    a(
        ENTRY[Cmd.TASK_MAC],
        call("DER_TSK"),
        call("MID", Load.TASK),
        ring(load=Load.TASK, resume=True),
        U(Op.STREAM),
        call("TAIL", Load.TASK),
        ring(dst=Dst.RES),
        done(Cmd.TASK_MAC),
    )
    a(ENTRY[Cmd.HASH], U(Op.START), U(Op.STREAM), ring(dst=Dst.RES), done(Cmd.HASH))
    a(
        ENTRY[Cmd.HMAC_KEY],
        U(Op.JUMP_IF_LONG, target="KEY_LONG"),
        U(Op.POP, src=Pop.KEY_BY_LEN),
        "KEY_MID",
        call("MID", Load.HMAC),
        special(Special.KEY_DONE),
        done(Cmd.HMAC_KEY),
        "KEY_LONG",
        U(Op.START),
        U(Op.STREAM),
        ring(dst=Dst.SCR_K),
        special(Special.KLEN32),
        U(Op.JUMP, target="KEY_MID"),
    )
    a(
        ENTRY[Cmd.HMAC],
        ring(load=Load.HMAC, resume=True),
        U(Op.STREAM),
        call("TAIL", Load.HMAC),
        ring(dst=Dst.RES),
        done(Cmd.HMAC),
    )
    missing = [cmd for cmd in Cmd if ENTRY[cmd] not in a.labels]
    assert not missing, missing
    return a
