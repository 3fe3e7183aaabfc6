"""The verifier: device registry, update authority and attestation checks over one store.

This is the verifier of ``docs/protocol.md`` sections 2, 5 and 6 and ``docs/verifier.md``.  It
provisions devices (makes their root keys), authorises and confirms code updates, issues
single-use nonces and turns the 44-byte evidence of an ``ATTEST`` into a per-task verdict.  Every
message layout and primitive comes from :mod:`mchsm.sw.protocol`; every statement from
:mod:`.store`; the judgement of one attempt from :func:`.check.check_evidence`.

Every public method checks the types and sizes of its arguments before it does any work and
raises a :class:`~mchsm.sw.errors.VerifierError` (never a ``TypeError``): an
:class:`~mchsm.sw.errors.InvalidArgumentError` for a caller's mistake, an
:class:`~mchsm.sw.errors.AttestationError` or :class:`~mchsm.sw.errors.UpdateError` for what the
network sent, a :class:`~mchsm.sw.errors.StoreError` or :class:`~mchsm.sw.errors.KekError` for
the registry.

Caches hold pure functions of registry values only (K_att by device and wrapped key, decoded
task sets by their content hash), which can be missed but never be stale, so any number of
verifiers may share one store.
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from mchsm.constants import (
    DEFAULT_CONTEXTS,
    DEVICE_ID_SIZE,
    MAX_CONTEXTS,
    NONCE_SIZE,
    ROOT_KEY_SIZE,
)
from mchsm.sw import protocol
from mchsm.sw.errors import (
    EvidenceError,
    InvalidArgumentError,
    KekError,
    SessionError,
    StoreError,
    UnknownDeviceError,
    UpdateError,
    VerifierError,
)
from mchsm.sw.protocol import UpdateAck, UpdateAuth

from . import args
from . import keys as keymod
from .args import MAX_NAME
from .check import EMPTY, Checked, DeviceState, TaskSet, check_evidence, contexts_of
from .postgres import PostgresStore, is_url
from .records import (
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
from .sqlite import SqliteStore
from .store import Conflict, DeviceRow, Store

__all__ = [
    "ATT_KEY_CACHE",
    "MAX_BATCH",
    "MAX_IMAGE",
    "MAX_NAME",
    "MAX_TASK_DATA",
    "PURGE_EVERY",
    "Verifier",
    "new_nonce",
    "open_store",
]

#: challenges between two opportunistic purges of expired nonces
PURGE_EVERY = 1024
#: at most this many expired nonces are deleted by one opportunistic purge (bounds its latency)
PURGE_BATCH = 16 * PURGE_EVERY
#: K_att kept per verifier, by device: a hit saves unwrapping the root key and deriving K_att
ATT_KEY_CACHE = 1 << 16
#: decoded task sets kept, by content hash (a fleet runs few distinct firmware sets)
TASK_SET_CACHE = 4096
#: attempts in one verify_many call: its transaction holds the write lock (SQLite) or the rows'
#: locks (PostgreSQL) until it commits
MAX_BATCH = 4096
#: bytes of an image to authorise (hashed in full before anything is written)
MAX_IMAGE = 256 << 20
#: bytes a task may have MAC'd for check_task_mac
MAX_TASK_DATA = 16 << 20
#: characters of an error message kept in an audit row
MAX_AUDIT_ERROR = 240
#: seconds a session's result is kept at least (past its nonce's expiry if that is sooner)
RESULT_TTL = 300.0
_U32_MAX = 0xFFFF_FFFF

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

_json = json.JSONEncoder(separators=(",", ":")).encode
_ACCEPTED = '{"sel":%d,"ok":%d,"ctr":%d,"failed":[%s],"nonce":"%s"}'


def new_nonce(now: float) -> bytes:
    """A fresh nonce: 8 bytes of issue time (microseconds) then 24 random bytes.

    The random part makes it unpredictable (192 bits); the time prefix makes nonces issued
    together neighbours in the store's index, so a batch that consumes them dirties a few pages
    instead of one page per nonce (which was most of a batch's commit).  The prefix tells an
    observer nothing it does not know: when the challenge was sent.
    """
    stamp = int(now * 1e6) & 0xFFFF_FFFF_FFFF_FFFF if math.isfinite(now) and now > 0 else 0
    return stamp.to_bytes(8, "big") + secrets.token_bytes(NONCE_SIZE - 8)


def open_store(db: str | os.PathLike[str]) -> Store:
    """The store for ``db``: a ``postgresql://`` URL, or the path of a SQLite file."""
    if is_url(db):
        return PostgresStore(str(db))
    if isinstance(db, str | os.PathLike) and os.fspath(db):
        return SqliteStore(Path(db))
    raise InvalidArgumentError(
        f"db must be a file path or a postgresql:// URL, not {type(db).__name__} {db!r:.40}"
    )


class Verifier:
    """Device registry, update authority and attestation verifier over one store.

    Parameters
    ----------
    db : str or os.PathLike
        A ``postgresql://user@host/dbname`` URL, or the path of a SQLite file (created, mode
        0600, if it does not exist).
    nonce_ttl : float
        Seconds a challenge stays valid.
    clock : callable
        Returns the current time in seconds; injectable so tests can expire nonces.
    kek : bytes or path, optional
        The key-encryption key of the root keys, or the file holding it; by default from the
        environment, else (SQLite only) the file beside the registry (see :mod:`.keys`).

    One instance is one connection: use it from one thread.  Any number of processes may use
    the same store at once; a nonce is consumed and a counter advanced by exactly one of them.
    """

    def __init__(
        self,
        db: str | os.PathLike[str],
        *,
        nonce_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
        kek: bytes | str | os.PathLike[str] | None = None,
    ) -> None:
        if type(nonce_ttl) not in (int, float) or not math.isfinite(nonce_ttl) or not nonce_ttl > 0:
            raise InvalidArgumentError(f"nonce_ttl must be a positive number, not {nonce_ttl!r}")
        if not callable(clock):
            raise InvalidArgumentError("clock must be a function returning seconds")
        self.nonce_ttl = float(nonce_ttl)
        self._clock = clock
        self._challenges = 0
        self.store = open_store(db)
        self.location = self.store.location
        try:
            self._kek = self.store.write(lambda s: self._open(s, kek))
        except BaseException:
            self.store.close()
            raise
        # dev_id + wrapped root key -> K_att: bytes to bytes, so the garbage collector never
        # walks it (an lru_cache's linked entries made every full collection walk the cache)
        self._att_keys: dict[bytes, bytes] = {}
        self._sets: dict[bytes, TaskSet] = {}

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the store; everything committed is in it."""
        self.store.close()
        self._att_keys.clear()  # derived keys do not outlive the verifier
        self._sets.clear()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- opening: schema, migrations, KEK -----------------------------------------------------

    def _open(self, s: Store, explicit: Any) -> keymod.Kek:
        """Create, migrate or check the registry, and find the KEK it is wrapped under."""
        from .migrations import migrate

        if isinstance(s, PostgresStore):
            s.lock_schema()
        version = s.schema_version()
        if version is None:
            kek = self._find_kek(explicit, create=True)
            s.create_schema()
            s.set_meta("kek_check", kek.check_value())
            return kek
        if version < SCHEMA_VERSION:
            kek = self._find_kek(explicit, create=version == 1)
            migrate(s, version, kek)
            return kek
        check = s.get_meta("kek_check")
        if check is None:
            raise StoreError(f"the registry {s.location} is damaged: it has no KEK check value")
        kek = self._find_kek(explicit, create=False)
        if kek.matches(check):
            return kek
        if kek.path is not None:  # a rotation that committed but did not rename its new file
            staged = Path(f"{kek.path}.new")
            if staged.exists():
                new = keymod.read_kek_file(staged)
                if new.matches(check):
                    os.replace(staged, kek.path)
                    return keymod.Kek(new.key, kek.source, kek.path)
        raise KekError(
            f"the registry {s.location} was wrapped under another key-encryption key than "
            f"{kek.source}: give the right one (kek argument, ${keymod.ENV_KEK} or "
            f"${keymod.ENV_KEK_FILE})"
        )

    def _find_kek(self, explicit: Any, *, create: bool) -> keymod.Kek:
        kek = keymod.find_kek(explicit)
        if kek is not None:
            return kek
        if not isinstance(self.store, SqliteStore):
            raise KekError(
                f"a PostgreSQL registry needs a key-encryption key: set ${keymod.ENV_KEK_FILE} to "
                f"an owner-only file of 64 hex digits (`mchsm verifier new-kek FILE` makes one) "
                f"or ${keymod.ENV_KEK} to the digits themselves"
            )
        path = keymod.default_kek_path(self.store.path)
        if os.path.lexists(path) or not create:
            if not os.path.lexists(path):
                raise KekError(
                    f"the registry {self.store.path} is wrapped under a key-encryption key, but "
                    f"no KEK was given and its default file {path} does not exist: give the KEK "
                    f"(${keymod.ENV_KEK_FILE}, ${keymod.ENV_KEK} or the kek argument)"
                )
            return keymod.read_kek_file(path)
        return keymod.write_kek_file(path)

    @property
    def kek_source(self) -> str:
        """Where this verifier's KEK came from (never the KEK itself)."""
        return self._kek.source

    def rotate_kek(self, new: bytes | str | os.PathLike[str] | None = None) -> int:
        """Re-wrap every root key under a new KEK in one transaction; returns how many.

        ``new`` is the new KEK or its file.  Without it, the KEK file in use is replaced by a
        new random one: written beside it as ``<file>.new`` first, then renamed over it once
        the transaction has committed (opening the registry finishes a rename that a crash
        interrupted).  A KEK from the environment has no file to replace: pass ``new``.
        """
        staged: Path | None = None
        if new is None:
            if self._kek.path is None:
                raise KekError(
                    f"the KEK comes from {self._kek.source}, not a file: give the new KEK"
                )
            staged = Path(f"{self._kek.path}.new")
            if os.path.lexists(staged):
                os.unlink(staged)  # left by a rotation that did not commit
            new_kek = keymod.write_kek_file(staged)
        else:
            found = keymod.find_kek(new)
            assert found is not None
            new_kek = found
        old = self._kek
        now = self._clock()

        def rewrap(s: Store) -> int:
            pairs = []
            for row in s.devices(lock=True):
                root = old.unwrap(row.dev_id, row.root_wrapped)
                pairs.append((new_kek.wrap(row.dev_id, root), row.dev_id))
            s.rewrap(pairs)
            s.set_meta("kek_check", new_kek.check_value())
            self._log(s, None, KIND_KEK_ROTATE, None, OUTCOME_OK, {"devices": len(pairs)}, now)
            return len(pairs)

        count = self.store.write(rewrap)
        if staged is not None and old.path is not None:
            os.replace(staged, old.path)
            keymod._sync_dir(old.path.parent)
            new_kek = keymod.Kek(new_kek.key, old.source, old.path)
        self._kek = new_kek
        self._att_keys.clear()
        return count

    # -- helpers ------------------------------------------------------------------------------

    def _att_key(self, dev_id: bytes, wrapped: bytes) -> bytes:
        """K_att of a device, remembered by id and wrapped key (a pure function of them)."""
        if type(wrapped) is not bytes:
            raise StoreError(f"the wrapped root key of device {dev_id.hex()} is damaged")
        key = dev_id + wrapped
        k_att = self._att_keys.get(key)
        if k_att is None:
            k_att = protocol.derive_att_key(self._kek.unwrap(dev_id, wrapped))
            if len(self._att_keys) >= ATT_KEY_CACHE:
                del self._att_keys[next(iter(self._att_keys))]  # the oldest
            self._att_keys[key] = k_att
        return k_att

    def _task_set(self, s: Store, set_id: bytes | None) -> TaskSet:
        if set_id is None:
            return EMPTY
        found = self._sets.get(set_id)
        if found is None:
            if not isinstance(set_id, bytes):
                raise StoreError(f"the registry {s.location} is damaged: a task set id")
            body = s.task_set(set_id)
            if body is None:
                raise StoreError(
                    f"the registry {s.location} is damaged: a device's task set is missing"
                )
            found = TaskSet.decode(set_id, body)
            if len(self._sets) >= TASK_SET_CACHE:
                self._sets.clear()
            self._sets[set_id] = found
        return found

    def _put_task_set(self, s: Store, tasks: TaskSet) -> None:
        if tasks.id is not None:
            s.put_task_set(tasks.id, tasks.body)
            self._sets[tasks.id] = tasks

    def _log(
        self,
        s: Store,
        dev_id: bytes | None,
        kind: str,
        ctx: int | None,
        outcome: str,
        detail: dict[str, Any],
        now: float,
    ) -> None:
        """Append an audit row inside the caller's transaction, so the log and the change it
        records commit together."""
        s.append_audit([(now, dev_id, kind, ctx, outcome, _json(detail))])

    def _row(self, s: Store, dev_id: bytes, *, lock: bool = False) -> DeviceRow:
        row = s.device(dev_id, lock=lock)
        if row is None:
            raise UnknownDeviceError(f"device {dev_id.hex()} is not registered")
        return row

    # -- devices ------------------------------------------------------------------------------

    def register_device(
        self, contexts: int = DEFAULT_CONTEXTS, dev_id: bytes | None = None, name: str = ""
    ) -> DeviceRecord:
        """Add a device and make its root key; the caller hands both to ``PROVISION`` once."""
        contexts = args.integer(contexts, "contexts", 1, MAX_CONTEXTS)
        dev_id = secrets.token_bytes(DEVICE_ID_SIZE) if dev_id is None else args.dev_id(dev_id)
        name = args.name(name, "the device name")
        root = secrets.token_bytes(ROOT_KEY_SIZE)
        row = DeviceRow(dev_id, self._kek.wrap(dev_id, root), contexts, name, 0, None)
        now = self._clock()

        def insert(s: Store) -> None:
            if not s.insert_device(row, now):
                raise VerifierError(f"device {dev_id.hex()} is already registered")
            detail = {"contexts": contexts, "name": name}
            self._log(s, dev_id, KIND_REGISTER, None, OUTCOME_OK, detail, now)

        self.store.write(insert)
        return DeviceRecord(dev_id, root, contexts, name)

    def device(self, dev_id: bytes) -> DeviceRecord:
        """The registered device ``dev_id``; :class:`UnknownDeviceError` if there is none."""
        dev_id = args.dev_id(dev_id)
        row = self.store.read(lambda s: self._row(s, dev_id))
        return DeviceRecord(
            row.dev_id, self._kek.unwrap(row.dev_id, row.root_wrapped), row.contexts, row.name
        )

    def devices(self) -> list[DeviceRecord]:
        """Every registered device, ordered by id."""
        rows = self.store.read(lambda s: s.devices())
        return [
            DeviceRecord(r.dev_id, self._kek.unwrap(r.dev_id, r.root_wrapped), r.contexts, r.name)
            for r in rows
        ]

    def tasks(self, dev_id: bytes) -> list[TaskRecord]:
        """The installed tasks of a device, by context.  Pending updates are not tasks yet."""
        dev_id = args.dev_id(dev_id)
        return self.store.read(
            lambda s: list(self._task_set(s, self._row(s, dev_id).task_set).tasks)
        )

    def pending_updates(self, dev_id: bytes) -> list[PendingUpdate]:
        """The authorised, unconfirmed updates of a device, by context (at most one each)."""
        dev_id = args.dev_id(dev_id)

        def read(s: Store) -> list[PendingUpdate]:
            self._row(s, dev_id)
            return s.pending(dev_id)

        return self.store.read(read)

    # -- updates ------------------------------------------------------------------------------

    def register_task(self, dev_id: bytes, ctx: int, name: str, image: bytes) -> UpdatePackage:
        """Install a task: the protocol has no separate "set reference", only an update from
        version 0, so this is :meth:`prepare_update` with a name."""
        return self.prepare_update(dev_id, ctx, image, name=args.name(name, "the task name"))

    def prepare_update(
        self, dev_id: bytes, ctx: int, image: bytes, *, name: str | None = None
    ) -> UpdatePackage:
        """Authorise moving context ``ctx`` to ``image`` and remember the update as pending.

        The old version is the confirmed one and the new one the next.  **At most one
        authorisation per context is outstanding**: while one is, asking again for the same
        image (and name) hands out the same authorisation again (a lost message can be
        resent), and asking for anything else is refused with :class:`UpdateError` - confirm
        the outstanding one, or :meth:`cancel_update` it if it never reached the device.  Two
        live authorisations would let the network choose which one lands, and the HSM cannot
        be told that one was revoked.  ``name`` defaults to the task's current name.
        """
        dev_id = args.dev_id(dev_id)
        ctx = args.integer(ctx, "the context", -(1 << 63), 1 << 63)
        image = args.byte_string(image, "the image", limit=MAX_IMAGE)
        if name is not None:
            name = args.name(name, "the task name")
        ref = protocol.reference(image)
        now = self._clock()

        def prepare(s: Store) -> tuple[PendingUpdate, bytes]:
            row = self._row(s, dev_id, lock=True)
            if not 1 <= ctx <= row.contexts:
                raise UpdateError(
                    f"context {ctx} does not exist on device {dev_id.hex()} "
                    f"(it has contexts 1..{row.contexts})"
                )
            root = self._kek.unwrap(dev_id, row.root_wrapped)
            k_upd = protocol.derive_upd_key(root)
            outstanding = [p for p in s.pending(dev_id) if p.ctx == ctx]
            if outstanding:
                p = outstanding[0]
                if p.reference != ref or (name is not None and name != p.name):
                    raise UpdateError(
                        f"context {ctx} of device {dev_id.hex()} already has an outstanding "
                        f"update to version {p.new} (reference {p.reference.hex()[:16]}...): "
                        f"confirm it, or cancel_update() it if it never reached the device"
                    )
                outcome = OUTCOME_REISSUED
            else:
                tasks = self._task_set(s, row.task_set)
                old = tasks.versions.get(ctx, 0)
                if old >= _U32_MAX:
                    raise UpdateError(f"context {ctx} has run out of versions")
                current = tasks.names.get(ctx, f"task{ctx}")
                p = PendingUpdate(ctx, old, old + 1, ref, current if name is None else name)
                s.insert_pending(dev_id, p, now)
                outcome = OUTCOME_OK
            detail = {"old": p.old, "new": p.new, "reference": ref.hex(), "name": p.name}
            self._log(s, dev_id, KIND_UPDATE_PREPARE, ctx, outcome, detail, now)
            tag = protocol.update_tag(k_upd, dev_id, ctx, p.old, p.new, ref)
            return p, tag

        p, tag = self.store.write(prepare)
        auth = UpdateAuth(ctx=ctx, old=p.old, new=p.new, ref=ref, tag=tag)
        return UpdatePackage(dev_id=dev_id, name=p.name, auth=auth, image=image)

    def cancel_update(self, dev_id: bytes, ctx: int) -> PendingUpdate:
        """Withdraw the outstanding authorisation of ``ctx`` so another can be prepared.

        Only for one that never reached the device: the HSM would still accept it (it cannot be
        told), and if it does, its ack is refused and the context attests as failed.
        """
        dev_id = args.dev_id(dev_id)
        ctx = args.integer(ctx, "the context", 1, MAX_CONTEXTS)
        now = self._clock()

        def cancel(s: Store) -> PendingUpdate:
            self._row(s, dev_id, lock=True)
            found = [p for p in s.pending(dev_id) if p.ctx == ctx]
            if not found:
                raise UpdateError(f"context {ctx} of device {dev_id.hex()} has no pending update")
            s.delete_pending(dev_id, ctx)
            p = found[0]
            detail = {"old": p.old, "new": p.new, "reference": p.reference.hex()}
            self._log(s, dev_id, KIND_UPDATE_CANCEL, ctx, OUTCOME_OK, detail, now)
            return p

        return self.store.write(cancel)

    def confirm(self, dev_id: bytes, ack: UpdateAck | bytes) -> TaskRecord:
        """Record a pending update as installed once the device's ack proves it.

        A failed ack leaves the pending update alone: a forgery from the network must not be
        able to cancel a genuine update.  Either way the attempt is audit-logged.
        """
        dev_id = args.dev_id(dev_id)
        if type(ack) is not UpdateAck and isinstance(ack, bytearray | memoryview):
            ack = bytes(ack)
        now = self._clock()

        def confirm(s: Store) -> TaskRecord | VerifierError:
            detail: dict[str, Any] = {}
            ctx: int | None = None
            try:
                parsed = args.ack(ack)
                ctx = parsed.ctx
                detail["new"] = parsed.new
                record = self._confirm(s, dev_id, parsed, detail, now)
            except VerifierError as exc:
                detail["error"] = str(exc)[:MAX_AUDIT_ERROR]
                self._log(s, dev_id, KIND_UPDATE_CONFIRM, ctx, OUTCOME_REJECTED, detail, now)
                return exc
            self._log(s, dev_id, KIND_UPDATE_CONFIRM, ctx, OUTCOME_OK, detail, now)
            return record

        result = self.store.write(confirm)
        if isinstance(result, VerifierError):
            raise result
        return result

    def _confirm(
        self, s: Store, dev_id: bytes, ack: UpdateAck, detail: dict[str, Any], now: float
    ) -> TaskRecord:
        row = self._row(s, dev_id, lock=True)
        tasks = self._task_set(s, row.task_set)
        found = [p for p in s.pending(dev_id) if p.ctx == ack.ctx and p.new == ack.new]
        if not found:
            hint = " (it is already confirmed)" if tasks.versions.get(ack.ctx) == ack.new else ""
            raise UpdateError(
                f"no pending update of context {ack.ctx} to version {ack.new} for device "
                f"{dev_id.hex()}{hint}"
            )
        p = found[0]
        detail.update(old=p.old, reference=p.reference.hex(), name=p.name)
        root = self._kek.unwrap(dev_id, row.root_wrapped)
        expected = protocol.ack_tag(
            protocol.derive_upd_key(root), dev_id, ack.ctx, p.old, ack.new, p.reference
        )
        if not protocol.tags_equal(expected, ack.ack):
            raise UpdateError(
                f"acknowledgement of context {ack.ctx} version {ack.new} does not verify: "
                "forged, or from another device"
            )
        self._install(s, dev_id, tasks, (p,))
        return TaskRecord(ack.ctx, p.name, ack.new, p.reference)

    def _install(
        self, s: Store, dev_id: bytes, tasks: TaskSet, updates: tuple[PendingUpdate, ...]
    ) -> TaskSet:
        new = tasks.updated(updates)
        self._put_task_set(s, new)
        s.set_task_set(dev_id, new.id)
        for u in updates:
            s.delete_pending(dev_id, u.ctx)
        return new

    # -- attestation --------------------------------------------------------------------------

    def challenge(self, dev_id: bytes, sel: int | None = None) -> Challenge:
        """Issue a fresh single-use nonce for ``dev_id``; ``sel`` defaults to every installed
        task, because a verdict is only worth asking for where a reference exists."""
        dev_id = args.dev_id(dev_id)
        if sel is not None and type(sel) is not int:
            raise InvalidArgumentError(f"the selection must be an integer mask, not {sel!r:.40}")
        now = self._clock()
        expires = now + self.nonce_ttl
        nonce = new_nonce(now)

        def issue(s: Store) -> int:
            row = self._row(s, dev_id)
            mask = self._selection(s, dev_id, row.contexts, row.task_set, sel)
            s.insert_nonce(nonce, dev_id, mask, expires)
            return mask

        mask = self.store.write(issue)
        self._challenges += 1
        if self._challenges % PURGE_EVERY == 0:
            self.purge_expired(limit=PURGE_BATCH)
        return Challenge(dev_id=dev_id, nonce=nonce, sel=mask, expires=expires)

    def purge_expired(self, *, limit: int | None = None) -> int:
        """Delete expired nonces (at most ``limit``); returns how many went.

        Safe for used ones too: a purged nonce is unknown, and an unknown nonce is rejected just
        like a used one.  Called every :data:`PURGE_EVERY` challenges so the table stays the
        size of the nonces in flight.
        """
        if limit is not None:
            limit = args.integer(limit, "limit", 0, 1 << 62)
        now = self._clock()
        return self.store.write(lambda s: s.purge_nonces(now, limit))

    # -- sessions: the verifier service's batched calls ----------------------------------------

    def serve_batch(
        self,
        challenges: list[tuple[bytes, int | None]],
        attempts: list[tuple[bytes, bytes, bytes]],
    ) -> tuple[list[Challenge | VerifierError], list[AttestationReport | VerifierError]]:
        """Issue ``challenges`` and judge ``attempts`` in one transaction (one commit).

        The verifier service gathers the requests that arrive while the previous batch commits
        and hands them over together: a commit (an fsync) per batch, not per request.  Each
        challenge and attempt gets exactly what :meth:`challenge` and :meth:`verify_many` would
        have given it, its error in its place; nothing is returned before the commit.  The
        outcome of every attempt that consumed a fresh nonce is stored with it (see
        :meth:`session`), so a client that lost the answer can read it.
        """
        if len(challenges) > MAX_BATCH or len(attempts) > MAX_BATCH:
            raise InvalidArgumentError(f"at most {MAX_BATCH} challenges and attempts per batch")
        wanted: list[tuple[bytes, int | None] | VerifierError] = []
        for item in challenges:
            try:
                dev_id, sel = item
                dev_id = args.dev_id(dev_id)
                if sel is not None and type(sel) is not int:
                    raise InvalidArgumentError(
                        f"the selection must be an integer mask, not {sel!r:.40}"
                    )
                wanted.append((dev_id, sel))
            except VerifierError as exc:
                wanted.append(exc)
            except (TypeError, ValueError):
                wanted.append(InvalidArgumentError("a challenge is (dev_id, sel or None)"))
        batch = [args.attempt(a) for a in attempts]
        now = self._clock()

        def run(
            s: Store,
        ) -> tuple[list[Challenge | VerifierError], list[AttestationReport | VerifierError]]:
            issued = self._issue_batch(s, wanted, now) if wanted else []
            judged = self._verify_batch(s, batch, now, keep_results=True) if batch else []
            return issued, judged

        issued, judged = self.store.write(run)
        if issued:
            self._challenges += len(issued)
            if self._challenges >= PURGE_EVERY:
                self._challenges = 0
                self.purge_expired(limit=PURGE_BATCH)
        return issued, judged

    def _issue_batch(
        self, s: Store, wanted: list[tuple[bytes, int | None] | VerifierError], now: float
    ) -> list[Challenge | VerifierError]:
        rows = s.devices_for_challenge({w[0] for w in wanted if type(w) is tuple})
        out: list[Challenge | VerifierError] = []
        inserts: list[tuple[bytes, bytes, int, float]] = []
        expires = now + self.nonce_ttl
        for w in wanted:
            if not isinstance(w, tuple):
                out.append(w)
                continue
            dev_id, sel = w
            try:
                row = rows.get(dev_id)
                if row is None:
                    raise UnknownDeviceError(f"device {dev_id.hex()} is not registered")
                contexts, set_id = row
                if type(contexts) is not int:
                    raise StoreError(f"the registry is damaged: a field of device {dev_id.hex()}")
                mask = self._selection(s, dev_id, contexts, set_id, sel)
            except VerifierError as exc:
                out.append(exc)
                continue
            nonce = new_nonce(now)
            inserts.append((nonce, dev_id, mask, expires))
            out.append(Challenge(dev_id=dev_id, nonce=nonce, sel=mask, expires=expires))
        s.insert_nonces(inserts)
        return out

    def _selection(
        self, s: Store, dev_id: bytes, contexts: int, set_id: bytes | None, sel: int | None
    ) -> int:
        """The selection a challenge asks for: ``sel``, checked against the device, or every
        installed task."""
        if sel is None:
            mask = 0
            for t in self._task_set(s, set_id).tasks:
                mask |= 1 << (t.ctx - 1)
            if mask == 0:
                raise VerifierError(
                    f"device {dev_id.hex()} has no installed task to attest; "
                    "install one or pass sel"
                )
            return mask
        if not 0 < sel < 1 << contexts:
            raise VerifierError(
                f"selection {sel!r} must be a non-empty mask of contexts 1..{contexts}"
            )
        return sel

    def session(self, dev_id: bytes, nonce: bytes) -> SessionState | None:
        """The challenge ``nonce`` of ``dev_id`` and the outcome of its attempt, or None if
        the registry does not know it (never issued, issued to another device, or purged)."""
        dev_id = args.dev_id(dev_id)
        nonce = args.byte_string(nonce, "the nonce", limit=NONCE_SIZE)

        def read(s: Store) -> tuple[Any, str | None]:
            return s.nonce(nonce), s.result(nonce)

        row, body = self.store.read(read)
        if row is None or row.dev_id != dev_id:
            return None
        result = decode_result(body, dev_id) if body is not None else None
        return SessionState(dev_id, nonce, row.sel, row.expires, row.used, result)

    def sessions(self, dev_id: bytes | None = None, limit: int = 100) -> list[SessionState]:
        """The newest ``limit`` challenges (of ``dev_id``), newest first, without results."""
        if dev_id is not None:
            dev_id = args.dev_id(dev_id)
        limit = args.integer(limit, "limit", 0, 1 << 62)
        rows = self.store.read(lambda s: s.nonces(dev_id, limit))
        return [SessionState(r.dev_id, n, r.sel, r.expires, r.used) for n, r in rows]

    def verify(self, dev_id: bytes, nonce: bytes, evidence: Any) -> AttestationReport:
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

    def verify_many(
        self, attempts: Iterable[tuple[object, object, object]]
    ) -> list[AttestationReport | VerifierError]:
        """Verify many ``(dev_id, nonce, evidence)`` attempts in one transaction (group commit).

        Bytes-likes (``bytearray``, ``memoryview``) count as bytes; an attempt of any other
        shape or type is judged and rejected in its place, so the items are typed as objects.

        Each attempt gets exactly what :meth:`verify` would have done to it, in order: its nonce
        is consumed, its audit row appended, its counter checked against the counters accepted
        so far (earlier attempts of the same batch included).  A rejected attempt does not
        raise: its error takes its place in the returned list, beside the reports of the others.
        The batch is judged at one instant (one clock reading for expiry and the audit rows)
        and commits once; nothing is returned before the commit, so no result is ever handed
        out that a crash could take back.  Anything but a :class:`VerifierError` per attempt (a
        bug, a full disk, a lost server) rolls the whole batch back and is raised; then no nonce
        of the batch is consumed.  At most :data:`MAX_BATCH` attempts per call.
        """
        if isinstance(attempts, str | bytes | bytearray | memoryview) or not isinstance(
            attempts, Iterable
        ):
            raise InvalidArgumentError(
                f"attempts must be an iterable of (dev_id, nonce, evidence), not "
                f"{type(attempts).__name__}"
            )
        batch: list[tuple[object, object, object]] = []  # malformed ones too: judged later
        for item in attempts:
            if (  # the common case, already as wanted
                type(item) is tuple
                and len(item) == 3
                and type(item[0]) is bytes
                and type(item[1]) is bytes
            ):
                batch.append(item)
            else:
                batch.append(args.attempt(item))
            if len(batch) > MAX_BATCH:
                raise InvalidArgumentError(f"at most {MAX_BATCH} attempts per verify_many call")
        if not batch:
            return []
        now = self._clock()
        return self.store.write(lambda s: self._verify_batch(s, batch, now))

    def _verify_batch(
        self,
        s: Store,
        batch: list[tuple[object, object, object]],
        now: float,
        keep_results: bool = False,
    ) -> list[AttestationReport | VerifierError]:
        """The body of :meth:`verify_many`, inside its transaction.

        The nonces of the batch are consumed and its devices read (and locked) with one
        statement each; the checks run against that snapshot, which the batch itself keeps
        current (a nonce it consumed, a counter it accepted, a lost ack it recovered); the
        counters and audit rows are written with one statement each at the end.
        """
        nkeys = {n for _, n, _ in batch if type(n) is bytes and len(n) == NONCE_SIZE}
        dkeys = {d for d, _, _ in batch if type(d) is bytes and len(d) == DEVICE_ID_SIZE}
        nonces = s.consume_nonces(nkeys)
        rows = s.devices_for_verify(dkeys)
        states: dict[bytes, DeviceState] = {}
        counters: dict[bytes, int] = {}
        audit: list[tuple[Any, ...]] = []
        results: list[AttestationReport | VerifierError] = []
        #: (index in results, nonce, expiry) of the attempts that consumed a fresh nonce
        consumed: list[tuple[int, bytes, float]] = []
        for dev_id, nonce, evidence in batch:
            found = None
            if type(nonce) is bytes:
                n = nonces.get(nonce)
                if n is not None:
                    found = (n.dev_id, n.sel, n.expires, n.used)
                    if keep_results and not n.used:
                        consumed.append((len(results), nonce, n.expires))
                    n.used = True  # consumed whatever the outcome
            device = None
            checked: Checked | None = None
            if type(dev_id) is bytes and dev_id in rows:
                device = states.get(dev_id)
                if device is None:
                    try:
                        device = states[dev_id] = self._state(s, dev_id, rows[dev_id])
                    except VerifierError as exc:  # a damaged row rejects its own attempts only
                        checked = Checked(None, exc, {})
            if checked is None:
                checked = check_evidence(
                    dev_id,
                    nonce,
                    evidence,
                    found,
                    device,
                    now,
                    # asked only of a device found in the registry, whose id is bytes
                    functools.partial(s.pending, cast(bytes, dev_id)),
                )
            report = checked.report
            valid_dev = type(dev_id) is bytes and len(dev_id) == DEVICE_ID_SIZE
            nonce_hex = nonce.hex() if type(nonce) is bytes and len(nonce) == NONCE_SIZE else ""
            if report is not None:
                assert device is not None and type(dev_id) is bytes
                counters[dev_id] = device.last_ctr = report.ctr
                if checked.recovered:
                    device.tasks = self._recover(s, dev_id, device.tasks, checked, audit, now)
                results.append(report)
                failed = checked.failed
                audit.append(
                    (
                        now,
                        dev_id,
                        KIND_ATTEST,
                        None,
                        OUTCOME_FAILED if failed else OUTCOME_TRUSTED,
                        _ACCEPTED % (report.sel, report.ok, report.ctr, failed, nonce_hex),
                    )
                )
            else:
                error = checked.error
                assert error is not None
                if type(error) is EvidenceError and device is not None and found is not None:
                    # the names of the tasks the challenge asked about, for the session's result
                    names = device.tasks.names
                    error.tasks = {c: names.get(c, "") for c in contexts_of(found[1])}
                results.append(error)
                detail = checked.detail
                detail["error"] = str(error)[:MAX_AUDIT_ERROR]
                if nonce_hex:
                    detail["nonce"] = nonce_hex
                audit.append(
                    (
                        now,
                        dev_id if valid_dev else None,
                        KIND_ATTEST,
                        None,
                        OUTCOME_REJECTED,
                        _json(detail),
                    )
                )
        s.set_counters([(c, d, rows[d][1]) for d, c in counters.items()])
        s.append_audit(audit)
        if counters:
            self._mark_pending(s, counters.keys(), results)
        if consumed:
            s.put_results(
                [
                    (nonce, max(expires, now + RESULT_TTL), result_body(results[i]))
                    for i, nonce, expires in consumed
                    if not isinstance(results[i], SessionError | UnknownDeviceError)
                ]
            )
        return results

    @staticmethod
    def _mark_pending(
        s: Store, dev_ids: Iterable[bytes], results: list[AttestationReport | VerifierError]
    ) -> None:
        """Tell each accepted report which of its selected contexts have an update authorised
        but unconfirmed (one statement for the batch; the table is small)."""
        pending = s.pending_contexts(dev_ids)
        if not pending:
            return
        for r in results:
            if type(r) is AttestationReport and r.dev_id in pending:
                marked = tuple(sorted(c for c in pending[r.dev_id] if r.sel >> (c - 1) & 1))
                if marked:
                    r.__dict__["pending"] = marked

    def _state(self, s: Store, dev_id: bytes, row: tuple[Any, ...]) -> DeviceState:
        wrapped, last_ctr, set_id = row
        if type(last_ctr) is not int:
            raise StoreError(f"the registry is damaged: the counter of device {dev_id.hex()}")
        return DeviceState(
            dev_id, self._att_key(dev_id, wrapped), last_ctr, self._task_set(s, set_id)
        )

    def _recover(
        self,
        s: Store,
        dev_id: bytes,
        tasks: TaskSet,
        checked: Checked,
        audit: list[tuple[Any, ...]],
        now: float,
    ) -> TaskSet:
        """Record the updates a verified tag proved installed (their acks were lost)."""
        for u in checked.recovered:
            detail = {
                "old": u.old,
                "new": u.new,
                "reference": u.reference.hex(),
                "name": u.name,
                "by": "attestation",
            }
            audit.append(
                (now, dev_id, KIND_UPDATE_CONFIRM, u.ctx, OUTCOME_RECOVERED, _json(detail))
            )
        row = s.device(dev_id, lock=True)  # another process may have installed meanwhile
        if row is None or row.task_set != tasks.id:
            raise Conflict("the device's tasks changed since this batch read them")
        return self._install(s, dev_id, tasks, checked.recovered)

    # -- task keys ----------------------------------------------------------------------------

    def task_key(self, dev_id: bytes, ctx: int) -> bytes:
        """K_task of the installed task of ``ctx``: what the device's ``TASK_MAC`` uses while the
        task is in its reference state, so a relying party can check what the task sends."""
        dev_id = args.dev_id(dev_id)
        ctx = args.integer(ctx, "the context", -(1 << 63), 1 << 63)

        def read(s: Store) -> tuple[DeviceRow, TaskSet]:
            row = self._row(s, dev_id)
            return row, self._task_set(s, row.task_set)

        row, tasks = self.store.read(read)
        if ctx not in tasks.refs:
            raise VerifierError(
                f"context {ctx} of device {dev_id.hex()} has no installed task, so no task key"
            )
        root = self._kek.unwrap(dev_id, row.root_wrapped)
        return protocol.derive_task_key(root, ctx, tasks.refs[ctx])

    def check_task_mac(self, dev_id: bytes, ctx: int, data: bytes, mac: bytes) -> bool:
        """Whether ``mac`` is the installed task's ``TASK_MAC`` of ``data`` (constant time)."""
        data = args.byte_string(data, "the data", limit=MAX_TASK_DATA)
        mac = args.byte_string(mac, "the MAC", limit=1024)
        expected = protocol.hmac_sha256(self.task_key(dev_id, ctx), data)
        return len(mac) == len(expected) and protocol.tags_equal(expected, mac)

    # -- audit --------------------------------------------------------------------------------

    def audit(self, dev_id: bytes | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries, oldest first; with ``limit``, the newest ``limit`` of them."""
        if dev_id is not None:
            dev_id = args.dev_id(dev_id)
        if limit is not None:
            limit = args.integer(limit, "limit", 0, 1 << 62)
        rows = self.store.read(lambda s: s.audit(dev_id, limit))
        return [_entry(r) for r in reversed(rows)]


def _entry(r: tuple[Any, ...]) -> AuditEntry:
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
        return _json(
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
    return _json(
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
