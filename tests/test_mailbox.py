"""The mailbox register protocol and the driver, over the golden model."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from mchsm.constants import (
    CTRL_ABORT,
    CTRL_CLEAR,
    MAGIC,
    MANAGER,
    STATUS_BUSY,
    STATUS_DONE,
    Cmd,
    Reg,
    Status,
)
from mchsm.sw.driver import HsmDriver, ModelTransport, Transport
from mchsm.sw.errors import HsmError, TransportError
from mchsm.sw.mailbox import ModelMailbox
from mchsm.sw.model import HsmModel


def make(n: int = 8) -> tuple[ModelMailbox, HsmDriver]:
    box = ModelMailbox(HsmModel(n))
    return box, HsmDriver(ModelTransport(box))


def words(data: bytes) -> list[int]:
    data = data + bytes(-len(data) % 4)
    return [int.from_bytes(data[i : i + 4], "big") for i in range(0, len(data), 4)]


def test_id_and_info() -> None:
    box, driver = make(5)
    assert box.read(Reg.ID, 3) == MAGIC
    info = asyncio.run(driver.probe())
    assert (info.contexts, info.protocol_version) == (5, 1)


def test_register_level_hash_and_result_owner_only() -> None:
    box, _ = make()
    data = b"hello mailbox!!"  # 15 bytes: the last word carries 3
    box.write(Reg.LEN, len(data), 2)
    box.write(Reg.CMD, Cmd.HASH, 2)
    assert box.read(Reg.STATUS, 2) & STATUS_BUSY
    box.write(Reg.DATA, 0xDEADBEEF, 4)  # another caller's word is ignored
    for w in words(data):
        box.write(Reg.DATA, w, 2)
    status = box.read(Reg.STATUS, 2)
    assert status & STATUS_DONE and not status & STATUS_BUSY
    assert status & 0xFF == Status.OK and (status >> 16) & 0xFF == 32
    digest = b"".join(box.read(Reg.RESULT + 4 * i, 2).to_bytes(4, "big") for i in range(8))
    assert digest == hashlib.sha256(data).digest()
    assert all(box.read(Reg.RESULT + 4 * i, 4) == 0 for i in range(8))
    assert box.read(Reg.OWNER, 4) == 2


def test_cmd_while_busy_is_ignored_and_abort_changes_nothing() -> None:
    box, _ = make()
    box.write(Reg.LEN, 100, MANAGER)
    box.write(Reg.CMD, Cmd.MEASURE | 1 << 8, MANAGER)
    box.write(Reg.DATA, 1, MANAGER)
    box.write(Reg.CMD, Cmd.STATUS, 3)  # ignored: busy
    assert box.read(Reg.OWNER, 0) == MANAGER
    before = box.model.state
    box.write(Reg.CTRL, CTRL_ABORT, 3)  # not the owner, not the manager: ignored
    assert box.busy
    box.write(Reg.CTRL, CTRL_ABORT, MANAGER)
    assert not box.busy and box.read(Reg.STATUS, 0) & 0xFF == Status.ERR_ABORTED
    assert box.model.state == before


def test_early_error_is_done_at_once_and_data_is_ignored() -> None:
    box, _ = make()
    box.write(Reg.LEN, 32, 3)
    box.write(Reg.CMD, Cmd.EXTEND | 1 << 8, 3)  # a task may not EXTEND
    status = box.read(Reg.STATUS, 3)
    assert status & STATUS_DONE and status & 0xFF == Status.ERR_DENIED
    box.write(Reg.DATA, 5, 3)
    assert not box.busy


def test_irq_follows_done_and_enable() -> None:
    box, _ = make()
    box.write(Reg.IRQ_EN, 1, MANAGER)
    box.write(Reg.LEN, 0, MANAGER)
    box.write(Reg.CMD, Cmd.STATUS, MANAGER)
    assert box.irq
    box.write(Reg.CTRL, CTRL_CLEAR, MANAGER)
    assert not box.irq


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 64, 4097])
def test_driver_streams_chunks(n: int) -> None:
    _, driver = make()
    data = os.urandom(n)
    chunks = [data[i : i + 7] for i in range(0, n, 7)]
    digest = asyncio.run(driver.port(1).hash(chunks, n))
    assert digest == hashlib.sha256(data).digest()


def test_driver_raises_typed_errors() -> None:
    _, driver = make()
    with pytest.raises(HsmError, match="ATTEST failed with ERR_NOT_PROVISIONED") as info:
        asyncio.run(driver.port(0).attest(bytes(32), 1))
    assert info.value.status is Status.ERR_NOT_PROVISIONED
    with pytest.raises(ValueError, match="nonce must be 32 bytes"):
        asyncio.run(driver.port(0).attest(bytes(16), 1))


class DeadTransport(Transport):
    async def read(self, addr: int, caller: int) -> int:
        return 0

    async def write(self, addr: int, value: int, caller: int) -> None:
        pass


def test_driver_reports_missing_device_and_timeouts() -> None:
    driver = HsmDriver(DeadTransport(), poll_limit=5)
    with pytest.raises(TransportError, match="no mchsm HSM"):
        asyncio.run(driver.probe())
    with pytest.raises(TransportError, match="did not finish"):
        asyncio.run(driver.run(0, Cmd.HASH, 0, b"abc"))
