"""The golden model against hashlib/hmac and against the spec, command by command."""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import struct

import pytest
from conftest import DEV, ROOT_KEY

from mchsm.constants import (
    DEVICE_ID_SIZE,
    MANAGER,
    NONCE_SIZE,
    Access,
    Cmd,
    CtxFlag,
    Status,
    command_spec,
)
from mchsm.sw.model import HsmModel, Response


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def ref(image: bytes) -> bytes:
    return sha(bytes(32) + sha(image))


def provisioned(n: int = 8) -> HsmModel:
    hsm = HsmModel(n)
    assert hsm.execute(MANAGER, Cmd.PROVISION, 0, DEV + ROOT_KEY).ok
    return hsm


def authorise(
    ctx: int, old: int, new: int, reference: bytes, root: bytes = ROOT_KEY, dev: bytes = DEV
) -> bytes:
    """UPDATE data built by hand from the spec's byte layout (independent of sw/protocol.py)."""
    k_upd = mac(root, b"mchsm/v1/upd")
    msg = b"UPD1" + dev + struct.pack(">III", ctx, old, new) + reference
    assert len(msg) == 64
    return struct.pack(">II", old, new) + reference + mac(k_upd, msg)


def install_and_load(hsm: HsmModel, ctx: int, image: bytes, version: int = 1) -> Response:
    current = hsm.context(ctx).version
    r = hsm.execute(MANAGER, Cmd.UPDATE, ctx, authorise(ctx, current, version, ref(image)))
    assert r.ok, r
    assert hsm.execute(MANAGER, Cmd.RESET, ctx).ok
    assert hsm.execute(MANAGER, Cmd.MEASURE, ctx, image).ok
    return r


# -- primitives against hashlib / hmac --------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_hash_matches_hashlib(seed: int) -> None:
    rng = random.Random(seed)
    hsm = HsmModel()
    lengths = [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000] + [
        rng.randrange(1001) for _ in range(20)
    ]
    for n in lengths:
        data = rng.randbytes(n)
        r = hsm.execute(rng.choice([0, 1, 5]), Cmd.HASH, 0, data)
        assert r.status is Status.OK
        assert r.result == sha(data), n


def test_hash_streamed_in_odd_chunks_multiblock() -> None:
    data = os.urandom(64 * 37 + 13)
    hsm = HsmModel()
    cuts = sorted(random.Random(3).sample(range(1, len(data)), 40))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    r = hsm.execute(MANAGER, Cmd.HASH, 0, chunks, length=len(data))
    assert r.result == sha(data)


@pytest.mark.parametrize("key_len", [0, 1, 32, 63, 64, 65, 100, 300])
def test_hmac_matches_stdlib_including_long_keys(key_len: int) -> None:
    rng = random.Random(key_len)
    key = rng.randbytes(key_len)
    hsm = HsmModel()
    assert hsm.execute(3, Cmd.HMAC_KEY, 0, key).ok
    for n in (0, 5, 64, 1000, rng.randrange(1001)):
        data = rng.randbytes(n)
        r = hsm.execute(3, Cmd.HMAC, 0, data)
        assert r.result == mac(key, data)


def test_hmac_key_slot_per_caller() -> None:
    hsm = HsmModel()
    assert hsm.execute(2, Cmd.HMAC, 0, b"x").status is Status.ERR_NO_KEY
    assert hsm.execute(2, Cmd.HMAC_KEY, 0, b"k").ok
    assert hsm.execute(3, Cmd.HMAC, 0, b"x").status is Status.ERR_NO_KEY
    assert hsm.execute(2, Cmd.HMAC, 0, b"x").result == mac(b"k", b"x")
    # another caller's import fills its own slot and evicts nobody
    assert hsm.execute(MANAGER, Cmd.HMAC_KEY, 0, b"k2").ok
    assert hsm.execute(3, Cmd.HMAC_KEY, 0, b"k3").ok
    assert hsm.execute(2, Cmd.HMAC, 0, b"x").result == mac(b"k", b"x")
    assert hsm.execute(MANAGER, Cmd.HMAC, 0, b"x").result == mac(b"k2", b"x")
    assert hsm.execute(2, Cmd.HMAC_KEY, 0, b"k4").ok  # the owner replaces its own key
    assert hsm.execute(2, Cmd.HMAC, 0, b"x").result == mac(b"k4", b"x")
    assert hsm.state.hmac_keys == {MANAGER, 2, 3}


