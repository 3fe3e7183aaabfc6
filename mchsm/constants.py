"""Every protocol and hardware constant of mchsm, in one place.

The golden model, the RTL, the host driver, the verifier, the generated documentation and the
ProVerif consistency test all import this module; nothing here is ever copied by hand.  The
command and status codes are Amaranth *shaped* enums so the RTL can use them directly in
``m.Case(...)`` while the host packs them with ``int(...)``.

See ``docs/protocol.md`` for what each value means.
"""

from __future__ import annotations

import struct

from amaranth.hdl import unsigned
from amaranth.lib import data, enum

from mchsm._errors import ArgumentError

__all__ = [
    "ACK_LABEL",
    "ATT_LABEL",
    "ATT_MESSAGE_SIZE",
    "BUS_ADDR_WIDTH",
    "CALLER_BITS",
    "CMD_SHAPE",
    "CONTEXT_COMMANDS",
    "DEFAULT_CONTEXTS",
    "DEVICE_ID_SIZE",
    "DIGEST_SIZE",
    "EVIDENCE_SIZE",
    "KDF_ATT",
    "KDF_TASK",
    "KDF_UPD",
    "MAGIC",
    "MANAGER",
    "MAX_CONTEXTS",
    "MONITOR_BUDGET",
    "MONITOR_FAIL_LIMIT",
    "NONCE_SIZE",
    "PROTOCOL_VERSION",
    "RESULT_WORDS",
    "ROOT_KEY_SIZE",
    "SHA_BLOCK_SIZE",
    "STATUS_SHAPE",
    "STATUS_TEXT",
    "UPD_LABEL",
    "UPD_MESSAGE_SIZE",
    "Access",
    "Cmd",
    "CtxFlag",
    "Reg",
    "Status",
    "check_build",
    "command_spec",
    "ctx_bit",
    "u32",
]
__all__ += [
    "ACK_FIELDS",
    "ATT_FIELDS",
    "EVIDENCE_FIELDS",
    "LABELS",
    "TASK_KDF_FIELDS",
    "U32_SIZE",
    "UPD_FIELDS",
    "Field",
]

# ---------------------------------------------------------------------------------------------
# Sizes (bytes)
# ---------------------------------------------------------------------------------------------

PROTOCOL_VERSION = 1
DIGEST_SIZE = 32  #: SHA-256 output, also the size of M[i], R[i], keys and tags
SHA_BLOCK_SIZE = 64  #: HMAC key block, RFC 2104 "B"
ROOT_KEY_SIZE = 32
DEVICE_ID_SIZE = 16
NONCE_SIZE = 32  #: attestation nonces are exactly 32 bytes (keeps every field word-aligned)
MANAGER = 0  #: caller id of the privileged manager/loader; tasks are 1..N
DEFAULT_CONTEXTS = 8
MAX_CONTEXTS = 32  #: the selection mask is a u32, bit i-1 for context i
RESULT_WORDS = 32  #: the result window holds up to 128 bytes
#: HSM monitor: commands a task may issue per monitoring period (NEW_PERIOD) before it is
#: flagged ANOMALY; 0 disables the budget
MONITOR_BUDGET = 64
#: HSM monitor: failed commands of a task (since its last RESET) that flag it ANOMALY; 0 disables
MONITOR_FAIL_LIMIT = 8
CALLER_BITS = 6  #: width of the caller-id sideband (ids 0..63; only 0..N are accepted)
BUS_ADDR_WIDTH = 6  #: Wishbone word-address width of the mailbox (64 words = 256 bytes)

# ---------------------------------------------------------------------------------------------
# Labels.  Every label is a whole number of 32-bit words so that every field of every MAC'd
# message starts on a word boundary: the hardware streams words, never shifts bytes.
# ---------------------------------------------------------------------------------------------

