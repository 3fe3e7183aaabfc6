"""The verifier against the golden model, through the real driver, and across restarts.

Every device here is an :class:`HsmModel` behind :class:`ModelMailbox` and the one host driver,
provisioned with a root key the verifier made, so a round trip exercises the same bytes a board
would send.  Every test that takes ``v`` or ``registry`` runs on both stores: a SQLite file and a
database on a real PostgreSQL server (``verifier_support``).
"""

# ruff: noqa: F811  (the store fixtures are imported from verifier_support and then used)
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from verifier_support import (  # noqa: F401  (fixtures)
    IMAGES,
    Device,
    FakeClock,
    Registry,
    attest,
    install,
    nonces,
    pending,
    pg_server,
    provisioned,
    registry,
    run,
    v,
)

from mchsm.constants import NONCE_SIZE
from mchsm.sw import protocol
from mchsm.sw.errors import (
    AttestationError,
    HsmError,
    InvalidArgumentError,
    UnknownDeviceError,
    UpdateError,
    VerifierError,
)
from mchsm.sw.protocol import Evidence, UpdateAck
from mchsm.sw.verifier import (
    SCHEMA_VERSION,
    AttestationReport,
    Verdict,
    Verifier,
)
from mchsm.sw.verifier import facade as facade_module

# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


def test_round_trip_all_trusted(v: Verifier) -> None:
    dev = provisioned(v, name="plc-7")
    dev_id = dev.record.dev_id
    assert v.device(dev_id) == dev.record
    assert [(t.ctx, t.name, t.version, t.reference) for t in v.tasks(dev_id)] == [
        (ctx, name, 1, protocol.reference(image)) for ctx, (name, image) in IMAGES.items()
    ]
    challenge = v.challenge(dev_id)
    assert challenge.sel == 0b111  # every installed task, nothing else
    assert len(challenge.nonce) == NONCE_SIZE
    report = v.verify(dev_id, challenge.nonce, dev.attest(challenge))
    assert report.all_trusted
    assert report.failed == []
    assert (report.dev_id, report.ctr, report.sel, report.ok) == (dev_id, 1, 0b111, 0b111)
    assert {c: (t.name, t.verdict) for c, t in report.verdicts.items()} == {
        1: ("sensor", Verdict.TRUSTED),
        2: ("control", Verdict.TRUSTED),
        3: ("telemetry", Verdict.TRUSTED),
    }
    assert attest(v, dev).ctr == 2


def test_wire_bytes_are_accepted(v: Verifier) -> None:
    dev = Device(v.register_device(4))
    package = v.register_task(dev.record.dev_id, 2, "only", b"image")
    v.confirm(dev.record.dev_id, dev.update(package).pack())
    dev.load(2, b"image")
    challenge = v.challenge(dev.record.dev_id)
    report = v.verify(dev.record.dev_id, challenge.nonce, dev.attest(challenge).pack())
    assert report.all_trusted and list(report.verdicts) == [2]


def test_tampered_image_fails_exactly_that_task(v: Verifier) -> None:
    dev = provisioned(v)
    dev.load(2, IMAGES[2][1] + b"\x00")  # the kernel loaded a modified image
    report = attest(v, dev)
    assert report.failed == [2]
    assert not report.all_trusted
    assert report.verdicts[1].verdict is Verdict.TRUSTED
    assert report.verdicts[2].verdict is Verdict.FAILED
    assert report.verdicts[3].verdict is Verdict.TRUSTED


def test_any_set_of_tampered_tasks_is_reported_exactly(v: Verifier) -> None:
    tasks = {ctx: (f"t{ctx}", f"image {ctx}".encode() * ctx) for ctx in range(1, 9)}
    dev = provisioned(v, tasks=tasks)

    @settings(max_examples=25, deadline=None)
    @given(st.sets(st.integers(1, 8)))
    def check(tampered: set[int]) -> None:
        for ctx, (_, image) in tasks.items():
            dev.load(ctx, image + b"!" if ctx in tampered else image)
        report = attest(v, dev)
        assert report.failed == sorted(tampered)
        assert report.all_trusted == (not tampered)

    check()


