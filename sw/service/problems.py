"""Errors as RFC 9457 problem details (``application/problem+json``).

Every refusal the service gives is a :class:`Problem`: an HTTP status, a stable ``type`` (a URN
a client can branch on), a ``title`` a person understands, and a ``detail`` about this request.
Nothing the client sent is echoed back beyond bounded, already-validated values.
"""

from __future__ import annotations

import json
from typing import Any

from mchsm.sw.errors import (
    AttestationError,
    InvalidArgumentError,
    KekError,
    MchsmError,
    SessionError,
    StoreError,
    UnknownDeviceError,
    UpdateError,
    VerifierError,
)

__all__ = ["PROBLEM_PREFIX", "TITLES", "Problem", "from_error"]

PROBLEM_PREFIX = "urn:mchsm:problem:"

#: code -> (status, title): the one table of every problem the service answers
TITLES: dict[str, tuple[int, str]] = {
    "bad-request": (400, "The request is malformed"),
    "bad-evidence": (400, "The evidence is malformed"),
    "unauthorized": (401, "An admin credential is required"),
    "not-found": (404, "No such resource"),
    "session-unknown": (404, "No such attestation session"),
    "device-unknown": (404, "No such device"),
    "method-not-allowed": (405, "Method not allowed here"),
    "request-timeout": (408, "The request body did not arrive in time"),
    "session-used": (409, "The attestation session has already been used"),
    "update-refused": (409, "The update was refused"),
    "conflict": (409, "The request conflicts with the registry's state"),
    "session-expired": (410, "The attestation session has expired"),
    "too-large": (413, "The request body is too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "registry-unavailable": (503, "The registry cannot be used right now"),
    "internal": (500, "The verifier failed"),
}


class Problem(MchsmError):
    """A refusal, rendered as problem+json by the app's handler."""

    def __init__(
        self, code: str, detail: str = "", headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail or code)
        self.code = code
        self.status, self.title = TITLES[code]
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> bytes:
        doc: dict[str, Any] = {
            "type": PROBLEM_PREFIX + self.code,
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            doc["detail"] = self.detail
        doc.update(self.extra)
        return json.dumps(doc, separators=(",", ":")).encode()


def from_error(exc: VerifierError) -> Problem:
    """The problem a verifier error becomes (its message is the detail: it never holds
    unbounded client data, see the verifier's audit rules)."""
    detail = str(exc)[:400]
    if isinstance(exc, SessionError):
        code = {"used": "session-used", "expired": "session-expired"}.get(
            exc.reason, "session-unknown"
        )
        return Problem(code, detail)
    if isinstance(exc, UnknownDeviceError):
        return Problem("device-unknown", detail)
    if isinstance(exc, UpdateError):
        return Problem("update-refused", detail)
    if isinstance(exc, InvalidArgumentError | AttestationError):
        return Problem("bad-request", detail)
    if isinstance(exc, KekError):
        return Problem("internal", "the registry's key-encryption key cannot be used")
    if isinstance(exc, StoreError):
        return Problem("registry-unavailable", detail)
    return Problem("conflict", detail)