KDF_ATT = b"mchsm/v1/att"  #: K_att = HMAC(K_root, KDF_ATT)
KDF_UPD = b"mchsm/v1/upd"  #: K_upd = HMAC(K_root, KDF_UPD)
KDF_TASK = b"mchsm/v1/tsk"  #: K_task[i] = HMAC(K_root, KDF_TASK || u32(i) || R[i])
ATT_LABEL = b"ATT1"  #: first field of the attestation MAC input (under K_att)
UPD_LABEL = b"UPD1"  #: first field of the update authorisation MAC input (under K_upd)
ACK_LABEL = b"ACK1"  #: first field of the update acknowledgement MAC input (under K_upd)

#: "ATT1" || dev_id || nonce || u32 sel || u32 ok || u32 ctr || D
ATT_MESSAGE_SIZE = 4 + DEVICE_ID_SIZE + NONCE_SIZE + 3 * 4 + DIGEST_SIZE
#: "UPD1"/"ACK1" || dev_id || u32 i || u32 v || u32 v' || R'
UPD_MESSAGE_SIZE = 4 + DEVICE_ID_SIZE + 3 * 4 + DIGEST_SIZE
#: sel || ok || ctr || tag: what travels back for one attestation, whatever N is
EVIDENCE_SIZE = 3 * 4 + DIGEST_SIZE

# ---------------------------------------------------------------------------------------------
# The messages of the spec, field by field.  Names are the identifiers the models use (the
# label fields are named after the mchsm.constants attribute that holds their bytes); sizes are
# in bytes.  The protocol builders (sw/protocol.py) pack
# messages from these lists and the ProVerif consistency test checks the models against them.
# ---------------------------------------------------------------------------------------------

U32_SIZE = 4  #: every integer field of a MAC input is a big-endian u32

#: One field of a MAC'd message: (name in the models, size in bytes).
Field = tuple[str, int]

#: "ATT1" || dev_id || nonce || u32(sel) || u32(ok) || u32(ctr) || D  (section 5)
ATT_FIELDS: tuple[Field, ...] = (
    ("ATT_LABEL", len(ATT_LABEL)),
    ("dev_id", DEVICE_ID_SIZE),
    ("nonce", NONCE_SIZE),
    ("sel", U32_SIZE),
    ("ok", U32_SIZE),
    ("ctr", U32_SIZE),
    ("D", DIGEST_SIZE),
)
#: "UPD1" || dev_id || u32(i) || u32(v) || u32(v') || R'  (section 6, step 1)
UPD_FIELDS: tuple[Field, ...] = (
    ("UPD_LABEL", len(UPD_LABEL)),
    ("dev_id", DEVICE_ID_SIZE),
    ("i", U32_SIZE),
    ("v", U32_SIZE),
    ("v'", U32_SIZE),
    ("R'", DIGEST_SIZE),
)
#: "ACK1" || dev_id || u32(i) || u32(v) || u32(v') || R'  (section 6, step 3)
ACK_FIELDS: tuple[Field, ...] = (("ACK_LABEL", len(ACK_LABEL)), *UPD_FIELDS[1:])
#: "mchsm/v1/tsk" || u32(i) || R[i], the KDF input of K_task[i]  (section 2)
TASK_KDF_FIELDS: tuple[Field, ...] = (
    ("KDF_TASK", len(KDF_TASK)),
    ("i", U32_SIZE),
    ("R", DIGEST_SIZE),
)
#: u32(sel) || u32(ok) || u32(ctr) || tag: the evidence sent back (section 5, step 3)
EVIDENCE_FIELDS: tuple[Field, ...] = (
    ("sel", U32_SIZE),
    ("ok", U32_SIZE),
    ("ctr", U32_SIZE),
    ("tag", DIGEST_SIZE),
)

#: Every label constant a model declares, by its name in the models and in mchsm.constants.
LABELS: dict[str, bytes] = {
    "ATT_LABEL": ATT_LABEL,
    "UPD_LABEL": UPD_LABEL,
    "ACK_LABEL": ACK_LABEL,
    "KDF_ATT": KDF_ATT,
    "KDF_UPD": KDF_UPD,
    "KDF_TASK": KDF_TASK,
}


