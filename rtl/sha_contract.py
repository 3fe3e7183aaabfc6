"""What the core may rely on from its SHA-256 engine, and an abstraction of the engine built on it.

The formal proofs cannot afford the real engine: a message takes 64 clocks per block and its
digest is 64 rounds of 32-bit arithmetic, so a bounded proof would spend its whole depth inside
one hash.  They replace it by :class:`AbstractSHA256`, which has the same ports, follows the same
handshake, and may answer at any time the handshake allows:

* it takes message words whenever the handshake allows (``ready`` is a free choice there), and
  finishes a message at any time after its last word was taken or ``cut`` was raised, so a
  message may take as few as two clocks;
* its digest is an *oracle*: the eight words ``H`` takes when a message ends are an input of
  the abstraction, chosen freely (a single-copy proof) or equal in two copies exactly when both
  were fed the same message from the same midstate (a two-copy proof, see
  :mod:`mchsm.rtl.formal`);
* the ``H`` ring (``shift``/``load``/``shift_in``) works exactly like the engine's.

That this covers the real engine is itself proven: :class:`ShaProtocol` is the handshake as a
set of rules, :func:`protocol_rules` turns it into assertions, and the ``sha_contract`` property
proves them on :class:`~mchsm.rtl.sha256.SHA256` by k-induction.  Every behaviour of the real
engine at its control ports is therefore one of the abstraction's, and a property proven with
the abstraction holds with the real engine too (for its digests the abstraction allows any
value, which includes the right one).
"""

from amaranth.hdl import Cat, Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from mchsm.rtl.sha256 import MESSAGE_WORD, MessageStreamNames

__all__ = ["AbstractSHA256", "ShaProtocol", "protocol_rules"]


class ShaProtocol(wiring.Component):
    """The engine's handshake, followed from its ports.

    Its registers say what the engine may do next: whether it is ``busy`` (in the abstraction
    that is its own state; watching the real engine it must agree), whether the message has
    ended (its last word was taken: ``ended``), and whether ``cut`` was raised while busy.

    Allowed, in every cycle:

    * ``ready`` only while busy with a message whose last word has not been taken, or in the
      idle cycle of a ``resume`` without ``shift`` (word 0 may come with it);
    * ``busy`` rises exactly in the cycle after an accepted ``start``/``resume``, and falls only
      into a ``done`` cycle;
    * ``done`` only right after a busy cycle in which the message had ended or was cut.
    """

    start: In(1)
    resume: In(1)
    shift: In(1)
    cut: In(1)
    valid: In(1)
    last: In(1)
    ready: In(1)  # the engine's outputs, as observed or as chosen
    busy: In(1)
    done: In(1)

    ended: Out(1)
    cutseen: Out(1)
    was_busy: Out(1)
    accepted: Out(1)  # a start/resume was accepted in the previous cycle
    ready_ok: Out(1)  # this cycle's ready is allowed
    done_ok: Out(1)  # a done in this cycle would be allowed (given the previous cycle)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        idle = ~self.busy
        cmd_start = idle & self.start
        cmd_resume = idle & self.resume & ~self.start
        take = self.valid & self.ready
        could_end = Signal()  # the previous cycle was busy with an ended or cut message
        m.d.sync += [
            self.was_busy.eq(self.busy),
            self.accepted.eq(cmd_start | cmd_resume),
            could_end.eq(self.busy & (self.ended | self.cutseen)),
        ]
        with m.If(cmd_start):
            m.d.sync += [self.ended.eq(0), self.cutseen.eq(0)]
        with m.Elif(cmd_resume):
            m.d.sync += [self.ended.eq(take & self.last), self.cutseen.eq(0)]
        with m.Elif(self.done):
            m.d.sync += [self.ended.eq(0), self.cutseen.eq(0)]
        with m.Else():
            with m.If(take & self.last):
                m.d.sync += self.ended.eq(1)
            with m.If(self.cut & self.busy):
                m.d.sync += self.cutseen.eq(1)
        m.d.comb += [
            self.ready_ok.eq((self.busy & ~self.ended) | (cmd_resume & ~self.shift)),
            self.done_ok.eq(could_end),
        ]
        return m