def test_anomaly_is_a_failed_task(v: Verifier) -> None:
    dev = provisioned(v)
    run(dev.port.set_anomaly(3))
    assert attest(v, dev).failed == [3]
    dev.load(3, IMAGES[3][1])  # reloading clears the anomaly
    assert attest(v, dev).all_trusted


def test_unselected_tasks_are_unknown(v: Verifier) -> None:
    dev = provisioned(v)
    report = attest(v, dev, sel=0b101)
    assert report.sel == 0b101
    assert report.verdicts[2].verdict is Verdict.UNKNOWN
    assert report.verdicts[1].verdict is report.verdicts[3].verdict is Verdict.TRUSTED
    assert not report.all_trusted and report.failed == []


def test_selecting_an_empty_context_checks_it_against_zero_reference(v: Verifier) -> None:
    dev = provisioned(v)
    report = attest(v, dev, sel=0b1001)  # context 4 was never updated: R = 0^32 on both sides
    assert report.ok == 0b0001
    assert set(report.verdicts) == {1, 2, 3}  # verdicts only for registered tasks
    assert report.verdicts[1].verdict is Verdict.TRUSTED


# ---------------------------------------------------------------------------------------------
# Rejected evidence
# ---------------------------------------------------------------------------------------------


def test_nonce_reuse_is_rejected(v: Verifier) -> None:
    dev = provisioned(v)
    challenge = v.challenge(dev.record.dev_id)
    evidence = dev.attest(challenge)
    v.verify(dev.record.dev_id, challenge.nonce, evidence)
    with pytest.raises(AttestationError, match="nonce already used"):
        v.verify(dev.record.dev_id, challenge.nonce, evidence)


def test_a_rejected_attempt_consumes_the_nonce(v: Verifier) -> None:
    dev = provisioned(v)
    challenge = v.challenge(dev.record.dev_id)
    evidence = dev.attest(challenge)
    forged = replace(evidence, tag=bytes(32))
    with pytest.raises(AttestationError, match="tag does not verify"):
        v.verify(dev.record.dev_id, challenge.nonce, forged)
    with pytest.raises(AttestationError, match="nonce already used"):
        v.verify(dev.record.dev_id, challenge.nonce, evidence)


def test_expired_nonce_is_rejected(registry: Registry) -> None:
    clock = FakeClock()
    with registry.open(nonce_ttl=30.0, clock=clock) as v:
        dev = provisioned(v)
        dev_id = dev.record.dev_id
        fresh = v.challenge(dev_id)
        assert fresh.expires == clock.now + 30.0
        clock.now += 29.9
        assert v.verify(dev_id, fresh.nonce, dev.attest(fresh)).all_trusted
        stale = v.challenge(dev_id)
        evidence = dev.attest(stale)
        clock.now += 30.0
        with pytest.raises(AttestationError, match="nonce expired"):
            v.verify(dev_id, stale.nonce, evidence)


def test_evidence_of_another_device_is_rejected(v: Verifier) -> None:
    a, b = provisioned(v), provisioned(v)
    # B's challenge answered by A: A's key and dev_id are in the tag
    challenge = v.challenge(b.record.dev_id)
    with pytest.raises(AttestationError, match="wrong device, forged"):
        v.verify(b.record.dev_id, challenge.nonce, a.attest(challenge))
    # A's challenge, A's evidence, presented as B's
    challenge = v.challenge(a.record.dev_id)
    with pytest.raises(AttestationError, match="issued for device"):
        v.verify(b.record.dev_id, challenge.nonce, a.attest(challenge))


@pytest.mark.parametrize("field", ["tag", "ok", "ctr"])
def test_forged_evidence_is_rejected(v: Verifier, field: str) -> None:
    dev = provisioned(v)
    dev.load(2, b"malware")
    challenge = v.challenge(dev.record.dev_id)
    evidence = dev.attest(challenge)
    assert evidence.ok == 0b101
    forged = {
        "tag": replace(evidence, tag=bytes([evidence.tag[0] ^ 1]) + evidence.tag[1:]),
        "ok": replace(evidence, ok=0b111),  # a manager hiding the failed task
        "ctr": replace(evidence, ctr=evidence.ctr + 100),
    }[field]
    with pytest.raises(AttestationError, match="evidence tag does not verify"):
        v.verify(dev.record.dev_id, challenge.nonce, forged)


