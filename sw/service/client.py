"""A client of the verifier service, with the calls of the in-process :class:`Verifier`.

:class:`ServiceClient` speaks HTTP/1.1 on one kept-alive connection (``http.client``: nothing
beyond the standard library), turns problem answers back into the verifier's typed errors
(:class:`SessionError`, :class:`UnknownDeviceError`, :class:`UpdateError`,
:class:`AuthorizationError`...) and checks every EAR it receives against the service's published
key before it believes it.  Its methods mirror :class:`~mchsm.sw.verifier.Verifier`'s, so the
demo tells the same story to either (:mod:`mchsm.sw.verifier_port`).
"""

from __future__ import annotations

import http.client
import json
import os
import select
import time
import urllib.parse
from typing import Any

from mchsm.constants import DEVICE_ID_SIZE
from mchsm.sw.errors import (
    AuthorizationError,
    EvidenceError,
    InvalidArgumentError,
    ServiceError,
    SessionError,
    UnknownDeviceError,
    UpdateError,
)
from mchsm.sw.protocol import Evidence, UpdateAck, UpdateAuth
from mchsm.sw.verifier import (
    AttestationReport,
    AuditEntry,
    Challenge,
    DeviceRecord,
    PendingUpdate,
    TaskRecord,
    TaskVerdict,
    UpdatePackage,
    Verdict,
)

from . import api
from .ear import verdict_of
from .keyfiles import ENV_TOKEN_FILE, read_token
from .problems import PROBLEM_PREFIX

__all__ = ["ENV_URL", "ServiceClient", "verify_ear"]

ENV_URL = "MCHSM_VERIFIER_URL"
#: seconds to wait for the service's answer
TIMEOUT = 30.0
#: bytes of an answer read at most (the largest is an audit listing)
MAX_ANSWER = 64 << 20


def verify_ear(token: str, jwks: dict[str, Any], *, issuer: str | None = None) -> dict[str, Any]:
    """The claims of an EAR after PyJWT has checked its ES256 signature against ``jwks``, its
    expiry and (if given) its issuer: what any relying party does with a standard JOSE
    library.  Raises :class:`EvidenceError` if it does not verify."""
    import jwt

    try:
        kid = jwt.get_unverified_header(token).get("kid")
        keys = jwt.PyJWKSet.from_dict(jwks)
        key = next((k for k in keys.keys if k.key_id == kid), None)
        if key is None:
            raise EvidenceError(
                f"the EAR is signed with key {kid!r}, not the verifier's", "signature"
            )
        return jwt.decode(
            token,
            key=key,
            algorithms=["ES256"],
            issuer=issuer,
            options={"require": ["exp", "iat", "iss"]},
        )
    except jwt.PyJWTError as exc:
        raise EvidenceError(f"the EAR does not verify: {exc}", "signature") from None


