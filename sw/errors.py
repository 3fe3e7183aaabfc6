"""Typed errors of the host side, with messages a person can act on.

The HSM itself never raises: it answers with a status.  The host turns a failing status into an
:class:`HsmError` whose message says what went wrong in words; the verifier raises the
:class:`VerifierError` family.
"""

from __future__ import annotations

from typing import Self

from mchsm._errors import ArgumentError, ArgumentTypeError, MchsmError
from mchsm.constants import STATUS_TEXT, Cmd, Status

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "AttestationError",
    "BusRefusedError",
    "ConcurrencyError",
    "ContextError",
    "FrameError",
    "HsmError",
    "InputError",
    "MailboxBusyError",
    "MailboxError",
    "MailboxLostError",
    "MchsmError",
    "TransportError",
    "UnknownDeviceError",
    "UpdateError",
    "VerifierError",
    "explain",
]


def explain(status: Status) -> str:
    """What a status means, in words (:data:`mchsm.constants.STATUS_TEXT`)."""
    return STATUS_TEXT[status]


class ContextError(ArgumentError):
    """A context outside 1..N of this HSM was named: refused by the driver, never masked."""


class InputError(MchsmError):
    """A file or stream given as input cannot be used: not a file, unreadable or too large."""


class HsmError(MchsmError):
    """An HSM command ended with a status other than OK."""

    def __init__(self, cmd: Cmd | int, status: Status) -> None:
        self.cmd = cmd
        self.status = status
        name = cmd.name if isinstance(cmd, Cmd) else f"command 0x{cmd:02x}"
        super().__init__(f"{name} failed with {status.name}: {STATUS_TEXT.get(status, 'unknown')}")


class TransportError(MchsmError):
    """The bus or link to the HSM misbehaved (timeout, bad frame, no such device)."""


class FrameError(TransportError, ValueError):
    """Bytes that are not a whole, valid request frame of the UART link; the message starts
    with the :class:`~mchsm.constants.LinkStatus` the bridge answers it with."""


class ConcurrencyError(MchsmError, RuntimeError):
    """Something that runs one at a time was started twice: a second command on a driver
    whose first has not finished, a second detector on one kernel.  A program error."""


class BusRefusedError(TransportError):
    """The HSM ended a bus cycle with ``err``: the access was refused and changed nothing.

    The mailbox refuses what its holder rules do not allow (``docs/protocol.md`` section 9): an
    access by a caller that does not hold it, or a register written at the wrong time.
    """


class MailboxError(MchsmError):
    """A command could not be run or finished through the mailbox (section 9 of the spec)."""


class MailboxBusyError(MailboxError):
    """Another caller held the mailbox for longer than the driver was willing to wait."""


class MailboxLostError(MailboxError):
    """The caller lost the mailbox in the middle of a command: the manager took it back.

    ``ran`` says what became of the command: False when it lost the mailbox before its last data
    word was taken (aborted, nothing changed, it may be issued again), True when the command had
    run and only its result was lost (it must not simply be repeated).
    """

    def __init__(self, cmd: Cmd | int, *, ran: bool) -> None:
        self.cmd = cmd
        self.ran = ran
        name = cmd.name if isinstance(cmd, Cmd) else f"command 0x{cmd:02x}"
        what = (
            "it had run, but its result was erased before it could be read"
            if ran
            else "it was aborted before all its data was taken and changed nothing"
        )
        super().__init__(f"{name} lost the HSM mailbox to the manager: {what}")


class VerifierError(MchsmError):
    """The verifier refused something."""


class UnknownDeviceError(VerifierError):
    """The device id is not in the registry."""


class AttestationError(VerifierError):
    """Evidence was rejected: bad tag, unknown/used/expired nonce, or a stale counter."""


class UpdateError(VerifierError):
    """An update could not be prepared or its acknowledgement did not verify."""


class InvalidArgumentError(VerifierError, ValueError):
    """A verifier call got an argument of the wrong type, size or range; nothing was done.

    Also a :class:`ValueError`, which is what such calls raised before they had a typed error.
    """


class StoreError(VerifierError):
    """The registry cannot be used: damaged, truncated, foreign, of a newer schema, unreachable,
    or a file whose permissions would leak it.  The message says which, and what to do."""


class KekError(VerifierError):
    """The key-encryption key that wraps the root keys is missing, unsafe or not the one the
    registry was wrapped with."""


__all__ += ["InvalidArgumentError", "KekError", "StoreError"]


class SessionError(AttestationError):
    """An attempt answered a challenge that cannot take it: unknown (never issued, purged, or
    issued for another device), already used, or expired.  ``reason`` says which: ``unknown``,
    ``used`` or ``expired``.  The evidence was not judged."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[type[Self], tuple[str, str | int]]:
        return (type(self), (str(self), self.reason))


class EvidenceError(AttestationError):
    """Evidence answered a live challenge and was judged untrustworthy.  ``reason``:
    ``malformed`` (not 44 bytes of evidence), ``selection`` (not the selection asked for),
    ``signature`` (the tag does not verify) or ``replay`` (a counter not above the last).
    ``tasks`` names the tasks the challenge asked about (context -> name), where known."""

    tasks: dict[int, str] = {}  # noqa: RUF012 (replaced per instance, never mutated)

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[type[Self], tuple[str, str | int]]:
        return (type(self), (str(self), self.reason))


class ServiceError(VerifierError):
    """The verifier service could not be reached, or answered with an error that has no more
    precise type; ``status`` is the HTTP status (0 when there was no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[Self], tuple[str, str | int]]:
        return (type(self), (str(self), self.status))


class AuthorizationError(ServiceError):
    """An admin call of the verifier service without a valid credential (HTTP 401)."""


__all__ += ["AuthorizationError", "EvidenceError", "ServiceError", "SessionError"]
