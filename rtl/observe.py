"""The internal signals the formal properties may name, in one place.

The proofs (:mod:`mchsm.rtl.formal`) speak of the core through its bus port, the
:class:`~mchsm.rtl.mailbox.CommandSignature` between mailbox and engine, and the signals listed
here - nothing else.  Each component fills its record while it elaborates
(``Mailbox.probes``, ``MchsmCore.probes``); a harness elaborates the core with
:func:`amaranth.hdl.Fragment.get` and then reads them.  Taking a probe adds no logic: the
values are signals the design has anyway, or comparisons that nothing in a build uses (and
that synthesis therefore removes).

When the RTL is restructured, these records are the one place to keep in step: a property
that names a field here keeps its meaning as long as the field does.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Signal, Value
from amaranth.lib import memory, wiring

__all__ = ["CoreProbes", "MailboxProbes", "ShaProbes"]


@dataclass(frozen=True)
class ShaProbes:
    """The control registers of the SHA-256 engine (``rtl/sha256.py``), which the proof of
    its handshake (``sha_contract``) needs as invariants: idle, the engine holds no round, no
    pending load and no padding state.

    Attributes
    ----------
    busy, ldpend, fin : Signal
        Busy with a message; a midstate load is pending; the cycle after the final round.
    rnd, wv : Signal
        The round to execute next; ``acc[0]`` holds its message word.
    pad, need80, lenblk : Signal
        The message input has ended; the ``0x80`` marker is still due; this block is the
        last (it carries the length).
    """

    busy: Signal
    ldpend: Signal
    fin: Signal
    rnd: Signal
    wv: Signal
    pad: Signal
    need80: Signal
    lenblk: Signal


@dataclass(frozen=True)
class MailboxProbes:
    """What the mailbox holds (``rtl/mailbox.py``).

    Attributes
    ----------
    state : Signal
        Its state register (``mailbox_state``); :attr:`ready` is the state in which it takes a
        new bus access.  Power-up starts in the wipe of the result window.
    ready : Value
        The mailbox is in its READY state: no wipe, no stalled write.
    wiping : Value
        The mailbox erases the result window (after power-up, a reset, a RELEASE or a
        preemption).
    stalled : Value
        A bus write waits for its effect (a CMD's checks, an ABORT, a RELEASE's or a
        preemption's wipe) and is answered when that is complete.
    issuing, aborting, releasing, preempting : Value
        Which write waits: a CMD (checks 1-6), an ABORT or a preemption's abort (the
        engine ends the command), a RELEASE's wipe, a preemption.
    held, holder : Signal
        Somebody holds the mailbox, and who (section 9.1).
    expects : Value
        The holder's command is in phase *data* (section 9.1).
    done : Signal
        ``STATUS.done`` of the holder's command.
    reslen : Signal
        ``STATUS.reslen``: the result length in bytes.
    """

    state: Signal
    ready: Value
    wiping: Value
    stalled: Value
    issuing: Value
    aborting: Value
    releasing: Signal
    preempting: Signal
    held: Signal
    holder: Signal
    expects: Value
    done: Signal
    reslen: Signal


@dataclass(frozen=True)
class CoreProbes:
    """The engine's persistent state and its memory ports (``rtl/core.py``).

    Attributes
    ----------
    mailbox : MailboxProbes
        The mailbox's record (available once the core's fragment has been elaborated).
    link : wiring.PureInterface
        The :class:`~mchsm.rtl.mailbox.CommandSignature` between mailbox and engine (the
        mailbox's end): ``start``, ``code``, ``ctx``, ``length``, ``caller``, ``busy``,
        ``done``, ``status`` ...
    sha : wiring.Component
        The SHA-256 engine instance (its ports are those of :class:`~mchsm.rtl.sha256.SHA256`).
    keymem, ctxmem, scratch : memory.Memory
        The key store, the context store and the scratch memory.
    key_write, ctx_write, scratch_write : memory.WritePort
        Their write ports (``addr``, ``data``, ``en``).
    provisioned, counter, bank, match, hk_valid : Signal
        Persistent state (kept across a warm reset): the device has a root key, the
        attestation counter, the current reference bank of each context, ``MATCH`` of each
        context, and which callers have imported an HMAC key.
    loaded, anomaly : Signal
        ``LOADED`` and ``ANOMALY`` of each context (cleared by a warm reset).
    commands, failures : tuple of Signal
        The monitor's counters of each task (section 8).
    verdict : Value
        High in the cycle in which UPDATE decides whether its tag verifies.
    tag_ok : Value
        That decision (valid while :attr:`verdict`).
    running : Value
        The engine runs the command's microcode (after its checks, before ``done``).
    pc : Signal
        The microinstruction running (its address in the program of ``rtl/microcode.py``).
    ret : tuple of Signal
        The return stack of ``CALL``/``RET``: ``ret[0]`` is where the next ``RET`` goes,
        ``ret[1]`` the one below it.
    slot : Signal
        The key store slot (word address) a subroutine works on, set by a ``CALL`` that
        names one.
    """

    mailbox_component: wiring.Component
    link: wiring.PureInterface
    sha: wiring.Component
    keymem: memory.Memory
    ctxmem: memory.Memory
    scratch: memory.Memory
    key_write: memory.WritePort
    ctx_write: memory.WritePort
    scratch_write: memory.WritePort
    provisioned: Signal
    counter: Signal
    bank: Signal
    match: Signal
    hk_valid: Signal
    loaded: Signal
    anomaly: Signal
    commands: tuple[Signal, ...]
    failures: tuple[Signal, ...]
    verdict: Value
    tag_ok: Value
    running: Value
    pc: Signal
    ret: tuple[Signal, Signal]
    slot: Signal

    @property
    def mailbox(self) -> MailboxProbes:
        probes: MailboxProbes = self.mailbox_component.probes  # a port-less attribute: Any
        return probes
