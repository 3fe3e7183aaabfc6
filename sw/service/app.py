"""The verifier service's ASGI application (Starlette).

Devices need no credential: a session's nonce is single-use and its evidence authenticates
itself.  Admin calls need the bearer token, checked before their body is read.  Every body is
size-checked (its Content-Length first, then every chunk as it arrives) and must arrive within
:data:`~.api.BODY_SECONDS`; every refusal is an RFC 9457 problem (:mod:`.problems`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mchsm.constants import DEVICE_ID_SIZE, MAX_CONTEXTS
from mchsm.sw.errors import (
    EvidenceError,
    ServiceError,
    SessionError,
    UnknownDeviceError,
    VerifierError,
)
from mchsm.sw.protocol import UpdateAck
from mchsm.sw.verifier import AttestationReport, Challenge, SessionState, Verifier

from . import api, metrics
from .batch import MAX_BATCH, Batcher
from .ear import EarSigner, ear_claims, overall
from .keyfiles import TokenCheck, ear_key, read_token
from .problems import Problem, from_error

__all__ = ["ENV_CONFIG", "ServiceConfig", "build_app", "create_app"]

log = logging.getLogger("mchsm.service")
ENV_CONFIG = "MCHSM_SERVICE_CONFIG"
#: a path prefix: each worker writes cProfile statistics of its two threads there at shutdown
#: (the bench's profile; never set in service)
ENV_PROFILE = "MCHSM_SERVICE_PROFILE"


@dataclass(frozen=True)
class ServiceConfig:
    """What every worker needs to know; handed to workers as JSON in :data:`ENV_CONFIG`."""

    db: str
    token_file: str
    ear_key_file: str | None = None
    kek_file: str | None = None
    #: the verifier's identity in EARs (``iss``): a URL or name relying parties recognise
    issuer: str = "mchsm-verifier"
    nonce_ttl: float = 300.0
    #: seconds an EAR stays valid (``exp``)
    ear_ttl: float = 300.0
    max_batch: int = MAX_BATCH
    log_level: str = "INFO"

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> ServiceConfig:
        raw = os.environ.get(ENV_CONFIG)
        if not raw:
            raise ServiceError(f"${ENV_CONFIG} is not set: start the service with mchsm verifier")
        return cls(**json.loads(raw))


def _build() -> str:
    try:
        from importlib.metadata import version

        return f"mchsm {version('mchsm')}"
    except Exception:  # not installed as a distribution
        return "mchsm"


BUILD = _build()


class Service:
    """The state of one worker: its registry connection (through the batcher), the EAR key
    and the admin token's digest."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.signer = EarSigner(ear_key(config.db, _path(config.ear_key_file))[0])
        self.token = TokenCheck(read_token(_path_required(config.token_file)))
        self.jwks = json.dumps(self.signer.jwks()).encode()
        self.batcher: Batcher | None = None

    async def start(self) -> None:
        config = self.config

        def opener() -> Verifier:
            return Verifier(config.db, nonce_ttl=config.nonce_ttl, kek=config.kek_file)

        def observe(items: int, seconds: float) -> None:
            metrics.BATCH_ITEMS.observe(items)
            metrics.BATCH_SECONDS.observe(seconds)

        self.batcher = Batcher(opener, max_batch=config.max_batch, observe=observe)
        await self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()

    def ear(self, state_or: tuple[bytes, bytes, int], result: Any, session: str) -> tuple[str, str]:
        """The signed EAR and its overall status."""
        dev_id, nonce, sel = state_or
        claims = ear_claims(
            dev_id=dev_id,
            nonce=nonce,
            sel=sel,
            result=result,
            issued=time.time(),
            ttl=self.config.ear_ttl,
            issuer=self.config.issuer,
            build=BUILD,
            session=session,
        )
        return self.signer.sign(claims), overall(claims)


def _path(p: str | None) -> Any:
    from pathlib import Path

    return None if p is None else Path(p)


def _path_required(p: str) -> Any:
    from pathlib import Path

    return Path(p)


# -- request helpers ------------------------------------------------------------------------------