MAGIC = 0x4D434853  #: "MCHS", the ID register


def u32(value: int) -> bytes:
    """Big-endian unsigned 32-bit encoding used by every message field."""
    return struct.pack(">I", value)


def check_build(contexts: int, budget: int, fail_limit: int) -> None:
    """Refuse build parameters the HSM (model or RTL) cannot have."""
    if not isinstance(contexts, int) or not 1 <= contexts <= MAX_CONTEXTS:
        raise ArgumentError(f"contexts must be an integer in 1..{MAX_CONTEXTS}, not {contexts!r}")
    for name, value in (("budget", budget), ("fail_limit", fail_limit)):
        if not isinstance(value, int) or not 0 <= value <= 255:
            raise ArgumentError(f"{name} must be an integer in 0..255, not {value!r}")


def ctx_bit(ctx: int) -> int:
    """Selection-mask bit of context ``ctx`` (1..32): bit ``ctx - 1``."""
    if not 1 <= ctx <= MAX_CONTEXTS:
        raise ArgumentError(f"context must be in 1..{MAX_CONTEXTS}, not {ctx!r}")
    return 1 << (ctx - 1)


# ---------------------------------------------------------------------------------------------
# Commands and status codes
# ---------------------------------------------------------------------------------------------

CMD_SHAPE = 8
STATUS_SHAPE = 8


class Cmd(enum.IntEnum, shape=CMD_SHAPE):
    """HSM command codes (the low byte of the CMD register)."""

    PROVISION = 0x01
    STATUS = 0x02
    READ_CTX = 0x03
    RESET = 0x10
    EXTEND = 0x11
    MEASURE = 0x12
    SET_ANOMALY = 0x13
    NEW_PERIOD = 0x14
    ATTEST = 0x20
    UPDATE = 0x21
    TASK_MAC = 0x30
    HASH = 0x40
    HMAC_KEY = 0x41
    HMAC = 0x42


class Status(enum.IntEnum, shape=STATUS_SHAPE):
    """Result of every command.  Checked in the order of the table in ``docs/protocol.md``;
    what each means is :data:`STATUS_TEXT`."""

    OK = 0x00
    ERR_UNKNOWN_CMD = 0x01
    ERR_DENIED = 0x02
    ERR_NOT_PROVISIONED = 0x03
    ERR_PROVISIONED = 0x04
    ERR_CONTEXT = 0x05
    ERR_LENGTH = 0x06
    ERR_SELECT = 0x07
    ERR_AUTH = 0x08
    ERR_VERSION = 0x09
    ERR_ROLLBACK = 0x0A
    ERR_NOT_TRUSTED = 0x0B
    ERR_NO_KEY = 0x0C
    ERR_COUNTER = 0x0D
    ERR_ABORTED = 0x0E


#: what each status means, in words: the one text of the host's error messages, the C header's
#: comments and docs/registers.md
STATUS_TEXT: dict[Status, str] = {
    Status.OK: "success",
    Status.ERR_UNKNOWN_CMD: "the HSM does not know this command code",
    Status.ERR_DENIED: "this caller may not issue this command or name that context",
    Status.ERR_NOT_PROVISIONED: "the device has no root key yet (run PROVISION first)",
    Status.ERR_PROVISIONED: "the device is already provisioned; the root key is write-once",
    Status.ERR_CONTEXT: "the context argument is out of range for this device",
    Status.ERR_LENGTH: "the data length is wrong for this command",
    Status.ERR_SELECT: "the selection mask is empty or names contexts the device does not have",
    Status.ERR_AUTH: "the MAC tag does not verify (forged or for another device)",
    Status.ERR_VERSION: "the update is for a version that is not the current one (replayed?)",
    Status.ERR_ROLLBACK: "the update's new version is not newer than the current one",
    Status.ERR_NOT_TRUSTED: "the task is not in its reference state, so its key is unavailable",
    Status.ERR_NO_KEY: "no HMAC key was imported by this caller",
    Status.ERR_COUNTER: "the attestation counter is exhausted",
    Status.ERR_ABORTED: "the command was aborted before it finished; nothing changed",
}


