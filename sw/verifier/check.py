"""The check of one attestation (protocol section 5, step 4), as a function that returns.

:func:`check_evidence` reads nothing and writes nothing: it is given the nonce as the store found
it, the device's state and the evidence, and returns a :class:`Checked` - the report, or the
error the attempt is rejected with - together with the bounded fields its audit row records.
The facade (:mod:`.facade`) does the reading, the consuming and the writing around it.

:class:`TaskSet` is a device's installed tasks, decoded once per distinct set (a fleet runs few
firmware sets) and kept with what every check of that set recomputes otherwise: ``D`` per
selection, and the verdicts per (selection, ok) pair.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mchsm.constants import DEVICE_ID_SIZE, EVIDENCE_SIZE, MAX_CONTEXTS, NONCE_SIZE
from mchsm.sw import protocol
from mchsm.sw.errors import (
    AttestationError,
    EvidenceError,
    SessionError,
    StoreError,
    UnknownDeviceError,
    VerifierError,
)
from mchsm.sw.protocol import Evidence

from .records import AttestationReport, PendingUpdate, TaskRecord, TaskVerdict, Verdict

__all__ = ["RECOVERY_LIMIT", "Checked", "DeviceState", "TaskSet", "check_evidence"]

#: at most this many combinations of pending updates are tried to recover a lost ack: a forged
#: tag costs at most this many extra MACs, whatever is pending.  With at most one pending update
#: per context, 7 covers every combination of up to 3 selected contexts with one pending.
RECOVERY_LIMIT = 7
_U32_MAX = 0xFFFF_FFFF


class _Refs(dict[int, bytes]):
    """Context -> reference, with 0^32 for a context never updated (what the HSM holds there)."""

    def __missing__(self, ctx: int) -> bytes:
        return protocol.ZERO_DIGEST


def contexts_of(sel: int) -> tuple[int, ...]:
    """The contexts a selection mask names, ascending (the order D hashes them in)."""
    return tuple(ctx for ctx in range(1, MAX_CONTEXTS + 1) if sel >> (ctx - 1) & 1)


class TaskSet:
    """The installed tasks of a device: immutable, identified by the SHA-256 of its encoding."""

    __slots__ = ("_digests", "_verdicts", "body", "id", "names", "refs", "tasks", "versions")

    def __init__(self, tasks: Sequence[TaskRecord]) -> None:
        self.tasks = tuple(sorted(tasks, key=lambda t: t.ctx))
        self.refs = _Refs({t.ctx: t.reference for t in self.tasks})
        self.names = {t.ctx: t.name for t in self.tasks}
        self.versions = {t.ctx: t.version for t in self.tasks}
        self.body = json.dumps(
            [[t.ctx, t.version, t.name, t.reference.hex()] for t in self.tasks],
            separators=(",", ":"),
            ensure_ascii=False,
        )
        self.id: bytes | None = hashlib.sha256(self.body.encode()).digest() if self.tasks else None
        self._digests: dict[int, bytes] = {}
        self._verdicts: dict[tuple[int, int], tuple[dict[int, TaskVerdict], str]] = {}

    @classmethod
    def decode(cls, set_id: bytes, body: str) -> TaskSet:
        """The set stored as ``body`` under ``set_id``; StoreError if either was altered."""
        try:
            items = json.loads(body)
            tasks = [
                TaskRecord(int(ctx), str(name), int(version), bytes.fromhex(ref))
                for ctx, version, name, ref in items
            ]
        except (ValueError, TypeError):
            raise StoreError("the registry is damaged: a task set does not decode") from None
        tasks_set = cls(tasks)
        if tasks_set.id != set_id or any(
            not (1 <= t.ctx <= MAX_CONTEXTS and 0 <= t.version <= _U32_MAX)
            or len(t.reference) != 32
            for t in tasks
        ):
            raise StoreError("the registry is damaged: a task set does not match its id")
        return tasks_set

    def updated(self, updates: Sequence[PendingUpdate]) -> TaskSet:
        """This set with ``updates`` installed."""
        tasks = {t.ctx: t for t in self.tasks}
        for u in updates:
            tasks[u.ctx] = TaskRecord(u.ctx, u.name, u.new, u.reference)
        return TaskSet(list(tasks.values()))

    def digest(self, sel: int) -> bytes:
        """D for ``sel`` over this set's references (remembered per selection)."""
        digest = self._digests.get(sel)
        if digest is None:
            digest = self._digests[sel] = protocol.select_digest(self.refs, sel)
        return digest

    def verdicts(self, sel: int, ok: int) -> tuple[dict[int, TaskVerdict], str]:
        """A fresh dict of the verdicts, and the failed contexts as ``"2,5"`` for the audit row
        (built once per (sel, ok), the dict copied per report)."""
        found = self._verdicts.get((sel, ok))
        if found is None:
            verdicts = {}
            for ctx, name in sorted(self.names.items()):
                bit = 1 << (ctx - 1)
                if not sel & bit:
                    verdict = Verdict.UNKNOWN
                elif ok & bit:
                    verdict = Verdict.TRUSTED
                else:
                    verdict = Verdict.FAILED
                verdicts[ctx] = TaskVerdict(ctx, name, verdict)
            failed = ",".join(str(c) for c, v in verdicts.items() if v.verdict is Verdict.FAILED)
            found = (verdicts, failed)
            if len(self._verdicts) < 1024:  # bounded: an attacker chooses sel and ok
                self._verdicts[(sel, ok)] = found
        return dict(found[0]), found[1]