def test_stale_counter_is_rejected(v: Verifier) -> None:
    dev = provisioned(v)
    dev_id = dev.record.dev_id
    first, second = v.challenge(dev_id), v.challenge(dev_id)
    early = dev.attest(first)  # ctr 1
    late = dev.attest(second)  # ctr 2
    assert v.verify(dev_id, second.nonce, late).ctr == 2
    with pytest.raises(AttestationError, match="counter 1 is not above the last accepted 2"):
        v.verify(dev_id, first.nonce, early)


def test_selection_mismatch_is_rejected(v: Verifier) -> None:
    dev = provisioned(v)
    challenge = v.challenge(dev.record.dev_id)  # sel 0b111
    evidence = dev.attest(challenge, sel=0b011)
    with pytest.raises(AttestationError, match="challenge asked for 0x7"):
        v.verify(dev.record.dev_id, challenge.nonce, evidence)


def test_unknown_and_malformed_input_is_rejected(v: Verifier) -> None:
    dev = provisioned(v)
    dev_id = dev.record.dev_id
    challenge = v.challenge(dev_id)
    evidence = dev.attest(challenge)
    with pytest.raises(AttestationError, match="unknown nonce"):
        v.verify(dev_id, os.urandom(NONCE_SIZE), evidence)
    with pytest.raises(AttestationError, match="32 bytes"):
        v.verify(dev_id, b"short", evidence)
    with pytest.raises(AttestationError, match="malformed evidence"):
        v.verify(dev_id, challenge.nonce, evidence.pack()[:-1])
    with pytest.raises(AttestationError, match="nonce already used"):  # consumed even so
        v.verify(dev_id, challenge.nonce, evidence)


def test_lost_ack_is_recovered_by_the_next_attestation(v: Verifier) -> None:
    """An update the device installed but the verifier never confirmed (lost ack): the tag
    verifies only with the pending reference, which proves the device holds it (protocol
    section 12), so the verifier records the update as done and says so in the audit log."""
    dev = provisioned(v)
    dev_id = dev.record.dev_id
    package = v.prepare_update(dev_id, 2, b"control loop v2")
    lost_ack = dev.update(package)  # never reaches the verifier
    dev.load(2, b"control loop v2")
    assert attest(v, dev, sel=0b101).failed == []  # contexts 1 and 3 attest meanwhile
    report = attest(v, dev)
    assert report.recovered == (2,) and report.all_trusted
    task = {t.ctx: t for t in v.tasks(dev_id)}[2]
    assert (task.version, task.reference) == (package.auth.new, package.auth.ref)
    assert any(
        e.kind == "update.confirm" and e.outcome == "recovered" and e.ctx == 2
        for e in v.audit(dev_id)
    )
    assert attest(v, dev).recovered == ()  # nothing pending any more
    with pytest.raises(UpdateError, match="no pending update"):  # the late ack finds nothing
        v.confirm(dev_id, lost_ack)


def test_pending_update_the_device_never_applied_is_not_recovered(v: Verifier) -> None:
    """A pending reference the device does not hold cannot make a forged tag verify."""
    dev = provisioned(v)
    v.prepare_update(dev.record.dev_id, 2, b"never installed")
    dev.load(2, b"tampered image")
    report = attest(v, dev)
    assert report.recovered == () and report.failed == [2]


# ---------------------------------------------------------------------------------------------
# Updates
# ---------------------------------------------------------------------------------------------


def test_update_moves_reference_version_and_verdicts(v: Verifier) -> None:
    dev = provisioned(v)
    dev_id = dev.record.dev_id
    new_image = b"control loop image v2"
    package = v.prepare_update(dev_id, 2, new_image)
    assert package.name == "control"  # kept from the installed task
    assert (package.auth.ctx, package.auth.old, package.auth.new) == (2, 1, 2)
    assert package.auth.ref == protocol.reference(new_image)
    ack = dev.update(package)
    record = v.confirm(dev_id, ack)
    assert (record.ctx, record.name, record.version) == (2, "control", 2)
    assert v.tasks(dev_id)[1] == record
    # until the kernel reloads it, task 2 is not LOADED: failed, not an error
    assert attest(v, dev).failed == [2]
    dev.load(2, IMAGES[2][1])  # the old image no longer matches
    assert attest(v, dev).failed == [2]
    dev.load(2, new_image)
    assert attest(v, dev).all_trusted


