"""The verifier service against real servers on loopback ports (SQLite, and PostgreSQL with
two worker processes): attestation sessions, EARs checked with a standard JOSE library (PyJWT),
admin calls, and hostile clients.  The longer failure runs (a killed worker, a shutdown under
load) are in test_service_failures.py."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from verifier_support import IMAGES, Device, pg_server, provisioned  # noqa: F401

from mchsm.constants import NONCE_SIZE
from mchsm.sw.errors import (
    AuthorizationError,
    EvidenceError,
    SessionError,
    UnknownDeviceError,
    UpdateError,
)
from mchsm.sw.service import api
from mchsm.sw.service.client import ServiceClient
from mchsm.sw.service.ear import EAR_PROFILE
from mchsm.sw.service.server import KEEP_ALIVE_SECONDS
from mchsm.sw.service.spawn import Service, start_service


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def svc(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp(f"svc-{request.param}")
    if request.param == "sqlite":
        service = start_service(tmp, str(tmp / "registry.sqlite"))
    else:
        server = request.getfixturevalue("pg_server")
        url = server.create_database(f"svc{os.getpid()}")
        service = start_service(
            tmp, url, workers=2, env={"MCHSM_VERIFIER_KEK": os.urandom(32).hex()}
        )
    try:
        yield service
    finally:
        assert service.stop() == 0


@pytest.fixture
def admin(svc: Service) -> Iterator[ServiceClient]:
    with svc.client() as c:
        yield c


def _raw(
    svc: Service, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(svc.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _problem(
    status: int, headers: dict[str, str], body: bytes, want: int, code: str
) -> dict[str, Any]:
    assert status == want, body
    assert headers["content-type"].startswith(api.PROBLEM_TYPE)
    doc: dict[str, Any] = json.loads(body)
    assert doc["type"] == f"urn:mchsm:problem:{code}" and doc["status"] == want
    assert doc["title"] and doc["title"][0].isupper()  # a sentence a person reads
    return doc


def _session(svc: Service, admin: ServiceClient) -> tuple[Device, dict, bytes]:
    """A device with the test images installed, a fresh session and its valid evidence."""
    dev = provisioned(admin)  # type: ignore[arg-type]  # a client has the Verifier's calls
    challenge = admin.challenge(dev.record.dev_id)
    session = api.encode_session(dev.record.dev_id, challenge.nonce)
    return dev, {"session": session, "challenge": challenge}, dev.attest(challenge).pack()


# -- attestation and EAR --------------------------------------------------------------------------


def test_attestation_gives_an_ear_any_jose_library_verifies(
    svc: Service, admin: ServiceClient
) -> None:
    dev, s, evidence = _session(svc, admin)
    status, _headers, body = _raw(
        svc,
        "POST",
        f"{api.SESSIONS}/{s['session']}/evidence",
        evidence,
        {"Content-Type": api.EVIDENCE_TYPE},
    )
    assert status == 200, body
    doc = json.loads(body)
    assert doc["status"] == "complete" and doc["outcome"] == "affirming"
    # a relying party: the key from the well-known URL, a standard JOSE library
    keys = jwt.PyJWKClient(svc.url + api.JWKS_PATH)
    key = keys.get_signing_key_from_jwt(doc["result"])
    claims = jwt.decode(doc["result"], key.key, algorithms=["ES256"])
    assert claims["eat_profile"] == EAR_PROFILE
    assert claims["eat_nonce"] == api.b64url(s["challenge"].nonce)
    assert claims["ear.mchsm.device-id"] == dev.record.dev_id.hex()
    assert claims["ear.verifier-id"]["developer"] == "mchsm" and claims["iss"]
    assert claims["exp"] > claims["iat"] >= time.time() - 60
    assert {name: sub["ear.status"] for name, sub in claims["submods"].items()} == {
        name: "affirming" for name, _ in IMAGES.values()
    }
    assert claims["submods"]["control"]["ear.trustworthiness-vector"]["executables"] == 2
    # the result stays readable, and verifies the same way
    again = admin.session(s["session"])
    assert again["status"] == "complete"
    assert (
        jwt.decode(again["result"], key.key, algorithms=["ES256"])["eat_nonce"]
        == claims["eat_nonce"]
    )
    # a byte changed anywhere in the EAR: PyJWT refuses it
    head, payload, sig = doc["result"].split(".")
    forged = f"{head}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{sig}"
    with pytest.raises(jwt.PyJWTError):
        jwt.decode(forged, key.key, algorithms=["ES256"])


def test_json_envelope_tampered_task_and_pending_update(svc: Service, admin: ServiceClient) -> None:
    dev, _s, _ = _session(svc, admin)
    dev.load(2, b"a modified control image")  # control no longer matches its reference
    admin.prepare_update(dev.record.dev_id, 1, b"sensor image v2")  # authorised, not applied
    challenge = admin.challenge(dev.record.dev_id)
    evidence = dev.attest(challenge).pack()
    doc = admin.post_evidence(
        api.encode_session(dev.record.dev_id, challenge.nonce), evidence, envelope=True
    )
    claims = admin.check_ear(doc["result"])
    subs = claims["submods"]
    assert subs["control"]["ear.status"] == "contraindicated"
    assert subs["control"]["ear.trustworthiness-vector"]["executables"] == 96
    assert subs["sensor"]["ear.status"] == "warning"
    assert subs["telemetry"]["ear.status"] == "affirming"
    assert doc["outcome"] == "contraindicated"


def test_one_attempt_per_session_and_rejected_evidence(svc: Service, admin: ServiceClient) -> None:
    dev, s, evidence = _session(svc, admin)
    path = f"{api.SESSIONS}/{s['session']}/evidence"
    assert _raw(svc, "POST", path, evidence, {"Content-Type": api.EVIDENCE_TYPE})[0] == 200
    doc = _problem(
        *_raw(svc, "POST", path, evidence, {"Content-Type": api.EVIDENCE_TYPE}), 409, "session-used"
    )
    assert "one attempt" in doc["detail"]
    # the old evidence answered to a new session: a signed, contraindicated result
    other = admin.challenge(dev.record.dev_id)
    with pytest.raises(EvidenceError) as caught:
        admin.verify(dev.record.dev_id, other.nonce, evidence)
    assert caught.value.reason == "signature"
    state = admin.session(api.encode_session(dev.record.dev_id, other.nonce))
    claims = admin.check_ear(state["result"])
    assert claims["ear.mchsm.rejected"] == "signature"
    assert {sub["ear.status"] for sub in claims["submods"].values()} == {"contraindicated"}
    assert {
        sub["ear.trustworthiness-vector"]["instance-identity"] for sub in claims["submods"].values()
    } == {99}
    # sessions of unknown devices and ids that are not session ids
    with pytest.raises(UnknownDeviceError):
        admin.challenge(os.urandom(16))
    _problem(
        *_raw(
            svc,
            "POST",
            f"{api.SESSIONS}/not-a-session/evidence",
            evidence,
            {"Content-Type": api.EVIDENCE_TYPE},
        ),
        404,
        "session-unknown",
    )
    fake = api.encode_session(dev.record.dev_id, os.urandom(32))
    _problem(
        *_raw(
            svc,
            "POST",
            f"{api.SESSIONS}/{fake}/evidence",
            evidence,
            {"Content-Type": api.EVIDENCE_TYPE},
        ),
        404,
        "session-unknown",
    )
    _problem(*_raw(svc, "GET", f"{api.SESSIONS}/{fake}"), 404, "session-unknown")


def test_hostile_requests_are_refused_and_change_nothing(
    svc: Service, admin: ServiceClient
) -> None:
    dev, s, evidence = _session(svc, admin)
    path = f"{api.SESSIONS}/{s['session']}/evidence"
    raw = {"Content-Type": api.EVIDENCE_TYPE}
    # truncated, oversized (by Content-Length, and chunked without one), wrong media types
    _problem(*_raw(svc, "POST", path, evidence[:-1], raw), 400, "bad-evidence")
    _problem(*_raw(svc, "POST", path, evidence + b"\0", raw), 413, "too-large")
    _problem(*_raw(svc, "POST", path, b"", raw), 400, "bad-evidence")
    status, headers, body = _raw(svc, "POST", path, evidence, {"Content-Type": "text/plain"})
    _problem(status, headers, body, 415, "unsupported-media-type")
    assert api.EVIDENCE_TYPE in headers["accept-post"]
    _problem(*_raw(svc, "POST", path, evidence), 415, "unsupported-media-type")
    js = {"Content-Type": api.JSON_TYPE}
    _problem(*_raw(svc, "POST", path, b"{not json", js), 400, "bad-request")
    _problem(*_raw(svc, "POST", path, b"[1, 2]", js), 400, "bad-request")
    _problem(
        *_raw(
            svc, "POST", path, json.dumps({"evidence": api.b64url(evidence), "x": 1}).encode(), js
        ),
        400,
        "bad-request",
    )
    _problem(
        *_raw(svc, "POST", path, json.dumps({"evidence": evidence.hex()}).encode(), js),
        400,
        "bad-evidence",
    )
    _problem(*_raw(svc, "POST", path, b" " * (api.MAX_JSON + 1), js), 413, "too-large")
    _problem(
        *_raw(svc, "POST", api.SESSIONS, json.dumps({"device": "00" * 15}).encode(), js),
        400,
        "bad-request",
    )
    _problem(
        *_raw(
            svc,
            "POST",
            api.SESSIONS,
            json.dumps({"device": dev.record.dev_id.hex(), "selection": -1}).encode(),
            js,
        ),
        400,
        "bad-request",
    )
    _problem(*_raw(svc, "DELETE", api.SESSIONS), 405, "method-not-allowed")
    _problem(*_raw(svc, "GET", "/nowhere"), 404, "not-found")
    # a body far larger than allowed is refused by its Content-Length, before it is sent
    parts = urllib.parse.urlsplit(svc.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {api.EVIDENCE_TYPE}\r\n"
            f"Content-Length: {1 << 30}\r\n\r\n".encode()
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    # chunked, no Content-Length: counted as it arrives
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {api.EVIDENCE_TYPE}\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n".encode()
            + b"100\r\n"
            + b"A" * 256
            + b"\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    # a client that sends half its body and goes away
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {api.EVIDENCE_TYPE}\r\n"
            f"Content-Length: 44\r\n\r\n".encode()
            + evidence[:20]
        )
    # none of it touched the session: the genuine evidence is still accepted, once
    time.sleep(0.2)
    assert admin.session(s["session"])["status"] == "waiting"
    report = admin.verify(dev.record.dev_id, s["challenge"].nonce, evidence)
    assert report.all_trusted


def test_admin_calls_need_the_token_and_change_nothing_without_it(
    svc: Service, admin: ServiceClient
) -> None:
    dev = provisioned(admin)  # type: ignore[arg-type]  # a client has the Verifier's calls
    dev_hex = dev.record.dev_id.hex()
    before = [e.id for e in admin.audit(limit=10_000)]
    tasks_before = admin.tasks(dev.record.dev_id)
    calls = [
        ("POST", f"{api.ADMIN}/devices", json.dumps({"contexts": 4}).encode(), api.JSON_TYPE),
        ("GET", f"{api.ADMIN}/devices/{dev_hex}", b"", None),
        ("POST", f"{api.ADMIN}/devices/{dev_hex}/contexts/1/update", b"evil image", api.IMAGE_TYPE),
        ("DELETE", f"{api.ADMIN}/devices/{dev_hex}/contexts/1/update", b"", None),
        ("POST", f"{api.ADMIN}/devices/{dev_hex}/acks", b"\0" * api.UPDATE_ACK_SIZE, api.ACK_TYPE),
        ("GET", f"{api.ADMIN}/audit", b"", None),
        ("GET", f"{api.ADMIN}/sessions", b"", None),
    ]
    for method, path, body, ctype in calls:
        for auth in (None, "Bearer wrong-token-" + "x" * 40, "Basic YWRtaW46YWRtaW4=", "Bearer "):
            headers = {"Content-Type": ctype} if ctype else {}
            if auth:
                headers["Authorization"] = auth
            status, hdrs, answer = _raw(svc, method, path, body, headers)
            _problem(status, hdrs, answer, 401, "unauthorized")
            assert hdrs["www-authenticate"].startswith("Bearer")
    # a huge upload without the token is refused before its body is read
    parts = urllib.parse.urlsplit(svc.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(
            f"POST {api.ADMIN}/devices/{dev_hex}/contexts/1/update HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: {api.IMAGE_TYPE}\r\nContent-Length: {1 << 30}\r\n\r\n".encode()
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 401")
    with svc.client(admin=False) as anonymous:
        with pytest.raises(AuthorizationError):
            anonymous.register_device(4)
    # nothing changed: no audit row, no task, no pending update, no device
    assert [e.id for e in admin.audit(limit=10_000)] == before
    assert admin.tasks(dev.record.dev_id) == tasks_before
    assert admin.pending_updates(dev.record.dev_id) == []


def test_admin_update_flow_and_refusals(svc: Service, admin: ServiceClient) -> None:
    dev = provisioned(admin)  # type: ignore[arg-type]  # a client has the Verifier's calls
    dev_id = dev.record.dev_id
    package = admin.prepare_update(dev_id, 2, b"control v2 image")
    with pytest.raises(UpdateError):  # one outstanding authorisation per context
        admin.prepare_update(dev_id, 2, b"another control image")
    ack = dev.update(package)
    with pytest.raises(UpdateError):  # an ack that does not verify
        admin.confirm(dev_id, ack.pack()[:-1] + bytes([ack.pack()[-1] ^ 1]))
    task = admin.confirm(dev_id, ack)
    assert (task.ctx, task.version, task.name) == (2, 2, "control")
    kinds = [(e.kind, e.outcome) for e in admin.audit(dev_id)]
    assert ("update.confirm", "rejected") in kinds and ("update.confirm", "ok") in kinds
    sessions = admin.sessions(dev_id)
    assert all(s["device"] == dev_id.hex() for s in sessions)


def test_concurrent_posts_to_one_session_exactly_one_accepted(
    svc: Service, admin: ServiceClient
) -> None:
    dev = provisioned(admin)  # type: ignore[arg-type]  # a client has the Verifier's calls
    for _ in range(5):
        challenge = admin.challenge(dev.record.dev_id)
        evidence = dev.attest(challenge).pack()
        path = f"{api.SESSIONS}/{api.encode_session(dev.record.dev_id, challenge.nonce)}/evidence"
        statuses: list[int] = []
        start = threading.Barrier(12)
        threads = [
            threading.Thread(
                target=lambda p=path, e=evidence, out=statuses, b=start: (
                    b.wait(),
                    out.append(_raw(svc, "POST", p, e, {"Content-Type": api.EVIDENCE_TYPE})[0]),
                )
            )
            for _ in range(12)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(statuses) == [200] + [409] * 11


def test_operations_health_metrics_openapi_logs(svc: Service, admin: ServiceClient) -> None:
    assert admin.request("GET", "/healthz")[1] == {"status": "ok"}
    _, s, evidence = _session(svc, admin)
    admin.post_evidence(s["session"], evidence)
    assert _raw(svc, "GET", f"{api.ADMIN}/audit")[0] == 401
    status, _, body = _raw(svc, "GET", "/metrics")
    text = body.decode()
    assert status == 200
    assert 'mchsm_attestations_total{outcome="affirming"}' in text
    assert 'route="session.evidence",status="200"' in text
    assert 'mchsm_http_requests_total{method="GET",route="admin.audit",status="401"}' in text
    assert "mchsm_http_request_duration_seconds_bucket" in text
    assert "mchsm_registry_batch_items_bucket" in text
    doc: Any = admin.request("GET", api.OPENAPI_PATH)[1]
    assert doc["openapi"].startswith("3.")
    assert f"{api.SESSIONS}/{{session}}/evidence" in doc["paths"]
    time.sleep(0.2)  # the log line of the refusal is written by the worker as it answers
    lines = svc.log_lines()  # every line is a JSON object with the fields a collector wants
    assert lines and all({"time", "level", "msg", "pid"} <= set(d) for d in lines)
    assert any(d.get("event") == "auth.refused" for d in lines)
    assert any(d.get("event") == "device.enrol" and d.get("outcome") == "ok" for d in lines)


def test_openapi_describes_exactly_the_routes(tmp_path: Path) -> None:
    from starlette.routing import Route

    from mchsm.sw.service.app import ServiceConfig, build_app
    from mchsm.sw.service.keyfiles import ear_key, token_file
    from mchsm.sw.service.openapi import document

    os.chmod(tmp_path, 0o700)
    token = token_file("x", tmp_path / "token")
    ear_key("x", tmp_path / "key.pem")
    app = build_app(
        ServiceConfig(
            db=str(tmp_path / "r.sqlite"),
            token_file=str(token),
            ear_key_file=str(tmp_path / "key.pem"),
        )
    )
    routes = {
        (r.path, m.lower())
        for r in app.routes
        if isinstance(r, Route)
        for m in (r.methods or ())
        if m != "HEAD"
    }
    documented = {(p, m) for p, ops in document()["paths"].items() for m in ops}
    assert routes == documented


def test_demo_over_http_passes_every_step(svc: Service) -> None:
    from mchsm.sim.backends import run_on_backend
    from mchsm.sw.demo import run_story

    run = run_on_backend(
        "model",
        run_story,
        8,
        job_args={
            "db_path": None,
            "backend": "model",
            "contexts": 8,
            "verifier_url": svc.url,
            "token_file": str(svc.token_file),
        },
    )
    report = run.value
    assert report.verifier.startswith("service at")
    assert report.passed, report.render()
    titles = [s.title for s in report.steps]
    assert any("relying party" in t for t in titles)


def test_cli_operator_commands(svc: Service) -> None:
    from click.testing import CliRunner

    from mchsm.cli import main

    runner = CliRunner()
    base = ["--url", svc.url, "--token-file", str(svc.token_file)]
    image = svc.log.parent / "image.bin"
    image.write_bytes(b"an image for the CLI" * 10)
    result = runner.invoke(
        main,
        [
            "verifier",
            "enrol",
            *base,
            "--contexts",
            "4",
            "--name",
            "cli",
            "--task",
            f"1:first:{image}",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert len(bytes.fromhex(doc["root_key"])) == 32 and doc["tasks"][0]["ctx"] == 1
    result = runner.invoke(
        main,
        [
            "verifier",
            "update",
            *base,
            "--device",
            doc["device"],
            "--ctx",
            "2",
            "--image",
            str(image),
        ],
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["new"] == 1
    result = runner.invoke(main, ["verifier", "audit", *base, "--device", doc["device"]])
    assert result.exit_code == 0 and "update.prepare" in result.stdout
    result = runner.invoke(main, ["verifier", "sessions", *base, "--device", doc["device"]])
    assert result.exit_code == 0
    # without the token: one line, exit 1
    result = runner.invoke(
        main, ["verifier", "audit", "--url", svc.url], env={"MCHSM_VERIFIER_TOKEN_FILE": ""}
    )
    assert result.exit_code == 1 and "token" in result.output and "Traceback" not in result.output


def test_client_survives_the_server_closing_an_idle_connection(
    svc: Service, admin: ServiceClient
) -> None:
    """A demo on the RTL simulates for longer than the keep-alive timeout between two calls;
    the POST after the pause must go out on a new connection, not fail with a broken pipe."""
    dev = provisioned(admin)  # type: ignore[arg-type]  # a client has the Verifier's calls
    time.sleep(KEEP_ALIVE_SECONDS + 1)
    challenge = admin.challenge(dev.record.dev_id)  # a POST: it is never sent twice
    assert len(challenge.nonce) == NONCE_SIZE


def test_session_ids_round_trip_and_refuse_other_spellings() -> None:
    dev, nonce = os.urandom(16), os.urandom(32)
    sid = api.encode_session(dev, nonce)
    assert api.decode_session(sid) == (dev, nonce) and len(sid) == api.SESSION_ID_LEN
    for bad in (sid[:-1], sid + "A", sid[:-1] + "=", "!" * api.SESSION_ID_LEN):
        with pytest.raises(ValueError):
            api.decode_session(bad)


def test_session_error_types_survive_pickling() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(SessionError("used up", "used")))
    assert err.reason == "used" and str(err) == "used up"