class CtxFlag(enum.IntFlag):
    """Bits of the per-context flags word returned by READ_CTX."""

    LOADED = 1 << 0  #: a MEASURE completed since the last RESET/UPDATE
    ANOMALY = 1 << 1  #: set by SET_ANOMALY (or the HSM monitor); clears only on RESET
    MATCH = 1 << 2  #: M[i] == R[i] and a reference is installed (v[i] > 0)
    OK = 1 << 3  #: LOADED and MATCH and not ANOMALY


class Access(enum.Enum):
    """Who may issue a command."""

    ANY = "any caller"
    MANAGER = "manager only"
    TASK = "tasks only (own context)"
    MANAGER_OR_OWN = "manager (any context) or a task (its own context)"


class _Spec:
    """How the command engine checks one command before it touches any state."""

    __slots__ = ("access", "context", "length", "provisioned", "streamed")

    def __init__(
        self,
        access: Access,
        *,
        context: bool,
        length: int | None,
        provisioned: bool | None,
        streamed: bool = False,
    ) -> None:
        self.access = access
        self.context = context  #: takes a context argument 1..N (else it must be 0)
        self.length = length  #: exact data length in bytes, None for any length
        self.provisioned = provisioned  #: True needs K_root, False needs none, None don't care
        self.streamed = streamed  #: data is streamed and may be of any length

    def __repr__(self) -> str:
        return (
            f"_Spec({self.access.name}, context={self.context}, length={self.length}, "
            f"provisioned={self.provisioned})"
        )


_SPECS: dict[Cmd, _Spec] = {
    Cmd.PROVISION: _Spec(
        Access.MANAGER, context=False, length=DEVICE_ID_SIZE + ROOT_KEY_SIZE, provisioned=False
    ),
    Cmd.STATUS: _Spec(Access.ANY, context=False, length=0, provisioned=None),
    Cmd.READ_CTX: _Spec(Access.MANAGER_OR_OWN, context=True, length=0, provisioned=None),
    Cmd.RESET: _Spec(Access.MANAGER, context=True, length=0, provisioned=None),
    Cmd.EXTEND: _Spec(Access.MANAGER, context=True, length=DIGEST_SIZE, provisioned=None),
    Cmd.MEASURE: _Spec(Access.MANAGER, context=True, length=None, provisioned=None, streamed=True),
    Cmd.SET_ANOMALY: _Spec(Access.MANAGER, context=True, length=0, provisioned=None),
    Cmd.NEW_PERIOD: _Spec(Access.MANAGER, context=False, length=0, provisioned=None),
    Cmd.ATTEST: _Spec(Access.MANAGER, context=False, length=NONCE_SIZE + 4, provisioned=True),
    Cmd.UPDATE: _Spec(
        Access.MANAGER, context=True, length=2 * 4 + 2 * DIGEST_SIZE, provisioned=True
    ),
    Cmd.TASK_MAC: _Spec(Access.TASK, context=False, length=None, provisioned=True, streamed=True),
    Cmd.HASH: _Spec(Access.ANY, context=False, length=None, provisioned=None, streamed=True),
    Cmd.HMAC_KEY: _Spec(Access.ANY, context=False, length=None, provisioned=None, streamed=True),
    Cmd.HMAC: _Spec(Access.ANY, context=False, length=None, provisioned=None, streamed=True),
}


def command_spec(cmd: Cmd) -> _Spec:
    """The access rule, argument and length rules of ``cmd``."""
    return _SPECS[cmd]


