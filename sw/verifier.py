"""The remote verifier: device registry, attestation checks and code updates.

This is the verifier of ``docs/protocol.md`` sections 2, 5 and 6.  It provisions devices (makes
their root keys), authorises and confirms code updates, issues single-use nonces and turns the
44-byte evidence of an ``ATTEST`` into a per-task verdict.  Every message layout and primitive
comes from :mod:`mchsm.sw.protocol`; nothing is rebuilt here.

The registry is one SQLite file, so that a restart loses nothing: devices, installed references,
pending updates, used nonces, the last accepted counter of every device and the audit log all
live in it.  The file is opened in WAL mode with ``synchronous=NORMAL``: a committed transaction
survives a crash of this process, and the throughput stays high because a commit does not wait
for the disk.  The price is that a power failure or OS crash can lose the last few commits; a
nonce consumed in that window is fresh again, and the evidence that consumed it could be
presented once more.  A deployment that cannot accept that needs ``synchronous=FULL`` (an fsync
per verification; not offered here).

The hot path (:meth:`Verifier.verify`) is one write transaction of primary-key lookups only: it
consumes the nonce, reads the device with its tasks, stores the counter and appends an audit row.
Nothing in it scans a table, so its cost does not grow with the fleet.  A busy verifier uses
:meth:`Verifier.verify_many` instead: the same checks and writes for every attempt, but one
transaction (one commit, one WAL append) for a whole batch, with the reads of the batch grouped
into ``IN (...)`` queries and the writes into ``executemany``.  Both keep small in-memory caches
of *pure functions* of registry values only (K_att by root key, D by references), which can be
missed but never be stale, so several verifiers may still share one file.

.. warning::
   Root keys are stored **in the clear** in the registry file.  Whoever can read the file can
   impersonate every device in it, forge evidence and authorise any code.  The file is created
   readable by its owner only (mode 0600), but a production verifier would keep the root keys
   wrapped by a KMS or an HSM and unwrap them per use.
"""

from __future__ import annotations

import enum
import functools
import itertools
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from mchsm.constants import (
    DEFAULT_CONTEXTS,
    DEVICE_ID_SIZE,
    MAX_CONTEXTS,
    NONCE_SIZE,
    ROOT_KEY_SIZE,
)
from mchsm.sw import protocol
from mchsm.sw.errors import AttestationError, UnknownDeviceError, UpdateError, VerifierError
from mchsm.sw.protocol import Evidence, UpdateAck, UpdateAuth

__all__ = [
    "ATT_KEY_CACHE",
    "PURGE_EVERY",
    "SCHEMA_VERSION",
    "Attempt",
    "AttestationReport",
    "AuditEntry",
    "Challenge",
    "DeviceRecord",
    "TaskRecord",
    "TaskVerdict",
    "UpdatePackage",
    "Verdict",
    "Verifier",
]

#: version of the registry schema; a file with a newer one is refused, an older one is migrated
SCHEMA_VERSION = 1
#: challenges between two opportunistic purges of expired nonces
PURGE_EVERY = 1024
#: at most this many expired nonces are deleted by one opportunistic purge (bounds its latency)
PURGE_BATCH = 16 * PURGE_EVERY
#: SQLite page cache per connection, in KiB: keeps the B-tree interior pages of a large fleet hot
CACHE_KIB = 64 * 1024
#: WAL pages between automatic checkpoints.  SQLite's default (1000) checkpoints, with an fsync,
#: every ~250 verifications; 10000 (~40 MB of WAL) checkpoints ten times less often, and each
#: checkpoint writes a hot page (audit tail, a busy device) once for many commits.
WAL_AUTOCHECKPOINT = 10_000
#: bytes of WAL kept after a checkpoint (the rest is truncated)
WAL_SIZE_LIMIT = 64 * 1024 * 1024

#: K_att kept per verifier, by root key: a hit saves deriving it (an HMAC) on every verify.
#: 65536 entries are a few MB; a larger fleet still verifies, deriving the keys it misses.
ATT_KEY_CACHE = 1 << 16
#: D = H(R[i] for i in sel) kept per (sel, references); a fleet runs few distinct firmware sets
DIGEST_CACHE = 4096
#: shared TaskVerdict objects kept (a report of 8 tasks would otherwise build 8 every time)
VERDICT_CACHE = 4096
#: keys per ``IN (...)`` lookup of verify_many, well under SQLite's limit on bound variables
_IN_CHUNK = 500

_U32_MAX = 0xFFFF_FFFF

# Audit kinds and outcomes: plain strings in the file so a person can query it with sqlite3.
KIND_REGISTER = "register"
KIND_UPDATE_PREPARE = "update.prepare"
KIND_UPDATE_CONFIRM = "update.confirm"
KIND_ATTEST = "attest"
OUTCOME_OK = "ok"  #: registration, update prepared or confirmed
OUTCOME_TRUSTED = "trusted"  #: evidence verified, every selected task trusted
OUTCOME_FAILED = "failed"  #: evidence verified, at least one selected task failed
OUTCOME_REJECTED = "rejected"  #: the request or the evidence was refused (error raised)
OUTCOME_RECOVERED = "recovered"  #: an update confirmed by evidence instead of its lost ack
#: at most this many combinations of pending references are tried for a lost-ack recovery
RECOVERY_LIMIT = 256