def protocol_rules(p: ShaProtocol, ready: Value, busy: Value, done: Value) -> list[Value]:
    """The handshake rules over an engine's outputs, each a condition that must hold.

    ``p`` follows the same engine (its ``ready``/``busy``/``done`` inputs are these values).
    Rules that look one cycle back hold from the second cycle after a reset on.
    """
    return [
        ~ready | p.ready_ok,
        ~done | (p.done_ok & ~busy),
        ~(busy & ~p.was_busy) | p.accepted,  # busy rises only after start/resume
        ~p.accepted | busy,  # ... and always does
        ~(~busy & p.was_busy) | done,  # busy falls only into done
    ]


class AbstractSHA256(MessageStreamNames, wiring.Component):
    """The engine reduced to its handshake, with free timing and an oracle for digests.

    Same ports as :class:`~mchsm.rtl.sha256.SHA256`, plus the choices a proof makes for it.

    Attributes
    ----------
    choose_ready : In(1)
        Take a word in this cycle if the handshake allows one.
    choose_finish : In(1)
        End the message in this cycle (``done`` next cycle) if the handshake allows it.
    oracle : In(256)
        The eight digest words (``H0`` in the low word) a message ends with; read in the
        ``done`` cycle, and as the digest while busy (when the real engine's ``H`` is
        intermediate).
    h : Out(256)
        The ``H`` ring, as the next cycle would start a message from it (a ``resume`` loads
        it as the midstate).
    protocol : ShaProtocol
        The handshake state (``ended``: the message's last word was taken).
    """

    msg: In(stream.Signature(MESSAGE_WORD))

    start: In(1)
    resume: In(1)
    cut: In(1)
    shift: In(1)
    load: In(1)
    shift_in: In(32)
    digest: Out(32)
    busy: Out(1)
    done: Out(1)

    choose_ready: In(1)
    choose_finish: In(1)
    oracle: In(256)
    h: Out(256)

    def __init__(self) -> None:
        super().__init__()
        self.protocol = ShaProtocol()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.protocol = p = self.protocol
        busy = Signal()
        done = Signal()
        for name in ("start", "resume", "shift", "cut"):
            m.d.comb += getattr(p, name).eq(getattr(self, name))
        m.d.comb += [
            p.valid.eq(self.msg.valid),
            p.last.eq(self.msg.payload.last),
            p.ready.eq(self.msg.ready),
            p.busy.eq(busy),
            p.done.eq(done),
            self.busy.eq(busy),
            self.done.eq(done),
            self.msg.ready.eq(self.choose_ready & p.ready_ok),
        ]
        idle = ~busy
        finish = self.choose_finish & busy & (p.ended | p.cutseen)
        m.d.sync += done.eq(finish)
        with m.If(idle & (self.start | self.resume)):
            m.d.sync += busy.eq(1)
        with m.Elif(finish):
            m.d.sync += busy.eq(0)

        # the H ring: reset_less like the engine's, so a reset leaves it as it was
        hv = [Signal(32, name=f"h{i}", reset_less=True) for i in range(8)]
        oracle = [self.oracle[32 * i : 32 * (i + 1)] for i in range(8)]
        now = [Mux(done, o, h) for o, h in zip(oracle, hv, strict=True)]
        do_shift = idle & self.shift & ~self.start
        ring = [*now[1:], Mux(self.load, self.shift_in, now[0])]
        nxt = [Mux(do_shift, r, v) for r, v in zip(ring, now, strict=True)]
        m.d.sync += [h.eq(v) for h, v in zip(hv, nxt, strict=True)]
        m.d.comb += [
            self.digest.eq(Mux(busy, oracle[0], now[0])),
            self.h.eq(Cat(*nxt)),
        ]
        return m
