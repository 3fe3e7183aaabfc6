"""Host side of the boards' UART link: a sans-I/O frame codec and the transports built on it.

The frame format is ``docs/boards.md``; every constant comes from :mod:`mchsm.constants`
(``LINK_*``, :class:`~mchsm.constants.LinkOp`, :class:`~mchsm.constants.LinkStatus`), the same
names the bridge RTL (``rtl/bridge.py``) uses.  The codec only turns requests into bytes and
bytes into replies, so it is tested against hand-built frames and shared, unchanged, by the
transport for a real board (:class:`SerialTransport`, pyserial) and the one for the simulated
board (``mchsm.sim.uart_sim``, cocotb).

Retries follow from what the bridge guarantees: an error reply other than ``ERR_BUS`` and
``ERR_REFUSED`` means the frame was rejected whole and nothing ran, so it is always resent.  A
lost or garbled *reply* says nothing about whether the request ran: a read is repeated (reads
have no side effects), a write is not - the DATA port is a FIFO and a repeated word would
corrupt a command - and :class:`~mchsm.sw.errors.TransportError` says so.

The driver reads the result window one word at a time.  :class:`FramedTransport` turns the
first of those reads into one READ_BURST of the whole result (its length is in the STATUS word
the driver has just read) and answers the others from that copy, which stays valid until the
next write: only a CMD write changes the window.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mchsm.constants import (
    BUS_ADDR_WIDTH,
    CALLER_BITS,
    LINK_CRC_INIT,
    LINK_CRC_POLY,
    LINK_CRC_SIZE,
    LINK_DEFAULT_BAUD,
    LINK_HEADER_SIZE,
    LINK_IDLE_TIMEOUT_S,
    LINK_MAX_BURST,
    LINK_REPLY_SYNC,
    LINK_SYNC,
    RESULT_WORDS,
    LinkOp,
    LinkStatus,
    Reg,
    StatusReg,
    unpack_reg,
)
from mchsm.sw.driver import Transport
from mchsm.sw.errors import ArgumentError, BusRefusedError, FrameError, TransportError
from mchsm.sw.extras import require

__all__ = [
    "CorruptReply",
    "FramedTransport",
    "LinkReply",
    "LinkStats",
    "ReplyDecoder",
    "Request",
    "SerialTransport",
    "bridge_model_reply",
    "crc16",
    "encode_reply",
    "reply_size",
]

#: the request's trailing CRC bytes plus its sync byte: overhead on top of header and data
_FRAMING = 1 + LINK_CRC_SIZE


def _crc_table(poly: int) -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ poly if crc & 0x8000 else crc << 1) & 0xFFFF
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table(LINK_CRC_POLY)


def crc16(data: bytes, crc: int = LINK_CRC_INIT) -> int:
    """CRC-16 of the link (``LINK_CRC_POLY``, MSB first, no reflection, no final xor).

    Over a frame that ends in its own CRC (high byte first) the result is 0, which is how the
    bridge checks a request without storing the received CRC.
    """
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ byte]
    return crc


def _signed(body: bytes, sync: int) -> bytes:
    return bytes([sync]) + body + crc16(body).to_bytes(LINK_CRC_SIZE, "big")


@dataclass(frozen=True)
class Request:
    """One request frame.  ``addr`` is the Wishbone *word* address (byte offset / 4).

    READ and READ_BURST carry no data and ``count`` says how many words to read; WRITE and
    WRITE_BURST carry ``count == len(data)`` words.
    """

    op: LinkOp
    caller: int
    addr: int
    count: int = 1
    data: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.caller < 1 << CALLER_BITS:
            raise ArgumentError(
                f"caller must be in 0..{(1 << CALLER_BITS) - 1}, not {self.caller!r}"
            )
        if not 0 <= self.addr < 1 << BUS_ADDR_WIDTH:
            raise ArgumentError(
                f"word address must be in 0..{(1 << BUS_ADDR_WIDTH) - 1}, not {self.addr!r}"
            )
        if not 1 <= self.count <= LINK_MAX_BURST:
            raise ArgumentError(f"count must be in 1..{LINK_MAX_BURST}, not {self.count!r}")
        if self.op in (LinkOp.READ, LinkOp.WRITE) and self.count != 1:
            raise ArgumentError(f"{self.op.name} moves one word; use the burst op for {self.count}")
        if self.is_write != bool(self.data) or (self.is_write and len(self.data) != self.count):
            raise ArgumentError(
                f"{self.op.name} with count {self.count} must carry "
                f"{self.count if self.is_write else 0} data words, "
                f"not {len(self.data)}"
            )
        if any(not 0 <= w <= 0xFFFF_FFFF for w in self.data):
            raise ArgumentError("data words must be unsigned 32-bit integers")

    @property
    def is_write(self) -> bool:
        return self.op in (LinkOp.WRITE, LinkOp.WRITE_BURST)

    @property
    def reply_words(self) -> int:
        """Data words a successful reply carries."""
        return 0 if self.is_write else self.count

    def encode(self) -> bytes:
        """The frame: sync, op, caller, addr, count, big-endian data words, CRC."""
        body = bytes([self.op, self.caller, self.addr, self.count])
        body += b"".join(w.to_bytes(4, "big") for w in self.data)
        return _signed(body, LINK_SYNC)

    @classmethod
    def decode(cls, frame: bytes) -> Request:
        """Parse one whole request frame (for bridge models and tests); ``ValueError`` names
        the :class:`LinkStatus` the bridge would answer."""
        if len(frame) < _FRAMING + LINK_HEADER_SIZE or frame[0] != LINK_SYNC:
            raise FrameError(f"{LinkStatus.ERR_TIMEOUT.name}: not a whole request frame")
        op, caller, addr, count = frame[1:5]
        try:
            link_op = LinkOp(op)
        except ValueError:
            raise FrameError(f"{LinkStatus.ERR_OP.name}: opcode 0x{op:02x}") from None
        if caller >> CALLER_BITS or addr >> BUS_ADDR_WIDTH:
            raise FrameError(f"{LinkStatus.ERR_FIELD.name}: caller {caller}, address {addr}")
        single = link_op in (LinkOp.READ, LinkOp.WRITE)
        if count == 0 or count > LINK_MAX_BURST or (single and count != 1):
            raise FrameError(f"{LinkStatus.ERR_LENGTH.name}: count {count}")
        write = link_op in (LinkOp.WRITE, LinkOp.WRITE_BURST)
        size = _FRAMING + LINK_HEADER_SIZE + (4 * count if write else 0)
        if len(frame) != size:
            raise FrameError(f"{LinkStatus.ERR_TIMEOUT.name}: {len(frame)} bytes, not {size}")
        if crc16(frame[1:]) != 0:
            raise FrameError(f"{LinkStatus.ERR_CRC.name}: CRC does not check")
        data = tuple(
            int.from_bytes(frame[5 + 4 * i : 9 + 4 * i], "big")
            for i in range(count if write else 0)
        )
        return cls(link_op, caller, addr, count, data)


@dataclass(frozen=True)
class LinkReply:
    """A reply whose CRC checked."""

    status: LinkStatus
    words: tuple[int, ...] = ()


@dataclass(frozen=True)
class CorruptReply:
    """Bytes that started like a reply but are not a valid one (bad CRC, impossible count,
    unknown status)."""

    reason: str
    raw: bytes


def encode_reply(status: LinkStatus, words: Sequence[int] = ()) -> bytes:
    """A reply frame, as the bridge sends it (for models and tests)."""
    body = bytes([status, len(words)]) + b"".join(w.to_bytes(4, "big") for w in words)
    return _signed(body, LINK_REPLY_SYNC)


def bridge_model_reply(mailbox: Any, frame: bytes) -> bytes:
    """The reply the bridge sends for ``frame`` with ``mailbox`` (a model) behind it.

    ``mailbox`` has the :class:`~mchsm.sw.mailbox.ModelMailbox` interface.  The frame is checked
    whole first; its words then run one by one, and the first refused one ends it with
    ``ERR_REFUSED``, as ``rtl/bridge.py`` does.  For tests that put the golden model behind a
    serial port.
    """
    try:
        req = Request.decode(frame)
    except ValueError as e:
        return encode_reply(LinkStatus[str(e).split(":")[0]])
    words: list[int] = []
    try:
        for i in range(req.count):
            if req.is_write:
                mailbox.write(req.addr << 2, req.data[i], req.caller)
            else:
                words.append(mailbox.read((req.addr + i) << 2, req.caller))
    except BusRefusedError:
        return encode_reply(LinkStatus.ERR_REFUSED)
    return encode_reply(LinkStatus.OK, words)


def reply_size(words: int) -> int:
    """Bytes of a reply carrying ``words`` data words."""
    return 1 + 2 + 4 * words + LINK_CRC_SIZE


class ReplyDecoder:
    """Incremental reply parser: feed it bytes as they come, get whole replies out.

    Bytes before a ``LINK_REPLY_SYNC`` are skipped (counted in :attr:`skipped`).  A reply that
    fails its CRC or names an impossible count comes out as :class:`CorruptReply`, and parsing
    resumes at the byte after its sync byte, so a sync byte inside garbage costs one frame at
    most.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.skipped = 0  #: garbage bytes dropped while hunting for a sync byte

    @property
    def pending(self) -> bool:
        """Part of a reply has been received."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[LinkReply | CorruptReply]:
        """Add bytes; return every reply they completed, in order."""
        self._buf += data
        out: list[LinkReply | CorruptReply] = []
        while True:
            start = self._buf.find(LINK_REPLY_SYNC)
            if start < 0:
                self.skipped += len(self._buf)
                self._buf.clear()
                return out
            self.skipped += start
            del self._buf[:start]
            if len(self._buf) < 3:
                return out
            count = self._buf[2]
            if count > LINK_MAX_BURST:
                out.append(
                    CorruptReply(f"count {count} exceeds {LINK_MAX_BURST}", bytes(self._buf[:3]))
                )
                del self._buf[:1]
                continue
            size = reply_size(count)
            if len(self._buf) < size:
                return out
            frame = bytes(self._buf[:size])
            if crc16(frame[1:]) != 0:
                out.append(CorruptReply("CRC does not check", frame))
                del self._buf[:1]
                continue
            try:
                status = LinkStatus(frame[1])
            except ValueError:
                out.append(CorruptReply(f"unknown status 0x{frame[1]:02x}", frame))
                del self._buf[:size]
                continue
            words = tuple(int.from_bytes(frame[3 + 4 * i : 7 + 4 * i], "big") for i in range(count))
            out.append(LinkReply(status, words))
            del self._buf[:size]


@dataclass
class LinkStats:
    """What went over the link: for reports and for the retry tests."""

    frames: int = 0
    retries: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  #: error replies by status name


class FramedTransport(Transport):
    """Register access as request/reply frames; subclasses only move bytes.

    Parameters
    ----------
    retries : int
        How often a frame is resent after an error reply (any frame) or a lost or garbled reply
        (reads only).
    """

    name = "uart"

    def __init__(self, *, retries: int = 3) -> None:
        if not isinstance(retries, int) or retries < 0:
            raise ArgumentError(f"retries must be a non-negative integer, not {retries!r}")
        self.retries = retries
        self.stats = LinkStats()
        self._result: dict[tuple[int, int], int] = {}  # (caller, word addr) -> cached word
        self._result_words: dict[int, int] = {}  # caller -> words of its finished result

    @abc.abstractmethod
    async def exchange(self, frame: bytes, reply_words: int) -> LinkReply | CorruptReply | None:
        """Send ``frame`` and return its reply, a :class:`CorruptReply`, or None if none came.

        ``reply_words`` is the data a good reply carries, to size the wait.
        """

    async def transact(self, request: Request) -> LinkReply:
        """Run ``request`` with the retry rules of the module docstring; only OK comes back."""
        frame = request.encode()
        why = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
            self.stats.frames += 1
            self.stats.bytes_out += len(frame)
            reply = await self.exchange(frame, request.reply_words)
            if isinstance(reply, LinkReply):
                self.stats.bytes_in += reply_size(len(reply.words))
                if reply.status is LinkStatus.OK:
                    if len(reply.words) != request.reply_words:
                        raise TransportError(
                            f"{request.op.name} of {request.reply_words} words at word "
                            f"0x{request.addr:02x} answered with {len(reply.words)} words"
                        )
                    return reply
                name = reply.status.name
                self.stats.rejected[name] = self.stats.rejected.get(name, 0) + 1
                if reply.status is LinkStatus.ERR_REFUSED:
                    raise BusRefusedError(
                        f"{request.op.name} at word 0x{request.addr:02x}: the HSM refused a bus "
                        f"cycle of caller {request.caller} (ERR_REFUSED); the words before it ran"
                    )
                if reply.status is LinkStatus.ERR_BUS:
                    raise TransportError(
                        f"{request.op.name} at word 0x{request.addr:02x}: the HSM did not "
                        f"acknowledge a bus cycle in time (ERR_BUS); part of the frame may "
                        f"have run, so it is not repeated"
                    )
                why = f"the bridge rejected the frame with {name}"
                continue  # rejected whole: nothing ran, resend
            why = "no reply" if reply is None else f"a garbled reply ({reply.reason})"
            if request.is_write:
                raise TransportError(
                    f"{request.op.name} at word 0x{request.addr:02x} (caller "
                    f"{request.caller}) got {why}; the write may or may not have run, so it "
                    f"is not repeated"
                )
        raise TransportError(
            f"{request.op.name} at word 0x{request.addr:02x} failed {self.retries + 1} times; "
            f"last: {why}"
        )

    # ---- the Transport interface --------------------------------------------------------------

    async def read(self, addr: int, caller: int) -> int:
        word = addr >> 2
        cached = self._result.get((caller, word))
        if cached is not None:
            return cached
        first = Reg.RESULT >> 2
        todo = self._result_words.get(caller, 0) - (word - first)
        if first <= word < first + RESULT_WORDS and todo > 1:
            words = await self.read_burst(addr, todo, caller)
            self._result.update({(caller, word + i): w for i, w in enumerate(words)})
            return words[0]
        value = (await self.transact(Request(LinkOp.READ, caller, word))).words[0]
        if word == Reg.STATUS >> 2:
            status = unpack_reg(StatusReg, value)
            if status.done and not status.busy and status.mine:
                self._result_words[caller] = (status.reslen + 3) // 4
            else:
                self._result_words.pop(caller, None)
        return value

    async def read_burst(self, addr: int, count: int, caller: int) -> list[int]:
        """``count`` words from consecutive addresses starting at byte offset ``addr``."""
        out: list[int] = []
        word = addr >> 2
        while len(out) < count:
            n = min(LINK_MAX_BURST, count - len(out))
            op = LinkOp.READ if n == 1 else LinkOp.READ_BURST
            out += (await self.transact(Request(op, caller, word + len(out), n))).words
        return out

    async def write(self, addr: int, value: int, caller: int) -> None:
        self._forget()
        await self.transact(Request(LinkOp.WRITE, caller, addr >> 2, 1, (value,)))

    async def write_burst(self, addr: int, values: Sequence[int], caller: int) -> None:
        self._forget()
        for i in range(0, len(values), LINK_MAX_BURST):
            chunk = tuple(values[i : i + LINK_MAX_BURST])
            op = LinkOp.WRITE if len(chunk) == 1 else LinkOp.WRITE_BURST
            await self.transact(Request(op, caller, addr >> 2, len(chunk), chunk))

    def _forget(self) -> None:
        """A write may start a command, which changes every result window."""
        self._result.clear()
        self._result_words.clear()


class SerialTransport(FramedTransport):
    """The HSM on a board, through a serial port (pyserial).

    The driver is async but a serial port is not: each exchange runs in a worker thread
    (:func:`asyncio.to_thread`), so the event loop goes on while a frame crosses the line (a
    verifier service, a second device, a progress display).  One exchange at a time: the driver
    runs one command at a time.  A port that fails (unplugged, closed) raises
    :class:`~mchsm.sw.errors.TransportError`.

    Parameters
    ----------
    port : str or serial.Serial
        Device name (``/dev/ttyUSB1``) or an open port (any object with ``write``, ``read``,
        ``in_waiting`` and ``reset_input_buffer``, so tests can pass a model).
    baud : int
        Must match the bitstream (``mchsm build --baud``).
    timeout : float
        Seconds to wait for a reply beyond its transmission time and the bridge's idle timeout
        (covers USB latency; FTDI adapters hold data up to their latency timer, 16 ms).
    retries : int
        See :class:`FramedTransport`.
    """

    name = "board"

    def __init__(
        self,
        port: str | Any,
        baud: int = LINK_DEFAULT_BAUD,
        *,
        timeout: float = 0.25,
        retries: int = 3,
    ) -> None:
        super().__init__(retries=retries)
        if isinstance(port, str):
            serial = require("serial", "a board on a serial port")

            try:
                self.serial = serial.Serial(port, baud, timeout=0.01)
            except serial.SerialException as e:
                raise TransportError(f"cannot open {port}: {e}") from None
            self._owned = True
        else:
            self.serial = port
            self._owned = False
        self.baud = baud
        self.timeout = timeout

    def close(self) -> None:
        if self._owned:
            self.serial.close()

    def __enter__(self) -> SerialTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wire_seconds(self, nbytes: int) -> float:
        return nbytes * 10 / self.baud

    async def exchange(self, frame: bytes, reply_words: int) -> LinkReply | CorruptReply | None:
        try:
            return await asyncio.to_thread(self._exchange, frame, reply_words)
        except OSError as e:  # pyserial's SerialException is one
            raise TransportError(
                f"{getattr(self.serial, 'port', 'the serial port')}: {e}"
            ) from None

    def _exchange(self, frame: bytes, reply_words: int) -> LinkReply | CorruptReply | None:
        """One frame out and its reply in, blocking (in a worker thread)."""
        self.serial.reset_input_buffer()  # a late reply to an earlier frame is not ours
        self.serial.write(frame)
        # an error reply comes only after the line has been idle for the bridge's timeout
        budget = (
            self._wire_seconds(len(frame) + reply_size(reply_words))
            + 2 * LINK_IDLE_TIMEOUT_S
            + self.timeout
        )
        deadline = time.monotonic() + budget
        decoder = ReplyDecoder()
        while time.monotonic() < deadline:
            chunk = self.serial.read(max(1, self.serial.in_waiting))
            if chunk:
                replies = decoder.feed(chunk)
                if replies:
                    if not isinstance(replies[0], LinkReply):
                        self._settle()
                    return replies[0]
        self._settle()
        return None

    def _settle(self) -> None:
        """After a lost or garbled reply: let the bridge finish draining and answering."""
        time.sleep(2 * LINK_IDLE_TIMEOUT_S + self._wire_seconds(reply_size(LINK_MAX_BURST)))
        self.serial.reset_input_buffer()
