"""The one host driver of the HSM: commands over 32-bit register reads and writes.

The driver is sans-I/O in the sense that matters here: it knows the mailbox protocol and the byte
layouts, and nothing of how a word reaches the device.  A :class:`Transport` moves words; there
is one for the golden model (:class:`ModelTransport`), one for the RTL in Amaranth's simulator,
one for cocotb + Verilator and one for a board over UART.  The driver awaits nothing but its
transport, so it runs inside asyncio, an Amaranth testbench or a cocotb test alike.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mchsm.constants import (
    CALLER_BITS,
    DEVICE_ID_SIZE,
    MAGIC,
    MANAGER,
    MESSAGE_LAYOUTS,
    NONCE_SIZE,
    ROOT_KEY_SIZE,
    Cmd,
    CtxFlag,
    InfoReg,
    IrqEnReg,
    Reg,
    StatusInfoWord,
    pack_reg,
    u32,
    unpack_reg,
)
from mchsm.sw.command import REFUSED, Op, Outcome, Read, Reply, WaitDone, Write, run_command
from mchsm.sw.errors import BusRefusedError, MailboxBusyError, TransportError
from mchsm.sw.mailbox import ModelMailbox
from mchsm.sw.protocol import Evidence, UpdateAck, UpdateAuth, unpack

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


class Transport(abc.ABC):
    """Moves 32-bit words between host and HSM, each access tagged with the caller id.

    Subclasses implement :meth:`read` and :meth:`write`; :meth:`write_burst` may be overridden
    where the link can do better than one word at a time.  An access the HSM refuses (its bus
    cycle ends with ``err``) raises :class:`~mchsm.sw.errors.BusRefusedError`; a burst stops at
    the first refused word.  Any other failure of the link is a
    :class:`~mchsm.sw.errors.TransportError`.
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

    #: the transport can see the HSM's irq line (:meth:`wait_irq` waits for it)
    sees_irq = False

    async def wait_irq(self) -> bool:
        """Wait, within a bound, until the irq line is high; False if it cannot see the line
        or the bound ran out.  The driver then polls STATUS as it would anyway."""
        return False


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
        fields = unpack(MESSAGE_LAYOUTS["STATUS_RESULT"], data)
        info = unpack_reg(StatusInfoWord, int(fields["info"]))  # type: ignore[arg-type]
        return cls(
            provisioned=bool(info.provisioned),
            contexts=info.contexts,
            protocol_version=info.version,
            counter=int(fields["counter"]),  # type: ignore[arg-type]
            ok=int(fields["ok"]),  # type: ignore[arg-type]
            loaded=int(fields["loaded"]),  # type: ignore[arg-type]
            anomaly=int(fields["anomaly"]),  # type: ignore[arg-type]
            dev_id=bytes(fields["dev_id"]),  # type: ignore[arg-type]
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
        fields = unpack(MESSAGE_LAYOUTS["READ_CTX_RESULT"], data)
        return cls(
            flags=CtxFlag(fields["flags"]),
            version=int(fields["version"]),  # type: ignore[arg-type]
            measurement=bytes(fields["measurement"]),  # type: ignore[arg-type]
            reference=bytes(fields["reference"]),  # type: ignore[arg-type]
        )


class HsmDriver:
    """Runs HSM commands through a :class:`Transport`, following the mailbox's holder rules.

    Every command is claimed, run and released (``docs/protocol.md`` section 9.3).  The driver
    checks on every step that it still holds the mailbox: a refused access or a ``STATUS``
    without ``mine`` means the manager took it back, and :class:`MailboxLostError` says whether
    the command ran.  A command that lost the mailbox before its last data word was taken
    changed nothing and is issued again (up to ``retries`` times, when its data is ``bytes``);
    one that ran is never repeated.

    Parameters
    ----------
    transport : Transport
        How words reach the HSM.
    poll_limit : int
        STATUS reads to wait for a command to finish before giving up.
    claim_limit : int
        Attempts to claim a mailbox that another caller holds before :class:`MailboxBusyError`.
    retries : int
        How often a command that lost the mailbox without running is issued again.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        poll_limit: int = 10_000_000,
        claim_limit: int = 100_000,
        retries: int = 3,
    ) -> None:
        self.transport = transport
        self.poll_limit = poll_limit
        self.claim_limit = claim_limit
        self.retries = retries
        self.cycles = 0  #: HSM cycles spent by all commands so far (0 on the model)
        self.commands = 0  #: commands issued so far
        self._active = False

    async def probe(self) -> DeviceInfo:
        """Check that an mchsm HSM answers and learn its size."""
        magic = await self.transport.read(Reg.ID, MANAGER)
        if magic != MAGIC:
            raise TransportError(
                f"no mchsm HSM at this transport: ID register reads 0x{magic:08x}, "
                f"expected 0x{MAGIC:08x}"
            )
        info = unpack_reg(InfoReg, await self.transport.read(Reg.INFO, MANAGER))
        return DeviceInfo(protocol_version=info.version, contexts=info.contexts)

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
        any size streams through without being held in memory at once.  Field values that do
        not fit their register field are refused, never truncated.
        """
        if isinstance(data, bytes | bytearray):
            data = bytes(data)
            length = len(data) if length is None else length
        elif length is None:
            raise TypeError("length is required when data is an iterable of chunks")
        _check_field("caller", caller, CALLER_BITS)
        _check_field("command code", int(cmd), 8)
        _check_field("context", ctx, 8)
        _check_field("length", length, 32)
        if cmd in Cmd.__members__.values():
            cmd = Cmd(cmd)
        if self._active:
            raise RuntimeError(
                "HsmDriver.run is not re-entrant: one command at a time per driver (the bus "
                "carries one access at a time)"
            )
        self._active = True
        try:
            steps = run_command(
                cmd,
                ctx,
                data,
                length,
                claim_limit=self.claim_limit,
                poll_limit=self.poll_limit,
                retries=self.retries,
            )
            try:
                op = next(steps)
                while True:
                    op = steps.send(await self._perform(op, caller))
            except StopIteration as stop:
                reply: Reply = stop.value
            except MailboxBusyError as busy:
                raise MailboxBusyError(f"caller {caller} {busy}") from None
        finally:
            self._active = False
        self.cycles += reply.cycles
        self.commands += 1
        return reply

    async def _perform(self, op: Op, caller: int) -> Outcome:
        t = self.transport
        try:
            if isinstance(op, Read):
                return await t.read(op.addr, caller)
            if isinstance(op, Write):
                await t.write(op.addr, op.value, caller)
            elif isinstance(op, WaitDone):
                if t.sees_irq:
                    await self._wait_irq()
            else:
                await t.write_burst(op.addr, op.values, caller)
        except BusRefusedError:
            return REFUSED
        return None

    async def _wait_irq(self) -> None:
        """Wait for the interrupt instead of polling: the kernel's job, so the manager enables
        it if it is off (after a reset it is)."""
        t = self.transport
        if not unpack_reg(IrqEnReg, await t.read(Reg.IRQ_EN, MANAGER)).done:
            await t.write(Reg.IRQ_EN, pack_reg(IrqEnReg, done=1), MANAGER)
        await t.wait_irq()

    def port(self, caller: int) -> HsmPort:
        """A handle that issues every command as ``caller`` (what the kernel hands a task)."""
        return HsmPort(self, caller)


def _check_field(name: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise ValueError(f"{name} must be an integer in 0..{(1 << bits) - 1}, not {value!r}")


class HsmPort:
    """Typed HSM commands bound to one caller id.  Failing commands raise :class:`HsmError`.

    The kernel creates one per task; a task holding its port has no way to name another
    caller.  ``last`` keeps the last :class:`Reply` (status and cycles) for reports.
    """

    def __init__(self, driver: HsmDriver, caller: int) -> None:
        _check_field("caller", caller, CALLER_BITS)
        self._driver = driver
        self._caller = caller
        self.last: Reply | None = None

    @property
    def caller(self) -> int:
        """The caller id every command of this port carries; fixed when the kernel made it."""
        return self._caller

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
        fields = unpack(
            MESSAGE_LAYOUTS["UPDATE_RESULT"],
            await self._ok(Cmd.UPDATE, auth.ctx, auth.command_data()),
        )
        return UpdateAck(ctx=auth.ctx, new=int(fields["new"]), ack=bytes(fields["ack"]))  # type: ignore[arg-type]

    async def task_mac(self, data: bytes | Iterable[bytes], length: int | None = None) -> bytes:
        return await self._ok(Cmd.TASK_MAC, data=data, length=length)

    async def hash(self, data: bytes | Iterable[bytes], length: int | None = None) -> bytes:
        return await self._ok(Cmd.HASH, data=data, length=length)

    async def hmac_key(self, key: bytes) -> None:
        await self._ok(Cmd.HMAC_KEY, data=key)

    async def hmac(self, data: bytes | Iterable[bytes], length: int | None = None) -> bytes:
        return await self._ok(Cmd.HMAC, data=data, length=length)
