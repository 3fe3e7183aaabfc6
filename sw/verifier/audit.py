"""What the registry records beside its tables: the audit log's rows and the sessions' results.

Both are JSON of bounded values (an error message is cut to :data:`MAX_AUDIT_ERROR`
characters); kinds and outcomes are plain strings so a person can query the log with sqlite3 or
psql.  Everything read back is checked, so a damaged registry raises
:class:`~mchsm.sw.errors.StoreError` instead of a ``TypeError``.
"""

from __future__ import annotations

import json
from typing import Any

from mchsm.sw.errors import EvidenceError, StoreError, VerifierError

from .records import AttestationReport, AuditEntry, TaskVerdict, Verdict

__all__ = [
    "ACCEPTED_DETAIL",
    "KIND_ATTEST",
    "KIND_KEK_ROTATE",
    "KIND_REGISTER",
    "KIND_UPDATE_CANCEL",
    "KIND_UPDATE_CONFIRM",
    "KIND_UPDATE_PREPARE",
    "MAX_AUDIT_ERROR",
    "OUTCOME_FAILED",
    "OUTCOME_OK",
    "OUTCOME_RECOVERED",
    "OUTCOME_REISSUED",
    "OUTCOME_REJECTED",
    "OUTCOME_TRUSTED",
    "audit_entry",
    "decode_result",
    "result_body",
    "to_json",
]

#: characters of an error message kept in an audit row
MAX_AUDIT_ERROR = 240

# Audit kinds and outcomes: plain strings so a person can query the log with sqlite3 or psql.
KIND_REGISTER = "register"
KIND_UPDATE_PREPARE = "update.prepare"
KIND_UPDATE_CONFIRM = "update.confirm"
KIND_UPDATE_CANCEL = "update.cancel"
KIND_ATTEST = "attest"
KIND_KEK_ROTATE = "kek.rotate"
OUTCOME_OK = "ok"  #: registration, update prepared or confirmed, KEK rotated
OUTCOME_REISSUED = "reissued"  #: the outstanding authorisation handed out again
OUTCOME_TRUSTED = "trusted"  #: evidence verified, every selected task trusted
OUTCOME_FAILED = "failed"  #: evidence verified, at least one selected task failed
OUTCOME_REJECTED = "rejected"  #: the request or the evidence was refused (error raised)
OUTCOME_RECOVERED = "recovered"  #: an update confirmed by evidence instead of its lost ack

#: compact JSON, the form of every detail and result the registry stores
to_json = json.JSONEncoder(separators=(",", ":")).encode
#: the detail of an accepted attestation's audit row, filled in per attempt without a dict
ACCEPTED_DETAIL = '{"sel":%d,"ok":%d,"ctr":%d,"failed":[%s],"nonce":"%s"}'


def audit_entry(r: tuple[Any, ...]) -> AuditEntry:
    """An audit row as the store returns it, checked field by field."""
    try:
        detail = json.loads(r[6])
        if not isinstance(detail, dict):
            raise StoreError("the registry is damaged: an audit row's detail is not an object")
        return AuditEntry(
            id=int(r[0]),
            time=float(r[1]),
            dev_id=bytes(r[2]) if r[2] is not None else None,
            kind=str(r[3]),
            ctx=int(r[4]) if r[4] is not None else None,
            outcome=str(r[5]),
            detail=detail,
        )
    except (TypeError, ValueError):
        raise StoreError("the registry is damaged: an audit row does not decode") from None


def result_body(result: AttestationReport | VerifierError) -> str:
    """The stored outcome of a session's attempt: JSON of bounded values."""
    if isinstance(result, AttestationReport):
        return to_json(
            {
                "ctr": result.ctr,
                "sel": result.sel,
                "ok": result.ok,
                "tasks": [[v.ctx, v.name, v.verdict.value] for v in result.verdicts.values()],
                "recovered": list(result.recovered),
                "pending": list(result.pending),
            }
        )
    reason = getattr(result, "reason", "rejected")
    tasks = getattr(result, "tasks", {})
    return to_json(
        {
            "error": str(result)[:MAX_AUDIT_ERROR],
            "reason": reason,
            "names": [[c, n] for c, n in sorted(tasks.items())],
        }
    )


def decode_result(body: str, dev_id: bytes) -> AttestationReport | EvidenceError:
    """What :func:`result_body` stored, back as the report or the error."""
    try:
        d = json.loads(body)
        if "error" in d:
            error = EvidenceError(str(d["error"]), str(d["reason"]))
            error.tasks = {int(c): str(n) for c, n in d.get("names", [])}
            return error
        verdicts = {
            int(ctx): TaskVerdict(int(ctx), str(name), Verdict(verdict))
            for ctx, name, verdict in d["tasks"]
        }
        report = AttestationReport.make(
            dev_id,
            int(d["ctr"]),
            int(d["sel"]),
            int(d["ok"]),
            verdicts,
            tuple(int(c) for c in d["recovered"]),
        )
        report.__dict__["pending"] = tuple(int(c) for c in d["pending"])
        return report
    except (TypeError, ValueError, KeyError):
        raise StoreError("the registry is damaged: a session result does not decode") from None