# -- measurement, references, flags ----------------------------------------------------------


def test_measure_reset_extend_semantics() -> None:
    hsm = HsmModel()
    image = os.urandom(777)
    r = hsm.execute(MANAGER, Cmd.MEASURE, 2, image)
    assert r.result == sha(image)
    assert hsm.context(2).measurement == ref(image)
    assert hsm.context(2).loaded
    d = os.urandom(32)
    r = hsm.execute(MANAGER, Cmd.EXTEND, 2, d)
    assert r.result == sha(ref(image) + d) == hsm.context(2).measurement
    assert hsm.execute(MANAGER, Cmd.SET_ANOMALY, 2).ok
    assert hsm.context(2).anomaly
    assert hsm.execute(MANAGER, Cmd.RESET, 2).ok
    c = hsm.context(2)
    assert (c.measurement, c.loaded, c.anomaly) == (bytes(32), False, False)
    assert hsm.state.contexts[0] == hsm.state.contexts[2]  # others untouched


def test_ok_needs_loaded_match_reference_and_no_anomaly() -> None:
    hsm = provisioned()
    image = os.urandom(300)
    assert hsm.execute(MANAGER, Cmd.MEASURE, 1, image).ok
    assert not hsm.context(1).ok  # no reference installed (v = 0)
    install_and_load(hsm, 1, image)
    flags = CtxFlag(int.from_bytes(hsm.execute(MANAGER, Cmd.READ_CTX, 1).result[:4], "big"))
    assert flags == CtxFlag.LOADED | CtxFlag.MATCH | CtxFlag.OK
    assert hsm.execute(MANAGER, Cmd.SET_ANOMALY, 1).ok
    assert not hsm.context(1).ok
    assert hsm.execute(MANAGER, Cmd.RESET, 1).ok
    assert hsm.execute(MANAGER, Cmd.MEASURE, 1, image).ok
    assert hsm.context(1).ok  # reload clears the anomaly


def test_read_ctx_and_status_layout() -> None:
    hsm = provisioned(4)
    image = b"abc" * 50
    install_and_load(hsm, 3, image, version=7)
    r = hsm.execute(3, Cmd.READ_CTX, 3)
    assert r.result == struct.pack(">II", 0b1101, 7) + ref(image) + ref(image)
    r = hsm.execute(MANAGER, Cmd.STATUS, 0)
    info, ctr, ok, loaded, anomaly = struct.unpack(">5I", r.result[:20])
    assert (info, ctr, ok, loaded, anomaly) == (1 | 4 << 8 | 1 << 16, 0, 0b100, 0b100, 0)
    assert r.result[20:] == DEV
    r = hsm.execute(2, Cmd.STATUS, 0)  # a task sees only its own bits
    assert struct.unpack(">5I", r.result[:20])[2:] == (0, 0, 0)


# -- attestation -----------------------------------------------------------------------------


def test_attest_tag_known_layout() -> None:
    """The tag, recomputed from the spec's byte layout with stdlib primitives only."""
    hsm = provisioned()
    images = {1: b"one" * 100, 2: b"two" * 90, 5: b"five" * 10}
    for ctx, image in images.items():
        install_and_load(hsm, ctx, image)
    hsm.execute(MANAGER, Cmd.SET_ANOMALY, 2)
    nonce = os.urandom(NONCE_SIZE)
    sel = 0b10111  # contexts 1, 2, 3, 5 (3 has no reference: R = 0^32)
    r = hsm.execute(MANAGER, Cmd.ATTEST, 0, struct.pack(">I", sel) + nonce)
    assert r.ok and len(r.result) == 44
    got_sel, ok, ctr = struct.unpack(">III", r.result[:12])
    assert (got_sel, ok, ctr) == (sel, 0b10001, 1)
    d = sha(ref(images[1]) + ref(images[2]) + bytes(32) + ref(images[5]))
    k_att = mac(ROOT_KEY, b"mchsm/v1/att")
    msg = b"ATT1" + DEV + nonce + struct.pack(">III", sel, ok, ctr) + d
    assert r.result[12:] == mac(k_att, msg)
    r2 = hsm.execute(MANAGER, Cmd.ATTEST, 0, struct.pack(">I", sel) + nonce)
    assert struct.unpack(">I", r2.result[8:12])[0] == 2  # counter moves on


