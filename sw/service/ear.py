"""Attestation results as EAR (EAT Attestation Results, draft-ietf-rats-ear) JWTs, ES256.

One EAR per session: the device (``ueid`` and ``ear.mchsm.device-id``), the nonce (``eat_nonce``),
the verifier (``iss``, ``ear.verifier-id``) and one submodule per selected task, keyed by the
task's name, with its ``ear.status`` and the AR4SI trust claims behind it:

=====================================  ===============  =====================================
what the verifier found                ``ear.status``   trust vector
=====================================  ===============  =====================================
task OK                                affirming        instance-identity 2, executables 2
task OK, an update to it authorised    warning          instance-identity 2, executables 32
but not confirmed
task not OK (modified, not loaded,     contraindicated  instance-identity 2, executables 96
anomaly)
tag does not verify                    contraindicated  instance-identity 99, executables 99
counter not above the last accepted    contraindicated  instance-identity 96, executables 0
wrong selection, malformed evidence    contraindicated  instance-identity 0, executables 1
=====================================  ===============  =====================================

Signed with ``cryptography`` (ECDSA P-256, SHA-256, the signature as r || s per RFC 7518); the
public key is published as a JWKS (RFC 7517) with its RFC 7638 thumbprint as ``kid``, so any
JOSE library verifies a result.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from mchsm.sw.errors import EvidenceError, ServiceError
from mchsm.sw.verifier import AttestationReport, Verdict

__all__ = [
    "EAR_PROFILE",
    "STATUS_AFFIRMING",
    "STATUS_CONTRAINDICATED",
    "STATUS_WARNING",
    "EarSigner",
    "ear_claims",
    "verdict_of",
]

#: the EAR profile Veraison and the EAR libraries (Go, Rust, C, Python) emit and check
EAR_PROFILE = "tag:github.com,2023:veraison/ear"
#: the appraisal policy: a task is trusted iff the HSM measured its registered reference
POLICY_ID = "urn:mchsm:policy:reference-values:1"
STATUS_AFFIRMING = "affirming"
STATUS_WARNING = "warning"
STATUS_CONTRAINDICATED = "contraindicated"
_ORDER = {STATUS_AFFIRMING: 0, STATUS_WARNING: 1, STATUS_CONTRAINDICATED: 2}

_TRUSTED = {"instance-identity": 2, "executables": 2}
_SUPERSEDED = {"instance-identity": 2, "executables": 32}
_FAILED = {"instance-identity": 2, "executables": 96}
_REJECTED = {
    "signature": {"instance-identity": 99, "executables": 99},
    "replay": {"instance-identity": 96, "executables": 0},
    "selection": {"instance-identity": 0, "executables": 1},
    "malformed": {"instance-identity": 0, "executables": 1},
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _submod_key(names: dict[int, str], ctx: int) -> str:
    """A task's submodule name: its name, unless another selected task has the same name (the
    registry does not forbid it), then ``name@ctx``; a task without a name is ``ctx<N>``."""
    name = names.get(ctx, "")
    if not name:
        return f"ctx{ctx}"
    if sum(1 for n in names.values() if n == name) > 1:
        return f"{name}@{ctx}"
    return name


def ear_claims(
    *,
    dev_id: bytes,
    nonce: bytes,
    sel: int,
    result: AttestationReport | EvidenceError,
    issued: float,
    ttl: float,
    issuer: str,
    build: str,
    session: str,
) -> dict[str, Any]:
    """The EAR claims-set of one session's outcome (see the module's table)."""
    submods: dict[str, Any] = {}
    if isinstance(result, AttestationReport):
        names = {c: v.name for c, v in result.verdicts.items() if v.verdict is not Verdict.UNKNOWN}
        pending = set(result.pending)
        for ctx, v in result.verdicts.items():
            if v.verdict is Verdict.UNKNOWN:
                continue
            if v.verdict is Verdict.FAILED:
                status, vector = STATUS_CONTRAINDICATED, _FAILED
            elif ctx in pending:
                status, vector = STATUS_WARNING, _SUPERSEDED
            else:
                status, vector = STATUS_AFFIRMING, _TRUSTED
            submods[_submod_key(names, ctx)] = {
                "ear.status": status,
                "ear.trustworthiness-vector": vector,
                "ear.appraisal-policy-id": POLICY_ID,
                "ear.mchsm.context": ctx,
            }
        extra: dict[str, Any] = {"ear.mchsm.counter": result.ctr}
        if result.recovered:
            extra["ear.mchsm.recovered"] = list(result.recovered)
    else:
        reason = getattr(result, "reason", "signature")
        vector = _REJECTED.get(reason, _REJECTED["signature"])
        names = dict(getattr(result, "tasks", {}) or {})
        for ctx in range(1, 33):
            if sel >> (ctx - 1) & 1:
                submods[_submod_key(names, ctx)] = {
                    "ear.status": STATUS_CONTRAINDICATED,
                    "ear.trustworthiness-vector": vector,
                    "ear.appraisal-policy-id": POLICY_ID,
                    "ear.mchsm.context": ctx,
                }
        extra = {"ear.mchsm.rejected": reason, "ear.mchsm.problem": str(result)[:240]}
    return {
        "eat_profile": EAR_PROFILE,
        "iat": int(issued),
        "exp": int(issued + ttl),
        "iss": issuer,
        "jti": session,
        "ear.verifier-id": {"developer": "mchsm", "build": build},
        "eat_nonce": b64url(nonce),
        "ueid": b64url(b"\x01" + dev_id),  # EAT UEID of type RAND: our device ids are random
        "ear.mchsm.device-id": dev_id.hex(),
        "ear.mchsm.selection": sel,
        **extra,
        "submods": submods,
    }


def overall(claims: dict[str, Any]) -> str:
    """The least favourable status of the submodules (contraindicated if there are none)."""
    statuses = [s["ear.status"] for s in claims.get("submods", {}).values()]
    if not statuses:
        return STATUS_CONTRAINDICATED
    return str(max(statuses, key=lambda s: _ORDER.get(s, 2)))


def verdict_of(status: str) -> Verdict:
    """The verifier's verdict behind a submodule status (warning is a trusted task)."""
    return Verdict.FAILED if status == STATUS_CONTRAINDICATED else Verdict.TRUSTED


class EarSigner:
    """Signs EAR claims-sets as compact JWS (ES256) with one P-256 key."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ServiceError("the EAR signing key must be an EC P-256 key (ES256)")
        self._key = key
        numbers = key.public_key().public_numbers()
        self._jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        }
        # RFC 7638: SHA-256 of the required members, lexicographic, no whitespace
        canonical = json.dumps(self._jwk, sort_keys=True, separators=(",", ":")).encode()
        self.kid = b64url(hashlib.sha256(canonical).digest())
        header = {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        self._header = b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
        self._ecdsa = ec.ECDSA(hashes.SHA256())

    def jwks(self) -> dict[str, Any]:
        """The public key as a JWK Set, for the well-known URL."""
        return {"keys": [{**self._jwk, "use": "sig", "alg": "ES256", "kid": self.kid}]}

    def sign(self, claims: dict[str, Any]) -> str:
        """The compact JWS of ``claims``."""
        payload = json.dumps(claims, separators=(",", ":")).encode()
        signing_input = self._header + b64url(payload)
        r, s = decode_dss_signature(self._key.sign(signing_input.encode("ascii"), self._ecdsa))
        return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
