"""The service's OpenAPI 3.1 description, served at ``/openapi.json``.

Written by hand from :mod:`.api`'s constants; a test checks that its paths and methods are
exactly the application's routes.
"""

from __future__ import annotations

import functools
from typing import Any

from mchsm.constants import MAX_CONTEXTS

from . import api
from .problems import PROBLEM_PREFIX, TITLES

__all__ = ["document"]


def _problems(*codes: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code in codes:
        status, title = TITLES[code]
        entry = out.setdefault(
            str(status),
            {
                "description": "",
                "content": {api.PROBLEM_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            },
        )
        entry["description"] = "; ".join(
            filter(None, [entry["description"], f"{title} ({PROBLEM_PREFIX}{code})"])
        )
    return out


def _json_body(schema: dict[str, Any], limit: int) -> dict[str, Any]:
    return {
        "required": True,
        "description": f"at most {limit} bytes",
        "content": {api.JSON_TYPE: {"schema": schema}},
    }


def _ok(description: str, ref: str | None = None, status: str = "200") -> dict[str, Any]:
    content = {api.JSON_TYPE: {"schema": {"$ref": f"#/components/schemas/{ref}"}}} if ref else {}
    return {status: {"description": description, **({"content": content} if content else {})}}


ADMIN: list[dict[str, list[str]]] = [{"bearerAuth": []}]
DEVICE_HEX = {"type": "string", "pattern": f"^[0-9a-f]{{{2 * 16}}}$"}


@functools.cache
def document() -> dict[str, Any]:
    S, A = api.SESSIONS, api.ADMIN
    session_param = {
        "name": "session",
        "in": "path",
        "required": True,
        "schema": {
            "type": "string",
            "minLength": api.SESSION_ID_LEN,
            "maxLength": api.SESSION_ID_LEN,
        },
    }
    device_param = {"name": "device", "in": "path", "required": True, "schema": DEVICE_HEX}
    ctx_param = {
        "name": "ctx",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_CONTEXTS},
    }
    listing = [
        {"name": "device", "in": "query", "required": False, "schema": DEVICE_HEX},
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": api.MAX_LISTING, "default": 100},
        },
    ]
    unauth = _problems("unauthorized")
    paths: dict[str, Any] = {
        S: {
            "post": {
                "summary": "Open an attestation session for a device",
                "description": "A fresh single-use nonce; the selection defaults to every "
                "installed task.",
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["device"],
                        "additionalProperties": False,
                        "properties": {
                            "device": DEVICE_HEX,
                            "selection": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": (1 << MAX_CONTEXTS) - 1,
                            },
                        },
                    },
                    api.MAX_JSON,
                ),
                "responses": {
                    **_ok("The session, waiting for evidence", "Session", "201"),
                    **_problems(
                        "bad-request",
                        "device-unknown",
                        "conflict",
                        "too-large",
                        "unsupported-media-type",
                    ),
                },
            }
        },
        S + "/{session}/evidence": {
            "post": {
                "summary": "Post the device's evidence to its session (one attempt per session)",
                "parameters": [session_param],
                "requestBody": {
                    "required": True,
                    "content": {
                        api.EVIDENCE_TYPE: {
                            "schema": {
                                "type": "string",
                                "format": "binary",
                                "minLength": api.EVIDENCE_SIZE,
                                "maxLength": api.EVIDENCE_SIZE,
                            }
                        },
                        api.JSON_TYPE: {
                            "schema": {
                                "type": "object",
                                "required": ["evidence"],
                                "additionalProperties": False,
                                "properties": {
                                    "evidence": {
                                        "type": "string",
                                        "description": "the 44 bytes, base64url without padding",
                                    }
                                },
                            }
                        },
                    },
                },
                "responses": {
                    **_ok("The session, complete, with its EAR", "Session"),
                    **_problems(
                        "bad-evidence",
                        "session-unknown",
                        "session-used",
                        "session-expired",
                        "too-large",
                        "unsupported-media-type",
                        "request-timeout",
                    ),
                },
            }
        },
        S + "/{session}": {
            "get": {
                "summary": "A session's state and, once complete, its EAR",
                "parameters": [session_param],
                "responses": {**_ok("The session", "Session"), **_problems("session-unknown")},
            }
        },
        api.JWKS_PATH: {
            "get": {
                "summary": "The EAR signing key (JWK Set, ES256)",
                "responses": {
                    "200": {"description": "JWK Set", "content": {"application/jwk-set+json": {}}}
                },
            }
        },
        api.OPENAPI_PATH: {"get": {"summary": "This description", "responses": _ok("OpenAPI 3.1")}},
        "/healthz": {
            "get": {
                "summary": "Alive, and the registry readable",
                "responses": {**_ok("ok"), **_problems("registry-unavailable")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics of every worker",
                "responses": {"200": {"description": "text exposition format"}},
            }
        },
        A + "/devices": {
            "post": {
                "summary": "Enrol a device: its id and root key (for PROVISION, shown once)",
                "security": ADMIN,
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "contexts": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_CONTEXTS,
                                "default": 8,
                            },
                            "name": {"type": "string", "maxLength": 128},
                        },
                    },
                    api.MAX_ADMIN_JSON,
                ),
                "responses": {
                    **_ok("The new device", None, "201"),
                    **unauth,
                    **_problems("bad-request"),
                },
            }
        },
        A + "/devices/{device}": {
            "get": {
                "summary": "A device's tasks and pending updates",
                "security": ADMIN,
                "parameters": [device_param],
                "responses": {**_ok("The device"), **unauth, **_problems("device-unknown")},
            }
        },
        A + "/devices/{device}/contexts/{ctx}/update": {
            "post": {
                "summary": "Authorise moving a context to the uploaded image "
                "(from v0: install a task)",
                "security": ADMIN,
                "parameters": [
                    device_param,
                    ctx_param,
                    {
                        "name": "name",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 128},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "description": f"at most {api.MAX_IMAGE_UPLOAD} bytes",
                    "content": {api.IMAGE_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                },
                "responses": {
                    **_ok("The authorisation package (UPDATE's data, hex)"),
                    **unauth,
                    **_problems("update-refused", "device-unknown", "too-large"),
                },
            },
            "delete": {
                "summary": "Withdraw an outstanding authorisation that never reached the device",
                "security": ADMIN,
                "parameters": [device_param, ctx_param],
                "responses": {
                    **_ok("Cancelled"),
                    **unauth,
                    **_problems("update-refused", "device-unknown"),
                },
            },
        },
        A + "/devices/{device}/acks": {
            "post": {
                "summary": "Confirm an update with the device's acknowledgement",
                "security": ADMIN,
                "parameters": [device_param],
                "requestBody": {
                    "required": True,
                    "content": {
                        api.ACK_TYPE: {
                            "schema": {
                                "type": "string",
                                "format": "binary",
                                "minLength": api.UPDATE_ACK_SIZE,
                                "maxLength": api.UPDATE_ACK_SIZE,
                            }
                        },
                        api.JSON_TYPE: {
                            "schema": {"type": "object", "properties": {"ack": {"type": "string"}}}
                        },
                    },
                },
                "responses": {
                    **_ok("The installed task"),
                    **unauth,
                    **_problems("update-refused", "device-unknown"),
                },
            }
        },
        A + "/audit": {
            "get": {
                "summary": "Audit log entries, oldest first",
                "security": ADMIN,
                "parameters": listing,
                "responses": {**_ok("Entries"), **unauth},
            }
        },
        A + "/sessions": {
            "get": {
                "summary": "Sessions, newest first",
                "security": ADMIN,
                "parameters": listing,
                "responses": {**_ok("Sessions"), **unauth},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mchsm verifier",
            "version": "1",
            "description": "RATS-style challenge-response attestation of the tasks of an mchsm "
            "HSM; results as EAR (draft-ietf-rats-ear) JWTs signed ES256, key at "
            + api.JWKS_PATH
            + ". See docs/verifier.md.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the admin token from the service's owner-only token file",
                }
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "description": "RFC 9457 problem details",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                    },
                },
                "Session": {
                    "type": "object",
                    "properties": {
                        "session": {"type": "string"},
                        "device": DEVICE_HEX,
                        "nonce": {
                            "type": "string",
                            "description": "32 bytes, base64url: the ATTEST nonce",
                        },
                        "selection": {
                            "type": "integer",
                            "description": "the ATTEST selection mask",
                        },
                        "expires": {"type": "number", "description": "seconds since the epoch"},
                        "status": {"enum": ["waiting", "complete", "used", "expired"]},
                        "accept": {"type": "array", "items": {"type": "string"}},
                        "result": {"type": "string", "description": "the EAR: a JWT signed ES256"},
                        "outcome": {"enum": ["affirming", "warning", "contraindicated"]},
                    },
                },
            },
        },
    }