def _json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(doc, separators=(",", ":")).encode(),
        status,
        headers=headers,
        media_type=api.JSON_TYPE,
    )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` (by its
    Content-Length, or by the bytes that arrived), 408 if it takes longer than BODY_SECONDS."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit() or len(length) > 15:
            raise Problem("bad-request", "Content-Length is not a number")
        if int(length) > limit:
            raise Problem("too-large", f"this body may be at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(api.BODY_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Problem("too-large", f"this body may be at most {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise Problem("request-timeout", f"send the body within {api.BODY_SECONDS:.0f} s") from None
    except ClientDisconnect:
        raise Problem("bad-request", "the client went away before its body arrived") from None
    return b"".join(chunks)


def _json_object(body: bytes, allowed: set[str]) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Problem("bad-request", "the body is not JSON") from None
    if not isinstance(doc, dict):
        raise Problem("bad-request", "the body must be a JSON object")
    unknown = set(doc) - allowed
    if unknown:
        names = ", ".join(sorted(str(k)[:32] for k in unknown)[:5])
        raise Problem("bad-request", f"unknown field(s): {names}; allowed: {sorted(allowed)}")
    return doc


def _device_hex(value: object, what: str = "device") -> bytes:
    if not isinstance(value, str) or len(value) != 2 * DEVICE_ID_SIZE:
        raise Problem("bad-request", f"{what} must be {2 * DEVICE_ID_SIZE} hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise Problem("bad-request", f"{what} must be {2 * DEVICE_ID_SIZE} hex digits") from None


def _int_field(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise Problem("bad-request", f"{what} must be an integer in {low}..{high}")
    return value


def _query(request: Request, allowed: set[str]) -> dict[str, str]:
    raw = request.scope.get("query_string", b"")
    if len(raw) > api.MAX_QUERY:
        raise Problem("bad-request", f"the query string may be at most {api.MAX_QUERY} bytes")
    params = dict(request.query_params)
    unknown = set(params) - allowed
    if unknown:
        names = ", ".join(sorted(k[:32] for k in unknown)[:5])
        raise Problem("bad-request", f"unknown query parameter(s): {names}")
    return params


def _limit(params: dict[str, str]) -> int:
    raw = params.get("limit", "100")
    if not raw.isdigit() or not 0 < int(raw) <= api.MAX_LISTING:
        raise Problem("bad-request", f"limit must be an integer in 1..{api.MAX_LISTING}")
    return int(raw)


def _session_doc(
    session: str,
    dev_id: bytes,
    nonce: bytes,
    sel: int,
    expires: float,
    status: str,
    ear: str | None = None,
    outcome: str | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "session": session,
        "device": dev_id.hex(),
        "nonce": api.b64url(nonce),
        "selection": sel,
        "expires": round(expires, 3),
        "status": status,
        "accept": [api.EVIDENCE_TYPE, api.JSON_TYPE],
    }
    if ear is not None:
        doc["result"] = ear
        doc["outcome"] = outcome
    return doc


# -- the application -------------------------------------------------------------------------------


#: a route's function
Handler = Callable[[Request], Awaitable[Response]]


def build_app(config: ServiceConfig) -> Starlette:
    """The ASGI application of one worker."""
    service = Service(config)

    def endpoint(name: str, *, admin: bool = False) -> Callable[[Handler], Handler]:
        """Names the route for metrics and logs; checks the admin credential first."""

        def wrap(fn: Handler) -> Handler:
            async def handler(request: Request) -> Response:
                request.scope["mchsm.route"] = name
                if admin:
                    auth = request.headers.get("authorization", "")
                    scheme, _, token = auth.partition(" ")
                    if scheme.lower() != "bearer" or not token or not service.token(token):
                        log.info(
                            "admin call refused: no valid credential",
                            extra={"event": "auth.refused", "route": name},
                        )
                        raise Problem(
                            "unauthorized",
                            "send the admin token as 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": 'Bearer realm="mchsm-verifier"'},
                        )
                return await fn(request)

            handler.__name__ = fn.__name__
            handler.__doc__ = fn.__doc__
            return handler

        return wrap

    def batcher() -> Batcher:
        assert service.batcher is not None
        return service.batcher

    # -- devices: sessions ------------------------------------------------------------------

    @endpoint("session.create")
    async def create_session(request: Request) -> Response:
        """Open an attestation session: a fresh nonce for the device and a selection."""
        if _media_type(request) != api.JSON_TYPE:
            raise Problem("unsupported-media-type", f"send {api.JSON_TYPE}")
        doc = _json_object(await read_body(request, api.MAX_JSON), {"device", "selection"})
        dev_id = _device_hex(doc.get("device"))
        sel = doc.get("selection")
        if sel is not None:
            sel = _int_field(sel, "selection", 1, (1 << MAX_CONTEXTS) - 1)
        result = await batcher().challenge(dev_id, sel)
        if isinstance(result, VerifierError):
            raise from_error(result)
        assert isinstance(result, Challenge)
        session = api.encode_session(dev_id, result.nonce)
        doc = _session_doc(session, dev_id, result.nonce, result.sel, result.expires, "waiting")
        return _json_response(doc, 201, {"Location": f"{api.SESSIONS}/{session}"})

    def _session_id(request: Request) -> tuple[str, bytes, bytes]:
        session = request.path_params["session"]
        try:
            dev_id, nonce = api.decode_session(session)
        except ValueError:
            raise Problem("session-unknown", "this is not a session id of this verifier") from None
        return session, dev_id, nonce

    @endpoint("session.evidence")
    async def post_evidence(request: Request) -> Response:
        """Answer a session with the device's evidence: raw, or in a JSON envelope."""
        session, dev_id, nonce = _session_id(request)
        mtype = _media_type(request)
        if mtype == api.EVIDENCE_TYPE:
            evidence = await read_body(request, api.EVIDENCE_SIZE)
        elif mtype == api.JSON_TYPE:
            doc = _json_object(await read_body(request, api.MAX_JSON), {"evidence"})
            raw = doc.get("evidence")
            try:
                evidence = api.unb64url(raw) if isinstance(raw, str) else b""
            except ValueError:
                evidence = b""
            if not evidence:
                raise Problem("bad-evidence", "evidence must be the evidence in base64url")
        else:
            raise Problem(
                "unsupported-media-type",
                f"send the evidence as {api.EVIDENCE_TYPE} or {api.JSON_TYPE}",
                headers={"Accept-Post": f"{api.EVIDENCE_TYPE}, {api.JSON_TYPE}"},
            )
        if len(evidence) != api.EVIDENCE_SIZE:
            raise Problem(
                "bad-evidence", f"evidence is {api.EVIDENCE_SIZE} bytes, not {len(evidence)}"
            )
        result = await batcher().attempt(dev_id, nonce, evidence)
        if isinstance(result, SessionError | UnknownDeviceError):
            reason = getattr(result, "reason", "unknown")
            metrics.ATTESTATIONS.labels(reason).inc()
            raise from_error(result)
        if not isinstance(result, AttestationReport | EvidenceError):
            raise from_error(result)
        sel = result.sel if isinstance(result, AttestationReport) else _challenge_sel(result)
        ear, outcome = service.ear((dev_id, nonce, sel), result, session)
        metrics.ATTESTATIONS.labels(outcome).inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "attestation",
                extra={"event": "attest", "device": dev_id.hex(), "outcome": outcome},
            )
        return _json_response(
            _session_doc(session, dev_id, nonce, sel, 0, "complete", ear, outcome)
        )

    def _challenge_sel(error: EvidenceError) -> int:
        sel = 0
        for ctx in getattr(error, "tasks", {}):
            sel |= 1 << (ctx - 1)
        return sel

    @endpoint("session.read")
    async def get_session(request: Request) -> Response:
        """A session's state, and its result once it has one."""
        session, dev_id, nonce = _session_id(request)
        state: SessionState | None = await batcher().call(lambda v: v.session(dev_id, nonce))
        if state is None:
            raise Problem("session-unknown", "never issued, or expired and purged")
        if state.result is not None:
            result = state.result
            sel = state.sel
            ear, outcome = service.ear((dev_id, nonce, sel), result, session)
            doc = _session_doc(session, dev_id, nonce, sel, state.expires, "complete", ear, outcome)
        else:
            status = "used" if state.used else "waiting"
            if time.time() >= state.expires:
                status = "expired"
            doc = _session_doc(session, dev_id, nonce, state.sel, state.expires, status)
        return _json_response(doc)

    # -- public, operations -----------------------------------------------------------------

    @endpoint("jwks")
    async def jwks(request: Request) -> Response:
        """The EAR signing key, as a JWK Set."""
        return Response(
            service.jwks,
            media_type="application/jwk-set+json",
            headers={"Cache-Control": "max-age=300"},
        )

    @endpoint("openapi")
    async def openapi(request: Request) -> Response:
        """This API's OpenAPI description."""
        from .openapi import document

        return _json_response(document())

    @endpoint("healthz")
    async def healthz(request: Request) -> Response:
        """Alive and able to read the registry."""
        try:
            await batcher().call(lambda v: v.store.read(lambda s: s.schema_version()))
        except VerifierError as exc:
            raise Problem("registry-unavailable", str(exc)[:200]) from None
        return _json_response({"status": "ok"})

    @endpoint("metrics")
    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus metrics of every worker."""
        body, ctype = metrics.render()
        return Response(body, headers={"Content-Type": ctype})

    # -- admin ------------------------------------------------------------------------------

    async def admin_call(fn: Callable[[Verifier], Any], event: str, **fields: Any) -> Any:
        try:
            result = await batcher().call(fn)
        except VerifierError as exc:
            log.info(
                "admin call refused",
                extra={"event": event, "outcome": "refused", "error": str(exc)[:200], **fields},
            )
            raise from_error(exc) from None
        log.info("admin call", extra={"event": event, "outcome": "ok", **fields})
        return result

    @endpoint("admin.enrol", admin=True)
    async def enrol_device(request: Request) -> Response:
        """Register a device: its id and root key, to hand to PROVISION once."""
        if _media_type(request) != api.JSON_TYPE:
            raise Problem("unsupported-media-type", f"send {api.JSON_TYPE}")
        doc = _json_object(await read_body(request, api.MAX_ADMIN_JSON), {"contexts", "name"})
        contexts = _int_field(doc.get("contexts", 8), "contexts", 1, MAX_CONTEXTS)
        name = doc.get("name", "")
        if not isinstance(name, str):
            raise Problem("bad-request", "name must be a string")
        record = await admin_call(
            lambda v: v.register_device(contexts=contexts, name=name), "device.enrol"
        )
        body = {
            "device": record.dev_id.hex(),
            "root_key": record.root_key.hex(),
            "contexts": record.contexts,
            "name": record.name,
        }
        return _json_response(
            body,
            201,
            {"Location": f"{api.ADMIN}/devices/{record.dev_id.hex()}", "Cache-Control": "no-store"},
        )

    def _dev_param(request: Request) -> bytes:
        return _device_hex(request.path_params["device"], "the device in the path")

    def _ctx_param(request: Request) -> int:
        raw = request.path_params["ctx"]
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_CONTEXTS:
            raise Problem("bad-request", f"the context must be 1..{MAX_CONTEXTS}")
        return int(raw)

    @endpoint("admin.device", admin=True)
    async def get_device(request: Request) -> Response:
        """A device's record: tasks and pending updates (never its root key)."""
        dev_id = _dev_param(request)

        def read(v: Verifier) -> dict[str, Any]:
            record = v.device(dev_id)
            return {
                "device": dev_id.hex(),
                "contexts": record.contexts,
                "name": record.name,
                "tasks": [
                    {
                        "ctx": t.ctx,
                        "name": t.name,
                        "version": t.version,
                        "reference": t.reference.hex(),
                    }
                    for t in v.tasks(dev_id)
                ],
                "pending": [
                    {
                        "ctx": p.ctx,
                        "name": p.name,
                        "old": p.old,
                        "new": p.new,
                        "reference": p.reference.hex(),
                    }
                    for p in v.pending_updates(dev_id)
                ],
            }

        return _json_response(await admin_call(read, "device.read", device=dev_id.hex()))

    @endpoint("admin.update", admin=True)
    async def prepare_update(request: Request) -> Response:
        """Authorise moving a context to the uploaded image (from version 0: install a task)."""
        dev_id, ctx = _dev_param(request), _ctx_param(request)
        params = _query(request, {"name"})
        name = params.get("name")
        if _media_type(request) != api.IMAGE_TYPE:
            raise Problem("unsupported-media-type", f"send the image as {api.IMAGE_TYPE}")
        image = await read_body(request, api.MAX_IMAGE_UPLOAD)
        if not image:
            raise Problem("bad-request", "the image is empty")
        package = await admin_call(
            lambda v: v.prepare_update(dev_id, ctx, image, name=name),
            "update.prepare",
            device=dev_id.hex(),
            ctx=ctx,
        )
        auth = package.auth
        return _json_response(
            {
                "device": dev_id.hex(),
                "ctx": ctx,
                "name": package.name,
                "old": auth.old,
                "new": auth.new,
                "reference": auth.ref.hex(),
                "authorisation": auth.pack().hex(),
            }
        )

    @endpoint("admin.cancel", admin=True)
    async def cancel_update(request: Request) -> Response:
        """Withdraw an outstanding authorisation that never reached the device."""
        dev_id, ctx = _dev_param(request), _ctx_param(request)
        p = await admin_call(
            lambda v: v.cancel_update(dev_id, ctx), "update.cancel", device=dev_id.hex(), ctx=ctx
        )
        return _json_response(
            {"device": dev_id.hex(), "ctx": ctx, "old": p.old, "new": p.new, "cancelled": True}
        )

    @endpoint("admin.ack", admin=True)
    async def confirm_ack(request: Request) -> Response:
        """Record an update as installed once the device's acknowledgement verifies."""
        dev_id = _dev_param(request)
        mtype = _media_type(request)
        if mtype == api.ACK_TYPE:
            raw = await read_body(request, api.UPDATE_ACK_SIZE)
        elif mtype == api.JSON_TYPE:
            doc = _json_object(await read_body(request, api.MAX_JSON), {"ack"})
            try:
                raw = bytes.fromhex(doc["ack"]) if isinstance(doc.get("ack"), str) else b""
            except ValueError:
                raw = b""
        else:
            raise Problem("unsupported-media-type", f"send the ack as {api.ACK_TYPE} or JSON")
        if len(raw) != api.UPDATE_ACK_SIZE:
            raise Problem("bad-request", f"an update ack is {api.UPDATE_ACK_SIZE} bytes")
        ack = UpdateAck.unpack(raw)
        task = await admin_call(
            lambda v: v.confirm(dev_id, ack), "update.confirm", device=dev_id.hex(), ctx=ack.ctx
        )
        return _json_response(
            {
                "device": dev_id.hex(),
                "ctx": task.ctx,
                "name": task.name,
                "version": task.version,
                "reference": task.reference.hex(),
            }
        )

    @endpoint("admin.audit", admin=True)
    async def audit(request: Request) -> Response:
        """The newest audit entries (of a device), oldest first."""
        params = _query(request, {"device", "limit"})
        dev_id = _device_hex(params["device"]) if "device" in params else None
        limit = _limit(params)
        entries = await admin_call(lambda v: v.audit(dev_id, limit), "audit.read")
        return _json_response(
            {
                "entries": [
                    {
                        "id": e.id,
                        "time": e.time,
                        "device": e.dev_id.hex() if e.dev_id is not None else None,
                        "kind": e.kind,
                        "ctx": e.ctx,
                        "outcome": e.outcome,
                        "detail": e.detail,
                    }
                    for e in entries
                ]
            }
        )

    @endpoint("admin.sessions", admin=True)
    async def sessions(request: Request) -> Response:
        """The newest sessions (of a device), newest first."""
        params = _query(request, {"device", "limit"})
        dev_id = _device_hex(params["device"]) if "device" in params else None
        limit = _limit(params)
        found = await admin_call(lambda v: v.sessions(dev_id, limit), "sessions.read")
        now = time.time()
        return _json_response(
            {
                "sessions": [
                    {
                        "session": api.encode_session(s.dev_id, s.nonce),
                        "device": s.dev_id.hex(),
                        "selection": s.sel,
                        "issued": int.from_bytes(s.nonce[:8], "big") / 1e6,
                        "expires": s.expires,
                        "status": "used"
                        if s.used
                        else ("expired" if now >= s.expires else "waiting"),
                    }
                    for s in found
                ]
            }
        )

    S = api.SESSIONS
    A = api.ADMIN
    routes = [
        Route(S, create_session, methods=["POST"]),
        Route(S + "/{session}/evidence", post_evidence, methods=["POST"]),
        Route(S + "/{session}", get_session, methods=["GET"]),
        Route(api.JWKS_PATH, jwks, methods=["GET"]),
        Route(api.OPENAPI_PATH, openapi, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route(A + "/devices", enrol_device, methods=["POST"]),
        Route(A + "/devices/{device}", get_device, methods=["GET"]),
        Route(A + "/devices/{device}/contexts/{ctx}/update", prepare_update, methods=["POST"]),
        Route(A + "/devices/{device}/contexts/{ctx}/update", cancel_update, methods=["DELETE"]),
        Route(A + "/devices/{device}/acks", confirm_ack, methods=["POST"]),
        Route(A + "/audit", audit, methods=["GET"]),
        Route(A + "/sessions", sessions, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        profile = os.environ.get(ENV_PROFILE)
        profilers = []
        if profile:  # the bench's "where the time goes": both threads of this worker
            import cProfile

            profilers = [cProfile.Profile(), cProfile.Profile()]
            profilers[0].enable()
        await service.start()
        if profilers:
            await batcher().call(lambda v: profilers[1].enable())
        log.info("worker ready", extra={"event": "worker.start", "registry": _where(config.db)})
        try:
            yield
        finally:
            if profilers:
                await batcher().call(lambda v: profilers[1].disable())
                profilers[0].disable()
                for i, p in enumerate(profilers):
                    p.dump_stats(f"{profile}.{os.getpid()}.{i}")
            await service.stop()
            log.info(
                "worker stopped: every accepted request answered", extra={"event": "worker.stop"}
            )

    async def problem_handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return Response(exc.body(), exc.status, headers=exc.headers, media_type=api.PROBLEM_TYPE)

    async def http_handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "bad-request")
        problem = Problem(code, f"{request.method} {request.url.path[:100]}")
        return Response(
            problem.body(), problem.status, headers=exc.headers, media_type=api.PROBLEM_TYPE
        )

    async def crash_handler(request: Request, exc: Exception) -> Response:
        log.error("unexpected error", exc_info=exc, extra={"event": "crash"})
        problem = Problem("internal", "see the verifier's log")
        return Response(problem.body(), 500, media_type=api.PROBLEM_TYPE)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            Problem: problem_handler,
            HTTPException: http_handler,
            Exception: crash_handler,
        },
    )
    app.state.service = service
    return app


def _where(db: str) -> str:
    from mchsm.sw.verifier.postgres import is_url, redact

    return redact(db) if is_url(db) else db


class Instrumented:
    """ASGI middleware: counts every request and its latency by route (bounded labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = [500]

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("mchsm.route", "unmatched")
            metrics.REQUESTS.labels(route, scope["method"], str(status[0])).inc()
            metrics.LATENCY.labels(route).observe(time.perf_counter() - began)


def create_app() -> ASGIApp:
    """The worker's application, configured from :data:`ENV_CONFIG` (uvicorn's factory)."""
    from .logs import configure

    config = ServiceConfig.from_env()
    configure(config.log_level)
    return Instrumented(build_app(config))
