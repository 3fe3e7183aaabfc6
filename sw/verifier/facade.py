"""The verifier: device registry, update authority and attestation checks over one store.

This module is the attestation layer (challenges, sessions, the batched checks, the audit log's
reader) on top of :class:`.updates.UpdateAuthority` (devices, tasks, updates, task keys), which
stands on :class:`.core.RegistryCore` (the store opened under its KEK, the caches).

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
"""

from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Iterable
from typing import Any, cast

from mchsm.constants import DEVICE_ID_SIZE, NONCE_SIZE
from mchsm.sw.errors import (
    EvidenceError,
    InvalidArgumentError,
    SessionError,
    StoreError,
    UnknownDeviceError,
    VerifierError,
)

from . import args
from .args import MAX_NAME
from .audit import (
    ACCEPTED_DETAIL,
    KIND_ATTEST,
    KIND_UPDATE_CONFIRM,
    MAX_AUDIT_ERROR,
    OUTCOME_FAILED,
    OUTCOME_RECOVERED,
    OUTCOME_REJECTED,
    OUTCOME_TRUSTED,
    audit_entry,
    decode_result,
    result_body,
    to_json,
)
from .check import Checked, DeviceState, TaskSet, check_evidence, contexts_of
from .core import ATT_KEY_CACHE
from .opening import open_store
from .records import AttestationReport, AuditEntry, Challenge, SessionState
from .store import Conflict, Store
from .updates import MAX_IMAGE, MAX_TASK_DATA, UpdateAuthority

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
#: attempts in one verify_many call: its transaction holds the write lock (SQLite) or the rows'
#: locks (PostgreSQL) until it commits
MAX_BATCH = 4096
#: seconds a session's result is kept at least (past its nonce's expiry if that is sooner)
RESULT_TTL = 300.0


def new_nonce(now: float) -> bytes:
    """A fresh nonce: 8 bytes of issue time (microseconds) then 24 random bytes.

    The random part makes it unpredictable (192 bits); the time prefix makes nonces issued
    together neighbours in the store's index, so a batch that consumes them dirties a few pages
    instead of one page per nonce (which was most of a batch's commit).  The prefix tells an
    observer nothing it does not know: when the challenge was sent.
    """
    stamp = int(now * 1e6) & 0xFFFF_FFFF_FFFF_FFFF if math.isfinite(now) and now > 0 else 0
    return stamp.to_bytes(8, "big") + secrets.token_bytes(NONCE_SIZE - 8)


class Verifier(UpdateAuthority):
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
                        ACCEPTED_DETAIL % (report.sel, report.ok, report.ctr, failed, nonce_hex),
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
                        to_json(detail),
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
                (now, dev_id, KIND_UPDATE_CONFIRM, u.ctx, OUTCOME_RECOVERED, to_json(detail))
            )
        row = s.device(dev_id, lock=True)  # another process may have installed meanwhile
        if row is None or row.task_set != tasks.id:
            raise Conflict("the device's tasks changed since this batch read them")
        return self._install(s, dev_id, tasks, checked.recovered)

    # -- audit --------------------------------------------------------------------------------

    def audit(self, dev_id: bytes | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries, oldest first; with ``limit``, the newest ``limit`` of them."""
        if dev_id is not None:
            dev_id = args.dev_id(dev_id)
        if limit is not None:
            limit = args.integer(limit, "limit", 0, 1 << 62)
        rows = self.store.read(lambda s: s.audit(dev_id, limit))
        return [audit_entry(r) for r in reversed(rows)]