class ServiceClient:
    """The verifier service at ``url``; admin calls need ``token`` (or its file)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        url = url or os.environ.get(ENV_URL)
        if not url:
            raise InvalidArgumentError(f"give the verifier's URL (or set ${ENV_URL})")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgumentError(
                f"the verifier's URL must be http(s)://HOST:PORT, not {url!r:.80}"
            )
        self.url = url.rstrip("/")
        #: where the verifier is, for reports
        self.where = f"service at {self.url}"
        self._parts = parts
        self._base = parts.path.rstrip("/")
        self.timeout = timeout
        self._token = token
        self._token_file = token_file
        self._conn: http.client.HTTPConnection | None = None
        self._jwks: dict[str, Any] | None = None
        #: the EAR of the last attestation, and its verified claims
        self.last_ear: str | None = None
        self.last_claims: dict[str, Any] | None = None

    # -- plumbing -----------------------------------------------------------------------------

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is not None and _dropped(self._conn):
            self.close()  # the server let the idle connection go (its keep-alive timeout)
        if self._conn is None:
            cls = (
                http.client.HTTPSConnection
                if self._parts.scheme == "https"
                else http.client.HTTPConnection
            )
            host = self._parts.hostname or ""  # checked in __init__
            self._conn = cls(host, self._parts.port, timeout=self.timeout)
        return self._conn

    def _admin_token(self) -> str:
        if self._token is None:
            path = self._token_file or os.environ.get(ENV_TOKEN_FILE)
            if not path:
                raise AuthorizationError(
                    f"admin calls need the service's token: give its file (--token-file) or set "
                    f"${ENV_TOKEN_FILE}",
                    401,
                )
            from pathlib import Path

            self._token = read_token(Path(path))
        return self._token

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        *,
        admin: bool = False,
        query: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any] | bytes]:
        """One request; the decoded JSON answer (or raw bytes), problems raised as errors."""
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if admin:
            headers["Authorization"] = f"Bearer {self._admin_token()}"
        target = self._base + path
        if query:
            target += "?" + urllib.parse.urlencode(
                {k: v for k, v in query.items() if v is not None}
            )
        for attempt in (1, 2):  # a kept-alive connection the server closed meanwhile: once more
            conn = self._connection()
            sent = False
            try:
                conn.request(method, target, body=body, headers=headers)
                sent = True
                resp = conn.getresponse()
                data = resp.read(MAX_ANSWER + 1)
                break
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self.close()
                closed = isinstance(
                    exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError
                )
                # Again only where running the request twice cannot happen or cannot matter: the
                # server had closed the connection before the request was out (it read none of
                # it), or a GET (which changes nothing).  A POST whose answer was lost is not
                # sent twice: it may have consumed a nonce or installed an update.
                if attempt == 1 and closed and (not sent or method == "GET"):
                    continue
                raise ServiceError(f"the verifier at {self.url} did not answer: {exc}") from None
        if len(data) > MAX_ANSWER:
            self.close()
            raise ServiceError(f"the verifier's answer is larger than {MAX_ANSWER} bytes")
        ctype = resp.getheader("Content-Type", "").split(";")[0].strip()
        if resp.status >= 400:
            raise _problem_error(resp.status, data, ctype)
        if ctype in (api.JSON_TYPE, "application/jwk-set+json"):
            try:
                return resp.status, json.loads(data)
            except ValueError:
                raise ServiceError(
                    f"the verifier answered malformed JSON ({resp.status})"
                ) from None
        return resp.status, data

    # -- the Verifier's calls -----------------------------------------------------------------

    def register_device(
        self, contexts: int = 8, dev_id: bytes | None = None, name: str = ""
    ) -> DeviceRecord:
        if dev_id is not None:
            raise InvalidArgumentError("the service chooses device ids")
        _, doc = self.request(
            "POST",
            f"{api.ADMIN}/devices",
            _json({"contexts": contexts, "name": name}),
            api.JSON_TYPE,
            admin=True,
        )
        d = _doc(doc)
        return DeviceRecord(
            bytes.fromhex(d["device"]), bytes.fromhex(d["root_key"]), d["contexts"], d["name"]
        )

    def device_info(self, dev_id: bytes) -> dict[str, Any]:
        _, doc = self.request("GET", f"{api.ADMIN}/devices/{_hex(dev_id)}", admin=True)
        return _doc(doc)

    def tasks(self, dev_id: bytes) -> list[TaskRecord]:
        d = self.device_info(dev_id)
        return [
            TaskRecord(t["ctx"], t["name"], t["version"], bytes.fromhex(t["reference"]))
            for t in d["tasks"]
        ]

    def pending_updates(self, dev_id: bytes) -> list[PendingUpdate]:
        d = self.device_info(dev_id)
        return [
            PendingUpdate(p["ctx"], p["old"], p["new"], bytes.fromhex(p["reference"]), p["name"])
            for p in d["pending"]
        ]

    def register_task(self, dev_id: bytes, ctx: int, name: str, image: bytes) -> UpdatePackage:
        return self.prepare_update(dev_id, ctx, image, name=name)

    def prepare_update(
        self, dev_id: bytes, ctx: int, image: bytes, *, name: str | None = None
    ) -> UpdatePackage:
        _, doc = self.request(
            "POST",
            f"{api.ADMIN}/devices/{_hex(dev_id)}/contexts/{int(ctx)}/update",
            bytes(image),
            api.IMAGE_TYPE,
            admin=True,
            query={"name": name},
        )
        d = _doc(doc)
        auth = UpdateAuth.unpack(bytes.fromhex(d["authorisation"]))
        return UpdatePackage(dev_id=dev_id, name=d["name"], auth=auth, image=bytes(image))

    def cancel_update(self, dev_id: bytes, ctx: int) -> PendingUpdate:
        _, doc = self.request(
            "DELETE", f"{api.ADMIN}/devices/{_hex(dev_id)}/contexts/{int(ctx)}/update", admin=True
        )
        d = _doc(doc)
        return PendingUpdate(ctx, d["old"], d["new"], b"", "")

    def confirm(self, dev_id: bytes, ack: UpdateAck | bytes) -> TaskRecord:
        raw = ack.pack() if isinstance(ack, UpdateAck) else bytes(ack)
        _, doc = self.request(
            "POST", f"{api.ADMIN}/devices/{_hex(dev_id)}/acks", raw, api.ACK_TYPE, admin=True
        )
        d = _doc(doc)
        return TaskRecord(d["ctx"], d["name"], d["version"], bytes.fromhex(d["reference"]))

    def audit(self, dev_id: bytes | None = None, limit: int | None = None) -> list[AuditEntry]:
        query = {"device": _hex(dev_id) if dev_id is not None else None, "limit": limit or 100}
        _, doc = self.request("GET", f"{api.ADMIN}/audit", admin=True, query=query)
        return [
            AuditEntry(
                e["id"],
                e["time"],
                bytes.fromhex(e["device"]) if e["device"] else None,
                e["kind"],
                e["ctx"],
                e["outcome"],
                e["detail"],
            )
            for e in _doc(doc)["entries"]
        ]

    def sessions(self, dev_id: bytes | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = {"device": _hex(dev_id) if dev_id is not None else None, "limit": limit}
        _, doc = self.request("GET", f"{api.ADMIN}/sessions", admin=True, query=query)
        return list(_doc(doc)["sessions"])

    def challenge(self, dev_id: bytes, sel: int | None = None) -> Challenge:
        body: dict[str, Any] = {"device": _hex(dev_id)}
        if sel is not None:
            body["selection"] = sel
        _, doc = self.request("POST", api.SESSIONS, _json(body), api.JSON_TYPE)
        d = _doc(doc)
        return Challenge(
            dev_id=dev_id, nonce=api.unb64url(d["nonce"]), sel=d["selection"], expires=d["expires"]
        )

    def post_evidence(
        self, session: str, evidence: Evidence | bytes, *, envelope: bool = False
    ) -> dict[str, Any]:
        raw = evidence.pack() if isinstance(evidence, Evidence) else bytes(evidence)
        if envelope:
            body, ctype = _json({"evidence": api.b64url(raw)}), api.JSON_TYPE
        else:
            body, ctype = raw, api.EVIDENCE_TYPE
        _, doc = self.request("POST", f"{api.SESSIONS}/{session}/evidence", body, ctype)
        return _doc(doc)

    def session(self, session: str) -> dict[str, Any]:
        _, doc = self.request("GET", f"{api.SESSIONS}/{session}")
        return _doc(doc)

    def verify(self, dev_id: bytes, nonce: bytes, evidence: Evidence | bytes) -> AttestationReport:
        """Post the evidence to the session of (``dev_id``, ``nonce``), check the EAR and read
        it back as a report; a rejected attempt raises like the in-process verifier."""
        doc = self.post_evidence(api.encode_session(dev_id, nonce), evidence)
        claims = self.check_ear(doc["result"])
        self.last_ear, self.last_claims = doc["result"], claims
        return report_of(claims, dev_id, nonce)

    def jwks(self) -> dict[str, Any]:
        """The service's EAR key set, from its well-known URL (fetched once)."""
        if self._jwks is None:
            _, doc = self.request("GET", api.JWKS_PATH)
            self._jwks = _doc(doc)
        return self._jwks

    def check_ear(self, token: str) -> dict[str, Any]:
        return verify_ear(token, self.jwks())

    def wait_ready(self, seconds: float = 30.0) -> None:
        """Until /healthz answers (a service that was just started)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.request("GET", "/healthz")
                return
            except ServiceError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def report_of(claims: dict[str, Any], dev_id: bytes, nonce: bytes) -> AttestationReport:
    """The report an EAR stands for; raises the rejection an EAR of rejected evidence holds.

    Only the claims of an EAR whose signature was checked may come here; it must also be the
    EAR of this device and this nonce (a replayed EAR of another session is refused)."""
    if claims.get("ear.mchsm.device-id") != dev_id.hex() or claims.get("eat_nonce") != api.b64url(
        nonce
    ):
        raise EvidenceError("the EAR is not about this device and nonce", "signature")
    if "ear.mchsm.rejected" in claims:
        raise EvidenceError(
            str(claims.get("ear.mchsm.problem", "rejected")), str(claims["ear.mchsm.rejected"])
        )
    verdicts: dict[int, TaskVerdict] = {}
    ok = 0
    pending = []
    for key, sub in claims["submods"].items():
        ctx = int(sub["ear.mchsm.context"])
        name = key.rsplit("@", 1)[0] if "@" in key else ("" if key == f"ctx{ctx}" else key)
        verdict = verdict_of(sub["ear.status"])
        verdicts[ctx] = TaskVerdict(ctx, name, verdict)
        if verdict is Verdict.TRUSTED:
            ok |= 1 << (ctx - 1)
        if sub["ear.status"] == "warning":
            pending.append(ctx)
    report = AttestationReport.make(
        dev_id,
        int(claims["ear.mchsm.counter"]),
        int(claims["ear.mchsm.selection"]),
        ok,
        dict(sorted(verdicts.items())),
        tuple(claims.get("ear.mchsm.recovered", ())),
    )
    report.__dict__["pending"] = tuple(pending)
    return report


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _doc(doc: dict[str, Any] | bytes) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ServiceError("the verifier answered something other than a JSON object")
    return doc


def _hex(dev_id: bytes) -> str:
    if not isinstance(dev_id, bytes) or len(dev_id) != DEVICE_ID_SIZE:
        raise InvalidArgumentError(f"a device id is {DEVICE_ID_SIZE} bytes")
    return dev_id.hex()


def _problem_error(status: int, data: bytes, ctype: str) -> Exception:
    """The typed error of a problem answer."""
    detail, code = f"HTTP {status}", ""
    if ctype == api.PROBLEM_TYPE:
        try:
            doc = json.loads(data)
            code = str(doc.get("type", "")).removeprefix(PROBLEM_PREFIX)
            detail = f"{doc.get('title', '')}: {doc.get('detail', '')}".strip(": ")
        except ValueError:
            pass
    if status == 401:
        return AuthorizationError(detail, status)
    if code in ("session-unknown", "session-used", "session-expired"):
        return SessionError(detail, code.removeprefix("session-"))
    if code == "device-unknown":
        return UnknownDeviceError(detail)
    if code == "update-refused":
        return UpdateError(detail)
    if code == "bad-evidence":
        return EvidenceError(detail, "malformed")
    return ServiceError(detail, status)


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether a kept-alive connection was closed by the server while it sat idle.

    Servers close idle connections after their keep-alive timeout (uvicorn: 5 s); a client
    that simulates RTL between two calls waits longer than that.  With no request out, a
    socket that reads as ready holds the server's EOF (or something it should not have sent):
    either way the connection is not to be used again.  (A TLS 1.3 session ticket also reads
    as ready; the cost is one new connection.)
    """
    sock = conn.sock
    if sock is None:
        return False
    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)