@pytest.mark.parametrize("sel", [0, 1 << 8, 0xFFFFFFFF])
def test_attest_bad_selection_changes_nothing(sel: int) -> None:
    hsm = provisioned(8)
    before = hsm.state
    r = hsm.execute(MANAGER, Cmd.ATTEST, 0, struct.pack(">I", sel) + bytes(32))
    assert r.status is Status.ERR_SELECT
    assert hsm.state == before


def test_attest_counter_exhaustion() -> None:
    hsm = provisioned()
    from dataclasses import replace

    hsm._state = replace(hsm._state, counter=0xFFFFFFFF)
    r = hsm.execute(MANAGER, Cmd.ATTEST, 0, struct.pack(">I", 1) + bytes(32))
    assert r.status is Status.ERR_COUNTER
    assert hsm.state.counter == 0xFFFFFFFF


def test_attest_scales_to_32_contexts() -> None:
    hsm = provisioned(32)
    r = hsm.execute(MANAGER, Cmd.ATTEST, 0, struct.pack(">I", 0xFFFFFFFF) + bytes(32))
    assert r.ok
    assert r.result[:4] == b"\xff\xff\xff\xff"


# -- update ----------------------------------------------------------------------------------


def test_update_accepts_then_rejects_replay_rollback_forgery() -> None:
    hsm = provisioned()
    image1, image2 = b"v1" * 400, b"v2" * 400
    r = install_and_load(hsm, 4, image1)
    k_upd = mac(ROOT_KEY, b"mchsm/v1/upd")
    ack_msg = b"ACK1" + DEV + struct.pack(">III", 4, 0, 1) + ref(image1)
    assert r.result == struct.pack(">I", 1) + mac(k_upd, ack_msg)
    assert hsm.context(4).ok

    auth = authorise(4, 1, 2, ref(image2))
    r = hsm.execute(MANAGER, Cmd.UPDATE, 4, auth)
    assert r.ok
    c = hsm.context(4)
    assert (c.version, c.reference, c.loaded, c.ok) == (2, ref(image2), False, False)
    before = hsm.state
    assert hsm.execute(MANAGER, Cmd.UPDATE, 4, auth).status is Status.ERR_VERSION
    rollback = authorise(4, 2, 1, ref(image1))
    assert hsm.execute(MANAGER, Cmd.UPDATE, 4, rollback).status is Status.ERR_ROLLBACK
    same = authorise(4, 2, 2, ref(image1))
    assert hsm.execute(MANAGER, Cmd.UPDATE, 4, same).status is Status.ERR_ROLLBACK
    forged = bytearray(authorise(4, 2, 3, ref(image1)))
    forged[-1] ^= 1
    assert hsm.execute(MANAGER, Cmd.UPDATE, 4, bytes(forged)).status is Status.ERR_AUTH
    other_dev = authorise(4, 2, 3, ref(image1), dev=bytes(16))
    assert hsm.execute(MANAGER, Cmd.UPDATE, 4, other_dev).status is Status.ERR_AUTH
    other_root = authorise(4, 2, 3, ref(image1), root=bytes(32))
    assert hsm.execute(MANAGER, Cmd.UPDATE, 4, other_root).status is Status.ERR_AUTH
    wrong_ctx = authorise(5, 2, 3, ref(image1))  # authorised for context 5, sent for 4
    assert hsm.execute(MANAGER, Cmd.UPDATE, 4, wrong_ctx).status is Status.ERR_AUTH
    assert hsm.state == before


def test_update_aborted_midway_changes_nothing() -> None:
    hsm = provisioned()
    auth = authorise(1, 0, 1, ref(b"x"))
    assert hsm.start(MANAGER, Cmd.UPDATE, 1, len(auth)) is None
    assert hsm.feed(auth[:40]) is None
    before = hsm.state
    assert hsm.abort().status is Status.ERR_ABORTED
    assert hsm.state == before and not hsm.busy


# -- task keys -------------------------------------------------------------------------------


def test_task_mac_only_while_ok_and_only_own_key() -> None:
    hsm = provisioned()
    image = os.urandom(1000)
    assert hsm.execute(2, Cmd.TASK_MAC, 0, b"hi").status is Status.ERR_NOT_TRUSTED
    install_and_load(hsm, 2, image)
    r = hsm.execute(2, Cmd.TASK_MAC, 0, b"hi")
    k_task = mac(ROOT_KEY, b"mchsm/v1/tsk" + struct.pack(">I", 2) + ref(image))
    assert r.result == mac(k_task, b"hi")
    assert hsm.execute(2, Cmd.TASK_MAC, 2, b"hi").status is Status.ERR_CONTEXT
    assert hsm.execute(MANAGER, Cmd.TASK_MAC, 0, b"hi").status is Status.ERR_DENIED
    hsm.execute(MANAGER, Cmd.EXTEND, 2, bytes(32))  # leaves the reference state
    assert hsm.execute(2, Cmd.TASK_MAC, 0, b"hi").status is Status.ERR_NOT_TRUSTED


