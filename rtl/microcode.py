"""The command engine's microcode: every HSM command as a short program of word-moving steps.

A command is a sequence of the same few steps: stream words from somewhere into the SHA engine,
read its digest out word by word into some memory, load an HMAC midstate from the key store,
wait for the engine.  Writing them as a program in block RAM rather than as ~110 states of a
state machine is what keeps the core small: a state costs logic (decoding, next-state terms,
a share of every control signal); a microinstruction costs 48 bits of a block RAM that the
design has to spare.  :class:`Assembler` turns the programs below into ROM words; the core
(``rtl/core.py``) decodes the fields and runs them.

Field layout of a microinstruction (LSB first): see :data:`FIELDS`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from mchsm.constants import RESULT_SIZE, Cmd

__all__ = [
    "ENTRY",
    "FIELDS",
    "WORD_NAMES",
    "WORD_WIDTH",
    "Assembler",
    "Copy",
    "Dst",
    "Feed",
    "Load",
    "Op",
    "Pop",
    "Special",
    "U",
    "assemble",
]


class Op(enum.IntEnum):
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


class Feed(enum.IntEnum):
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


class Dst(enum.IntFlag):
    """Where RING puts the digest words."""

    RES = 1  #: result window from ``rbase``
    CTX_M = 2  #: M of the command's context
    SCR_T = 4  #: the digest buffer
    SCR_K = 8  #: the key block (first 8 words)
    KEY = 16  #: the key store slot ``r_slot`` (``opad`` flag: its second half)


class Load(enum.IntEnum):
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


class Copy(enum.IntEnum):
    CTX_READ = 0  #: v, M, R of the command's context (READ_CTX)
    SCR_DEV = 1  #: the device id, zero until provisioned


class Pop(enum.IntEnum):
    DEV = 0  #: ``cnt + 1`` words to the device id
    KEY = 1  #: ``cnt + 1`` words to the key block
    KEY_BY_LEN = 2  #: ``ceil(LEN / 4)`` words to the key block, whose length becomes ``LEN``


class Special(enum.IntEnum):
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


#: entries of the word table (the core builds the values); runs streamed together are adjacent
WORD_NAMES = (
    "zero", "att", "upd", "ack",
    "kdf_att0", "kdf_att1", "kdf_att2", "kdf_upd0", "kdf_upd1", "kdf_upd2",
    "kdf_tsk0", "kdf_tsk1", "kdf_tsk2",
    "sel", "ok", "ctr1",
    "ctx", "vold", "vnew",
    "owner",
    "info", "ctr", "okv", "loadedv", "anomalyv",
    "flags",
)  # fmt: skip

#: (name, width) of every field, least significant first
FIELDS = (
    ("op", 4), ("cnt", 5), ("src", 4), ("wbase", 5), ("rbase", 5), ("dst", 5),
    ("last", 1), ("resume", 1), ("tee", 1), ("load", 3), ("target", 8),
)  # fmt: skip
WORD_WIDTH = sum(width for _, width in FIELDS)


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

    def words(self) -> list[int]:
        out = []
        for i, u in enumerate(self.code):
            values = dict(u.__dict__)
            if isinstance(values["target"], str):
                if values["target"] not in self.labels:
                    raise ValueError(f"instruction {i}: no label {values['target']!r}")
                values["target"] = self.labels[values["target"]]
            word, shift = 0, 0
            for name, width in FIELDS:
                value = int(values[name])
                if not 0 <= value < (1 << width):
                    raise ValueError(f"instruction {i} ({u}): {name}={value} does not fit")
                word |= value << shift
                shift += width
            out.append(word)
        return out


def _w(name: str) -> int:
    return WORD_NAMES.index(name)


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


def special(what: Special, **kw: object) -> U:
    return U(Op.SPECIAL, target=int(what), **kw)  # type: ignore[arg-type]


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
