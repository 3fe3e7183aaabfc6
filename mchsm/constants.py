"""Every protocol and hardware constant of mchsm, in one place.

The golden model, the RTL, the host driver, the verifier, the generated documentation and the
ProVerif consistency test all import this module; nothing here is ever copied by hand.  The
command and status codes are Amaranth *shaped* enums so the RTL can use them directly in
``m.Case(...)`` while the host packs them with ``int(...)``.

See ``docs/protocol.md`` for what each value means.
"""

from __future__ import annotations

import struct

from amaranth.lib import enum

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
        raise ValueError(f"contexts must be an integer in 1..{MAX_CONTEXTS}, not {contexts!r}")
    for name, value in (("budget", budget), ("fail_limit", fail_limit)):
        if not isinstance(value, int) or not 0 <= value <= 255:
            raise ValueError(f"{name} must be an integer in 0..255, not {value!r}")


def ctx_bit(ctx: int) -> int:
    """Selection-mask bit of context ``ctx`` (1..32): bit ``ctx - 1``."""
    if not 1 <= ctx <= MAX_CONTEXTS:
        raise ValueError(f"context must be in 1..{MAX_CONTEXTS}, not {ctx!r}")
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
    """Result of every command.  Checked in the order of the table in ``docs/protocol.md``."""

    OK = 0x00
    ERR_UNKNOWN_CMD = 0x01  #: no such command code
    ERR_DENIED = 0x02  #: this caller may not issue this command (or name that context)
    ERR_NOT_PROVISIONED = 0x03  #: the command needs K_root and the device has none yet
    ERR_PROVISIONED = 0x04  #: PROVISION when a root key is already set
    ERR_CONTEXT = 0x05  #: context argument out of range, or non-zero where none is taken
    ERR_LENGTH = 0x06  #: the declared data length is wrong for this command
    ERR_SELECT = 0x07  #: attestation selection mask empty or names contexts beyond N
    ERR_AUTH = 0x08  #: MAC tag does not verify
    ERR_VERSION = 0x09  #: update's old version is not the current one (stale or replayed)
    ERR_ROLLBACK = 0x0A  #: update's new version is not greater than the old one
    ERR_NOT_TRUSTED = 0x0B  #: task key requested while the task is not in its reference state
    ERR_NO_KEY = 0x0C  #: HMAC without an imported key owned by this caller
    ERR_COUNTER = 0x0D  #: attestation counter exhausted
    ERR_ABORTED = 0x0E  #: the command was aborted before it finished; nothing changed


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


# ---------------------------------------------------------------------------------------------
# Register map of the mailbox (byte offsets on a 32-bit Wishbone bus; word address = offset/4)
# ---------------------------------------------------------------------------------------------


class Reg(enum.IntEnum):
    """Mailbox register byte offsets.  See ``docs/registers.md`` (generated from this)."""

    ID = 0x00  #: R: MAGIC
    INFO = 0x04  #: R: [7:0] protocol version, [15:8] number of contexts N
    LEN = 0x08  #: RW: data length in bytes of the next command
    CMD = 0x0C  #: W: [7:0] command code, [15:8] context argument; starts the command
    DATA = 0x10  #: W: data-in port, one big-endian word per write (first byte in [31:24])
    STATUS = 0x14  #: R: [7:0] status, [8] busy, [9] done, [23:16] result length (bytes)
    CTRL = 0x18  #: W: [0] abort the running command, [1] clear done (acknowledge the IRQ)
    IRQ_EN = 0x1C  #: RW: [0] raise the irq line while done
    CYCLES = 0x20  #: R: clock cycles the last command took (0 in the model)
    OWNER = 0x24  #: R: caller id that issued the current/last command
    RESULT = 0x80  #: R: result window, RESULT_WORDS words, readable only by the owner


#: access and meaning of every register: the source of docs/registers.md and the C header
REG_DOC: dict[Reg, tuple[str, str]] = {
    Reg.ID: ("R", '`MAGIC` (0x4D434853, "MCHS"): there is an mchsm HSM here'),
    Reg.INFO: ("R", "[7:0] protocol version, [15:8] number of contexts N"),
    Reg.LEN: ("RW", "data length in bytes of the next command (ignored while busy)"),
    Reg.CMD: (
        "W",
        "[7:0] command code, [15:8] context argument; writing starts the command "
        "and makes the writer its owner (ignored while busy)",
    ),
    Reg.DATA: (
        "W",
        "data-in port: one big-endian word per write, first byte in [31:24]; "
        "only the owner's words count, and only as many as LEN asks for; the bus "
        "waits (no ack) while the input FIFO is full",
    ),
    Reg.STATUS: ("R", "[7:0] status code, [8] busy, [9] done, [23:16] result length in bytes"),
    Reg.CTRL: (
        "W",
        "[0] abort the running command (owner or manager; only while it still "
        "expects data), [1] clear done and so acknowledge the interrupt",
    ),
    Reg.IRQ_EN: ("RW", "[0] drive the irq line while done"),
    Reg.CYCLES: (
        "R",
        "clock cycles from the CMD write to done of the last command (0 in the model)",
    ),
    Reg.OWNER: ("R", "caller id that issued the current or last command"),
    Reg.RESULT: (
        "R",
        "result window, RESULT_WORDS words, big-endian like DATA; reads as 0 "
        "for anyone but the owner and while busy",
    ),
}

STATUS_BUSY = 1 << 8
STATUS_DONE = 1 << 9
STATUS_RESULT_LEN_SHIFT = 16
CTRL_ABORT = 1 << 0
CTRL_CLEAR = 1 << 1
__all__ += ["REG_DOC"]
__all__ += ["CTRL_ABORT", "CTRL_CLEAR", "STATUS_BUSY", "STATUS_DONE", "STATUS_RESULT_LEN_SHIFT"]


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

    Every error except ``ERR_BUS`` is reported before any bus cycle: the frame was rejected
    whole and nothing was executed, so the host may resend it.
    """

    OK = 0x00  #: the frame was executed; a read's words follow
    ERR_CRC = 0x01  #: the CRC of the request did not check
    ERR_LENGTH = 0x02  #: count is 0, above LINK_MAX_BURST, or not 1 for READ/WRITE
    ERR_TIMEOUT = 0x03  #: the line went idle in the middle of a frame (a byte was lost)
    ERR_OP = 0x04  #: unknown opcode
    ERR_FIELD = 0x05  #: caller id or word address does not fit its 6 bits
    ERR_BUS = 0x06  #: the HSM did not acknowledge a bus cycle in time; part may have run


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