def test_one_outstanding_authorisation_per_context(v: Verifier, registry: Registry) -> None:
    """While an update of a context is outstanding, asking for another image is refused (two
    live authorisations would let the network pick which lands); asking for the same one again
    hands out the same authorisation, so a lost one can be resent."""
    dev = provisioned(v)
    dev_id = dev.record.dev_id
    first = v.prepare_update(dev_id, 1, b"candidate a")
    assert (first.auth.old, first.auth.new) == (1, 2)
    with pytest.raises(UpdateError, match="already has an outstanding update to version 2"):
        v.prepare_update(dev_id, 1, b"candidate b")
    with pytest.raises(UpdateError, match="outstanding"):
        v.prepare_update(dev_id, 1, b"candidate a", name="renamed")
    again = v.prepare_update(dev_id, 1, b"candidate a")
    assert again.auth == first.auth
    assert v.prepare_update(dev_id, 2, b"other context").auth.new == 2  # contexts are separate
    assert pending(registry, dev_id) == [(1, 1, 2), (2, 1, 2)]
    outcomes = [e.outcome for e in v.audit(dev_id) if e.kind == "update.prepare" and e.ctx == 1]
    assert outcomes[-2:] == ["ok", "reissued"]
    # withdrawn (it never reached the device): the next one may be prepared, and the withdrawn
    # one's ack, should it turn up after all, is refused
    cancelled = v.cancel_update(dev_id, 1)
    assert (cancelled.new, cancelled.reference) == (2, first.auth.ref)
    with pytest.raises(UpdateError, match="no pending update"):
        v.cancel_update(dev_id, 1)
    second = v.prepare_update(dev_id, 1, b"candidate b", name="sensor-b")
    assert (second.auth.old, second.auth.new) == (1, 2) and second.auth.ref != first.auth.ref
    root = dev.record.root_key  # the ack a device that had installed the first would send
    late_ack = UpdateAck(
        1,
        2,
        protocol.hmac_sha256(
            protocol.derive_upd_key(root), protocol.ack_message(dev_id, 1, 1, 2, first.auth.ref)
        ),
    )
    with pytest.raises(UpdateError, match="does not verify"):
        v.confirm(dev_id, late_ack)
    record = v.confirm(dev_id, dev.update(second))
    assert (record.version, record.name) == (2, "sensor-b")
    assert pending(registry, dev_id) == [(2, 1, 2)]
    with pytest.raises(HsmError, match="ERR_VERSION"):  # the device refuses the withdrawn one
        dev.update(first)


def test_forged_ack_is_rejected_and_the_update_stays_pending(
    v: Verifier, registry: Registry
) -> None:
    dev = provisioned(v)
    dev_id = dev.record.dev_id
    ack = dev.update(v.prepare_update(dev_id, 3, b"telemetry v2"))
    with pytest.raises(UpdateError, match="does not verify"):
        v.confirm(dev_id, replace(ack, ack=bytes(32)))
    assert pending(registry, dev_id) == [(3, 1, 2)]
    assert v.tasks(dev_id)[2].version == 1
    assert v.confirm(dev_id, ack).version == 2


def test_ack_without_pending_update_is_rejected(v: Verifier) -> None:
    a, b = provisioned(v), provisioned(v)
    with pytest.raises(UpdateError, match="no pending update of context 1 to version 7"):
        v.confirm(a.record.dev_id, UpdateAck(ctx=1, new=7, ack=bytes(32)))
    # both devices have an update of context 1 to version 2 pending: B's ack is no use for A
    v.prepare_update(a.record.dev_id, 1, b"x")
    ack_b = b.update(v.prepare_update(b.record.dev_id, 1, b"x"))
    with pytest.raises(UpdateError, match="forged, or from another device"):
        v.confirm(a.record.dev_id, ack_b)
    v.confirm(b.record.dev_id, ack_b)
    with pytest.raises(UpdateError, match="already confirmed"):
        v.confirm(b.record.dev_id, ack_b)
    with pytest.raises(UpdateError, match="malformed"):
        v.confirm(b.record.dev_id, ack_b.pack()[:-1])


