"""What the verifier hands out: verdicts, reports, device and task records, audit entries.

Plain frozen values with no database or key material behind them (a root key appears only in
:class:`DeviceRecord`, kept out of its ``repr``), so they can cross a process or a network
boundary as they are.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from mchsm.sw.protocol import Evidence, UpdateAuth

__all__ = [
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
]


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
class PendingUpdate:
    """An update authorised but not yet confirmed: at most one per context (see
    :meth:`~mchsm.sw.verifier.Verifier.prepare_update`)."""

    ctx: int
    old: int
    new: int
    reference: bytes
    name: str


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
class SessionState:
    """A challenge as the registry holds it, for the verifier service's session calls.

    ``result`` is the outcome of the attempt that consumed it (an :class:`AttestationReport`,
    or the :class:`~mchsm.sw.errors.EvidenceError` it was rejected with), or None while it
    waits, or when the attempt was made in-process or its result has expired.
    """

    dev_id: bytes
    nonce: bytes
    sel: int
    expires: float
    used: bool
    result: AttestationReport | Exception | None = None


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
    #: selected contexts that have an update authorised but not yet confirmed: the task is
    #: genuine, but not the version its owner means it to run (EAR status "warning")
    pending: tuple[int, ...] = ()

    @classmethod
    def make(
        cls,
        dev_id: bytes,
        ctr: int,
        sel: int,
        ok: int,
        verdicts: dict[int, TaskVerdict],
        recovered: tuple[int, ...] = (),
    ) -> AttestationReport:
        """The same as the constructor, at a fifth of its cost: a frozen dataclass sets each
        field through ``object.__setattr__``, which was a tenth of a batched verification."""
        report = object.__new__(cls)
        report.__dict__.update(
            dev_id=dev_id,
            ctr=ctr,
            sel=sel,
            ok=ok,
            verdicts=verdicts,
            recovered=recovered,
            pending=(),
        )
        return report

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


#: one attestation to verify: (dev_id, nonce, evidence as an Evidence or its 44 wire bytes)
Attempt = tuple[bytes, bytes, Evidence | bytes]
