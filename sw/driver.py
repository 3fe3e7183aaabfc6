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
    DIGEST_SIZE,
    MAGIC,
    MANAGER,
    MAX_CONTEXTS,
    NONCE_SIZE,
    ROOT_KEY_SIZE,
    Cmd,
    InfoReg,
    IrqEnReg,
    Reg,
    pack_reg,
    unpack_reg,
)
from mchsm.sw.command import REFUSED, Op, Outcome, Read, Reply, WaitDone, Write, run_command
from mchsm.sw.errors import (
    ArgumentError,
    ArgumentTypeError,
    BusRefusedError,
    ConcurrencyError,
    ContextError,
    MailboxBusyError,
    TransportError,
)
from mchsm.sw.mailbox import ModelMailbox
from mchsm.sw.protocol import (
    CtxInfo,
    Evidence,
    StatusInfo,
    UpdateAck,
    UpdateAuth,
    attest_data,
    provision_data,
)

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
        self._device: DeviceInfo | None = None

    async def probe(self, caller: int = MANAGER) -> DeviceInfo:
        """Check that an mchsm HSM answers and learn its size (``ID`` and ``INFO``, which any
        caller may read and which change nothing); the driver keeps what it learned."""
        _check_field("caller", caller, CALLER_BITS)
        magic = await self.transport.read(Reg.ID, caller)
        if magic != MAGIC:
            raise TransportError(
                f"no mchsm HSM at this transport: ID register reads 0x{magic:08x}, "
                f"expected 0x{MAGIC:08x}"
            )
        info = unpack_reg(InfoReg, await self.transport.read(Reg.INFO, caller))
        self._device = DeviceInfo(protocol_version=info.version, contexts=info.contexts)
        return self._device

    async def device(self, caller: int = MANAGER) -> DeviceInfo:
        """What :meth:`probe` learned, probing once (as ``caller``) if it has not run yet: the
        number of contexts N is fixed by the hardware, so it is read once per driver."""
        if self._device is None:
            return await self.probe(caller)
        return self._device

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
        data, length = _check_data(data, length)
        _check_field("caller", caller, CALLER_BITS)
        _check_field("command code", cmd, 8)
        _check_field("context", ctx, 8)
        _check_field("length", length, 32)
        if cmd in Cmd.__members__.values():
            cmd = Cmd(cmd)
        if self._active:
            raise ConcurrencyError(
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


def _check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in ``low..high``, or the typed error that says why not (a bool is not
    a number here: ``read_ctx(True)`` is a mistake, not context 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(
            f"{name} must be an integer in {low}..{high}, not {type(value).__name__} {value!r}"
        )
    if not low <= value <= high:
        raise ArgumentError(f"{name} must be an integer in {low}..{high}, not {value!r}")
    return value


def _check_field(name: str, value: object, bits: int) -> None:
    """Refuse a value wider than its register field (never truncate it)."""
    _check_int(name, value, 0, (1 << bits) - 1)


_BYTES_LIKE = (bytes, bytearray, memoryview)


def _check_bytes(name: str, value: object, size: int | None = None) -> bytes:
    """``value`` as bytes (of ``size`` bytes, if given), or the typed error."""
    if not isinstance(value, _BYTES_LIKE):
        hint = "; encode it first" if isinstance(value, str) else ""
        raise ArgumentTypeError(f"{name} must be bytes, not {type(value).__name__}{hint}")
    data = bytes(value)
    if size is not None and len(data) != size:
        raise ArgumentError(f"{name} must be {size} bytes, not {len(data)}")
    return data


def _check_data(data: object, length: object) -> tuple[bytes | Iterable[bytes], int]:
    """A command's data (bytes, or an iterable of bytes chunks) and its length.

    A ``str`` is refused although it is iterable: it has no byte encoding of its own.  The
    chunks of an iterable are checked as they are sent (:func:`mchsm.sw.command.data_words`),
    and so is their total against ``length``.
    """
    if isinstance(data, _BYTES_LIKE):
        data = bytes(data)
        if length is None:
            length = len(data)
    elif isinstance(data, str) or not isinstance(data, Iterable):
        hint = "; encode it first" if isinstance(data, str) else ""
        raise ArgumentTypeError(
            f"data must be bytes or an iterable of bytes chunks, not {type(data).__name__}{hint}"
        )
    elif length is None:
        raise ArgumentTypeError("length is required when data is an iterable of chunks")
    _check_int("length", length, 0, (1 << 32) - 1)
    assert isinstance(length, int)
    if isinstance(data, list | tuple):  # chunks already in memory: checked before any access
        for i, chunk in enumerate(data):
            if not isinstance(chunk, _BYTES_LIKE):
                raise ArgumentTypeError(
                    f"data chunks must be bytes, not {type(chunk).__name__} (chunk {i})"
                )
        total = sum(len(chunk) for chunk in data)
        if total != length:
            raise ArgumentError(f"the data has {total} bytes, not the {length} declared for it")
    return data, length


class HsmPort:
    """Typed HSM commands bound to one caller id.  Failing commands raise :class:`HsmError`.

    The kernel creates one per task; a task holding its port has no way to name another
    caller.  ``last`` keeps the last :class:`Reply` (status and cycles) for reports.
    """

    #: attributes fixed when the port is made: rebinding either would make it another
    #: caller's port (Python cannot stop ``object.__setattr__``; this stops every plain path)
    _FIXED = frozenset({"_driver", "_caller"})
    _driver: HsmDriver
    _caller: int

    def __init__(self, driver: HsmDriver, caller: int) -> None:
        if "_caller" in self.__dict__:
            raise AttributeError("an HsmPort is bound to its caller once, when it is made")
        if not isinstance(driver, HsmDriver):
            raise ArgumentTypeError(f"an HsmPort needs an HsmDriver, not {type(driver).__name__}")
        _check_field("caller", caller, CALLER_BITS)
        object.__setattr__(self, "_driver", driver)
        object.__setattr__(self, "_caller", caller)
        self.last: Reply | None = None

    def __setattr__(self, name: str, value: object) -> None:
        if name in self._FIXED:
            raise AttributeError(
                f"{name} of an HsmPort is fixed by the kernel that made it (caller {self._caller})"
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if name in self._FIXED:
            raise AttributeError(f"{name} of an HsmPort is fixed by the kernel that made it")
        object.__delattr__(self, name)

    @property
    def caller(self) -> int:
        """The caller id every command of this port carries; fixed when the kernel made it."""
        return self._caller

    async def _context(self, ctx: object) -> int:
        """``ctx`` if it names one of the HSM's contexts 1..N, else :class:`ContextError`
        before any command is issued.  N comes from :meth:`HsmDriver.device` (read once)."""
        _check_int("context", ctx, 0, 255)
        assert isinstance(ctx, int)
        if not 1 <= ctx <= MAX_CONTEXTS:
            raise ContextError(f"context {ctx} does not exist: contexts are 1..N (N <= 32)")
        if type(self._driver).run is not HsmDriver.run:
            # a stand-in that answers commands itself, with no registers behind it (the fast
            # traces' NullHsm): 1..MAX_CONTEXTS is all that can be checked here
            return ctx
        n = (await self._driver.device(self._caller)).contexts
        if ctx > n:
            raise ContextError(f"context {ctx} does not exist: this HSM has contexts 1..{n}")
        return ctx

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
        dev_id = _check_bytes("the device id", dev_id)
        root_key = _check_bytes("the root key", root_key)
        if len(dev_id) != DEVICE_ID_SIZE or len(root_key) != ROOT_KEY_SIZE:
            raise ArgumentError(
                f"PROVISION takes a {DEVICE_ID_SIZE}-byte device id and a {ROOT_KEY_SIZE}-byte "
                f"root key, not {len(dev_id)} and {len(root_key)} bytes"
            )
        await self._ok(Cmd.PROVISION, data=provision_data(dev_id, root_key))

    async def status(self) -> StatusInfo:
        return StatusInfo.parse(await self._ok(Cmd.STATUS))

    async def read_ctx(self, ctx: int) -> CtxInfo:
        return CtxInfo.parse(await self._ok(Cmd.READ_CTX, await self._context(ctx)))

    async def reset(self, ctx: int) -> None:
        await self._ok(Cmd.RESET, await self._context(ctx))

    async def extend(self, ctx: int, digest: bytes) -> bytes:
        digest = _check_bytes("the digest EXTEND takes", digest, DIGEST_SIZE)
        return await self._ok(Cmd.EXTEND, await self._context(ctx), digest)

    async def measure(
        self, ctx: int, image: bytes | Iterable[bytes], length: int | None = None
    ) -> bytes:
        """Stream ``image`` into the HSM, which hashes it and extends context ``ctx``."""
        image, length = _check_data(image, length)
        return await self._ok(Cmd.MEASURE, await self._context(ctx), image, length)

    async def set_anomaly(self, ctx: int) -> None:
        await self._ok(Cmd.SET_ANOMALY, await self._context(ctx))

    async def new_period(self) -> None:
        """Start a new monitoring period of the HSM (zeroes every task's command count)."""
        await self._ok(Cmd.NEW_PERIOD)

    async def attest(self, nonce: bytes, sel: int) -> Evidence:
        """``sel`` selects contexts (bit i-1 for context i): it must name at least one, and
        only contexts 1..N of this HSM."""
        nonce = _check_bytes("the nonce", nonce)
        if len(nonce) != NONCE_SIZE:
            raise ArgumentError(f"the nonce must be {NONCE_SIZE} bytes, not {len(nonce)}")
        _check_int("the selection mask", sel, 1, (1 << MAX_CONTEXTS) - 1)
        stand_in = type(self._driver).run is not HsmDriver.run  # no registers: see _context
        n = MAX_CONTEXTS if stand_in else (await self._driver.device(self._caller)).contexts
        if sel >> n:
            raise ContextError(
                f"the selection mask 0x{sel:08x} names contexts beyond this HSM's 1..{n}"
            )
        return Evidence.unpack(await self._ok(Cmd.ATTEST, data=attest_data(sel, nonce)))

    async def update(self, auth: UpdateAuth) -> UpdateAck:
        if not isinstance(auth, UpdateAuth):
            raise ArgumentTypeError(
                f"UPDATE takes an UpdateAuth (from the verifier), not {type(auth).__name__}"
            )
        ctx = await self._context(auth.ctx)
        _check_int("the authorisation's old version", auth.old, 0, (1 << 32) - 1)
        _check_int("the authorisation's new version", auth.new, 0, (1 << 32) - 1)
        _check_bytes("the authorisation's reference", auth.ref, DIGEST_SIZE)
        _check_bytes("the authorisation's tag", auth.tag, DIGEST_SIZE)
        return UpdateAck.from_result(ctx, await self._ok(Cmd.UPDATE, ctx, auth.command_data()))

    async def task_mac(self, data: bytes | Iterable[bytes], length: int | None = None) -> bytes:
        return await self._ok(Cmd.TASK_MAC, data=data, length=length)

    async def hash(self, data: bytes | Iterable[bytes], length: int | None = None) -> bytes:
        return await self._ok(Cmd.HASH, data=data, length=length)

    async def hmac_key(self, key: bytes) -> None:
        await self._ok(Cmd.HMAC_KEY, data=_check_bytes("the HMAC key", key))

    async def hmac(self, data: bytes | Iterable[bytes], length: int | None = None) -> bytes:
        return await self._ok(Cmd.HMAC, data=data, length=length)