#: result sizes in bytes, by command (0: status only)
RESULT_SIZE: dict[Cmd, int] = {
    Cmd.PROVISION: 0,
    Cmd.STATUS: 5 * 4 + DEVICE_ID_SIZE,
    Cmd.READ_CTX: 2 * 4 + 2 * DIGEST_SIZE,
    Cmd.RESET: 0,
    Cmd.EXTEND: DIGEST_SIZE,
    Cmd.MEASURE: DIGEST_SIZE,
    Cmd.SET_ANOMALY: 0,
    Cmd.NEW_PERIOD: 0,
    Cmd.ATTEST: EVIDENCE_SIZE,
    Cmd.UPDATE: 4 + DIGEST_SIZE,
    Cmd.TASK_MAC: DIGEST_SIZE,
    Cmd.HASH: DIGEST_SIZE,
    Cmd.HMAC_KEY: 0,
    Cmd.HMAC: DIGEST_SIZE,
}
__all__ += ["RESULT_SIZE"]

CONTEXT_COMMANDS = frozenset(cmd for cmd, spec in _SPECS.items() if spec.context)

#: The data and results of the commands that carry more than one field, field by field (name,
#: bytes) in order; the C header's ``MCHSM_<MESSAGE>_<FIELD>_OFFSET`` and ``_SIZE`` come from
#: here, so a C driver parses results without counting bytes by hand.  Each adds up to the
#: command's data length (``command_spec``) or ``RESULT_SIZE`` (a test checks).  Every integer
#: is a big-endian u32, like DATA and RESULT words.
MESSAGE_LAYOUTS: dict[str, tuple[Field, ...]] = {
    "PROVISION_DATA": (("dev_id", DEVICE_ID_SIZE), ("root_key", ROOT_KEY_SIZE)),
    "STATUS_RESULT": (
        ("info", U32_SIZE),  #: StatusInfoWord
        ("counter", U32_SIZE),  #: attestations so far
        ("ok", U32_SIZE),  #: contexts in their reference state (a task sees only its own bit)
        ("loaded", U32_SIZE),
        ("anomaly", U32_SIZE),
        ("dev_id", DEVICE_ID_SIZE),
    ),
    "READ_CTX_RESULT": (
        ("flags", U32_SIZE),  #: CtxFlag
        ("version", U32_SIZE),
        ("measurement", DIGEST_SIZE),
        ("reference", DIGEST_SIZE),
    ),
    "ATTEST_DATA": (("sel", U32_SIZE), ("nonce", NONCE_SIZE)),
    "ATTEST_RESULT": EVIDENCE_FIELDS,
    "UPDATE_DATA": (
        ("old", U32_SIZE),
        ("new", U32_SIZE),
        ("reference", DIGEST_SIZE),
        ("tag", DIGEST_SIZE),
    ),
    "UPDATE_RESULT": (("new", U32_SIZE), ("ack", DIGEST_SIZE)),
}
__all__ += ["MESSAGE_LAYOUTS"]


# ---------------------------------------------------------------------------------------------
# Register map of the mailbox (byte offsets on a 32-bit Wishbone bus; word address = offset/4)
# ---------------------------------------------------------------------------------------------


class Reg(enum.IntEnum):
    """Mailbox register byte offsets.  See ``docs/registers.md`` (generated from this)."""

    ID = 0x00  #: R: MAGIC
    INFO = 0x04  #: R: InfoReg
    LEN = 0x08  #: RW (holder): data length in bytes of the next command
    CMD = 0x0C  #: W (holder): CmdReg; issues the command
    DATA = 0x10  #: W (holder): data-in port, one big-endian word per write
    STATUS = 0x14  #: R: StatusReg (the holder sees every field, others only ``held``)
    CTRL = 0x18  #: W: one Ctrl action per write
    IRQ_EN = 0x1C  #: RW (write: manager): [0] raise the irq line while done
    CYCLES = 0x20  #: R (holder): clock cycles the last command took (0 in the model)
    OWNER = 0x24  #: R: OwnerReg, who holds the mailbox
    RESULT = 0x80  #: R (holder): result window, RESULT_WORDS words


class Ctrl(enum.IntEnum, shape=4):
    """The actions written to ``CTRL``; a write must hold exactly one (``docs/protocol.md`` 9.2)."""

    ABORT = 1 << 0  #: the holder ends its command while it still expects data
    CLEAR = 1 << 1  #: the holder drops ``done`` (acknowledges the interrupt)
    CLAIM = 1 << 2  #: take the mailbox (the manager may take it from a task: preemption)
    RELEASE = 1 << 3  #: the holder gives the mailbox back; the result window is erased