def test_update_of_a_context_the_device_lacks_is_refused(v: Verifier) -> None:
    dev = Device(v.register_device(4))
    for ctx in (0, 5):
        with pytest.raises(UpdateError, match=r"contexts 1\.\.4"):
            v.prepare_update(dev.record.dev_id, ctx, b"image")


# ---------------------------------------------------------------------------------------------
# Task keys
# ---------------------------------------------------------------------------------------------


def test_task_key_checks_the_devices_task_mac(v: Verifier) -> None:
    dev = provisioned(v)
    dev_id = dev.record.dev_id
    data = b"sensor reading 21.5 C"
    mac = dev.task_mac(1, data)
    assert v.check_task_mac(dev_id, 1, data, mac)
    assert not v.check_task_mac(dev_id, 1, data + b"!", mac)
    assert not v.check_task_mac(dev_id, 2, data, mac)  # another task's key
    assert protocol.hmac_sha256(v.task_key(dev_id, 1), data) == mac
    # an update gives the task a new key: the old MAC no longer checks
    v.confirm(dev_id, dev.update(v.prepare_update(dev_id, 1, b"sensor v2")))
    dev.load(1, b"sensor v2")
    assert not v.check_task_mac(dev_id, 1, data, mac)
    assert v.check_task_mac(dev_id, 1, data, dev.task_mac(1, data))
    with pytest.raises(VerifierError, match="no installed task"):
        v.task_key(dev_id, 4)


# ---------------------------------------------------------------------------------------------
# Registry, audit, persistence
# ---------------------------------------------------------------------------------------------


def test_audit_records_every_attestation_and_update(v: Verifier) -> None:
    dev = provisioned(v)
    dev_id = dev.record.dev_id
    other = provisioned(v)
    start = v.audit(dev_id)[-1].id
    attest(v, dev)
    dev.load(1, b"bad")
    attest(v, dev)
    challenge = v.challenge(dev_id)
    with pytest.raises(AttestationError):
        v.verify(dev_id, challenge.nonce, replace(dev.attest(challenge), tag=bytes(32)))
    ack = dev.update(v.prepare_update(dev_id, 2, b"v2"))
    with pytest.raises(UpdateError):
        v.confirm(dev_id, replace(ack, ack=bytes(32)))
    v.confirm(dev_id, ack)
    new = [e for e in v.audit(dev_id) if e.id > start]
    assert [(e.kind, e.ctx, e.outcome) for e in new] == [
        ("attest", None, "trusted"),
        ("attest", None, "failed"),
        ("attest", None, "rejected"),
        ("update.prepare", 2, "ok"),
        ("update.confirm", 2, "rejected"),
        ("update.confirm", 2, "ok"),
    ]
    assert new[1].detail["failed"] == [1]
    assert new[2].detail["nonce"] == challenge.nonce.hex()
    assert "tag does not verify" in new[2].detail["error"]
    assert new[3].detail == {
        "old": 1,
        "new": 2,
        "reference": protocol.reference(b"v2").hex(),
        "name": "control",
    }
    assert all(e.dev_id == dev_id for e in new)
    # registration and the three installs of each device: 1 + 3 * 2 entries
    assert len(v.audit(other.record.dev_id)) == 7
    assert [e.id for e in v.audit(limit=2)] == [e.id for e in new[-2:]]
    assert len(v.audit()) == len(v.audit(dev_id)) + 7


