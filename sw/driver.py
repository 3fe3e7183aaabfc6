"""The one host driver of the HSM: commands over 32-bit register reads and writes.

The driver is sans-I/O in the sense that matters here: it knows the mailbox protocol and the byte
layouts, and nothing of how a word reaches the device.  A :class:`Transport` moves words; there
is one for the golden model (:class:`ModelTransport`), one for the RTL in Amaranth's simulator,
one for cocotb + Verilator and one for a board over UART.  The driver awaits nothing but its
transport, so it runs inside asyncio, an Amaranth testbench or a cocotb test alike.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

from mchsm.constants import (
    DEVICE_ID_SIZE,
    DIGEST_SIZE,
    MAGIC,
    MANAGER,
    NONCE_SIZE,
    ROOT_KEY_SIZE,
    STATUS_BUSY,
    STATUS_DONE,
    STATUS_RESULT_LEN_SHIFT,
    Cmd,
    CtxFlag,
    Reg,
    Status,
    u32,
)
from mchsm.sw.errors import HsmError, TransportError
from mchsm.sw.mailbox import ModelMailbox
from mchsm.sw.protocol import Evidence, UpdateAck, UpdateAuth

__all__ = [
    "CtxInfo",
    "DeviceInfo",
    "HsmDriver",
    "HsmPort",
    "ModelTransport",
    "Reply",
    "StatusInfo",
    "Transport",
]

#: words per burst when streaming data (bounds memory for huge images)
BURST_WORDS = 1024


class Transport(abc.ABC):
    """Moves 32-bit words between host and HSM, each access tagged with the caller id.

    Subclasses implement :meth:`read` and :meth:`write`; :meth:`write_burst` may be overridden
    where the link can do better than one word at a time.
    """

    name = "transport"

    @abc.abstractmethod
    async def read(self, addr: int, caller: int) -> int:
        """A 32-bit read at byte offset ``addr`` as ``caller``."""

    @abc.abstractmethod
    async def write(self, addr: int, value: int, caller: int) -> None:
        """A 32-bit write at byte offset ``addr`` as ``caller``."""

    async def write_burst(self, addr: int, values: Sequence[int], caller: int) -> None:
        """Write ``values`` to the same address one after the other (the DATA port)."""
        for value in values:
            await self.write(addr, value, caller)


class ModelTransport(Transport):
    """The golden model as a transport: register accesses go straight to :class:`ModelMailbox`."""

    name = "model"

    def __init__(self, mailbox: ModelMailbox) -> None:
        self.mailbox = mailbox

    async def read(self, addr: int, caller: int) -> int:
        return self.mailbox.read(addr, caller)

    async def write(self, addr: int, value: int, caller: int) -> None:
        self.mailbox.write(addr, value, caller)


@dataclass(frozen=True)
class Reply:
    """What one command returned: status, result bytes and the cycles the HSM spent."""

    cmd: Cmd | int
    status: Status
    result: bytes
    cycles: int

    def check(self) -> bytes:
        """The result, or :class:`HsmError` if the status is not OK."""
        if self.status is not Status.OK:
            raise HsmError(self.cmd, self.status)
        return self.result


@dataclass(frozen=True)
class DeviceInfo:
    protocol_version: int
    contexts: int


@dataclass(frozen=True)
class StatusInfo:
    """Parsed STATUS result."""

    provisioned: bool
    contexts: int
    protocol_version: int
    counter: int
    ok: int
    loaded: int
    anomaly: int
    dev_id: bytes

    @classmethod
    def parse(cls, data: bytes) -> StatusInfo:
        words = [int.from_bytes(data[i : i + 4], "big") for i in range(0, 20, 4)]
        info = words[0]
        return cls(
            provisioned=bool(info & 1),
            contexts=(info >> 8) & 0xFF,
            protocol_version=(info >> 16) & 0xFF,
            counter=words[1],
            ok=words[2],
            loaded=words[3],
            anomaly=words[4],
            dev_id=data[20 : 20 + DEVICE_ID_SIZE],
        )


@dataclass(frozen=True)
class CtxInfo:
    """Parsed READ_CTX result."""

    flags: CtxFlag
    version: int
    measurement: bytes
    reference: bytes

    @property
    def ok(self) -> bool:
        return bool(self.flags & CtxFlag.OK)

    @classmethod
    def parse(cls, data: bytes) -> CtxInfo:
        return cls(
            flags=CtxFlag(int.from_bytes(data[0:4], "big")),
            version=int.from_bytes(data[4:8], "big"),
            measurement=data[8 : 8 + DIGEST_SIZE],
            reference=data[8 + DIGEST_SIZE : 8 + 2 * DIGEST_SIZE],
        )


async def _words(chunks: Iterable[bytes]) -> AsyncIterator[list[int]]:
    """Big-endian words of the concatenated chunks, in bursts; the tail is zero-padded."""
    carry = b""
    burst: list[int] = []
    for chunk in chunks:
        data = carry + bytes(chunk)
        whole = len(data) - len(data) % 4
        for i in range(0, whole, 4):
            burst.append(int.from_bytes(data[i : i + 4], "big"))
            if len(burst) == BURST_WORDS:
                yield burst
                burst = []
        carry = data[whole:]
    if carry:
        burst.append(int.from_bytes(carry.ljust(4, b"\0"), "big"))
    if burst:
        yield burst


class HsmDriver:
    """Runs HSM commands through a :class:`Transport`.

    Parameters
    ----------
    transport : Transport
        How words reach the HSM.
    poll_limit : int
        STATUS reads to wait for a command to finish before giving up.
    """

    def __init__(self, transport: Transport, *, poll_limit: int = 10_000_000) -> None:
        self.transport = transport
        self.poll_limit = poll_limit
        self.cycles = 0  #: HSM cycles spent by all commands so far (0 on the model)
        self.commands = 0  #: commands issued so far

    async def probe(self) -> DeviceInfo:
        """Check that an mchsm HSM answers and learn its size."""
        magic = await self.transport.read(Reg.ID, MANAGER)
        if magic != MAGIC:
            raise TransportError(
                f"no mchsm HSM at this transport: ID register reads 0x{magic:08x}, "
                f"expected 0x{MAGIC:08x}"
            )
        info = await self.transport.read(Reg.INFO, MANAGER)
        return DeviceInfo(protocol_version=info & 0xFF, contexts=(info >> 8) & 0xFF)

    async def run(
        self,
        caller: int,
        cmd: Cmd | int,
        ctx: int = 0,
        data: bytes | Iterable[bytes] = b"",
        length: int | None = None,
    ) -> Reply:
        """Issue one command as ``caller`` and wait for its reply.

        ``data`` is bytes or an iterable of chunks (then ``length`` is required), so an image of
        any size streams through without being held in memory at once.
        """
        if isinstance(data, bytes | bytearray):
            chunks: Iterable[bytes] = (bytes(data),)
            length = len(data) if length is None else length
        elif length is None:
            raise TypeError("length is required when data is an iterable of chunks")
        else:
            chunks = data
        t = self.transport
        await t.write(Reg.LEN, length, caller)
        await t.write(Reg.CMD, int(cmd) & 0xFF | (ctx & 0xFF) << 8, caller)
        status = await t.read(Reg.STATUS, caller)
        if not status & STATUS_DONE:
            async for burst in _words(chunks):
                await t.write_burst(Reg.DATA, burst, caller)
            status = await self._wait(caller, status)
        try:
            code = Status(status & 0xFF)
        except ValueError:
            raise TransportError(
                f"the HSM answered an unknown status 0x{status & 0xFF:02x}"
            ) from None
        result_len = (status >> STATUS_RESULT_LEN_SHIFT) & 0xFF
        result = bytearray()
        for i in range((result_len + 3) // 4):
            result += (await t.read(Reg.RESULT + 4 * i, caller)).to_bytes(4, "big")
        del result[result_len:]
        cycles = await t.read(Reg.CYCLES, caller)
        self.cycles += cycles
        self.commands += 1
        if cmd in Cmd.__members__.values():
            cmd = Cmd(cmd)
        return Reply(cmd=cmd, status=code, result=bytes(result), cycles=cycles)

    async def _wait(self, caller: int, status: int) -> int:
        for _ in range(self.poll_limit):
            if status & STATUS_DONE and not status & STATUS_BUSY:
                return status
            status = await self.transport.read(Reg.STATUS, caller)
        raise TransportError(
            f"the HSM did not finish a command within {self.poll_limit} status polls "
            f"(STATUS=0x{status:08x}); is all of its data written?"
        )

    def port(self, caller: int) -> HsmPort:
        """A handle that issues every command as ``caller`` (what the kernel hands a task)."""
        return HsmPort(self, caller)


class HsmPort:
    """Typed HSM commands bound to one caller id.  Failing commands raise :class:`HsmError`.

    The kernel creates one per task; a task holding its port has no way to name another
    caller.  ``last`` keeps the last :class:`Reply` (status and cycles) for reports.
    """

    def __init__(self, driver: HsmDriver, caller: int) -> None:
        self._driver = driver
        self.caller = caller
        self.last: Reply | None = None

    async def call(
        self,
        cmd: Cmd | int,
        ctx: int = 0,
        data: bytes | Iterable[bytes] = b"",
        length: int | None = None,
    ) -> Reply:
        """Issue a raw command and return its reply without raising."""
        self.last = await self._driver.run(self.caller, cmd, ctx, data, length)
        return self.last

    async def _ok(
        self, cmd: Cmd, ctx: int = 0, data: bytes | Iterable[bytes] = b"", length: int | None = None
    ) -> bytes:
        return (await self.call(cmd, ctx, data, length)).check()

    async def provision(self, dev_id: bytes, root_key: bytes) -> None:
        if len(dev_id) != DEVICE_ID_SIZE or len(root_key) != ROOT_KEY_SIZE:
            raise ValueError(
                f"PROVISION takes a {DEVICE_ID_SIZE}-byte device id and a {ROOT_KEY_SIZE}-byte "
                f"root key, not {len(dev_id)} and {len(root_key)} bytes"
            )
        await self._ok(Cmd.PROVISION, data=dev_id + root_key)

    async def status(self) -> StatusInfo:
        return StatusInfo.parse(await self._ok(Cmd.STATUS))

    async def read_ctx(self, ctx: int) -> CtxInfo:
        return CtxInfo.parse(await self._ok(Cmd.READ_CTX, ctx))

    async def reset(self, ctx: int) -> None:
        await self._ok(Cmd.RESET, ctx)

    async def extend(self, ctx: int, digest: bytes) -> bytes:
        return await self._ok(Cmd.EXTEND, ctx, digest)

    async def measure(
        self, ctx: int, image: bytes | Iterable[bytes], length: int | None = None
    ) -> bytes:
        """Stream ``image`` into the HSM, which hashes it and extends context ``ctx``."""
        return await self._ok(Cmd.MEASURE, ctx, image, length)

    async def set_anomaly(self, ctx: int) -> None:
        await self._ok(Cmd.SET_ANOMALY, ctx)

    async def new_period(self) -> None:
        """Start a new monitoring period of the HSM (zeroes every task's command count)."""
        await self._ok(Cmd.NEW_PERIOD)

    async def attest(self, nonce: bytes, sel: int) -> Evidence:
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"the nonce must be {NONCE_SIZE} bytes, not {len(nonce)}")
        return Evidence.unpack(await self._ok(Cmd.ATTEST, data=u32(sel) + nonce))

    async def update(self, auth: UpdateAuth) -> UpdateAck:
        result = await self._ok(Cmd.UPDATE, auth.ctx, auth.command_data())
        return UpdateAck(ctx=auth.ctx, new=int.from_bytes(result[:4], "big"), ack=result[4:])

    async def task_mac(self, data: bytes | Iterable[bytes], length: int | None = None) -> bytes:
        return await self._ok(Cmd.TASK_MAC, data=data, length=length)

    async def hash(self, data: bytes | Iterable[bytes], length: int | None = None) -> bytes:
        return await self._ok(Cmd.HASH, data=data, length=length)

    async def hmac_key(self, key: bytes) -> None:
        await self._ok(Cmd.HMAC_KEY, data=key)

    async def hmac(self, data: bytes | Iterable[bytes], length: int | None = None) -> bytes:
        return await self._ok(Cmd.HMAC, data=data, length=length)