#: ``INFO``: what the HSM is
InfoReg = data.FlexibleLayout(
    32, {"version": data.Field(unsigned(8), 0), "contexts": data.Field(unsigned(8), 8)}
)
#: ``CMD``: the command code (any byte: unknown codes are answered ERR_UNKNOWN_CMD) and context
CmdReg = data.FlexibleLayout(
    32, {"code": data.Field(unsigned(8), 0), "ctx": data.Field(unsigned(8), 8)}
)
#: ``STATUS`` as the holder reads it; anyone else reads only ``held`` (every other field 0)
StatusReg = data.FlexibleLayout(
    32,
    {
        "status": data.Field(unsigned(STATUS_SHAPE), 0),  #: a Status once done
        "busy": data.Field(unsigned(1), 8),  #: the command is in phase data or run
        "done": data.Field(unsigned(1), 9),  #: the command ended (until CLEAR or the next CMD)
        "expects": data.Field(unsigned(1), 10),  #: phase data: DATA words are still taken
        "held": data.Field(unsigned(1), 11),  #: somebody holds the mailbox
        "mine": data.Field(unsigned(1), 12),  #: the reader holds the mailbox
        "reslen": data.Field(unsigned(8), 16),  #: result length in bytes (0 until done)
    },
)
#: ``IRQ_EN``: the manager's switch for the irq line
IrqEnReg = data.FlexibleLayout(32, {"done": data.Field(unsigned(1), 0)})
#: ``OWNER``: who holds the mailbox (public: every caller can see that it is held, and by whom)
OwnerReg = data.FlexibleLayout(
    32, {"caller": data.Field(unsigned(CALLER_BITS), 0), "held": data.Field(unsigned(1), 8)}
)
#: the first word of the STATUS command's result (``MESSAGE_LAYOUTS["STATUS_RESULT"]``, info)
StatusInfoWord = data.FlexibleLayout(
    32,
    {
        "provisioned": data.Field(unsigned(1), 0),
        "contexts": data.Field(unsigned(8), 8),
        "version": data.Field(unsigned(8), 16),
    },
)


class RegFields(dict[str, int]):
    """The fields of one register word, by name and as attributes (``status.mine``)."""

    __slots__ = ("_word",)

    def __init__(self, word: int, fields: dict[str, int]) -> None:
        super().__init__(fields)
        self._word = word

    def __getattr__(self, name: str) -> int:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def as_bits(self) -> int:
        return self._word


_FIELD_TABLES: dict[int, tuple[data.Layout, dict[str, tuple[int, int]]]] = {}


def _field_table(layout: data.Layout) -> dict[str, tuple[int, int]]:
    """name -> (offset, mask) of every field (cached by identity: hashing a layout is slow)."""
    hit = _FIELD_TABLES.get(id(layout))
    if hit is None or hit[0] is not layout:
        table = {name: (field.offset, (1 << field.width) - 1) for name, field in layout}
        hit = _FIELD_TABLES[id(layout)] = (layout, table)
    return hit[1]


def pack_reg(layout: data.Layout, **fields: int) -> int:
    """A register word from its fields (the host's ``Layout.const``, derived from the same
    layout; Amaranth's own costs tens of microseconds, which the model pays per access)."""
    word = 0
    table = _field_table(layout)
    for name, value in fields.items():
        offset, mask = table[name]
        value = int(value)
        if not 0 <= value <= mask:
            raise ArgumentError(f"{name} must fit {mask.bit_length()} bits, not {value!r}")
        word |= value << offset
    return word


def unpack_reg(layout: data.Layout, word: int) -> RegFields:
    """The fields of a register word (the host's ``Layout.from_bits``)."""
    table = _field_table(layout)
    return RegFields(word, {name: word >> off & mask for name, (off, mask) in table.items()})


__all__ += ["RegFields", "pack_reg", "unpack_reg"]