EMPTY = TaskSet(())


class DeviceState:
    """What checking a device's evidence needs: K_att, the last accepted counter, the tasks.

    The facade keeps one per device for the length of a batch, so attempts later in the batch
    see the counter and tasks that earlier ones left."""

    __slots__ = ("dev_id", "k_att", "last_ctr", "tasks")

    def __init__(self, dev_id: bytes, k_att: bytes, last_ctr: int, tasks: TaskSet) -> None:
        self.dev_id = dev_id
        self.k_att = k_att
        self.last_ctr = last_ctr
        self.tasks = tasks


@dataclass(slots=True)
class Checked:
    """The result of one check: a report or an error, and what its audit row records."""

    report: AttestationReport | None
    error: VerifierError | None
    #: bounded fields for the audit row (never attacker bytes of unbounded size)
    detail: dict[str, Any]
    #: pending updates this evidence proved installed (lost acks), for the caller to record
    recovered: tuple[PendingUpdate, ...] = ()
    #: the failed contexts of an accepted attempt, as "2,5" (empty if none)
    failed: str = ""


def check_evidence(
    dev_id: object,
    nonce: object,
    evidence: object,
    found: tuple[bytes, int, float, bool] | None,
    device: DeviceState | None,
    now: float,
    pending: Callable[[], Sequence[PendingUpdate]] = tuple,
) -> Checked:
    """Judge one attempt: the nonce, then the evidence, tag and counter, in the spec's order.

    ``found`` is the nonce as the store had it before this attempt (owner, sel, expiry, used),
    or None if it does not exist; ``device`` is None for an unregistered device.  A tag that
    fails with the registered references is retried with the device's ``pending`` updates of
    the selected contexts (protocol section 12, lost acknowledgements), at most
    :data:`RECOVERY_LIMIT` times.
    """
    detail: dict[str, Any] = {}
    try:
        report, recovered, failed = _check(
            dev_id, nonce, evidence, found, device, now, pending, detail
        )
    except VerifierError as exc:
        return Checked(None, exc, detail)
    return Checked(report, None, detail, recovered, failed)