_SCHEMA: tuple[str, ...] = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE devices (
        dev_id BLOB PRIMARY KEY,
        root_key BLOB NOT NULL,
        contexts INTEGER NOT NULL,
        name TEXT NOT NULL,
        last_ctr INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE tasks (
        dev_id BLOB NOT NULL,
        ctx INTEGER NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        reference BLOB NOT NULL,
        PRIMARY KEY (dev_id, ctx)
    ) WITHOUT ROWID""",
    """CREATE TABLE pending_updates (
        dev_id BLOB NOT NULL,
        ctx INTEGER NOT NULL,
        old INTEGER NOT NULL,
        new INTEGER NOT NULL,
        reference BLOB NOT NULL,
        name TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (dev_id, ctx, new)
    ) WITHOUT ROWID""",
    """CREATE TABLE nonces (
        nonce BLOB PRIMARY KEY,
        dev_id BLOB NOT NULL,
        sel INTEGER NOT NULL,
        expires REAL NOT NULL,
        used INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    # the purge deletes by expiry; times only grow, so this index is appended at its right edge
    "CREATE INDEX nonces_expires ON nonces (expires)",
    """CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        dev_id BLOB,
        kind TEXT NOT NULL,
        ctx INTEGER,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL
    )""",
    "CREATE INDEX audit_device ON audit (dev_id, id)",
)

#: statements that take the schema from version ``n`` to ``n + 1``
_MIGRATIONS: dict[int, tuple[str, ...]] = {}

_USE_NONCE = "UPDATE nonces SET used = 1 WHERE nonce = ?"
_SET_COUNTER = "UPDATE devices SET last_ctr = ? WHERE dev_id = ?"
#: nonces, and devices with their installed tasks, many at once: append "(?, ?, ...)"
_NONCES_IN = "SELECT nonce, dev_id, sel, expires, used FROM nonces WHERE nonce IN "
_DEVICES_WITH_TASKS_IN = (
    "SELECT d.dev_id, d.root_key, d.last_ctr, t.ctx, t.name, t.reference, t.version "
    "FROM devices AS d LEFT JOIN tasks AS t ON t.dev_id = d.dev_id WHERE d.dev_id IN "
)
_AUDIT_INSERT = (
    "INSERT INTO audit (time, dev_id, kind, ctx, outcome, detail) VALUES (?, ?, ?, ?, ?, ?)"
)


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


class Verdict(enum.Enum):
    """What one attestation says about one registered task."""

    TRUSTED = "trusted"  #: selected, and the HSM reported it OK
    FAILED = "failed"  #: selected, and the HSM reported it not OK (modified, not loaded, anomaly)
    UNKNOWN = "unknown"  #: not selected by this challenge: the evidence says nothing about it


@dataclass(frozen=True)
class DeviceRecord:
    """A registered device.  ``root_key`` is kept out of ``repr`` so it never lands in a log."""

    dev_id: bytes
    root_key: bytes = field(repr=False)
    contexts: int
    name: str


@dataclass(frozen=True)
class TaskRecord:
    """The installed (confirmed) task of one context: what attestation expects to find."""

    ctx: int
    name: str
    version: int
    reference: bytes


@dataclass(frozen=True)
class UpdatePackage:
    """What goes to the device: the authorisation for ``UPDATE`` and the image to load."""

    dev_id: bytes
    name: str
    auth: UpdateAuth
    image: bytes = field(repr=False)


@dataclass(frozen=True)
class Challenge:
    """A fresh nonce for one device and selection; valid once, until ``expires``."""

    dev_id: bytes
    nonce: bytes
    sel: int
    expires: float


@dataclass(frozen=True)
class TaskVerdict:
    """The verdict on one registered task, with its name so a report reads on its own."""

    ctx: int
    name: str
    verdict: Verdict


@dataclass(frozen=True)
class AttestationReport:
    """The outcome of evidence that verified: a verdict for every registered task."""

    dev_id: bytes
    ctr: int
    sel: int
    ok: int
    verdicts: dict[int, TaskVerdict]
    #: contexts whose pending update this evidence proved installed (its ack had been lost)
    recovered: tuple[int, ...] = ()

    @property
    def all_trusted(self) -> bool:
        """Every registered task was selected and is trusted.

        False when there is no verdict at all: evidence that vouches for nothing must not read
        as a green light.
        """
        return bool(self.verdicts) and all(
            v.verdict is Verdict.TRUSTED for v in self.verdicts.values()
        )

    @property
    def failed(self) -> list[int]:
        """Contexts whose task was selected and reported not OK, ascending."""
        return sorted(c for c, v in self.verdicts.items() if v.verdict is Verdict.FAILED)


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log.  ``detail`` is the decoded JSON object of the row."""

    id: int
    time: float
    dev_id: bytes | None
    kind: str
    ctx: int | None
    outcome: str
    detail: dict[str, Any]


_json = json.JSONEncoder(separators=(",", ":")).encode


class _Refs(dict[int, bytes]):
    """Context -> reference, with 0^32 for a context never updated (what the HSM holds there)."""

    def __missing__(self, ctx: int) -> bytes:
        return protocol.ZERO_DIGEST


def _hex(dev_id: bytes) -> str:
    return dev_id.hex() if isinstance(dev_id, bytes | bytearray) else repr(dev_id)


#: one attestation to verify: (dev_id, nonce, evidence as an Evidence or its 44 wire bytes)
Attempt = tuple[bytes, bytes, Evidence | bytes]


def _key(value: object) -> bytes | None:
    """``value`` as a lookup key of a BLOB column, or None if it cannot be one."""
    return bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None


def _chunks(keys: set[bytes]) -> Iterator[list[bytes]]:
    items = list(keys)
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


@functools.lru_cache(maxsize=64)
def _in(prefix: str, count: int) -> str:
    """``prefix`` followed by an ``IN`` list of ``count`` placeholders (built once per size)."""
    return f"{prefix}({','.join('?' * count)})"


@functools.lru_cache(maxsize=1024)
def _contexts(sel: int) -> tuple[int, ...]:
    """The contexts a selection mask names, ascending (the order D hashes them in)."""
    return tuple(ctx for ctx in range(1, MAX_CONTEXTS + 1) if sel >> (ctx - 1) & 1)


class _Device:
    """One device's registry rows as a verification reads them: root key, last accepted
    counter, and the reference, name and version of every installed task."""

    __slots__ = ("last_ctr", "names", "refs", "root", "versions")

    def __init__(self, root: bytes, last_ctr: int) -> None:
        self.root = root
        self.last_ctr = last_ctr
        self.refs = _Refs()
        self.names: dict[int, str] = {}
        self.versions: dict[int, int] = {}


# ---------------------------------------------------------------------------------------------
# The verifier
# ---------------------------------------------------------------------------------------------


class Verifier:
    """Device registry, update authority and attestation verifier over one SQLite file.

    Parameters
    ----------
    path : str or os.PathLike
        The registry file; created (mode 0600) if it does not exist.
    nonce_ttl : float
        Seconds a challenge stays valid.
    clock : callable
        Returns the current time in seconds; injectable so tests can expire nonces.

    One instance is one SQLite connection: use it from one thread.  Several processes may open
    the same file; every change is one ``BEGIN IMMEDIATE`` transaction, so a nonce is consumed
    and a counter advanced by exactly one of them.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        nonce_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not nonce_ttl > 0:
            raise ValueError(f"nonce_ttl must be positive, not {nonce_ttl!r}")
        self.path = os.fspath(path)
        self.nonce_ttl = float(nonce_ttl)
        self._clock = clock
        self._challenges = 0
        self._conn = _open(self.path)
        # caches of pure functions of registry values: they can never be stale, only missed
        self._att_key = functools.lru_cache(maxsize=ATT_KEY_CACHE)(protocol.derive_att_key)
        self._digests: dict[tuple[Any, ...], bytes] = {}
        # shared, immutable TaskVerdicts by (ctx, name), one dict per kind: they repeat from one
        # report to the next (and hashing a Verdict would run Python code, a tuple does not)
        self._trusted: dict[tuple[int, str], TaskVerdict] = {}
        self._failed: dict[tuple[int, str], TaskVerdict] = {}
        self._unknown: dict[tuple[int, str], TaskVerdict] = {}

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the registry; everything committed is in the file."""
        self._conn.close()
        self._att_key.cache_clear()  # derived keys do not outlive the verifier
        self._digests.clear()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the write lock is taken up front so check-then-set is atomic
        against other processes using the same file."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _log(
        self,
        dev_id: bytes | None,
        kind: str,
        ctx: int | None,
        outcome: str,
        detail: dict[str, Any],
        now: float | None = None,
    ) -> None:
        """Append an audit row inside the caller's transaction, so the log and the change it
        records commit together."""
        self._conn.execute(
            _AUDIT_INSERT,
            (
                self._clock() if now is None else now,
                dev_id if isinstance(dev_id, bytes | bytearray) else None,
                kind,
                ctx,
                outcome,
                _json(detail),
            ),
        )

    # -- devices ------------------------------------------------------------------------------

    def register_device(
        self, contexts: int = DEFAULT_CONTEXTS, dev_id: bytes | None = None, name: str = ""
    ) -> DeviceRecord:
        """Add a device and make its root key; the caller hands both to ``PROVISION`` once."""
        if not isinstance(contexts, int) or not 1 <= contexts <= MAX_CONTEXTS:
            raise ValueError(f"contexts must be an integer in 1..{MAX_CONTEXTS}, not {contexts!r}")
        if dev_id is None:
            dev_id = secrets.token_bytes(DEVICE_ID_SIZE)
        dev_id = bytes(dev_id)
        if len(dev_id) != DEVICE_ID_SIZE:
            raise ValueError(f"a device id is {DEVICE_ID_SIZE} bytes, not {len(dev_id)}")
        record = DeviceRecord(dev_id, secrets.token_bytes(ROOT_KEY_SIZE), contexts, name)
        now = self._clock()
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT INTO devices (dev_id, root_key, contexts, name, last_ctr, created) "
                    "VALUES (?, ?, ?, ?, 0, ?)",
                    (dev_id, record.root_key, contexts, name, now),
                )
            except sqlite3.IntegrityError:
                raise VerifierError(f"device {dev_id.hex()} is already registered") from None
            self._log(
                dev_id, KIND_REGISTER, None, OUTCOME_OK, {"contexts": contexts, "name": name}, now
            )
        return record

    def device(self, dev_id: bytes) -> DeviceRecord:
        """The registered device ``dev_id``; :class:`UnknownDeviceError` if there is none."""
        row = self._conn.execute(
            "SELECT dev_id, root_key, contexts, name FROM devices WHERE dev_id = ?", (dev_id,)
        ).fetchone()
        if row is None:
            raise UnknownDeviceError(f"device {_hex(dev_id)} is not registered")
        return DeviceRecord(bytes(row[0]), bytes(row[1]), row[2], row[3])

    def devices(self) -> list[DeviceRecord]:
        """Every registered device, ordered by id."""
        rows = self._conn.execute(
            "SELECT dev_id, root_key, contexts, name FROM devices ORDER BY dev_id"
        )
        return [DeviceRecord(bytes(r[0]), bytes(r[1]), r[2], r[3]) for r in rows]

    def tasks(self, dev_id: bytes) -> list[TaskRecord]:
        """The installed tasks of a device, by context.  Pending updates are not tasks yet."""
        self.device(dev_id)
        rows = self._conn.execute(
            "SELECT ctx, name, version, reference FROM tasks WHERE dev_id = ? ORDER BY ctx",
            (dev_id,),
        )
        return [TaskRecord(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    # -- updates ------------------------------------------------------------------------------

    def register_task(self, dev_id: bytes, ctx: int, name: str, image: bytes) -> UpdatePackage:
        """Install a task: the protocol has no separate "set reference", only an update from
        version 0, so this is :meth:`prepare_update` with a name."""
        return self.prepare_update(dev_id, ctx, image, name=name)

    def prepare_update(
        self, dev_id: bytes, ctx: int, image: bytes, *, name: str | None = None
    ) -> UpdatePackage:
        """Authorise moving context ``ctx`` to ``image`` and remember the update as pending.

        The old version is the confirmed one; the new one is above every version confirmed or
        already authorised, so two authorisations never name the same transition target and
        the ack of each identifies it.  ``name`` defaults to the task's current name.
        """
        image = bytes(image)
        now = self._clock()
        with self._write() as conn:
            row = conn.execute(
                "SELECT root_key, contexts FROM devices WHERE dev_id = ?", (dev_id,)
            ).fetchone()
            if row is None:
                raise UnknownDeviceError(f"device {_hex(dev_id)} is not registered")
            root, contexts = bytes(row[0]), row[1]
            if not isinstance(ctx, int) or not 1 <= ctx <= contexts:
                raise UpdateError(
                    f"context {ctx!r} does not exist on device {dev_id.hex()} "
                    f"(it has contexts 1..{contexts})"
                )
            current = conn.execute(
                "SELECT version, name FROM tasks WHERE dev_id = ? AND ctx = ?", (dev_id, ctx)
            ).fetchone()
            old = current[0] if current else 0
            if name is None:
                name = current[1] if current else f"task{ctx}"
            highest = conn.execute(
                "SELECT max(new) FROM pending_updates WHERE dev_id = ? AND ctx = ?",
                (dev_id, ctx),
            ).fetchone()[0]
            new = max(old, highest or 0) + 1
            if new > _U32_MAX:
                raise UpdateError(f"context {ctx} has run out of versions (v' would be {new})")
            ref = protocol.reference(image)
            tag = protocol.hmac_sha256(
                protocol.derive_upd_key(root), protocol.upd_message(dev_id, ctx, old, new, ref)
            )
            conn.execute(
                "INSERT INTO pending_updates (dev_id, ctx, old, new, reference, name, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (dev_id, ctx, old, new, ref, name, now),
            )
            self._log(
                dev_id,
                KIND_UPDATE_PREPARE,
                ctx,
                OUTCOME_OK,
                {"old": old, "new": new, "reference": ref.hex(), "name": name},
                now,
            )
        auth = UpdateAuth(ctx=ctx, old=old, new=new, ref=ref, tag=tag)
        return UpdatePackage(dev_id=dev_id, name=name, auth=auth, image=image)

    def confirm(self, dev_id: bytes, ack: UpdateAck | bytes) -> TaskRecord:
        """Record a pending update as installed once the device's ack proves it.

        A failed ack leaves the pending update alone: a forgery from the network must not be
        able to cancel a genuine update.  Either way the attempt is audit-logged.
        """
        now = self._clock()
        failure: VerifierError | None = None
        record: TaskRecord | None = None
        with self._write() as conn:
            detail: dict[str, Any] = {}
            ctx: int | None = None
            try:
                if not isinstance(ack, UpdateAck):
                    try:
                        ack = UpdateAck.unpack(bytes(ack))
                    except ValueError as exc:
                        raise UpdateError(f"malformed update acknowledgement: {exc}") from None
                ctx = ack.ctx
                detail = {"new": ack.new}
                record = self._confirm(conn, dev_id, ack, detail, now)
            except VerifierError as exc:
                failure = exc
                detail["error"] = str(exc)
                self._log(dev_id, KIND_UPDATE_CONFIRM, ctx, OUTCOME_REJECTED, detail, now)
            else:
                self._log(dev_id, KIND_UPDATE_CONFIRM, ctx, OUTCOME_OK, detail, now)
        if failure is not None:
            raise failure
        assert record is not None
        return record

    def _confirm(
        self,
        conn: sqlite3.Connection,
        dev_id: bytes,
        ack: UpdateAck,
        detail: dict[str, Any],
        now: float,
    ) -> TaskRecord:
        row = conn.execute("SELECT root_key FROM devices WHERE dev_id = ?", (dev_id,)).fetchone()
        if row is None:
            raise UnknownDeviceError(f"device {_hex(dev_id)} is not registered")
        root = bytes(row[0])
        pending = conn.execute(
            "SELECT old, reference, name FROM pending_updates "
            "WHERE dev_id = ? AND ctx = ? AND new = ?",
            (dev_id, ack.ctx, ack.new),
        ).fetchone()
        if pending is None:
            current = conn.execute(
                "SELECT version FROM tasks WHERE dev_id = ? AND ctx = ?", (dev_id, ack.ctx)
            ).fetchone()
            hint = " (it is already confirmed)" if current and current[0] == ack.new else ""
            raise UpdateError(
                f"no pending update of context {ack.ctx} to version {ack.new} for device "
                f"{dev_id.hex()}{hint}"
            )
        old, ref, name = pending[0], bytes(pending[1]), pending[2]
        detail.update(old=old, reference=ref.hex(), name=name)
        expected = protocol.hmac_sha256(
            protocol.derive_upd_key(root), protocol.ack_message(dev_id, ack.ctx, old, ack.new, ref)
        )
        if not protocol.tags_equal(expected, ack.ack):
            raise UpdateError(
                f"acknowledgement of context {ack.ctx} version {ack.new} does not verify: "
                "forged, or from another device"
            )
        conn.execute(
            "INSERT OR REPLACE INTO tasks (dev_id, ctx, name, version, reference) "
            "VALUES (?, ?, ?, ?, ?)",
            (dev_id, ack.ctx, name, ack.new, ref),
        )
        conn.execute(
            "DELETE FROM pending_updates WHERE dev_id = ? AND ctx = ? AND new <= ?",
            (dev_id, ack.ctx, ack.new),
        )
        return TaskRecord(ack.ctx, name, ack.new, ref)

    # -- attestation --------------------------------------------------------------------------

    def challenge(self, dev_id: bytes, sel: int | None = None) -> Challenge:
        """Issue a fresh single-use nonce for ``dev_id``; ``sel`` defaults to every installed
        task, because a verdict is only worth asking for where a reference exists."""
        now = self._clock()
        expires = now + self.nonce_ttl
        with self._write() as conn:
            row = conn.execute(
                "SELECT contexts FROM devices WHERE dev_id = ?", (dev_id,)
            ).fetchone()
            if row is None:
                raise UnknownDeviceError(f"device {_hex(dev_id)} is not registered")
            contexts = row[0]
            if sel is None:
                sel = 0
                for (ctx,) in conn.execute("SELECT ctx FROM tasks WHERE dev_id = ?", (dev_id,)):
                    sel |= 1 << (ctx - 1)
                if sel == 0:
                    raise VerifierError(
                        f"device {dev_id.hex()} has no installed task to attest; "
                        "install one or pass sel"
                    )
            elif not isinstance(sel, int) or not 0 < sel < 1 << contexts:
                raise VerifierError(
                    f"selection {sel!r} must be a non-empty mask of contexts 1..{contexts}"
                )
            nonce = secrets.token_bytes(NONCE_SIZE)
            conn.execute(
                "INSERT INTO nonces (nonce, dev_id, sel, expires, used) VALUES (?, ?, ?, ?, 0)",
                (nonce, dev_id, sel, expires),
            )
        self._challenges += 1
        if self._challenges % PURGE_EVERY == 0:
            self.purge_expired(limit=PURGE_BATCH)
        return Challenge(dev_id=dev_id, nonce=nonce, sel=sel, expires=expires)

    def purge_expired(self, *, limit: int | None = None) -> int:
        """Delete expired nonces (at most ``limit``); returns how many went.

        Safe for used ones too: a purged nonce is unknown, and an unknown nonce is rejected just
        like a used one.  Called every :data:`PURGE_EVERY` challenges so the table stays the
        size of the nonces in flight.
        """
        now = self._clock()
        with self._write() as conn:
            if limit is None:
                cur = conn.execute("DELETE FROM nonces WHERE expires <= ?", (now,))
            else:
                cur = conn.execute(
                    "DELETE FROM nonces WHERE nonce IN "
                    "(SELECT nonce FROM nonces WHERE expires <= ? LIMIT ?)",
                    (now, limit),
                )
            return cur.rowcount

    def verify(self, dev_id: bytes, nonce: bytes, evidence: Evidence | bytes) -> AttestationReport:
        """Check evidence against the challenge and the registry (protocol section 5, step 4).

        Any attempt consumes the nonce, whatever its outcome, so a rejected answer cannot be
        retried with a guess; a rejected attempt raises :class:`AttestationError` (or
        :class:`UnknownDeviceError`) after its audit row is committed.  This is
        :meth:`verify_many` of one attempt, so the two cannot drift apart.
        """
        result = self.verify_many([(dev_id, nonce, evidence)])[0]
        if isinstance(result, VerifierError):
            raise result
        return result

    def verify_many(self, attempts: Iterable[Attempt]) -> list[AttestationReport | VerifierError]:
        """Verify many ``(dev_id, nonce, evidence)`` attempts in one transaction (group commit).

        Each attempt gets exactly what :meth:`verify` would have done to it, in order: its nonce
        is consumed, its audit row appended, its counter checked against the counters accepted
        so far (earlier attempts of the same batch included).  A rejected attempt does not
        raise: its error takes its place in the returned list, beside the reports of the others.
        The batch is judged at one instant (one clock reading for expiry and the audit rows)
        and commits once, which is what makes it fast: a commit writes the changed pages to the
        WAL, and a batch writes each of them once instead of once per attempt.  Anything but a
        :class:`VerifierError` (a bug, a full disk) rolls the whole batch back and is raised;
        then no nonce of the batch is consumed.  The write lock is held for the whole batch, so
        keep batches to a few hundred attempts.
        """
        batch = list(attempts)
        if not batch:
            return []
        now = self._clock()
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = self._verify_batch(batch, now)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return results

    def _verify_batch(
        self, batch: list[Attempt], now: float
    ) -> list[AttestationReport | VerifierError]:
        """The body of :meth:`verify_many`, inside its transaction.

        The nonces and devices of the whole batch are read with a few ``IN (...)`` queries up
        front, the checks run against that snapshot (which the batch itself keeps current: a
        nonce it consumes, a counter it accepts) and the writes are buffered and issued with
        ``executemany`` at the end.  Nobody else can write meanwhile (``BEGIN IMMEDIATE``).  The
        rare lost-ack recovery writes tasks and pending updates: it flushes the buffers first,
        writes like :meth:`verify` always did, and reloads that device.
        """
        conn = self._conn
        nonce_rows = self._load_nonces({k for _, n, _ in batch if (k := _key(n)) is not None})
        devices = self._load_devices({k for d, _, _ in batch if (k := _key(d)) is not None})
        used: list[tuple[bytes]] = []
        counters: dict[bytes, int] = {}
        audit: list[tuple[Any, ...]] = []

        def write(sql: str, rows: list[Any]) -> None:
            # executemany costs more than execute for a single row: the verify() case
            if len(rows) == 1:
                conn.execute(sql, rows[0])
            elif rows:
                conn.executemany(sql, rows)
            rows.clear()

        def flush() -> None:
            write(_USE_NONCE, used)
            write(_SET_COUNTER, [(c, d) for d, c in counters.items()])
            counters.clear()
            write(_AUDIT_INSERT, audit)

        results: list[AttestationReport | VerifierError] = []
        for dev_id, nonce, evidence in batch:
            nkey, dkey = _key(nonce), _key(dev_id)
            nonce_row: tuple[Any, ...] | None = None
            state = nonce_rows.get(nkey) if nkey is not None else None
            if state is not None:
                nonce_row = tuple(state)  # as it was before this attempt
                if not state[3]:
                    state[3] = 1  # consumed whatever the outcome below
                    used.append((nkey,))
            device = devices.get(dkey) if dkey is not None else None
            detail: dict[str, Any] = {}

            def pending(dkey: bytes | None = dkey) -> list[tuple[int, int, int, bytes, str]]:
                return conn.execute(
                    "SELECT ctx, old, new, reference, name FROM pending_updates WHERE dev_id = ?",
                    (dkey,),
                ).fetchall()

            try:
                report = self._check(
                    dev_id, nonce, evidence, nonce_row, device, now, detail, pending
                )
            except VerifierError as exc:
                results.append(exc)
                detail["error"] = str(exc)
                outcome = OUTCOME_REJECTED
            else:
                assert device is not None and dkey is not None
                results.append(report)
                counters[dkey] = report.ctr
                recovered = detail.pop("_recovered", None)
                if recovered:
                    flush()  # keeps the audit rows in the order of the attempts
                    for ctx, (old, new, ref, name) in recovered.items():
                        conn.execute(
                            "INSERT OR REPLACE INTO tasks (dev_id, ctx, name, version, reference) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (dkey, ctx, name, new, ref),
                        )
                        conn.execute(
                            "DELETE FROM pending_updates WHERE dev_id = ? AND ctx = ? AND new <= ?",
                            (dkey, ctx, new),
                        )
                        self._log(
                            dkey,
                            KIND_UPDATE_CONFIRM,
                            ctx,
                            OUTCOME_RECOVERED,
                            {
                                "old": old,
                                "new": new,
                                "reference": bytes(ref).hex(),
                                "name": name,
                                "by": "attestation",
                            },
                            now,
                        )
                    device = self._load_devices({dkey})[dkey]
                    devices[dkey] = device
                device.last_ctr = report.ctr
                failed = report.failed
                outcome = OUTCOME_FAILED if failed else OUTCOME_TRUSTED
                detail["failed"] = failed
            if isinstance(nonce, bytes | bytearray):
                detail["nonce"] = nonce.hex()
            audit.append(
                (
                    now,
                    dev_id if isinstance(dev_id, bytes | bytearray) else None,
                    KIND_ATTEST,
                    None,
                    outcome,
                    _json(detail),
                )
            )
        flush()
        return results

    def _load_nonces(self, nonces: set[bytes]) -> dict[bytes, list[Any]]:
        """nonce -> [dev_id, sel, expires, used] for those of ``nonces`` that exist."""
        out: dict[bytes, list[Any]] = {}
        for chunk in _chunks(nonces):
            sql = _in(_NONCES_IN, len(chunk))
            for nonce, *rest in self._conn.execute(sql, chunk):
                out[bytes(nonce)] = rest
        return out

    def _load_devices(self, dev_ids: set[bytes]) -> dict[bytes, _Device]:
        """The registered ones of ``dev_ids`` with their installed tasks."""
        devices: dict[bytes, _Device] = {}
        for chunk in _chunks(dev_ids):
            sql = _in(_DEVICES_WITH_TASKS_IN, len(chunk))
            for dev_id, root, last_ctr, ctx, name, ref, version in self._conn.execute(sql, chunk):
                device = devices.get(dev_id)
                if device is None:
                    device = devices[dev_id] = _Device(root, last_ctr)
                if ctx is not None:  # None: a device without tasks (the LEFT JOIN's filler)
                    device.refs[ctx] = ref
                    device.names[ctx] = name
                    device.versions[ctx] = version
        return devices

    def _select_digest(self, refs: Mapping[int, bytes], sel: int) -> bytes:
        """D for ``sel`` over ``refs``, remembered: a fleet runs few distinct sets of references,
        so most attestations find their D here instead of hashing up to a kilobyte again."""
        key = (sel, *[refs[ctx] for ctx in _contexts(sel)])
        digest = self._digests.get(key)
        if digest is None:
            digest = protocol.select_digest(refs if isinstance(refs, _Refs) else _Refs(refs), sel)
            if len(self._digests) >= DIGEST_CACHE:
                self._digests.clear()
            self._digests[key] = digest
        return digest

    def _check(
        self,
        dev_id: bytes,
        nonce: bytes,
        evidence: Evidence | bytes,
        nonce_row: tuple[Any, ...] | None,
        device: _Device | None,
        now: float,
        detail: dict[str, Any],
        pending: Callable[[], list[tuple[int, int, int, bytes, str]]] = list,
    ) -> AttestationReport:
        """Section 5 step 4 in order: the nonce, then the evidence, tag and counter.

        A tag that fails with the registered references is retried with pending updates of the
        selected contexts (protocol section 12, lost acknowledgements); a combination that
        verifies is returned in ``detail["_recovered"]`` for the caller to record.
        """
        if device is None:
            raise UnknownDeviceError(f"device {_hex(dev_id)} is not registered")
        if nonce_row is None:
            if not isinstance(nonce, bytes | bytearray) or len(nonce) != NONCE_SIZE:
                raise AttestationError(f"a nonce is {NONCE_SIZE} bytes; this is not one")
            raise AttestationError(
                "unknown nonce: this verifier never issued it, or it expired and was purged"
            )
        owner, challenge_sel, expires, used = nonce_row
        if owner != dev_id:
            raise AttestationError(
                f"nonce was issued for device {bytes(owner).hex()}, not {dev_id.hex()}"
            )
        if used:
            raise AttestationError("nonce already used: every challenge allows one attempt")
        if now >= expires:
            raise AttestationError(f"nonce expired {now - expires:.1f} s ago")
        if not isinstance(evidence, Evidence):
            try:
                evidence = Evidence.unpack(bytes(evidence))
            except ValueError as exc:
                raise AttestationError(f"malformed evidence: {exc}") from None
        sel, ok, ctr = evidence.sel, evidence.ok, evidence.ctr
        if not (0 <= ok <= _U32_MAX and 0 <= ctr <= _U32_MAX):
            raise AttestationError("malformed evidence: ok and ctr are u32 fields")
        detail.update(sel=sel, ok=ok, ctr=ctr)
        if sel != challenge_sel:
            raise AttestationError(
                f"evidence selects 0x{sel:x} but the challenge asked for 0x{challenge_sel:x}"
            )
        names = device.names
        k_att = self._att_key(device.root)

        def verifies(candidate: Mapping[int, bytes]) -> bool:
            digest = self._select_digest(candidate, sel)
            expected = protocol.hmac_sha256(
                k_att, protocol.att_message(dev_id, nonce, sel, ok, ctr, digest)
            )
            return protocol.tags_equal(expected, evidence.tag)

        if not verifies(device.refs):
            recovered = _recover(device.refs, device.versions, sel, pending(), verifies)
            if recovered is None:
                raise AttestationError(
                    "evidence tag does not verify: wrong device, forged, or references differ "
                    "from the registry"
                )
            detail["_recovered"] = recovered
            names = dict(names)
            for ctx, (_old, _new, _ref, name) in recovered.items():
                names[ctx] = name
        if ctr <= device.last_ctr:
            raise AttestationError(
                f"counter {ctr} is not above the last accepted {device.last_ctr}: replayed evidence"
            )
        verdicts: dict[int, TaskVerdict] = {}
        for key in sorted(names.items()):
            bit = 1 << (key[0] - 1)
            if not sel & bit:
                cache, verdict = self._unknown, Verdict.UNKNOWN
            elif ok & bit:
                cache, verdict = self._trusted, Verdict.TRUSTED
            else:
                cache, verdict = self._failed, Verdict.FAILED
            found = cache.get(key)
            if found is None:
                if len(cache) >= VERDICT_CACHE:
                    cache.clear()
                found = cache[key] = TaskVerdict(key[0], key[1], verdict)
            verdicts[key[0]] = found
        recovered = detail.get("_recovered")
        return AttestationReport(
            dev_id=dev_id,
            ctr=ctr,
            sel=sel,
            ok=ok,
            verdicts=verdicts,
            recovered=tuple(sorted(recovered)) if recovered else (),
        )

    # -- task keys ----------------------------------------------------------------------------

    def task_key(self, dev_id: bytes, ctx: int) -> bytes:
        """K_task of the installed task of ``ctx``: what the device's ``TASK_MAC`` uses while the
        task is in its reference state, so a relying party can check what the task sends."""
        root = self.device(dev_id).root_key
        row = self._conn.execute(
            "SELECT reference FROM tasks WHERE dev_id = ? AND ctx = ?", (dev_id, ctx)
        ).fetchone()
        if row is None:
            raise VerifierError(
                f"context {ctx} of device {dev_id.hex()} has no installed task, so no task key"
            )
        return protocol.derive_task_key(root, ctx, bytes(row[0]))

    def check_task_mac(self, dev_id: bytes, ctx: int, data: bytes, mac: bytes) -> bool:
        """Whether ``mac`` is the installed task's ``TASK_MAC`` of ``data`` (constant time)."""
        expected = protocol.hmac_sha256(self.task_key(dev_id, ctx), bytes(data))
        return protocol.tags_equal(expected, bytes(mac))

    # -- audit --------------------------------------------------------------------------------

    def audit(self, dev_id: bytes | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries, oldest first; with ``limit``, the newest ``limit`` of them."""
        where, args = ("WHERE dev_id = ?", [dev_id]) if dev_id is not None else ("", [])
        sql = (
            "SELECT id, time, dev_id, kind, ctx, outcome, detail FROM audit "
            f"{where} ORDER BY id DESC"
        )
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        rows = self._conn.execute(sql, args).fetchall()
        return [
            AuditEntry(
                id=r[0],
                time=r[1],
                dev_id=bytes(r[2]) if r[2] is not None else None,
                kind=r[3],
                ctx=r[4],
                outcome=r[5],
                detail=json.loads(r[6]),
            )
            for r in reversed(rows)
        ]


# ---------------------------------------------------------------------------------------------
# Opening and migrating the registry file
# ---------------------------------------------------------------------------------------------


def _recover(
    refs: Mapping[int, bytes],
    versions: Mapping[int, int],
    sel: int,
    pending: list[tuple[int, int, int, bytes, str]],
    verifies: Callable[[Mapping[int, bytes]], bool],
) -> dict[int, tuple[int, int, bytes, str]] | None:
    """Find pending updates (applicable from the registered version) that make the tag verify.

    Only the HSM can produce a tag under K_att, so a tag that verifies with a pending reference
    proves the device holds it: the update was installed and only its ack was lost.
    """
    options: dict[int, list[tuple[int, int, bytes, str]]] = {}
    for ctx, old, new, ref, name in pending:
        if sel >> (ctx - 1) & 1 and old == versions.get(ctx, 0):
            options.setdefault(ctx, []).append((old, new, bytes(ref), name))
    if not options:
        return None
    contexts = sorted(options)
    choices = [[None, *options[ctx]] for ctx in contexts]
    for n, combo in enumerate(itertools.product(*choices)):
        if n >= RECOVERY_LIMIT:
            break
        chosen = {ctx: c for ctx, c in zip(contexts, combo, strict=True) if c is not None}
        if not chosen:
            continue
        candidate = _Refs(refs)
        for ctx, (_old, _new, ref, _name) in chosen.items():
            candidate[ctx] = ref
        if verifies(candidate):
            return chosen
    return None


def _open(path: str) -> sqlite3.Connection:
    """Open (creating if needed) the registry, in WAL mode, at the current schema version."""
    if not os.path.exists(path):
        # create it owner-only before SQLite does, since it holds root keys in the clear
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise VerifierError(f"the registry {path!r} cannot use WAL journaling (got {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "schema_version" not in names:
            if names:
                raise VerifierError(f"{path!r} is an SQLite file but not an mchsm registry")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        else:
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise VerifierError(
                    f"the registry {path!r} has schema version {version}, newer than this "
                    f"verifier's {SCHEMA_VERSION}: upgrade the software, not the file"
                )
            while version < SCHEMA_VERSION:
                if version not in _MIGRATIONS:
                    raise VerifierError(
                        f"no migration from schema version {version} of the registry {path!r}"
                    )
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                version += 1
                conn.execute("UPDATE schema_version SET version = ?", (version,))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