#: the registers that are packed fields: the source of the field tables and C masks
REG_LAYOUTS: dict[Reg, data.FlexibleLayout] = {
    Reg.INFO: InfoReg,
    Reg.CMD: CmdReg,
    Reg.STATUS: StatusReg,
    Reg.IRQ_EN: IrqEnReg,
    Reg.OWNER: OwnerReg,
}

#: words inside command results that are packed fields, by the C header's prefix
#: (``MCHSM_STATUS_INFO_CONTEXTS_MASK``)
WORD_LAYOUTS: dict[str, data.FlexibleLayout] = {"STATUS_INFO": StatusInfoWord}

#: access and meaning of every register: the source of docs/registers.md and the C header
REG_DOC: dict[Reg, tuple[str, str]] = {
    Reg.ID: ("R", '`MAGIC` (0x4D434853, "MCHS"): there is an mchsm HSM here'),
    Reg.INFO: ("R", "`InfoReg`: [7:0] protocol version, [15:8] number of contexts N"),
    Reg.LEN: (
        "RW",
        "holder only: data length in bytes of the next command (writes refused while a command "
        "takes data or runs)",
    ),
    Reg.CMD: (
        "W",
        "holder only: `CmdReg`, [7:0] command code, [15:8] context argument; issues the command "
        "(refused while one takes data or runs)",
    ),
    Reg.DATA: (
        "W",
        "holder only, while its command expects data: one big-endian word per write, first byte "
        "in [31:24]; the bus waits (no ack) while the input FIFO is full",
    ),
    Reg.STATUS: (
        "R",
        "`StatusReg`: [7:0] status code, [8] busy, [9] done, [10] expects data, [11] held, "
        "[12] mine, [23:16] result length in bytes; a caller that does not hold the mailbox "
        "sees only held",
    ),
    Reg.CTRL: (
        "W",
        "exactly one `Ctrl` action per write: 0x1 ABORT (holder, while its command expects "
        "data), 0x2 CLEAR done (holder), 0x4 CLAIM (anyone when free; the manager also takes it "
        "from a task whose command is not running), 0x8 RELEASE (holder, no command taking data "
        "or running; erases the result window); a RELEASE or preempting CLAIM is acked once the "
        "window is erased",
    ),
    Reg.IRQ_EN: ("RW", "[0] drive the irq line while done; written by the manager only"),
    Reg.CYCLES: (
        "R",
        "holder only: clock cycles from the CMD write to done of its last command (0 in the model)",
    ),
    Reg.OWNER: ("R", "`OwnerReg`: [5:0] caller id of the holder, [8] held"),
    Reg.RESULT: (
        "R",
        "holder only: result window, RESULT_WORDS words, big-endian like DATA; words at or "
        "beyond the result length read 0",
    ),
}
#: what a refused access gets: the bus cycle ends with ``err`` (reads return 0), nothing changes
REFUSED_DOC = (
    "An access the mailbox does not allow (a caller that does not hold it, a register written at "
    "the wrong time, a CTRL value that is not one action) ends with `err` instead of `ack`, "
    "reads 0 and changes nothing."
)
__all__ += [
    "REFUSED_DOC",
    "REG_DOC",
    "REG_LAYOUTS",
    "WORD_LAYOUTS",
    "CmdReg",
    "Ctrl",
    "InfoReg",
    "OwnerReg",
    "StatusInfoWord",
    "StatusReg",
]

# =============================================================================================
# UART link of the FPGA boards: the one source of the frame format for the bridge RTL
# (rtl/bridge.py) and the host codec (sw/uart_link.py).  docs/boards.md describes it byte by
# byte.  Request:  LINK_SYNC op caller addr count data[4*count if a write] crc16
#          Reply:  LINK_REPLY_SYNC status count data[4*count] crc16
# The CRC covers every byte after the sync byte; the data words are big-endian.
# =============================================================================================

