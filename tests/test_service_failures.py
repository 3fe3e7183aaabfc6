"""The verifier service when things go wrong under load: a worker killed (PostgreSQL, two
workers) and a shutdown (SIGTERM) while attestations are in flight.  The load comes from the
bounded loopback load generator; the server is real; the checks read the registry itself."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from verifier_support import IMAGES, pg_server, provisioned  # noqa: F401

from mchsm.sw import protocol
from mchsm.sw.errors import SessionError
from mchsm.sw.service import api
from mchsm.sw.service.loadgen import LoadDevice, LoadResult, run_load
from mchsm.sw.service.spawn import Service, start_service
from mchsm.sw.verifier.localpg import LocalPostgres


def _fleet(service: Service, count: int) -> list[LoadDevice]:
    """``count`` devices with the test images installed, as the load generator plays them."""
    refs = {ctx: protocol.reference(image) for ctx, (_, image) in IMAGES.items()}
    out = []
    with service.client() as c:
        for _ in range(count):
            dev = provisioned(c)  # type: ignore[arg-type]  # a client has the Verifier's calls
            k_att = protocol.derive_att_key(dev.record.root_key)
            out.append(LoadDevice(dev.record.dev_id, k_att, refs))
    return out


def _load_in_background(
    service: Service, devices: list[LoadDevice], count: int, seconds: float
) -> tuple[threading.Thread, list[LoadResult]]:
    out: list[LoadResult] = []
    thread = threading.Thread(
        target=lambda: out.append(
            run_load(service.url, devices, connections=16, count=count, seconds=seconds)
        )
    )
    thread.start()
    return thread, out


def test_a_worker_killed_under_load_loses_nothing(
    pg_server: LocalPostgres,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    url = pg_server.create_database(f"kill{os.getpid()}")
    service = start_service(
        tmp_path / "svc", url, workers=2, env={"MCHSM_VERIFIER_KEK": os.urandom(32).hex()}
    )
    try:
        devices = _fleet(service, 16)
        thread, out = _load_in_background(service, devices, count=4000, seconds=25)
        time.sleep(1.0)
        victim = service.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        thread.join()
        result = out[0]
        assert set(result.errors) <= {"connection"}, result.errors  # no 5xx, no refusal
        assert result.completed > 100
        # the supervisor started a new worker in the dead one's place, and it serves
        deadline = time.monotonic() + 30
        while len(set(service.worker_pids()) - {victim}) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(set(service.worker_pids()) - {victim}) >= 2
        with service.client() as c:
            # an attempt whose answer died with the worker: its result is in the registry
            # (complete, with an EAR that verifies) or it never happened (still waiting)
            recovered = 0
            for session in result.unanswered:
                state = c.session(session)
                if state["status"] == "complete":
                    claims = c.check_ear(state["result"])
                    assert {s["ear.status"] for s in claims["submods"].values()} == {"affirming"}
                    recovered += 1
                else:
                    assert state["status"] == "waiting"
            # every accepted attempt is in the audit log exactly once, and no other
            trusted = [
                e for e in c.audit(limit=10_000) if e.kind == "attest" and e.outcome == "trusted"
            ]
            assert len(trusted) == result.completed + recovered
            nonces = [e.detail["nonce"] for e in trusted]
            assert len(set(nonces)) == len(nonces)
            # and the service goes on attesting every device
            for dev in devices[:4]:
                challenge = c.challenge(dev.dev_id)
                evidence = dev.evidence(challenge.nonce, challenge.sel)
                assert c.verify(dev.dev_id, challenge.nonce, evidence).all_trusted
    finally:
        assert service.stop() == 0


def test_shutdown_under_load_answers_every_accepted_request(tmp_path: Path) -> None:
    db = tmp_path / "svc" / "registry.sqlite"
    service = start_service(tmp_path / "svc", str(db), extra=("--nonce-ttl", "2"))
    try:
        devices = _fleet(service, 16)
        # an expired session answers with a clear error, and stays unused
        with service.client() as c:
            challenge = c.challenge(devices[0].dev_id)
            evidence = devices[0].evidence(challenge.nonce, challenge.sel)
            time.sleep(2.1)
            with pytest.raises(SessionError) as caught:
                c.verify(devices[0].dev_id, challenge.nonce, evidence)
            assert caught.value.reason == "expired" and "expired" in str(caught.value)
            session = api.encode_session(devices[0].dev_id, challenge.nonce)
            assert c.session(session)["status"] == "expired"
        thread, out = _load_in_background(service, devices, count=100_000, seconds=20)
        time.sleep(1.5)
        service.proc.send_signal(signal.SIGTERM)
        thread.join()
        assert service.proc.wait(60) == 0
    finally:
        service.stop()
    result = out[0]
    assert result.completed > 50 and set(result.errors) <= {"connection"}, result.errors
    conn = sqlite3.connect(db)
    try:
        used = {
            api.encode_session(bytes(d), bytes(n))
            for d, n in conn.execute("SELECT dev_id, nonce FROM nonces WHERE used = 1")
        }
        trusted = conn.execute(
            "SELECT count(*) FROM audit WHERE kind = 'attest' AND outcome = 'trusted'"
        ).fetchone()[0]
    finally:
        conn.close()
    # no attempt was accepted whose answer did not reach its client, and every answer stands
    assert not used & set(result.unanswered)
    assert trusted == result.completed
    assert any(str(d.get("msg", "")).startswith("worker stopped") for d in service.log_lines())