def test_registry_survives_a_restart(registry: Registry) -> None:
    clock = FakeClock()
    with registry.open(clock=clock) as v:
        dev = provisioned(v, name="plc-7")
        dev_id = dev.record.dev_id
        v.confirm(dev_id, dev.update(v.prepare_update(dev_id, 1, b"sensor v2")))
        dev.load(1, b"sensor v2")
        v.prepare_update(dev_id, 3, b"telemetry v2")  # still pending at the restart
        attest(v, dev)
        used = v.challenge(dev_id)
        used_evidence = dev.attest(used)
        v.verify(dev_id, used.nonce, used_evidence)  # ctr 2
        early = v.challenge(dev_id)
        early_evidence = dev.attest(early)  # ctr 3, held back
        outstanding = v.challenge(dev_id)  # issued before the restart, answered after it
        late = v.challenge(dev_id)
        assert v.verify(dev_id, late.nonce, dev.attest(late)).ctr == 4
        before = (v.devices(), v.tasks(dev_id), v.audit(), pending(registry, dev_id))

    with registry.open(clock=clock) as v:
        assert (v.devices(), v.tasks(dev_id), v.audit(), pending(registry, dev_id)) == before
        assert v.device(dev_id).root_key == dev.record.root_key
        assert v.tasks(dev_id)[0].version == 2
        assert pending(registry, dev_id) == [(3, 1, 2)]
        with pytest.raises(AttestationError, match="nonce already used"):
            v.verify(dev_id, used.nonce, used_evidence)
        with pytest.raises(AttestationError, match="counter 3 is not above the last accepted 4"):
            v.verify(dev_id, early.nonce, early_evidence)
        report = v.verify(dev_id, outstanding.nonce, dev.attest(outstanding))
        assert report.all_trusted and report.ctr == 5
        assert v.audit(dev_id)[-1].outcome == "trusted"
        assert len(v.audit()) == len(before[2]) + 3


def test_two_verifiers_on_one_store_share_nonces(registry: Registry) -> None:
    with registry.open() as one, registry.open() as two:
        dev = provisioned(one)
        challenge = one.challenge(dev.record.dev_id)
        evidence = dev.attest(challenge)
        assert two.verify(dev.record.dev_id, challenge.nonce, evidence).all_trusted
        with pytest.raises(AttestationError, match="nonce already used"):
            one.verify(dev.record.dev_id, challenge.nonce, evidence)


def test_unknown_device_is_reported(v: Verifier) -> None:
    dev = provisioned(v)
    stranger = os.urandom(16)
    for call in (
        lambda: v.device(stranger),
        lambda: v.tasks(stranger),
        lambda: v.challenge(stranger),
        lambda: v.prepare_update(stranger, 1, b"x"),
        lambda: v.task_key(stranger, 1),
        lambda: v.confirm(stranger, UpdateAck(1, 2, bytes(32))),
        lambda: v.verify(stranger, os.urandom(32), Evidence(1, 1, 1, bytes(32))),
    ):
        with pytest.raises(UnknownDeviceError, match="not registered"):
            call()
    assert [d.dev_id for d in v.devices()] == [dev.record.dev_id]


def test_register_device_validates_and_hides_the_root_key(v: Verifier) -> None:
    record = v.register_device(4, dev_id=bytes(16), name="bench")
    assert (record.dev_id, record.contexts, record.name) == (bytes(16), 4, "bench")
    assert len(record.root_key) == 32
    assert record.root_key.hex() not in repr(record)
    assert v.register_device().root_key != record.root_key
    with pytest.raises(VerifierError, match="already registered"):
        v.register_device(dev_id=bytes(16))
    with pytest.raises(InvalidArgumentError, match="16 bytes"):
        v.register_device(dev_id=bytes(15))
    for contexts in (0, 33):
        with pytest.raises(InvalidArgumentError, match=r"1\.\.32"):
            v.register_device(contexts)
    assert len(v.devices()) == 2


def test_challenge_validates_the_selection(v: Verifier) -> None:
    dev_id = v.register_device(4).dev_id
    with pytest.raises(VerifierError, match="no installed task"):
        v.challenge(dev_id)
    for sel in (0, 1 << 4, -1):
        with pytest.raises(VerifierError, match=r"contexts 1\.\.4"):
            v.challenge(dev_id, sel)
    assert v.challenge(dev_id, 0b1111).sel == 0b1111