# -- access control and bad input ------------------------------------------------------------

CALLERS = {"manager": 0, "own task": 3, "other task": 5, "unknown id": 9}


def _valid_args(cmd: Cmd) -> tuple[int, bytes]:
    spec = command_spec(cmd)
    ctx = 3 if spec.context else 0
    if cmd is Cmd.PROVISION:
        return ctx, DEV + ROOT_KEY
    if cmd is Cmd.ATTEST:
        return ctx, struct.pack(">I", 0b100) + bytes(32)
    if cmd is Cmd.UPDATE:
        return ctx, authorise(3, 1, 2, ref(b"new"))
    if spec.length is not None:
        return ctx, bytes(spec.length)
    return ctx, b"some data"


def _expected(cmd: Cmd, who: str) -> Status:
    """The access matrix of docs/protocol.md, written out."""
    if who == "unknown id":
        return Status.ERR_DENIED
    manager_only = {
        Cmd.PROVISION,
        Cmd.RESET,
        Cmd.EXTEND,
        Cmd.MEASURE,
        Cmd.SET_ANOMALY,
        Cmd.NEW_PERIOD,
        Cmd.ATTEST,
        Cmd.UPDATE,
    }
    if cmd in manager_only and who != "manager":
        return Status.ERR_DENIED
    if cmd is Cmd.TASK_MAC and who == "manager":
        return Status.ERR_DENIED
    if cmd is Cmd.READ_CTX and who == "other task":
        return Status.ERR_DENIED
    if cmd is Cmd.TASK_MAC and who == "other task":
        return Status.ERR_NOT_TRUSTED  # its own context holds nothing
    if cmd is Cmd.PROVISION:
        return Status.ERR_PROVISIONED
    return Status.OK


@pytest.mark.parametrize("who", list(CALLERS))
@pytest.mark.parametrize("cmd", list(Cmd), ids=lambda c: c.name)
def test_access_matrix(cmd: Cmd, who: str) -> None:
    hsm = provisioned()
    install_and_load(hsm, 3, b"own image")
    if cmd is Cmd.HMAC:
        hsm.execute(CALLERS[who] if who != "unknown id" else 0, Cmd.HMAC_KEY, 0, b"key")
    ctx, data = _valid_args(cmd)
    before = hsm.state
    r = hsm.execute(CALLERS[who], cmd, ctx, data)
    assert r.status is _expected(cmd, who)
    if r.status is not Status.OK:
        assert hsm.state == before and r.result == b""


def test_access_enum_covers_every_command() -> None:
    for cmd in Cmd:
        assert isinstance(command_spec(cmd).access, Access)


@pytest.mark.parametrize("cmd", list(Cmd), ids=lambda c: c.name)
def test_bad_input_for_every_command_changes_nothing(cmd: Cmd) -> None:
    spec = command_spec(cmd)
    hsm = provisioned()
    install_and_load(hsm, 1, b"img")
    caller = 1 if spec.access is Access.TASK else MANAGER
    ctx, data = _valid_args(cmd)
    before = hsm.state
    bad_ctx = [0, 9, 255] if spec.context else [1, 7]
    for c in bad_ctx:
        assert hsm.execute(caller, cmd, c, data).status in (
            Status.ERR_CONTEXT,
            Status.ERR_PROVISIONED,
        )
    if spec.length is not None:
        for n in (spec.length - 1, spec.length + 1):
            if n >= 0:
                r = hsm.execute(caller, cmd, ctx, bytes(n))
                assert r.status in (Status.ERR_LENGTH, Status.ERR_PROVISIONED)
    assert hsm.state == before


@pytest.mark.parametrize("code", [0x00, 0x04, 0x15, 0x22, 0x31, 0x43, 0xFF])
def test_unknown_commands(code: int) -> None:
    hsm = provisioned()
    before = hsm.state
    assert hsm.execute(MANAGER, code, 0, b"").status is Status.ERR_UNKNOWN_CMD
    assert hsm.state == before