LINK_SYNC = 0xA5  #: first byte of every request frame
LINK_REPLY_SYNC = 0x5A  #: first byte of every reply frame
LINK_HEADER_SIZE = 4  #: op, caller, word address, count: the request bytes after the sync byte
LINK_CRC_POLY = 0x1021  #: CRC-16/CCITT-FALSE: x^16 + x^12 + x^5 + 1, MSB first, not reflected
LINK_CRC_INIT = 0xFFFF  #: CRC register before the first byte; no final xor
LINK_CRC_SIZE = 2  #: the CRC is sent high byte first, so a whole good frame leaves CRC 0
LINK_MAX_BURST = 64  #: words in one frame; 256 data bytes fit one block RAM of the bridge
LINK_DEFAULT_BAUD = 115_200
#: the bridge gives up on a frame (and ends a drain) after the line has been idle this long
#: (rounded up to a power of two of clock cycles, so between 1x and 2x of it)
LINK_IDLE_TIMEOUT_S = 0.010


class LinkOp(enum.IntEnum, shape=8):
    """Request opcodes (ASCII, so a frame is readable in a hex dump)."""

    READ = 0x52  #: "R": read one word (count must be 1)
    WRITE = 0x57  #: "W": write one word (count must be 1)
    READ_BURST = 0x72  #: "r": read count words from consecutive addresses (result window)
    WRITE_BURST = 0x77  #: "w": write count words, all to the same address (the DATA port)


class LinkStatus(enum.IntEnum, shape=8):
    """First byte after the sync byte of a reply.

    Every error except ``ERR_BUS`` and ``ERR_REFUSED`` is reported before any bus cycle: the
    frame was rejected whole and nothing was executed, so the host may resend it.
    """

    OK = 0x00  #: the frame was executed; a read's words follow
    ERR_CRC = 0x01  #: the CRC of the request did not check
    ERR_LENGTH = 0x02  #: count is 0, above LINK_MAX_BURST, or not 1 for READ/WRITE
    ERR_TIMEOUT = 0x03  #: the line went idle in the middle of a frame (a byte was lost)
    ERR_OP = 0x04  #: unknown opcode
    ERR_FIELD = 0x05  #: caller id or word address does not fit its 6 bits
    ERR_BUS = 0x06  #: the HSM did not acknowledge a bus cycle in time; part may have run
    #: the HSM refused a bus cycle with ``err`` (the caller does not hold the mailbox, or the
    #: access is not allowed now); the words before it ran, the refused one and those after not
    ERR_REFUSED = 0x07


__all__ += [
    "LINK_CRC_INIT",
    "LINK_CRC_POLY",
    "LINK_CRC_SIZE",
    "LINK_DEFAULT_BAUD",
    "LINK_HEADER_SIZE",
    "LINK_IDLE_TIMEOUT_S",
    "LINK_MAX_BURST",
    "LINK_REPLY_SYNC",
    "LINK_SYNC",
    "LinkOp",
    "LinkStatus",
]


# =============================================================================================
# Behaviour profiles (sw/profile.py, docs/anomaly.md).  A task's profile travels inside its
# image, so MEASURE, the reference value and the update authorisation cover it:
#     image = code || profile || u32 length of the profile (big-endian) || PROFILE_MAGIC
# The profile is canonical JSON (sorted keys, no spaces, UTF-8).  The kernel enforces the HSM
# command budgets the profile sets over a sliding window of KERNEL_BUDGET_WINDOW periods.
# =============================================================================================

PROFILE_MAGIC = b"MCHSMPF1"  #: last 8 bytes of an image that carries a behaviour profile
PROFILE_LENGTH_SIZE = 4  #: the u32 before the magic: bytes of the profile
PROFILE_MAX_SIZE = 65536  #: a longer "profile" is refused (it would be an attacker's padding)
KERNEL_BUDGET_WINDOW = 16  #: periods in the sliding window of the kernel's HSM budgets

__all__ += ["KERNEL_BUDGET_WINDOW", "PROFILE_LENGTH_SIZE", "PROFILE_MAGIC", "PROFILE_MAX_SIZE"]
