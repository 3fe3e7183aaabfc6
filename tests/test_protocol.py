"""The protocol module is the one place of every record and MAC input: the model builds the
STATUS, READ_CTX, ATTEST and UPDATE results with it, the driver parses them with it, and no other
module of the package writes a MAC input or a command's data by hand."""

from __future__ import annotations

import ast
import asyncio
import struct
from pathlib import Path

import pytest
from conftest import DEV, REPO, ROOT_KEY, model_driver

from mchsm.constants import MANAGER, PROTOCOL_VERSION, Cmd, CtxFlag, Status
from mchsm.sw import protocol
from mchsm.sw.errors import ArgumentError
from mchsm.sw.model import HsmModel
from mchsm.sw.protocol import (
    CtxInfo,
    Evidence,
    StatusInfo,
    UpdateAck,
    UpdateAuth,
    attest_data,
    provision_data,
)


def test_status_record_layout() -> None:
    """Written out once more by hand, here only: info word (bit 0 provisioned, bits 8-15
    contexts, 16-23 version), counter, ok, loaded, anomaly, dev_id."""
    record = StatusInfo(True, 8, 1, 7, 0b101, 0b111, 0b10, DEV)
    data = record.pack()
    assert data == struct.pack(">IIIII", 1 | 8 << 8 | 1 << 16, 7, 0b101, 0b111, 0b10) + DEV
    assert StatusInfo.parse(data) == record
    with pytest.raises(ArgumentError):
        StatusInfo.parse(data[:-1])


def test_context_record_layout() -> None:
    record = CtxInfo(CtxFlag.LOADED | CtxFlag.OK, 3, bytes(range(32)), bytes(32))
    data = record.pack()
    assert data == struct.pack(">II", int(CtxFlag.LOADED | CtxFlag.OK), 3) + bytes(range(32)) + (
        bytes(32)
    )
    assert CtxInfo.parse(data) == record and record.ok


def test_command_data_layouts() -> None:
    nonce = bytes(range(32))
    assert attest_data(5, nonce) == b"\0\0\0\x05" + nonce
    assert provision_data(DEV, ROOT_KEY) == DEV + ROOT_KEY
    auth = UpdateAuth.issue(protocol.derive_upd_key(ROOT_KEY), DEV, 3, 1, 2, bytes(range(32)))
    assert auth.command_data() == struct.pack(">II", 1, 2) + auth.ref + auth.tag
    assert UpdateAuth.from_command(3, auth.command_data()) == auth
    assert UpdateAuth.unpack(auth.pack()) == auth
    ack = UpdateAck.issue(protocol.derive_upd_key(ROOT_KEY), DEV, 3, 1, 2, auth.ref)
    assert ack.result() == struct.pack(">I", 2) + ack.ack
    assert UpdateAck.from_result(3, ack.result()) == ack == UpdateAck.unpack(ack.pack())
    expected = protocol.hmac_sha256(
        protocol.derive_upd_key(ROOT_KEY), protocol.ack_message(DEV, 3, 1, 2, auth.ref)
    )
    assert ack.ack == expected
    with pytest.raises(ArgumentError):
        attest_data(1, nonce[:-1])
    with pytest.raises(ArgumentError):
        Evidence(1, 1, 1, bytes(31)).pack()


def test_model_results_are_the_protocol_records() -> None:
    asyncio.run(_model_results())


async def _model_results() -> None:
    """What the model answers is what protocol packs, and the driver reads it back."""
    driver = model_driver(4)
    port = driver.port(MANAGER)
    await port.provision(DEV, ROOT_KEY)
    status = await port.status()
    assert status == StatusInfo(True, 4, PROTOCOL_VERSION, 0, 0, 0, 0, DEV)
    nonce = bytes(range(32))
    evidence = await port.attest(nonce, 0b11)
    refs = {i: (await port.read_ctx(i)).reference for i in range(1, 5)}
    k_att = protocol.derive_att_key(ROOT_KEY)
    assert evidence == Evidence.issue(k_att, DEV, nonce, 0b11, 0, 1, refs)
    digest = protocol.sha256(refs[1] + refs[2])  # D, written out here only
    message = b"ATT1" + DEV + nonce + struct.pack(">III", 3, 0, 1) + digest
    assert evidence.tag == protocol.hmac_sha256(k_att, message)
    model = HsmModel(2)
    assert model.execute(MANAGER, Cmd.PROVISION, 0, provision_data(DEV, ROOT_KEY)).ok
    r = model.execute(MANAGER, Cmd.READ_CTX, 1)
    assert r.status is Status.OK
    assert CtxInfo.parse(r.result) == CtxInfo(CtxFlag(0), 0, bytes(32), bytes(32))


#: the builders of MAC inputs: only protocol calls them (tests may, to check it independently)
_MAC_INPUTS = {"att_message", "upd_message", "ack_message"}


def mac_input_callers(sources: dict[str, str]) -> list[str]:
    """``path:line`` of every call of a MAC-input builder outside ``sw/protocol.py``."""
    found = []
    for path, source in sources.items():
        if path == "sw/protocol.py":
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name in _MAC_INPUTS:
                    found.append(f"{path}:{node.lineno}")
    return found


def _package_sources() -> dict[str, str]:
    folders = ("mchsm", "rtl", "sim", "sw", "boards", "bench")
    return {
        str(p.relative_to(REPO)): p.read_text()
        for d in folders
        for p in sorted((REPO / d).rglob("*.py"))
    }


def test_only_protocol_builds_mac_inputs() -> None:
    """The tags of ATTEST, UPDATE and the acknowledgement come from protocol.attest_tag,
    update_tag / UpdateAuth.issue and ack_tag / UpdateAck.issue everywhere."""
    assert not mac_input_callers(_package_sources())


def test_the_mac_input_check_bites() -> None:
    planted = {
        "sw/model.py": "tag = hmac_sha256(k, upd_message(d, 1, 0, 1, r))\n",
        "bench/run.py": "t = protocol.att_message(d, n, 1, 1, 1, x)\n",
    }
    assert len(mac_input_callers(planted)) == 2
    assert not mac_input_callers({"sw/protocol.py": "ack_message(d, 1, 0, 1, r)\n"})
    assert Path(REPO / "sw/protocol.py").exists()