@pytest.mark.parametrize("cmd", [Cmd.ATTEST, Cmd.UPDATE, Cmd.TASK_MAC])
def test_calls_before_provisioning(cmd: Cmd) -> None:
    hsm = HsmModel()
    ctx, data = _valid_args(cmd)
    caller = 3 if cmd is Cmd.TASK_MAC else MANAGER
    assert hsm.execute(caller, cmd, ctx, data).status is Status.ERR_NOT_PROVISIONED


def test_provision_is_write_once() -> None:
    hsm = provisioned()
    r = hsm.execute(MANAGER, Cmd.PROVISION, 0, bytes(DEVICE_ID_SIZE) + bytes(32))
    assert r.status is Status.ERR_PROVISIONED
    assert hsm.state.dev_id == DEV


def test_no_command_returns_a_key() -> None:
    hsm = provisioned()
    install_and_load(hsm, 1, b"img")
    hsm.execute(1, Cmd.HMAC_KEY, 0, b"secret hmac key")
    keys = [
        ROOT_KEY,
        mac(ROOT_KEY, b"mchsm/v1/att"),
        mac(ROOT_KEY, b"mchsm/v1/upd"),
        b"secret hmac key",
        mac(ROOT_KEY, b"mchsm/v1/tsk" + struct.pack(">I", 1) + ref(b"img")),
    ]
    for cmd in Cmd:
        for caller in (0, 1):
            ctx, data = _valid_args(cmd)
            out = hsm.execute(caller, cmd, ctx if ctx == 0 else 1, data).result
            for key in keys:
                assert key not in out


@pytest.mark.parametrize("n", [0, 33, 40])
def test_context_count_parameter(n: int) -> None:
    with pytest.raises(ValueError, match="contexts must be"):
        HsmModel(n)


# -- the monitor -------------------------------------------------------------------------------


def test_monitor_budget_flags_a_task_that_hammers_the_hsm() -> None:
    for h in (HsmModel(8, budget=5, fail_limit=0),):
        h.execute(MANAGER, Cmd.PROVISION, 0, DEV + ROOT_KEY)
        install_and_load(h, 2, b"img")
        for _ in range(5):
            assert h.execute(2, Cmd.TASK_MAC, 0, b"x").ok
        assert not h.context(2).anomaly
        assert h.execute(MANAGER, Cmd.NEW_PERIOD, 0).ok  # a new period: the count restarts
        for _ in range(5):
            assert h.execute(2, Cmd.TASK_MAC, 0, b"x").ok
        # the 6th command of the period is flagged before its checks: refused as untrusted
        assert h.execute(2, Cmd.TASK_MAC, 0, b"x").status is Status.ERR_NOT_TRUSTED
        assert h.context(2).anomaly and not h.context(3).anomaly
        for _ in range(20):  # the manager is never counted
            h.execute(MANAGER, Cmd.STATUS, 0)
        assert not h.context(1).anomaly
        assert h.execute(MANAGER, Cmd.RESET, 2).ok and not h.context(2).anomaly


def test_monitor_failure_limit_flags_brute_force_and_reset_clears_it() -> None:
    hsm = HsmModel(8, budget=0, fail_limit=3)
    hsm.execute(MANAGER, Cmd.PROVISION, 0, DEV + ROOT_KEY)
    install_and_load(hsm, 4, b"img")
    for _ in range(2):
        assert hsm.execute(4, Cmd.HMAC, 0, b"guess").status is Status.ERR_NO_KEY
    assert not hsm.context(4).anomaly
    assert hsm.execute(4, Cmd.READ_CTX, 1).status is Status.ERR_DENIED  # third failure
    assert hsm.context(4).anomaly and not hsm.context(4).ok
    assert hsm.execute(MANAGER, Cmd.RESET, 4).ok
    assert hsm.execute(MANAGER, Cmd.MEASURE, 4, b"img").ok
    assert hsm.context(4).ok
    assert hsm.execute(4, Cmd.HMAC, 0, b"guess").status is Status.ERR_NO_KEY
    assert not hsm.context(4).anomaly  # the count restarted at the reload


@pytest.mark.parametrize(("budget", "fail_limit"), [(-1, 0), (0, 256), ("8", 0)])
def test_monitor_parameters_are_checked(budget: object, fail_limit: object) -> None:
    with pytest.raises(ValueError, match=r"must be an integer in 0\.\.255"):
        HsmModel(8, budget=budget, fail_limit=fail_limit)  # type: ignore[arg-type]  # wrong on purpose
