"""One HSM command on the host side, as a sans-I/O generator.

This is the mailbox protocol of ``docs/protocol.md`` section 9.3 - claim, ``LEN``, ``CMD``, data,
wait, result, release - written once, without any I/O: :func:`run_command` yields the bus
operations it wants (:class:`Read`, :class:`Write`, :class:`Burst`) and is sent their outcomes
(the word read, ``None`` for a write, :data:`REFUSED` when the HSM ended the cycle with
``err``).  :class:`~mchsm.sw.driver.HsmDriver` drives it over a transport; the isolation tests
drive several at once and interleave their operations with a hostile caller's, so what they
check is the very code the driver runs.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from mchsm.constants import Cmd, CmdReg, Ctrl, Reg, Status, StatusReg, pack_reg, unpack_reg
from mchsm.sw.errors import (
    ArgumentError,
    ArgumentTypeError,
    MailboxBusyError,
    MailboxLostError,
    TransportError,
)

__all__ = [
    "BURST_WORDS",
    "REFUSED",
    "Burst",
    "Op",
    "Outcome",
    "Read",
    "Reply",
    "WaitDone",
    "Write",
    "data_words",
    "run_command",
]

#: words per burst when streaming data (bounds memory for huge images)
BURST_WORDS = 1024


class _Refused:
    """The outcome of a bus operation the HSM refused (its cycle ended with ``err``)."""

    def __repr__(self) -> str:
        return "REFUSED"


REFUSED: Final = _Refused()


@dataclass(frozen=True)
class Read:
    addr: int


@dataclass(frozen=True)
class Write:
    addr: int
    value: int


@dataclass(frozen=True)
class Burst:
    """Words to one address one after the other (the DATA port); refused as a whole when any
    word is refused (the words before it were taken)."""

    addr: int
    values: tuple[int, ...]


@dataclass(frozen=True)
class WaitDone:
    """Wait until the holder's command is done, if the transport can see the interrupt line
    (a simulator can; a UART link cannot): then one STATUS read finds it done instead of
    hundreds of polls each costing a bus cycle.  Its outcome is None; a transport that cannot
    wait returns at once and the protocol polls."""


Op = Read | Write | Burst | WaitDone
Outcome = int | None | _Refused


@dataclass(frozen=True)
class Reply:
    """What one command returned: status, result bytes and the cycles the HSM spent."""

    cmd: Cmd | int
    status: Status
    result: bytes
    cycles: int

    def check(self) -> bytes:
        """The result, or :class:`~mchsm.sw.errors.HsmError` if the status is not OK."""
        from mchsm.sw.errors import HsmError

        if self.status is not Status.OK:
            raise HsmError(self.cmd, self.status)
        return self.result


def data_words(
    chunks: Iterable[bytes], burst: int = BURST_WORDS, length: int | None = None
) -> Iterator[tuple[int, ...]]:
    """Big-endian words of the concatenated chunks, ``burst`` at a time; the tail is padded.

    With ``length``, the chunks must add up to exactly that many bytes:
    :class:`~mchsm.sw.errors.ArgumentError` as soon as they exceed it (before a word of the
    excess is given out) or when they end short of it.  A chunk that is not bytes is an
    :class:`~mchsm.sw.errors.ArgumentTypeError`.
    """
    carry = b""
    words: list[int] = []
    total = 0
    for chunk in chunks:
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise ArgumentTypeError(
                f"data chunks must be bytes, not {type(chunk).__name__} (at byte {total})"
            )
        total += len(chunk)
        if length is not None and total > length:
            raise ArgumentError(f"the data is longer than the {length} bytes declared for it")
        data = carry + bytes(chunk)
        whole = len(data) - len(data) % 4
        for i in range(0, whole, 4):
            words.append(int.from_bytes(data[i : i + 4], "big"))
            if len(words) == burst:
                yield tuple(words)
                words = []
        carry = data[whole:]
    if length is not None and total < length:
        raise ArgumentError(
            f"the data ended after {total} of the {length} bytes declared for it (a file that "
            f"changed, or a length taken from st_size?)"
        )
    if carry:
        words.append(int.from_bytes(carry.ljust(4, b"\0"), "big"))
    if words:
        yield tuple(words)


Steps = Generator[Op, Outcome, Any]


def run_command(
    cmd: Cmd | int,
    ctx: int,
    data: bytes | Iterable[bytes],
    length: int,
    *,
    claim_limit: int,
    poll_limit: int,
    retries: int,
    burst: int = BURST_WORDS,
) -> Generator[Op, Outcome, Reply]:
    """Claim the mailbox, run one command, release it; return its :class:`Reply`.

    A command that lost the mailbox before its last data word was taken changed nothing and is
    issued again (``retries`` times, when ``data`` is ``bytes`` and so can be sent again);
    :class:`MailboxLostError` with ``ran=True`` when it had run and only its result was lost,
    :class:`MailboxBusyError` when another caller held the mailbox for ``claim_limit`` tries.
    """
    attempts = 1 + (retries if isinstance(data, bytes) else 0)
    for attempt in range(attempts):
        yield from _claim(claim_limit)
        try:
            reply = yield from _command(cmd, ctx, data, length, poll_limit, burst)
        except MailboxLostError as lost:
            if lost.ran or attempt + 1 == attempts:
                raise
            continue
        yield Write(Reg.CTRL, Ctrl.RELEASE)  # refused only if the manager took it: no loss
        return reply
    raise AssertionError("unreachable")  # pragma: no cover


def _claim(limit: int) -> Steps:
    for _ in range(limit):
        if (yield Write(Reg.CTRL, Ctrl.CLAIM)) is not REFUSED:
            return
    raise MailboxBusyError(
        f"could not claim the HSM mailbox in {limit} attempts: another caller holds it (the "
        f"OWNER register says who)"
    )


def _status(cmd: Cmd | int, *, ran: bool) -> Steps:
    """``STATUS`` as we read it; :class:`MailboxLostError` unless we hold the mailbox."""
    word = yield Read(Reg.STATUS)
    status = unpack_reg(StatusReg, word if isinstance(word, int) else 0)  # REFUSED: not mine
    if not status.mine:
        raise MailboxLostError(cmd, ran=ran)
    return status


def _wait(cmd: Cmd | int, status: Any, poll_limit: int, *, ran: bool) -> Steps:
    if status.busy:
        yield WaitDone()
    for _ in range(poll_limit):
        if not status.busy:
            return status
        status = yield from _status(cmd, ran=ran)
    raise TransportError(
        f"the HSM did not finish a command within {poll_limit} status polls "
        f"(STATUS=0x{status.as_bits():08x}); is all of its data written?"
    )


def _command(
    cmd: Cmd | int,
    ctx: int,
    data: bytes | Iterable[bytes],
    length: int,
    poll_limit: int,
    burst: int,
) -> Generator[Op, Outcome, Reply]:
    if (yield Write(Reg.LEN, length)) is REFUSED:
        # lost already, or a command of ours that a failed earlier call left behind
        status = yield from _status(cmd, ran=False)
        if status.expects and (yield Write(Reg.CTRL, Ctrl.ABORT)) is REFUSED:
            raise MailboxLostError(cmd, ran=False)
        yield from _wait(cmd, status, poll_limit, ran=False)
        if (yield Write(Reg.LEN, length)) is REFUSED:
            raise MailboxLostError(cmd, ran=False)
    if (yield Write(Reg.CMD, pack_reg(CmdReg, code=int(cmd), ctx=ctx))) is REFUSED:
        raise MailboxLostError(cmd, ran=False)
    # Lost before its data: it waited for data (aborted) or failed checks 1-6 (done at once);
    # neither changed anything.  A command without data ran at the CMD write.
    status = yield from _status(cmd, ran=length == 0)
    if status.expects:
        chunks = (data,) if isinstance(data, bytes) else data
        stream = data_words(chunks, burst, length)
        while True:
            try:
                words = next(stream)
            except StopIteration:
                break
            except Exception:
                # the data failed (wrong type or length, a file that cannot be read): end the
                # command before its last word, so it changes nothing, and hand the mailbox back
                yield Write(Reg.CTRL, Ctrl.ABORT)
                yield Write(Reg.CTRL, Ctrl.RELEASE)
                raise
            op: Op = Burst(Reg.DATA, words) if len(words) > 1 else Write(Reg.DATA, words[0])
            if (yield op) is REFUSED:
                # Lost, or ended early: a command that fails a check on a data word (ATTEST's
                # selection, UPDATE's version) is done at once and refuses the rest.  On a slow
                # link (the UART) the rest arrives after that; on a fast bus it is already in.
                status = yield from _status(cmd, ran=False)
                if status.expects or status.busy:
                    raise MailboxLostError(cmd, ran=False)
                break
    # All data is in (or none was due): the command runs to its end - the manager cannot take
    # the mailbox while it computes - so losing the mailbox now loses only its result.
    status = yield from _wait(cmd, status, poll_limit, ran=True)
    try:
        code = Status(status.status)
    except ValueError:
        raise TransportError(
            f"the HSM answered an unknown status 0x{int(status.status):02x}"
        ) from None
    result = bytearray()
    for i in range((status.reslen + 3) // 4):
        word = yield Read(Reg.RESULT + 4 * i)
        if word is REFUSED:
            raise MailboxLostError(cmd, ran=True)
        result += word.to_bytes(4, "big")  # type: ignore[union-attr]  # not REFUSED: an int
    cycles = yield Read(Reg.CYCLES)
    if cycles is REFUSED:
        raise MailboxLostError(cmd, ran=True)
    del result[status.reslen :]
    # `is REFUSED` does not narrow the outcome: cycles is an int here
    return Reply(cmd=cmd, status=code, result=bytes(result), cycles=int(cycles))  # type: ignore[arg-type]