def test_expired_nonces_are_purged(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    with registry.open(nonce_ttl=10.0, clock=clock) as v:
        dev = provisioned(v)
        dev_id = dev.record.dev_id
        used = v.challenge(dev_id)
        v.verify(dev_id, used.nonce, dev.attest(used))
        unused = v.challenge(dev_id)
        clock.now += 5.0
        live = v.challenge(dev_id)
        clock.now += 5.0
        assert v.purge_expired() == 2
        with pytest.raises(AttestationError, match="unknown nonce"):
            v.verify(dev_id, unused.nonce, dev.attest(unused))
        assert v.verify(dev_id, live.nonce, dev.attest(live)).all_trusted
    # challenge purges on its own every PURGE_EVERY calls (counted per instance)
    monkeypatch.setattr(facade_module, "PURGE_EVERY", 3)
    clock.now += 100.0  # `live` has expired
    with registry.open(nonce_ttl=10.0, clock=clock) as w:
        fresh = [w.challenge(dev_id).nonce for _ in range(2)]
        assert nonces(registry) == {live.nonce, *fresh}
        fresh.append(w.challenge(dev_id).nonce)
        assert nonces(registry) == set(fresh)


def test_schema_is_versioned(registry: Registry) -> None:
    registry.open().close()
    assert registry.sql("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    registry.sql("UPDATE schema_version SET version = version + 1")
    with pytest.raises(VerifierError, match="newer than this verifier"):
        registry.open()


# ---------------------------------------------------------------------------------------------
# verify_many: many attempts, one transaction, the same per-attempt semantics as verify
# ---------------------------------------------------------------------------------------------


def test_verify_many_gives_each_attempt_what_verify_would(v: Verifier) -> None:
    """Every kind of outcome in one batch, in order: errors take their attempt's place instead
    of being raised, each nonce is consumed once, counters advance attempt by attempt."""
    a, b = provisioned(v), provisioned(v)
    a_id, b_id = a.record.dev_id, b.record.dev_id
    start = v.audit()[-1].id
    good = v.challenge(a_id)
    good_ev = a.attest(good)
    first, second = v.challenge(b_id), v.challenge(b_id)
    early, late = b.attest(first), b.attest(second)  # ctr 1, ctr 2
    forged = v.challenge(a_id)
    forged_ev = replace(a.attest(forged), tag=bytes(32))
    a.load(2, b"tampered")
    failing = v.challenge(a_id)
    failing_ev = a.attest(failing)
    malformed = v.challenge(b_id)
    stranger = os.urandom(16)
    batch = [
        (a_id, good.nonce, good_ev.pack()),  # trusted (wire bytes)
        (a_id, good.nonce, good_ev),  # the same nonce again
        (b_id, second.nonce, late),  # ctr 2 first ...
        (b_id, first.nonce, early),  # ... so ctr 1 is stale
        (a_id, forged.nonce, forged_ev),
        (a_id, failing.nonce, failing_ev),  # verifies, task 2 failed
        (b_id, malformed.nonce, b"\x00" * 43),
        (stranger, os.urandom(NONCE_SIZE), good_ev),
        (a_id, os.urandom(NONCE_SIZE), good_ev),
        (b_id, failing.nonce, failing_ev),  # A's nonce presented for B (and already used)
    ]
    results = v.verify_many(batch)
    assert len(results) == len(batch)
    assert isinstance(results[0], AttestationReport) and results[0].all_trusted
    expected_errors = {
        1: (AttestationError, "nonce already used"),
        3: (AttestationError, "counter 1 is not above the last accepted 2"),
        4: (AttestationError, "tag does not verify"),
        6: (AttestationError, "malformed evidence"),
        7: (UnknownDeviceError, "not registered"),
        8: (AttestationError, "unknown nonce"),
        9: (AttestationError, "issued for device"),
    }
    for i, (kind, message) in expected_errors.items():
        assert isinstance(results[i], kind) and message in str(results[i]), (i, results[i])
    assert isinstance(results[2], AttestationReport) and results[2].ctr == 2
    assert isinstance(results[5], AttestationReport) and results[5].failed == [2]
    # one audit row per attempt, in the order of the batch
    rows = [e for e in v.audit() if e.id > start and e.kind == "attest"]
    assert [e.outcome for e in rows] == [
        "trusted",
        "rejected",
        "trusted",
        "rejected",
        "rejected",
        "failed",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
    ]
    assert rows[7].dev_id is None or rows[7].dev_id == stranger
    # every nonce of the batch is spent, the counters are where the batch left them
    for dev_id, challenge in (
        (a_id, good),
        (b_id, first),
        (b_id, second),
        (a_id, forged),
        (a_id, failing),
        (b_id, malformed),
    ):
        with pytest.raises(AttestationError, match="nonce already used"):
            v.verify(dev_id, challenge.nonce, good_ev)
    assert attest(v, b).ctr == 3


def test_verify_many_recovers_a_lost_ack_between_attempts(v: Verifier) -> None:
    """A recovery in the middle of a batch is written before the attempts after it, which then
    see the recovered reference like a later verify would."""
    dev = provisioned(v)
    dev_id = dev.record.dev_id
    package = v.prepare_update(dev_id, 2, b"control loop v2")
    dev.update(package)  # its ack is lost
    dev.load(2, b"control loop v2")
    start = v.audit()[-1].id
    partial = v.challenge(dev_id, 0b101)
    full1, full2 = v.challenge(dev_id), v.challenge(dev_id)
    batch = [(dev_id, c.nonce, dev.attest(c)) for c in (partial, full1, full2)]
    reports = v.verify_many(batch)
    assert all(isinstance(r, AttestationReport) and not r.failed for r in reports)
    assert [r.recovered for r in reports if isinstance(r, AttestationReport)] == [(), (2,), ()]
    assert {t.ctx: t.version for t in v.tasks(dev_id)}[2] == package.auth.new
    assert [(e.kind, e.outcome) for e in v.audit(dev_id) if e.id > start] == [
        ("attest", "trusted"),
        ("update.confirm", "recovered"),
        ("attest", "trusted"),
        ("attest", "trusted"),
    ]


def test_verify_many_of_nothing_is_nothing(v: Verifier) -> None:
    provisioned(v)
    before = v.audit()
    assert v.verify_many([]) == []
    assert v.verify_many(iter(())) == []
    assert v.audit() == before


def test_verify_many_accepts_bytearrays_like_bytes(v: Verifier) -> None:
    dev = provisioned(v)
    challenge = v.challenge(dev.record.dev_id)
    evidence = bytearray(dev.attest(challenge).pack())
    (report,) = v.verify_many(
        [(bytearray(dev.record.dev_id), bytearray(challenge.nonce), evidence)]
    )
    assert isinstance(report, AttestationReport) and report.all_trusted
    with pytest.raises(AttestationError, match="nonce already used"):
        v.verify(dev.record.dev_id, challenge.nonce, bytes(evidence))


def test_verify_many_rolls_back_the_whole_batch_on_an_unexpected_error(
    v: Verifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only verifier errors are per attempt; anything else undoes the batch: no nonce is spent
    and no audit row written, so the same attempts verify afterwards."""
    dev = provisioned(v)
    dev_id = dev.record.dev_id
    challenges = [v.challenge(dev_id) for _ in range(3)]
    batch = [(dev_id, c.nonce, dev.attest(c)) for c in challenges]
    before = v.audit()
    real = facade_module.check_evidence
    calls = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(facade_module, "check_evidence", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        v.verify_many(batch)
    monkeypatch.setattr(facade_module, "check_evidence", real)
    assert v.audit() == before
    assert [r.ctr for r in v.verify_many(batch) if isinstance(r, AttestationReport)] == [1, 2, 3]


def test_verify_many_sees_other_verifiers_writes(registry: Registry) -> None:
    """Nothing is cached across transactions but pure functions of the registry's values: a
    device updated through another verifier on the same file is verified against its new
    references at once."""
    with registry.open() as one, registry.open() as two:
        dev = provisioned(one)
        dev_id = dev.record.dev_id
        c = two.challenge(dev_id)
        (report,) = two.verify_many([(dev_id, c.nonce, dev.attest(c))])
        assert isinstance(report, AttestationReport) and report.all_trusted
        install(one, dev, 3, "telemetry", b"telemetry v2")
        c = two.challenge(dev_id)
        (report,) = two.verify_many([(dev_id, c.nonce, dev.attest(c))])
        assert isinstance(report, AttestationReport) and report.all_trusted
        assert {t.ctx: t.version for t in two.tasks(dev_id)}[3] == 2