def _check(
    dev_id: object,
    nonce: object,
    evidence: object,
    found: tuple[bytes, int, float, bool] | None,
    device: DeviceState | None,
    now: float,
    pending: Callable[[], Sequence[PendingUpdate]],
    detail: dict[str, Any],
) -> tuple[AttestationReport, tuple[PendingUpdate, ...], str]:
    if not isinstance(dev_id, bytes) or len(dev_id) != DEVICE_ID_SIZE:
        raise AttestationError(f"a device id is {DEVICE_ID_SIZE} bytes; {_describe(dev_id)}")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise AttestationError(f"a nonce is {NONCE_SIZE} bytes; {_describe(nonce)}")
    if device is None:
        raise UnknownDeviceError(f"device {dev_id.hex()} is not registered")
    if found is None:
        raise SessionError(
            "unknown nonce: this verifier never issued it, or it expired and was purged",
            "unknown",
        )
    owner, challenge_sel, expires, used = found
    if owner != dev_id:
        raise SessionError(
            f"nonce was issued for device {owner.hex()}, not {dev_id.hex()}", "unknown"
        )
    if used:
        raise SessionError("nonce already used: every challenge allows one attempt", "used")
    if now >= expires:
        raise SessionError(f"nonce expired {now - expires:.1f} s ago", "expired")
    sel, ok, ctr, tag = _evidence(evidence)
    detail["sel"], detail["ok"], detail["ctr"] = sel, ok, ctr
    if sel != challenge_sel:
        raise EvidenceError(
            f"evidence selects 0x{sel:x} but the challenge asked for 0x{challenge_sel:x}",
            "selection",
        )
    tasks = device.tasks
    k_att = device.k_att
    expected = protocol.attest_tag(k_att, dev_id, nonce, sel, ok, ctr, tasks.digest(sel))
    recovered: tuple[PendingUpdate, ...] = ()
    if not protocol.tags_equal(expected, tag):
        recovered = _recover(tasks, sel, pending(), dev_id, nonce, ok, ctr, tag, k_att)
        if not recovered:
            raise EvidenceError(
                "evidence tag does not verify: wrong device, forged, or references differ "
                "from the registry",
                "signature",
            )
        tasks = tasks.updated(recovered)
    if ctr <= device.last_ctr:
        raise EvidenceError(
            f"counter {ctr} is not above the last accepted {device.last_ctr}: replayed evidence",
            "replay",
        )
    verdicts, failed = tasks.verdicts(sel, ok)
    report = AttestationReport.make(dev_id, ctr, sel, ok, verdicts, tuple(u.ctx for u in recovered))
    return report, recovered, failed


def _evidence(evidence: object) -> tuple[int, int, int, bytes]:
    """(sel, ok, ctr, tag) of evidence given as an :class:`Evidence` or its wire bytes."""
    if isinstance(evidence, bytes):
        if len(evidence) != EVIDENCE_SIZE:
            raise EvidenceError(
                f"malformed evidence: it is {EVIDENCE_SIZE} bytes, not {len(evidence)}",
                "malformed",
            )
        return protocol.unpack_evidence(evidence)
    if isinstance(evidence, Evidence):
        sel, ok, ctr, tag = evidence.sel, evidence.ok, evidence.ctr, evidence.tag
        if not all(type(x) is int and 0 <= x <= _U32_MAX for x in (sel, ok, ctr)):
            raise EvidenceError("malformed evidence: sel, ok and ctr are u32 fields", "malformed")
        if not isinstance(tag, bytes) or len(tag) != 32:
            raise EvidenceError("malformed evidence: the tag is 32 bytes", "malformed")
        return sel, ok, ctr, tag
    raise EvidenceError(
        f"malformed evidence: {EVIDENCE_SIZE} bytes or an Evidence, not {type(evidence).__name__}",
        "malformed",
    )


def _describe(value: object) -> str:
    """A bounded description of a wrong value (never the value itself: it may be huge)."""
    if isinstance(value, bytes):
        return f"this is {len(value)} bytes"
    return f"this is a {type(value).__name__}"


def _recover(
    tasks: TaskSet,
    sel: int,
    pending: Sequence[PendingUpdate],
    dev_id: bytes,
    nonce: bytes,
    ok: int,
    ctr: int,
    tag: bytes,
    k_att: bytes,
) -> tuple[PendingUpdate, ...]:
    """The pending updates (applicable from the registered version) that make the tag verify.

    Only the HSM can produce a tag under K_att, so a tag that verifies with a pending reference
    proves the device holds it: the update was installed and only its ack was lost.  All of
    them together is tried first (the likely case), then each alone, then pairs, ...
    """
    options: dict[int, PendingUpdate] = {}
    for u in pending:
        if sel >> (u.ctx - 1) & 1 and u.old == tasks.versions.get(u.ctx, 0):
            best = options.get(u.ctx)
            if best is None or u.new > best.new:
                options[u.ctx] = u
    if not options:
        return ()
    choices = list(options.values())
    sizes = [len(choices), *range(1, len(choices))]
    combos = itertools.chain.from_iterable(itertools.combinations(choices, k) for k in sizes)
    for combo in itertools.islice(combos, RECOVERY_LIMIT):
        refs: Mapping[int, bytes] = _Refs(tasks.refs) | {u.ctx: u.reference for u in combo}
        digest = protocol.select_digest(_Refs(refs), sel)
        expected = protocol.attest_tag(k_att, dev_id, nonce, sel, ok, ctr, digest)
        if protocol.tags_equal(expected, tag):
            return tuple(combo)
    return ()
