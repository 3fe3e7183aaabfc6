"""The API's one source: paths, media types, size limits, session ids.

The server (:mod:`.app`), its client (:mod:`.client`), the OpenAPI description and the tests
all take these from here, so they cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii

from mchsm.constants import DEVICE_ID_SIZE, EVIDENCE_SIZE, NONCE_SIZE
from mchsm.sw.errors import ArgumentError
from mchsm.sw.protocol import UPDATE_ACK_SIZE

__all__ = [
    "ACK_TYPE",
    "EVIDENCE_TYPE",
    "JSON_TYPE",
    "JWKS_PATH",
    "MAX_ADMIN_JSON",
    "MAX_IMAGE_UPLOAD",
    "MAX_JSON",
    "PROBLEM_TYPE",
    "SESSION_ID_LEN",
    "decode_session",
    "encode_session",
]

#: the evidence of one ATTEST, raw: exactly EVIDENCE_SIZE bytes (u32 sel, ok, ctr; tag)
EVIDENCE_TYPE = "application/vnd.mchsm.evidence"
#: an update acknowledgement, raw: exactly UPDATE_ACK_SIZE bytes (u32 ctx, new; ack)
ACK_TYPE = "application/vnd.mchsm.update-ack"
IMAGE_TYPE = "application/octet-stream"
JSON_TYPE = "application/json"
PROBLEM_TYPE = "application/problem+json"
#: where the EAR signing key is published (RFC 8414-style well-known name)
JWKS_PATH = "/.well-known/jwks.json"
OPENAPI_PATH = "/openapi.json"

SESSIONS = "/v1/sessions"
ADMIN = "/v1/admin"

#: bytes of a JSON request body a device may send (a session request, an evidence envelope)
MAX_JSON = 1024
#: bytes of an admin JSON body (enrolment: contexts and a name)
MAX_ADMIN_JSON = 4096
#: bytes of an image uploaded to prepare an update (the registry's own limit is larger; a
#: service keeps what one request may make it hash and hold in memory small)
MAX_IMAGE_UPLOAD = 16 << 20
#: characters of a query string
MAX_QUERY = 256
#: seconds a client may take to send a request body before it is answered 408
BODY_SECONDS = 10.0
#: rows an audit or session listing returns at most
MAX_LISTING = 10_000

#: session id: base64url (unpadded) of dev_id || nonce
SESSION_BYTES = DEVICE_ID_SIZE + NONCE_SIZE
SESSION_ID_LEN = (4 * SESSION_BYTES + 2) // 3
EVIDENCE_SIZE = EVIDENCE_SIZE
UPDATE_ACK_SIZE = UPDATE_ACK_SIZE


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """Inverse of :func:`b64url`; ValueError for anything that is not its output."""
    if not text.isascii() or "=" in text:
        raise ArgumentError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ArgumentError("not unpadded base64url") from None
    if b64url(data) != text:  # one spelling per value
        raise ArgumentError("not canonical base64url")
    return data


def encode_session(dev_id: bytes, nonce: bytes) -> str:
    """The session id of the challenge ``nonce`` issued to ``dev_id``.

    The id carries the device id, so posting evidence needs no lookup of whose session it is;
    its nonce is 24 random bytes, so an id cannot be guessed.  It is no secret either: the
    nonce travels to the device in the clear, and evidence authenticates itself.
    """
    return b64url(dev_id + nonce)


def decode_session(session: str) -> tuple[bytes, bytes]:
    """(dev_id, nonce) of a session id; ValueError if it is not one."""
    if len(session) != SESSION_ID_LEN:
        raise ArgumentError(f"a session id is {SESSION_ID_LEN} characters")
    raw = unb64url(session)
    if len(raw) != SESSION_BYTES:
        raise ArgumentError("not a session id")
    return raw[:DEVICE_ID_SIZE], raw[DEVICE_ID_SIZE:]
