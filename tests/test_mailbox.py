"""The mailbox's holder rules (docs/protocol.md section 9) and the driver, over the golden model.

The RTL follows the same rules; ``tests/test_isolation.py`` runs the attacks and random
interleavings of several callers on every backend and compares them with this model.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from mchsm.constants import (
    MAGIC,
    MANAGER,
    Cmd,
    CmdReg,
    Ctrl,
    OwnerReg,
    Reg,
    RegFields,
    Status,
    StatusReg,
    pack_reg,
    unpack_reg,
)
from mchsm.sw.driver import HsmDriver, ModelTransport, Transport
from mchsm.sw.errors import (
    BusRefusedError,
    HsmError,
    MailboxBusyError,
    MailboxLostError,
    TransportError,
)
from mchsm.sw.mailbox import ModelMailbox
from mchsm.sw.model import HsmModel


def make(n: int = 8) -> tuple[ModelMailbox, HsmDriver]:
    box = ModelMailbox(HsmModel(n))
    return box, HsmDriver(ModelTransport(box))


def words(data: bytes) -> list[int]:
    data = data + bytes(-len(data) % 4)
    return [int.from_bytes(data[i : i + 4], "big") for i in range(0, len(data), 4)]


def cmd(code: int, ctx: int = 0) -> int:
    return pack_reg(CmdReg, code=code, ctx=ctx)


def status(box: ModelMailbox, caller: int) -> RegFields:
    return unpack_reg(StatusReg, box.read(Reg.STATUS, caller))


def refused(box: ModelMailbox, addr: int, caller: int, value: int | None = None) -> bool:
    try:
        if value is None:
            box.read(addr, caller)
        else:
            box.write(addr, value, caller)
    except BusRefusedError:
        return True
    return False


def test_id_and_info_are_public() -> None:
    box, driver = make(5)
    assert box.read(Reg.ID, 3) == MAGIC
    info = asyncio.run(driver.probe())
    assert (info.contexts, info.protocol_version) == (5, 1)


def test_register_level_hash_by_the_holder_only() -> None:
    box, _ = make()
    data = b"hello mailbox!!"  # 15 bytes: the last word carries 3
    assert refused(box, Reg.LEN, 2, len(data))  # nobody holds it: nobody may write LEN
    box.write(Reg.CTRL, Ctrl.CLAIM, 2)
    assert unpack_reg(OwnerReg, box.read(Reg.OWNER, 4)).caller == 2
    assert refused(box, Reg.CTRL, 4, Ctrl.CLAIM)  # held: another task cannot claim
    box.write(Reg.LEN, len(data), 2)
    assert refused(box, Reg.LEN, 4, 1)
    box.write(Reg.CMD, cmd(Cmd.HASH), 2)
    assert status(box, 2).busy and status(box, 2).expects and status(box, 2).mine
    assert refused(box, Reg.DATA, 4, 0xDEADBEEF)  # another caller's word is refused
    assert refused(box, Reg.LEN, 2, 1)  # LEN cannot change under the command
    for w in words(data):
        box.write(Reg.DATA, w, 2)
    st = status(box, 2)
    assert st.done and not st.busy and st.status == Status.OK and st.reslen == 32
    digest = b"".join(box.read(Reg.RESULT + 4 * i, 2).to_bytes(4, "big") for i in range(8))
    assert digest == hashlib.sha256(data).digest()
    assert all(refused(box, Reg.RESULT + 4 * i, 4) for i in range(8))
    assert status(box, 4).as_bits() == pack_reg(StatusReg, held=1)  # only held
    assert refused(box, Reg.CYCLES, 4) and refused(box, Reg.LEN, 4)


def test_release_erases_what_the_holder_had() -> None:
    box, _ = make()
    box.write(Reg.CTRL, Ctrl.CLAIM, 2)
    box.write(Reg.LEN, 0, 2)
    box.write(Reg.CMD, cmd(Cmd.STATUS), 2)
    assert status(box, 2).reslen == 36
    assert refused(box, Reg.CTRL, 3, Ctrl.RELEASE)  # only the holder releases
    box.write(Reg.CTRL, Ctrl.RELEASE, 2)
    assert status(box, 2).as_bits() == 0 and not box.read(Reg.OWNER, 2) & 0x100
    box.write(Reg.CTRL, Ctrl.CLAIM, 3)
    assert status(box, 3).reslen == 0 and box.read(Reg.LEN, 3) == 0
    assert all(box.read(Reg.RESULT + 4 * i, 3) == 0 for i in range(32))


def test_words_beyond_the_result_length_read_zero() -> None:
    box, _ = make()
    box.write(Reg.CTRL, Ctrl.CLAIM, 2)
    box.write(Reg.LEN, 0, 2)
    box.write(Reg.CMD, cmd(Cmd.STATUS), 2)  # 36 bytes
    box.write(Reg.CMD, cmd(Cmd.RESET, 1), 2)  # denied: no result
    assert status(box, 2).reslen == 0
    assert all(box.read(Reg.RESULT + 4 * i, 2) == 0 for i in range(32))


def test_abort_by_the_holder_only_while_it_takes_data() -> None:
    box, _ = make()
    box.write(Reg.CTRL, Ctrl.CLAIM, MANAGER)
    assert refused(box, Reg.CTRL, MANAGER, Ctrl.ABORT)  # nothing to abort
    box.write(Reg.LEN, 100, MANAGER)
    box.write(Reg.CMD, cmd(Cmd.MEASURE, 1), MANAGER)
    box.write(Reg.DATA, 1, MANAGER)
    assert refused(box, Reg.CMD, MANAGER, cmd(Cmd.STATUS))  # a command takes data
    assert refused(box, Reg.CTRL, 3, Ctrl.ABORT)  # not the holder
    assert refused(box, Reg.CTRL, MANAGER, Ctrl.RELEASE)  # abort first
    before = box.model.state
    box.write(Reg.CTRL, Ctrl.ABORT, MANAGER)
    st = status(box, MANAGER)
    assert not st.busy and st.done and st.status == Status.ERR_ABORTED
    assert box.model.state == before
    box.write(Reg.LEN, 0, MANAGER)  # the very next access may start over
    box.write(Reg.CMD, cmd(Cmd.STATUS), MANAGER)
    assert status(box, MANAGER).status == Status.OK


def test_manager_preempts_a_task_that_takes_data_or_idles() -> None:
    box, _ = make()
    box.write(Reg.CTRL, Ctrl.CLAIM, 2)
    box.write(Reg.LEN, 64, 2)
    box.write(Reg.CMD, cmd(Cmd.HASH), 2)
    box.write(Reg.DATA, 7, 2)
    assert refused(box, Reg.CTRL, 3, Ctrl.CLAIM)  # a task cannot preempt
    box.write(Reg.CTRL, Ctrl.CLAIM, MANAGER)
    assert unpack_reg(OwnerReg, box.read(Reg.OWNER, 2)).caller == MANAGER
    assert refused(box, Reg.DATA, 2, 8) and refused(box, Reg.CTRL, 2, Ctrl.ABORT)
    st = status(box, MANAGER)
    assert st.mine and not st.busy and not st.done and st.reslen == 0
    assert box.model._failures[1] == 0  # a preempted command is not the task's failure


def test_ctrl_takes_exactly_one_action() -> None:
    box, _ = make()
    for value in (0, Ctrl.CLAIM | Ctrl.CLEAR, 0x10, 1 << 31):
        assert refused(box, Reg.CTRL, 2, value)
    assert not box.read(Reg.OWNER, 2) & 0x100


def test_irq_is_the_managers() -> None:
    box, _ = make()
    assert refused(box, Reg.IRQ_EN, 2, 1)
    box.write(Reg.IRQ_EN, 1, MANAGER)
    box.write(Reg.CTRL, Ctrl.CLAIM, 2)
    box.write(Reg.LEN, 0, 2)
    box.write(Reg.CMD, cmd(Cmd.STATUS), 2)
    assert box.irq
    assert refused(box, Reg.CTRL, 3, Ctrl.CLEAR)
    box.write(Reg.CTRL, Ctrl.CLEAR, 2)
    assert not box.irq and status(box, 2).reslen == 36  # the result stays


def test_unaligned_or_out_of_range_addresses_are_programming_errors() -> None:
    box, _ = make()
    for addr in (1, 0x100, -4):
        with pytest.raises(ValueError, match="mailbox address"):
            box.read(addr, 0)


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 64, 4097])
def test_driver_streams_chunks(n: int) -> None:
    box, driver = make()
    data = os.urandom(n)
    chunks = [data[i : i + 7] for i in range(0, n, 7)]
    digest = asyncio.run(driver.port(1).hash(chunks, n))
    assert digest == hashlib.sha256(data).digest()
    assert box.holder is None  # released


def test_driver_raises_typed_errors() -> None:
    _, driver = make()
    with pytest.raises(HsmError, match="ATTEST failed with ERR_NOT_PROVISIONED") as info:
        asyncio.run(driver.port(0).attest(bytes(32), 1))
    assert info.value.status is Status.ERR_NOT_PROVISIONED
    with pytest.raises(ValueError, match="nonce must be 32 bytes"):
        asyncio.run(driver.port(0).attest(bytes(16), 1))


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [("context", {"ctx": 257}), ("command code", {"cmd": 0x142}), ("caller", {"caller": 64})],
)
def test_driver_refuses_values_wider_than_their_field(field: str, kwargs: dict) -> None:
    _, driver = make()
    args = {"caller": 0, "cmd": Cmd.READ_CTX, "ctx": 1, **kwargs}
    with pytest.raises(ValueError, match=field):
        asyncio.run(driver.run(args["caller"], args["cmd"], args["ctx"]))


def test_port_caller_is_fixed() -> None:
    _, driver = make()
    port = driver.port(3)
    with pytest.raises(AttributeError):
        port.caller = 0  # type: ignore[misc]  # assigning a read-only property on purpose
    assert port.caller == 3


def test_driver_waits_for_a_held_mailbox_then_says_so() -> None:
    box, _ = make()
    driver = HsmDriver(ModelTransport(box), claim_limit=50)
    box.write(Reg.CTRL, Ctrl.CLAIM, 2)  # task 2 holds it and never lets go
    with pytest.raises(MailboxBusyError, match="caller 3 could not claim"):
        asyncio.run(driver.port(3).hash(b"x"))
    # the manager takes it back and runs its command
    assert asyncio.run(driver.port(MANAGER).status()).contexts == 8


class PreemptingTransport(ModelTransport):
    """The manager takes the mailbox after the ``at``-th access of caller 2."""

    def __init__(self, box: ModelMailbox, at: int) -> None:
        super().__init__(box)
        self.at = at
        self.count = 0

    def _tick(self, caller: int) -> None:
        if caller == 2:
            self.count += 1
            if self.count == self.at:
                self.mailbox.write(Reg.CTRL, Ctrl.CLAIM, MANAGER)
                self.mailbox.write(Reg.CTRL, Ctrl.RELEASE, MANAGER)

    async def read(self, addr: int, caller: int) -> int:
        value = await super().read(addr, caller)
        self._tick(caller)
        return value

    async def write(self, addr: int, value: int, caller: int) -> None:
        await super().write(addr, value, caller)
        self._tick(caller)


@pytest.mark.parametrize("at", range(1, 27))
def test_driver_retries_what_did_not_run_and_reports_what_did(at: int) -> None:
    """Preempted after each of its accesses in turn, a task's HASH either still returns the
    right digest (retried: it had not run) or raises MailboxLostError(ran=True)."""
    box = ModelMailbox(HsmModel(4))
    driver = HsmDriver(PreemptingTransport(box, at))
    data = bytes(range(40))
    # accesses of one attempt: CLAIM 1, LEN 2, CMD 3, STATUS 4, 10 x DATA 5-14, STATUS 15,
    # 8 x RESULT 16-23, CYCLES 24, RELEASE 25
    try:
        digest = asyncio.run(driver.port(2).hash(data))
    except MailboxLostError as lost:
        assert 14 <= at <= 23 and lost.ran and "its result was erased" in str(lost)
    else:
        assert (at < 14 or at > 23) and digest == hashlib.sha256(data).digest()


def test_driver_is_not_reentrant() -> None:
    _, driver = make()

    async def both() -> None:
        await asyncio.gather(driver.port(1).hash(b"a"), driver.port(2).hash(b"b"))

    class Yielding(ModelTransport):
        async def write(self, addr: int, value: int, caller: int) -> None:
            await asyncio.sleep(0)
            await super().write(addr, value, caller)

    driver.transport = Yielding(driver.transport.mailbox)  # type: ignore[attr-defined]  # a ModelTransport here
    with pytest.raises(RuntimeError, match="not re-entrant"):
        asyncio.run(both())


class DeadTransport(Transport):
    async def read(self, addr: int, caller: int) -> int:
        return 0

    async def write(self, addr: int, value: int, caller: int) -> None:
        pass


def test_driver_reports_missing_device_and_a_lost_mailbox() -> None:
    driver = HsmDriver(DeadTransport(), poll_limit=5, claim_limit=5)
    with pytest.raises(TransportError, match="no mchsm HSM"):
        asyncio.run(driver.probe())
    with pytest.raises(MailboxLostError, match="HASH lost the HSM mailbox"):  # never "mine"
        asyncio.run(driver.run(0, Cmd.HASH, 0, b"abc"))
