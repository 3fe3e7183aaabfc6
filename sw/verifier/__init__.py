"""The remote verifier: device registry, attestation checks and code updates.

A subpackage of small modules, each with one job:

- :mod:`.facade`: :class:`Verifier`, the API the demo, the CLI and the bench use: challenges,
  sessions and batched checks on top of :mod:`.updates` (devices, tasks, updates), on top of
  :mod:`.core` (the store opened under its KEK, the caches);
- :mod:`.opening`: the store for a location, its schema created, migrated or checked;
- :mod:`.audit`: the audit rows and the sessions' stored results;
- :mod:`.args`: the checks of every argument of that API, before any work;
- :mod:`.check`: the check of one attestation, a function that returns its result;
- :mod:`.store`, :mod:`.sqlite`, :mod:`.postgres`: every SQL statement, over a SQLite file or a
  PostgreSQL database shared by many verifier processes;
- :mod:`.schema`, :mod:`.migrations`: the one versioned schema both stores use;
- :mod:`.keys`: root keys wrapped at rest under a key-encryption key;
- :mod:`.localpg`: a throwaway PostgreSQL server for tests and the bench.

``docs/verifier.md`` describes the stores, the keys at rest, the guarantees and the limits.
"""

from __future__ import annotations

from .check import RECOVERY_LIMIT
from .facade import (
    ATT_KEY_CACHE,
    MAX_BATCH,
    MAX_IMAGE,
    MAX_NAME,
    MAX_TASK_DATA,
    PURGE_EVERY,
    Verifier,
    open_store,
)
from .records import (
    Attempt,
    AttestationReport,
    AuditEntry,
    Challenge,
    DeviceRecord,
    PendingUpdate,
    SessionState,
    TaskRecord,
    TaskVerdict,
    UpdatePackage,
    Verdict,
)
from .schema import SCHEMA_VERSION

__all__ = [
    "ATT_KEY_CACHE",
    "MAX_BATCH",
    "MAX_IMAGE",
    "MAX_NAME",
    "MAX_TASK_DATA",
    "PURGE_EVERY",
    "RECOVERY_LIMIT",
    "SCHEMA_VERSION",
    "Attempt",
    "AttestationReport",
    "AuditEntry",
    "Challenge",
    "DeviceRecord",
    "PendingUpdate",
    "SessionState",
    "TaskRecord",
    "TaskVerdict",
    "UpdatePackage",
    "Verdict",
    "Verifier",
    "open_store",
]
