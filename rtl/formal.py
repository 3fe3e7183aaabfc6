"""Formal properties of the HSM core, as harnesses around the real core (run by SymbiYosys).

Each property is an Amaranth module that instantiates :class:`~mchsm.rtl.core.MchsmCore` - once,
or twice for a two-copy (2-safety) property - drives its bus with a free Wishbone B4 initiator
and states ``Assert``/``Assume``/``Cover`` over the bus port, the
:class:`~mchsm.rtl.mailbox.CommandSignature` between mailbox and engine, and the documented
internal signals of :mod:`mchsm.rtl.observe`.  :data:`PROPERTIES` lists them with the engine,
depth and deliberately broken variants (:data:`~mchsm.rtl.core.CORE_FLAWS`,
:data:`~mchsm.rtl.mailbox.FLAWS`) each must reject; :mod:`mchsm.rtl.symbiyosys` runs them.
``docs/proofs.md`` (section "The RTL") says in words what each proves, assumes and leaves out.

Conventions shared by every harness
-----------------------------------
* **Start state.**  The mailbox starts in READY: power-up would first spend 33 cycles
  erasing a result window that is already zero, and ends in exactly this state.  Where a
  harness says so, the persistent state (``provisioned``, the attestation counter, banks,
  ``MATCH``, the HMAC key flags) and ``LOADED``/``ANOMALY`` start arbitrary, so that one
  bounded run covers devices in any such state; memories start as at power-up (zero) unless
  a harness frees them (the key store of the secrecy property).
* **Resets.**  The logic reset is a free input in every cycle (a warm reset at any time),
  except where a harness excludes it.
* **The bus.**  A free initiator: any access by any caller id in any cycle, held unchanged
  until it is answered (Wishbone B4 rules for an initiator).
* **SHA-256.**  Except in the ``wishbone`` and ``sha_contract`` properties, the engine is
  :class:`~mchsm.rtl.sha_contract.AbstractSHA256`: the real handshake with free timing and
  digests from an oracle (free in a single copy; in two copies equal exactly when both copies
  hashed the same message from the same midstate).  ``sha_contract`` proves that the real
  engine's handshake is one the abstraction allows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Literal

from amaranth.asserts import AnyConst, AnySeq, Initial
from amaranth.hdl import (
    Assert,
    Assume,
    Cat,
    ClockDomain,
    Const,
    Cover,
    Elaboratable,
    Fragment,
    Module,
    Mux,
    ResetSignal,
    Signal,
    Value,
)

from mchsm.constants import (
    DIGEST_SIZE,
    EVIDENCE_FIELDS,
    MANAGER,
    MONITOR_BUDGET,
    MONITOR_FAIL_LIMIT,
    RESULT_SIZE,
    Access,
    Cmd,
    Ctrl,
    Reg,
    Status,
    command_spec,
)
from mchsm.rtl import microcode as uc
from mchsm.rtl.core import CORE_FLAWS, CTX_STRIDE, HMAC_SLOT0, KEY_SLOT_WORDS, S_DEV, MchsmCore
from mchsm.rtl.mailbox import FLAWS
from mchsm.rtl.observe import CoreProbes
from mchsm.rtl.sha256 import SHA256
from mchsm.rtl.sha_contract import AbstractSHA256, ShaProtocol, protocol_rules

__all__ = ["MAC_WORDS", "PROPERTIES", "Harness", "Job", "Property", "jobs"]

#: Result words that are a MAC, by command (section 4: the MAC is the last 32 bytes of the
#: result of TASK_MAC, HMAC, ATTEST's evidence and UPDATE's acknowledgement).  Only these may
#: differ between two devices that differ in their keys.
assert EVIDENCE_FIELDS[-1] == ("tag", DIGEST_SIZE)
MAC_WORDS: dict[Cmd, range] = {
    cmd: range((RESULT_SIZE[cmd] - DIGEST_SIZE) // 4, RESULT_SIZE[cmd] // 4)
    for cmd in (Cmd.TASK_MAC, Cmd.HMAC, Cmd.ATTEST, Cmd.UPDATE)
}
#: key store words of K_root, K_att and K_upd (three slots of ipad and opad midstates)
FIXED_KEY_WORDS = 3 * KEY_SLOT_WORDS
#: scratch words of the device id
DEV_ID_WORDS = range(S_DEV, S_DEV + 4)
#: registers that are the caller's own (section 9.2): what its reads of them return is
#: private; ID, INFO, IRQ_EN and OWNER are public
PRIVATE_READS = (Reg.LEN, Reg.STATUS, Reg.CYCLES)

Mode = Literal["prove", "bmc", "cover"]


def _word(reg: Reg) -> int:
    return reg.value >> 2


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


class Harness(Elaboratable):
    """A property's top module; :attr:`script` collects the Yosys commands it needs before
    ``prep`` (state that starts arbitrary instead of at its power-up value)."""

    contexts = 2
    copies = 1  #: copies of the core (2 for a 2-safety miter); the runner's cost estimate

    def __init__(self, flaw: str | None = None, **params: Any) -> None:
        self.flaw = flaw
        self.params = params
        self.script: list[str] = []
        #: the one clock; a port of the top module (undriven, Amaranth would tie it to 0)
        self.cd = ClockDomain("sync")

    def core(
        self,
        m: Module,
        name: str,
        *,
        abstract: bool = True,
        contexts: int | None = None,
        **kw: Any,
    ) -> tuple[MchsmCore, CoreProbes]:
        """The real core as submodule ``name``, flawed as this job asks, starting in READY."""
        core = MchsmCore(
            contexts or self.contexts,
            flaws=frozenset([self.flaw]) if self.flaw else frozenset(),
            engine=AbstractSHA256 if abstract else None,
            **kw,
        )
        m.submodules[name] = Fragment.get(core, None)
        probes = core.probes
        self.free_init(name + ".mailbox", probes.mailbox.state)
        with m.If(Initial()):
            m.d.comb += Assume(probes.mailbox.ready)
        return core, probes

    def free_init(self, path: str, signal: Signal) -> None:
        """``signal`` (a register of submodule ``path``) starts arbitrary."""
        where = f"top.{path}/w:{signal.name}"
        self.script += [f"select -assert-count 1 {where}", f"setattr -unset init {where}"]

    def free_memory(self, path: str, memid: str) -> None:
        """Memory ``memid`` of submodule ``path`` starts with arbitrary contents."""
        where = f"top.{path}/t:$meminit_v2 top.{path}/r:MEMID=\\{memid} %i"
        self.script += [f"select -assert-count 1 {where}", f"delete {where}"]

    def free_persistent(self, m: Module, name: str, probes: CoreProbes) -> list[Signal]:
        """Persistent state and the context flags of core ``name`` start arbitrary."""
        regs = [
            probes.provisioned,
            probes.counter,
            probes.bank,
            probes.match,
            probes.hk_valid,
            probes.loaded,
            probes.anomaly,
        ]
        for reg in regs:
            self.free_init(name, reg)
        return regs

    def initiator(self, m: Module, extra: Sequence[Signal] = ()) -> tuple[Request, Signal]:
        """The free initiator (:func:`free_request`), directed by the job's ``script``."""
        req, answered = free_request(m, extra)
        if self.params.get("script"):
            follow(
                m, req, answered, self.params["script"], eager=self.params.get("eager_bus", False)
            )
        return req, answered

    def domain(self, m: Module, *, resets: bool = True) -> Signal:
        """The clock domain; a free warm reset in any cycle unless ``resets`` is off."""
        m.domains.sync = self.cd
        rst = Signal()
        resets = resets and self.params.get("resets", True)
        m.d.comb += [rst.eq(AnySeq(1) if resets else 0), ResetSignal().eq(rst)]
        return rst


@dataclass
class Request:
    """One cycle's bus access by the free initiator (before it is given to a core)."""

    cyc: Signal
    stb: Signal
    we: Signal
    adr: Signal
    dat_w: Signal
    sel: Signal
    caller: Signal

    def fields(self) -> list[Signal]:
        return [self.cyc, self.stb, self.we, self.adr, self.dat_w, self.sel, self.caller]

    def write(self, reg: Reg) -> Value:
        return self.cyc & self.stb & self.we & (self.adr == _word(reg))

    def read(self, reg: Reg) -> Value:
        return self.cyc & self.stb & ~self.we & (self.adr == _word(reg))

    def result_read(self) -> Value:
        return self.cyc & self.stb & ~self.we & (self.adr >= _word(Reg.RESULT))


def free_request(m: Module, extra: Sequence[Signal] = ()) -> tuple[Request, Signal]:
    """A free access, held with ``extra`` until answered.  Returns it and the ``answered``
    signal the caller must drive (the reference copy's ``ack | err``)."""
    req = Request(
        cyc=Signal(),
        stb=Signal(),
        we=Signal(),
        adr=Signal(6),
        dat_w=Signal(32),
        sel=Signal(4),
        caller=Signal(6),
    )
    held = [*req.fields(), *extra]
    m.d.comb += [s.eq(AnySeq(len(s))) for s in req.fields()]
    answered = Signal()
    pending = Signal()  # a request was presented last cycle and not answered: it stays
    m.d.sync += pending.eq(req.cyc & req.stb & ~answered)
    last = [Signal(len(s), name=f"held_{i}") for i, s in enumerate(held)]
    m.d.sync += [p.eq(s) for p, s in zip(last, held, strict=True)]
    with m.If(pending):
        m.d.comb += Assume(Cat(*held) == Cat(*last))
    return req, answered


@dataclass(frozen=True)
class Step:
    """One access of a directed initiator: ``caller`` writes ``data`` to ``reg`` (any value
    where ``data`` is None), or reads it; ``word`` is the word within the result window."""

    caller: int
    reg: Reg
    data: int | None = None
    read: bool = False
    word: int = 0
    wait: bool = False  #: may come any number of cycles after the step before


def follow(
    m: Module, req: Request, answered: Value, script: Sequence[Step], *, eager: bool = False
) -> None:
    """Restrict the free initiator to ``script``, in order, and nothing after it; with
    ``eager`` each access comes at once unless its step waits (any number of idle cycles).

    A broken variant's counterexample can need more cycles than a search over every
    initiator reaches in reasonable time; a directed one is still a real run of the design.
    """
    index = Signal(range(len(script) + 1), name="script_step")
    with m.If(answered & (index < len(script))):
        m.d.sync += index.eq(index + 1)
    active = req.cyc & req.stb
    with m.Switch(index):
        for k, step in enumerate(script):
            with m.Case(k):
                match = (
                    (req.caller == step.caller)
                    & (req.adr == _word(step.reg) + step.word)
                    & (req.we == int(not step.read))
                )
                if step.data is not None:
                    match = match & (req.dat_w == step.data)
                with m.If(active):
                    m.d.comb += Assume(match)
                if eager and not step.wait:  # at once, unless the step waits for its moment
                    m.d.comb += Assume(active)
        with m.Default():
            m.d.comb += Assume(~active)


def drive(m: Module, core: MchsmCore, req: Request, *, present: Value | bool = True) -> None:
    """Give ``req`` to ``core`` (or, where ``present`` is low, no access at all)."""
    bus = core.bus
    m.d.comb += [
        bus.cyc.eq(req.cyc & present),
        bus.stb.eq(req.stb & present),
        bus.we.eq(req.we),
        bus.adr.eq(req.adr),
        bus.dat_w.eq(req.dat_w),
        bus.sel.eq(req.sel),
        core.caller.eq(req.caller),
    ]


def free_engine(m: Module, probes: CoreProbes, *, eager: bool = False) -> None:
    """A single copy's abstract SHA engine: free digests, free timing (or, ``eager``, the
    fastest the handshake allows)."""
    sha = probes.sha
    m.d.comb += [
        sha.choose_ready.eq(1 if eager else AnySeq(1)),
        sha.choose_finish.eq(1 if eager else AnySeq(1)),
        sha.oracle.eq(AnySeq(256)),
    ]


def paired_engines(m: Module, a: CoreProbes, b: CoreProbes, *, eager: bool = False) -> None:
    """Two copies' abstract engines: the same choices while their handshakes agree, and the
    same digest exactly when both hashed the same message from the same midstate."""
    sa, sb = a.sha, b.sha
    pa, pb = sa.protocol, sb.protocol
    control = ("start", "resume", "shift", "cut", "valid", "last")
    lock = Cat(*(getattr(sa, s) for s in control), sa.busy, pa.ended, pa.cutseen) == Cat(
        *(getattr(sb, s) for s in control), sb.busy, pb.ended, pb.cutseen
    )
    ready_a, finish_a, oracle_a = AnySeq(1), AnySeq(1), AnySeq(256)
    if eager:
        ready_a = finish_a = Const(1)
    m.d.comb += [
        sa.choose_ready.eq(ready_a),
        sa.choose_finish.eq(finish_a),
        sa.oracle.eq(oracle_a),
        sb.choose_ready.eq(Mux(lock, ready_a, AnySeq(1))),
        sb.choose_finish.eq(Mux(lock, finish_a, AnySeq(1))),
    ]

    def taken(sha: Any) -> Value:  # an AbstractSHA256, which CoreProbes.sha types as a Component
        """The word taken this cycle, its bytes beyond ``nbytes`` of a last word zeroed."""
        keep = Cat(
            *(
                Mux(~sha.last | (sha.nbytes > 3 - j), 0xFF, 0)
                for j in range(4)  # byte j from the bottom is bits 8j..8j+7
            )
        )
        mask = Cat(*(Mux(keep[j], Const(0xFF, 8), Const(0, 8)) for j in range(4)))
        return Cat(sha.data & mask, sha.last, Mux(sha.last, sha.nbytes, 0))

    take_a = sa.valid & sa.ready
    take_b = sb.valid & sb.ready
    begin_a = ~sa.busy & (sa.start | sa.resume)
    begin_b = ~sb.busy & (sb.start | sb.resume)
    words_same = (take_a == take_b) & (~take_a | (taken(sa) == taken(sb)))
    cuts_same = ~(sa.busy | sb.busy) | (sa.cut == sb.cut)
    same = Signal(init=1)  # the messages so far are the same, from the same midstate
    fresh = Mux(sa.start, 1, sa.h == sb.h)  # a new message: from the IV, or from H
    same_now = Signal()
    m.d.comb += same_now.eq(
        Mux(
            begin_a | begin_b,
            (begin_a == begin_b) & (sa.start == sb.start) & fresh & words_same,
            same & words_same & cuts_same,
        )
    )
    m.d.sync += same.eq(same_now)
    # the digest a message ends with (read in its done cycle, or while busy) is that of the
    # message whose history `same` holds
    m.d.comb += sb.oracle.eq(Mux(same & lock, oracle_a, AnySeq(256)))


def observe(m: Module, core: MchsmCore) -> tuple[Signal, Signal, Signal, Signal]:
    """``ack``, ``err``, ``dat_r`` and ``irq`` of a core."""
    return core.bus.ack, core.bus.err, core.bus.dat_r, core.irq


@dataclass(frozen=True)
class ProgramState:
    """Where a command's microcode may be: the instruction, the return stack and the key slot
    of the running subroutine (``None``: anything, left from an earlier command)."""

    pc: int
    ret0: int | None = None
    ret1: int | None = None
    slot: uc.Load | None = None


@cache
def program_states(cmd: Cmd) -> frozenset[ProgramState]:
    """Every :class:`ProgramState` the engine can be in while it runs ``cmd``, found by
    following the assembled program (``rtl/microcode.py``) from the command's entry: ``CALL``
    pushes (``ret1`` takes ``ret0``) and sets the slot when it names one, ``RET`` pops
    (``ret0`` takes ``ret1``, which keeps its value), as ``rtl/core.py`` does."""
    program = uc.assemble()
    code, labels = program.code, program.labels
    seen: set[ProgramState] = set()
    todo = [ProgramState(labels[uc.ENTRY[cmd]])]
    while todo:
        state = todo.pop()
        if state in seen:
            continue
        seen.add(state)
        u = code[state.pc]
        target = labels[u.target] if isinstance(u.target, str) else u.target
        op = uc.Op
        if u.op is op.DONE:
            continue
        if u.op is op.JUMP:
            todo.append(replace(state, pc=target))
        elif u.op is op.JUMP_IF_LONG:
            todo += [replace(state, pc=target), replace(state, pc=state.pc + 1)]
        elif u.op is op.CALL:
            slot = state.slot if u.load is uc.Load.NONE else u.load
            todo.append(ProgramState(target, state.pc + 1, state.ret0, slot))
        elif u.op is op.RET:
            assert state.ret0 is not None, f"{cmd.name}: RET at {state.pc} with no CALL"
            todo.append(ProgramState(state.ret0, state.ret1, state.ret1, state.slot))
        else:
            todo.append(replace(state, pc=state.pc + 1))
    return frozenset(seen)


def _slot_is(slot: Signal, load: uc.Load, caller: Value) -> Value:
    """The slot register holds what a ``CALL`` naming ``load`` puts there (for ``HMAC``: the
    slot of the caller's own imported key)."""
    if load is uc.Load.HMAC:
        return slot == Cat(Const(0, 4), HMAC_SLOT0 + caller)[: len(slot)]
    return slot == uc.SLOT_ADDRESS[load]


def mailbox_invariants(probes: CoreProbes, contexts: int) -> list[Value]:
    """What keeps the command's caller fixed while the engine runs it: a command runs only
    while its caller holds the mailbox, which nobody else can then claim; a release waits
    for the command's end; no wipe (whose end may hand the mailbox to the manager) while the
    microcode runs; and the caller passed check 2 (it exists)."""
    mb, link = probes.mailbox, probes.link
    return [
        ~link.busy | mb.held,
        ~mb.releasing | (mb.wiping & ~link.busy),
        ~mb.wiping | ~probes.running,
        ~probes.running | (link.caller <= contexts),
    ]


def program_invariant(probes: CoreProbes) -> Value:
    """While the engine runs a command, its program counter, return stack and key slot are
    a :func:`program_states` of that command (the command is the mailbox's ``code``, which
    stays as it is while the engine is busy).  An invariant that makes properties about
    which command writes where inductive."""
    link = probes.link
    ok: Value = Const(0)
    for cmd in Cmd:
        for state in program_states(cmd):
            term = (link.code == cmd) & (probes.pc == state.pc)
            if state.ret0 is not None:
                term = term & (probes.ret[0] == state.ret0)
            if state.ret1 is not None:
                term = term & (probes.ret[1] == state.ret1)
            if state.slot is not None:
                term = term & _slot_is(probes.slot, state.slot, link.caller)
            ok = ok | term
    return ~probes.running | ok


def _provisioned_at() -> int:
    """Address of PROVISION's ``PROVISIONED`` step (every subroutine comes before it)."""
    program = uc.assemble()
    start = program.labels[uc.ENTRY[Cmd.PROVISION]]
    for pc in range(start, len(program.code)):
        u = program.code[pc]
        if u.op is uc.Op.SPECIAL and u.target == uc.Special.PROVISIONED:
            assert all(pc > s.pc for s in program_states(Cmd.PROVISION) if s.pc < start)
            return pc
    raise AssertionError("PROVISION has no PROVISIONED step")


# ---------------------------------------------------------------------------------------------
# The properties
# ---------------------------------------------------------------------------------------------


class ShaContractHarness(Harness):
    """The real SHA-256 engine keeps the handshake that :class:`AbstractSHA256` allows."""

    def elaborate(self, platform: object) -> Module:
        m = Module()
        rst = self.domain(m)
        sha = SHA256()
        m.submodules.sha = Fragment.get(sha, None)  # elaborated now: its probes exist
        m.submodules.protocol = p = ShaProtocol()
        for name in ("data", "valid", "last", "nbytes", "start", "resume", "cut", "shift", "load"):
            port = getattr(sha, name)
            m.d.comb += port.eq(AnySeq(len(port)))
        m.d.comb += sha.shift_in.eq(AnySeq(32))
        for name in ("start", "resume", "shift", "cut", "valid", "last", "ready", "busy", "done"):
            m.d.comb += getattr(p, name).eq(getattr(sha, name))
        after_reset = Signal()  # the previous cycle was not a reset
        m.d.sync += after_reset.eq(1)
        rules = protocol_rules(p, sha.ready, sha.busy, sha.done)
        if self.flaw == "narrow_contract":  # forgets that word 0 may come with a resume
            rules[0] = ~sha.ready | (p.busy & ~p.ended)
        with m.If(after_reset & ~rst):
            for i, rule in enumerate(rules):
                m.d.comb += Assert(rule, f"rule {i}")
        # invariants of the engine's control that make the rules inductive
        q = sha.probes
        m.d.comb += [
            Assert(
                q.busy | ((q.rnd == 0) & ~q.wv & ~q.pad & ~q.need80 & ~q.lenblk & ~q.fin),
                "idle_clean",
            ),
            Assert(~q.ldpend | q.busy, "ldpend_busy"),
            Assert(~(q.pad | q.need80 | q.lenblk) | (q.pad & (p.ended | p.cutseen))),
            Assert(~q.fin | (p.ended | p.cutseen)),
            Assert(~(q.busy & p.ended) | q.pad),
            Assert(q.busy | sha.done | ~(p.ended | p.cutseen), "idle_monitor"),
        ]
        return m


class WishboneHarness(Harness):
    """Wishbone B4 rules on the bus port of the core as exported (real SHA-256, N = 8)."""

    def elaborate(self, platform: object) -> Module:
        m = Module()
        self.domain(m)
        core, probes = self.core(m, "dut", abstract=False, contexts=8)
        req, answered = self.initiator(m)
        drive(m, core, req)
        bus = core.bus
        m.d.comb += answered.eq(bus.ack | bus.err)
        last_answer = Signal()
        pending = Signal()
        m.d.sync += [last_answer.eq(bus.ack | bus.err), pending.eq(req.cyc & req.stb & ~answered)]
        m.d.comb += [
            Assert(~(bus.ack & bus.err)),  # never both
            Assert(~(bus.ack | bus.err) | (bus.cyc & bus.stb)),  # only for an active request
            Assert(~(bus.ack | bus.err) | ~last_answer),  # one answer per request
            # helpers: the mailbox answers on its own only while a request waits for it
            Assert(~probes.mailbox.stalled | pending),
            Assert(~(bus.ack | bus.err) | pending),
        ]
        return m


class MonitorHarness(Harness):
    """The monitor's counters count, saturate and never wrap (section 8)."""

    def elaborate(self, platform: object) -> Module:
        m = Module()
        rst = self.domain(m)
        budget = self.params.get("budget", MONITOR_BUDGET)
        limit = self.params.get("fail_limit", MONITOR_FAIL_LIMIT)
        core, probes = self.core(m, "dut", budget=budget, fail_limit=limit)
        self.free_persistent(m, "dut", probes)
        free_engine(m, probes, eager=self.params.get("eager", False))
        req, answered = self.initiator(m)
        drive(m, core, req)
        m.d.comb += answered.eq(core.bus.ack | core.bus.err)
        link = probes.link
        ok = Signal()  # the previous cycle was not a reset
        m.d.sync += ok.eq(~rst)
        for i, (count, fails) in enumerate(zip(probes.commands, probes.failures, strict=True)):
            task = i + 1
            issued = Signal(name=f"issued{task}")  # the task issued a command last cycle
            failed = Signal(name=f"failed{task}")  # ... one of its commands failed
            was_count = Signal.like(count, name=f"was_count{task}")
            was_fails = Signal.like(fails, name=f"was_fails{task}")
            m.d.sync += [
                issued.eq(link.start & (link.caller == task)),
                failed.eq(
                    link.done
                    & (link.caller == task)
                    & (link.status != Status.OK)
                    & (link.status != Status.ERR_ABORTED)
                ),
                was_count.eq(count),
                was_fails.eq(fails),
            ]
            m.d.comb += [
                Assert(count <= budget + 1),
                Assert(fails <= limit),
            ]
            with m.If(ok & issued):
                m.d.comb += Assert(count == Mux(was_count > budget, budget + 1, was_count + 1))
            if limit:
                with m.If(ok & failed):
                    m.d.comb += Assert(fails == Mux(was_fails >= limit, limit, was_fails + 1))
        return m


class WriteOnceHarness(Harness):
    """After PROVISION the root, attestation and update keys and the device id never change."""

    def elaborate(self, platform: object) -> Module:
        m = Module()
        self.domain(m)
        core, probes = self.core(m, "dut")
        self.free_persistent(m, "dut", probes)
        free_engine(m, probes, eager=self.params.get("eager", False))
        req, answered = self.initiator(m)
        drive(m, core, req)
        m.d.comb += answered.eq(core.bus.ack | core.bus.err)
        was = Signal()
        m.d.sync += was.eq(probes.provisioned)
        kw, sw = probes.key_write, probes.scratch_write
        with m.If(probes.provisioned):
            m.d.comb += [
                Assert(~(kw.en & (kw.addr < FIXED_KEY_WORDS))),
                Assert(~(sw.en & (sw.addr < DEV_ID_WORDS.stop))),
            ]
        m.d.comb += Assert(~was | probes.provisioned)
        # invariants that make it inductive: the program is where its command can be, and a
        # PROVISION runs only unprovisioned until its PROVISIONED step
        m.d.comb += Assert(program_invariant(probes))
        m.d.comb += [Assert(x) for x in mailbox_invariants(probes, self.contexts)]
        provisioning = probes.running & (probes.link.code == Cmd.PROVISION)
        with m.If(provisioning & (probes.pc <= _provisioned_at())):
            m.d.comb += Assert(~probes.provisioned)
        return m


class AtomicUpdateHarness(Harness):
    """An UPDATE takes effect in one clock edge: the current reference and version are never
    written, and the bank flip clears LOADED in the same edge."""

    def elaborate(self, platform: object) -> Module:
        m = Module()
        self.domain(m)
        core, probes = self.core(m, "dut")
        self.free_persistent(m, "dut", probes)
        free_engine(m, probes, eager=self.params.get("eager", False))
        req, answered = self.initiator(m)
        drive(m, core, req)
        m.d.comb += answered.eq(core.bus.ack | core.bus.err)
        wr = probes.ctx_write
        offset = wr.addr[:5]  # word within the context's 32 (rtl/core.py: CTX_STRIDE)
        assert CTX_STRIDE == 32
        ctx = wr.addr[5:]
        in_r = (offset >= 8) & (offset < 24)
        in_v = (offset == 24) | (offset == 25)
        written_bank = Mux(in_r, offset >= 16, offset == 25)
        m.d.comb += Assert(
            ~(wr.en & (in_r | in_v) & (written_bank == probes.bank.bit_select(ctx, len(ctx))))
        )
        was_bank = Signal.like(probes.bank)
        started = Signal()  # was_bank holds the previous cycle's banks
        m.d.sync += [was_bank.eq(probes.bank), started.eq(1)]
        for i in range(self.contexts):
            with m.If(started & (was_bank[i] != probes.bank[i])):
                m.d.comb += Assert(~probes.loaded[i])
        return m


class MailboxWritesHarness(Harness):
    """The holder rules of section 9.2 in time: a write is answered only once its effect is
    complete (an acked ABORT has ended the command, an acked CMD has passed or failed its
    checks, an acked RELEASE has let go, an acked CLAIM holds), the mailbox never changes
    hands while a command computes, and result words at or beyond the result length read
    0."""

    def elaborate(self, platform: object) -> Module:
        m = Module()
        self.domain(m)
        core, probes = self.core(m, "dut")
        self.free_persistent(m, "dut", probes)
        free_engine(m, probes, eager=self.params.get("eager", False))
        req, answered = self.initiator(m)
        drive(m, core, req)
        bus, link, mb = core.bus, probes.link, probes.mailbox
        m.d.comb += answered.eq(bus.ack | bus.err)
        ctrl = req.write(Reg.CTRL)
        with m.If(bus.ack & ctrl & (req.dat_w == Ctrl.ABORT)):
            m.d.comb += Assert(~link.busy & mb.done)
        with m.If(bus.ack & req.write(Reg.CMD)):
            m.d.comb += Assert(mb.done | (link.busy & (mb.expects | (link.length == 0))))
        with m.If(bus.ack & ctrl & (req.dat_w == Ctrl.RELEASE)):
            m.d.comb += Assert(~mb.held)
        with m.If(bus.ack & ctrl & (req.dat_w == Ctrl.CLAIM)):
            m.d.comb += Assert(mb.held & (mb.holder == req.caller))
        # the mailbox never changes hands while a command computes (phase run)
        was_running, was_holder, after = Signal(), Signal.like(mb.holder), Signal()
        m.d.sync += [
            was_running.eq(link.busy & ~mb.expects & mb.held),
            was_holder.eq(mb.holder),
            after.eq(1),
        ]
        with m.If(after & was_running):
            m.d.comb += Assert(mb.held & (mb.holder == was_holder))
        # words at or beyond the result length read 0 (its length when the read was made)
        word = Cat(Const(0, 2), req.adr - _word(Reg.RESULT))
        beyond = Signal()
        m.d.sync += beyond.eq(word >= mb.reslen)
        with m.If(bus.ack & req.result_read() & beyond):
            m.d.comb += Assert(bus.dat_r == 0)
        # helper: a preemption or release that waits for the wipe has no command running
        m.d.comb += Assert(~(mb.stalled & mb.wiping) | ~link.busy)
        # helpers: a write that waits is the request the initiator still holds
        pending = Signal()
        m.d.sync += pending.eq(req.cyc & req.stb & ~answered)
        is_ctrl = pending & req.write(Reg.CTRL)
        m.d.comb += [
            Assert(~mb.issuing | (pending & req.write(Reg.CMD))),
            Assert(~mb.aborting | (is_ctrl & (req.dat_w == Ctrl.ABORT)) | mb.preempting),
            Assert(~mb.releasing | (is_ctrl & (req.dat_w == Ctrl.RELEASE))),
            Assert(
                ~mb.preempting | (is_ctrl & (req.dat_w == Ctrl.CLAIM) & (req.caller == MANAGER))
            ),
            Assert(~(mb.releasing & mb.preempting)),
            Assert(~(mb.releasing | mb.preempting) | mb.wiping | mb.aborting),
        ]
        return m


class HmacSlotsHarness(Harness):
    """Only caller c's own HMAC_KEY writes caller c's HMAC key slot; only TASK_MAC writes the
    task key slot (section 2)."""

    def elaborate(self, platform: object) -> Module:
        m = Module()
        self.domain(m)
        core, probes = self.core(m, "dut")
        self.free_persistent(m, "dut", probes)
        free_engine(m, probes, eager=self.params.get("eager", False))
        req, answered = self.initiator(m)
        drive(m, core, req)
        m.d.comb += answered.eq(core.bus.ack | core.bus.err)
        link, kw = probes.link, probes.key_write
        slot = kw.addr[4:]
        with m.If(kw.en & (slot >= HMAC_SLOT0)):
            m.d.comb += Assert(
                link.busy & (link.code == Cmd.HMAC_KEY) & (link.caller == slot - HMAC_SLOT0)
            )
        with m.If(kw.en & (slot == HMAC_SLOT0 - 1)):
            m.d.comb += Assert(link.busy & (link.code == Cmd.TASK_MAC))
        # invariants that make it inductive (see keys_write_once)
        m.d.comb += Assert(program_invariant(probes))
        m.d.comb += [Assert(x) for x in mailbox_invariants(probes, self.contexts)]
        return m


class ProgressHarness(Harness):
    """A command whose data is all in (phase run) is done within ``bound`` cycles, and each
    of ``commands`` completes with OK (covers).  Directed: the initiator follows ``script``
    and the engine answers at once; no warm reset.  With ``free_memories`` the context
    store, the scratch memory and the key store start with any contents too, so that with
    the persistent state free the command starts from anything a device may hold."""

    def elaborate(self, platform: object) -> Module:
        m = Module()
        self.domain(m)
        bound = self.params["bound"]
        core, probes = self.core(m, "dut")
        self.free_persistent(m, "dut", probes)
        if self.params.get("free_memories"):
            for memid in ("ctxmem", "scratch", "keymem"):  # the names of CoreProbes' memories
                self.free_memory("dut", memid)
        free_engine(m, probes, eager=self.params.get("eager", False))
        req, answered = self.initiator(m)
        drive(m, core, req)
        m.d.comb += answered.eq(core.bus.ack | core.bus.err)
        link, mb = probes.link, probes.mailbox
        running = link.busy & ~mb.expects  # phase run: all its data is in
        waited = Signal(range(bound + 2))
        m.d.sync += waited.eq(Mux(running & (waited <= bound), waited + 1, 0))
        m.d.comb += Assert(waited <= bound)
        for cmd in self.params.get("commands", ()):
            m.d.comb += Cover(link.done & (link.status == Status.OK) & (link.code == cmd))
        return m


class KeySecrecyHarness(Harness):
    """Two devices that differ only in their key stores look the same on the bus in every
    cycle, except for the MAC words of results."""

    copies = 2

    def elaborate(self, platform: object) -> Module:
        m = Module()
        self.domain(m)
        a, pa = self.core(m, "a")
        b, pb = self.core(m, "b")
        for name in ("a", "b"):
            self.free_memory(name, "keymem")  # the submodule name of CoreProbes.keymem
        regs_a = self.free_persistent(m, "a", pa)
        regs_b = self.free_persistent(m, "b", pb)
        with m.If(Initial()):
            m.d.comb += [Assume(x == y) for x, y in zip(regs_a, regs_b, strict=True)]
        paired_engines(m, pa, pb, eager=self.params.get("eager", False))
        req, answered = self.initiator(m)
        drive(m, a, req)
        drive(m, b, req)
        m.d.comb += answered.eq(a.bus.ack | a.bus.err)
        # the one bit UPDATE declassifies: whether the tag verified
        with m.If(pa.verdict & pb.verdict):
            m.d.comb += Assume(pa.tag_ok == pb.tag_ok)
        # the last command issued, and whether the word being read is one of its MAC words
        code = Signal(8)
        with m.If(pa.link.start):
            m.d.sync += code.eq(pa.link.code)
        word = req.adr - _word(Reg.RESULT)
        is_mac = Const(0)
        for cmd, words in MAC_WORDS.items():
            is_mac = is_mac | ((code == cmd) & (word >= words.start) & (word < words.stop))
        ack_a, err_a, dat_a, irq_a = observe(m, a)
        ack_b, err_b, dat_b, irq_b = observe(m, b)
        m.d.comb += [Assert(ack_a == ack_b), Assert(err_a == err_b), Assert(irq_a == irq_b)]
        with m.If(ack_a & ~req.we & ~(req.result_read() & is_mac)):
            m.d.comb += Assert(dat_a == dat_b)
        return m


class IsolationSteerHarness(Harness):
    """What the holder sees of its own session is the same whether or not other callers poke
    the mailbox meanwhile (everything but the manager's preemption)."""

    copies = 2

    def elaborate(self, platform: object) -> Module:
        m = Module()
        self.domain(m)
        a, pa = self.core(m, "a")
        b, pb = self.core(m, "b")
        regs_a = self.free_persistent(m, "a", pa)
        regs_b = self.free_persistent(m, "b", pb)
        with m.If(Initial()):
            m.d.comb += [Assume(x == y) for x, y in zip(regs_a, regs_b, strict=True)]
        paired_engines(m, pa, pb, eager=self.params.get("eager", False))
        me = AnyConst(6)  # the observed caller
        req, answered = self.initiator(m)
        other = req.caller != me
        # others act only while `me` holds the mailbox (in copy a, which sees them); the
        # manager does not preempt (section 9.2 allows it: that is iso_read's case)
        holds = pa.mailbox.held & (pa.mailbox.holder == me)
        with m.If(req.cyc & req.stb & other):
            m.d.comb += Assume(holds)
            with m.If(req.caller == MANAGER):
                m.d.comb += Assume(~req.write(Reg.CTRL))
        drive(m, a, req)
        drive(m, b, req, present=~other)
        m.d.comb += answered.eq(a.bus.ack | a.bus.err)
        ack_a, err_a, dat_a, _ = observe(m, a)
        ack_b, err_b, dat_b, _ = observe(m, b)
        with m.If(req.cyc & req.stb & ~other):
            m.d.comb += [Assert(ack_a == ack_b), Assert(err_a == err_b)]
            private = req.result_read()
            for reg in PRIVATE_READS:
                private = private | req.read(reg)
            with m.If(ack_a & private):
                m.d.comb += Assert(dat_a == dat_b)
        return m


class IsolationReadHarness(Harness):
    """Nothing a task writes to DATA shows to any other caller - not while it holds the
    mailbox, not after it released it, not after the manager took it back."""

    copies = 2

    def elaborate(self, platform: object) -> Module:
        m = Module()
        self.domain(m)
        a, pa = self.core(m, "a")
        b, pb = self.core(m, "b")
        regs_a = self.free_persistent(m, "a", pa)
        regs_b = self.free_persistent(m, "b", pb)
        with m.If(Initial()):
            m.d.comb += [Assume(x == y) for x, y in zip(regs_a, regs_b, strict=True)]
        paired_engines(m, pa, pb, eager=self.params.get("eager", False))
        victim = AnyConst(6)
        m.d.comb += Assume(victim != MANAGER)
        secret = Signal(32)  # copy b's data words: the victim's, independent of copy a's
        req, answered = self.initiator(m, extra=[secret])
        m.d.comb += secret.eq(AnySeq(32))
        drive(m, a, req)
        drive(m, b, req)
        victims_data = req.write(Reg.DATA) & (req.caller == victim)
        m.d.comb += b.bus.dat_w.eq(Mux(victims_data, secret, req.dat_w))
        m.d.comb += answered.eq(a.bus.ack | a.bus.err)
        ack_a, err_a, dat_a, irq_a = observe(m, a)
        ack_b, err_b, dat_b, irq_b = observe(m, b)
        m.d.comb += [Assert(ack_a == ack_b), Assert(err_a == err_b), Assert(irq_a == irq_b)]
        with m.If(ack_a & ~req.we & (req.caller != victim)):
            m.d.comb += Assert(dat_a == dat_b)
        return m


# ---------------------------------------------------------------------------------------------
# Directed initiators for the broken variants whose counterexamples are long
# ---------------------------------------------------------------------------------------------


def _command(caller: int, cmd: Cmd, ctx: int = 0, length: int = 0) -> list[Step]:
    """Claim, LEN, CMD, then ``ceil(length / 4)`` data words of any value."""
    return [
        Step(caller, Reg.CTRL, Ctrl.CLAIM),
        Step(caller, Reg.LEN, length),
        Step(caller, Reg.CMD, int(cmd) | ctx << 8),
        *[Step(caller, Reg.DATA) for _ in range((length + 3) // 4)],
    ]


#: task 1 asks for STATUS (9 words, the first the non-zero INFO word), then issues an
#: unknown command (no result) and reads word 0 of the window: beyond the result length
STALE_SCRIPT = [
    *_command(1, Cmd.STATUS),
    Step(1, Reg.CMD, 0xFF, wait=True),
    Step(1, Reg.RESULT, read=True, word=0),
]
#: task 1 imports an HMAC key of 4 bytes
HMAC_KEY_SCRIPT = _command(1, Cmd.HMAC_KEY, 0, 4)
#: task 1 asks for STATUS and reads its result
STATUS_SCRIPT = [
    *_command(1, Cmd.STATUS),
    *[Step(1, Reg.RESULT, read=True, word=w, wait=w == 0) for w in range(9)],
]
#: task 1 hashes one word and reads the digest
HASH_SCRIPT = [
    *_command(1, Cmd.HASH, 0, 4),
    *[Step(1, Reg.RESULT, read=True, word=w, wait=w == 0) for w in range(8)],
]
#: task 1 hashes one word; task 2 tries to read the window meanwhile and after
PEEK_SCRIPT = [
    *_command(1, Cmd.HASH, 0, 4),
    *[Step(2, Reg.RESULT, read=True, wait=True) for _ in range(3)],
]
#: task 1 asks for STATUS, hashes an empty message and reads its context, one after the other
PROGRESS_SCRIPT = [
    *_command(1, Cmd.STATUS),
    Step(1, Reg.CMD, int(Cmd.HASH), wait=True),
    Step(1, Reg.CMD, int(Cmd.READ_CTX) | 1 << 8, wait=True),
]


#: how the per-command progress runs issue each command: the caller (a task where the
#: command is for tasks only, else the manager), context 1 where it takes one, and its data
#: length (one word where any length is allowed)
def _issue(cmd: Cmd) -> tuple[int, int, int]:
    spec = command_spec(cmd)
    caller = 1 if spec.access is Access.TASK else MANAGER
    return caller, int(spec.context), 4 if spec.length is None else spec.length


#: the bound of each command's progress run: cycles from its last data word (phase run) to
#: ``done`` with an engine that answers at once (measured in simulation, a few cycles added
#: where the data may come earlier than there; the proofs check them).  PROVISION's is the
#: deepest run (314 cycles), and the slowest.
PROGRESS_BOUND: dict[Cmd, int] = {
    Cmd.STATUS: 13,
    Cmd.READ_CTX: 22,
    Cmd.RESET: 21,
    Cmd.SET_ANOMALY: 4,
    Cmd.NEW_PERIOD: 4,
    Cmd.HASH: 13,
    Cmd.EXTEND: 23,
    Cmd.MEASURE: 52,
    Cmd.HMAC: 41,
    Cmd.HMAC_KEY: 70,
    Cmd.ATTEST: 74,
    Cmd.UPDATE: 90,
    Cmd.TASK_MAC: 154,
    # 273 in simulation (two key derivations, three key midstates); +7 as for HMAC, where the
    # proof's initiator may deliver the data sooner; done_late (+16) still exceeds it
    Cmd.PROVISION: 280,
}


def _progress_script(cmd: Cmd) -> list[Step]:
    caller, ctx, length = _issue(cmd)
    return _command(caller, cmd, ctx, length)


def _progress_depth(cmd: Cmd) -> int:
    """Cycles to claim, issue and feed ``cmd`` (two a bus write), then its bound and two."""
    _, _, length = _issue(cmd)
    return 8 + 2 * ((length + 3) // 4) + PROGRESS_BOUND[cmd] + 2


#: the manager installs an update of context 1 (any data: the proof picks one that verifies)
UPDATE_SCRIPT = _command(MANAGER, Cmd.UPDATE, 1, command_spec(Cmd.UPDATE).length or 0)
#: task 1 computes an HMAC of one word with its imported key, then reads STATUS and
#: CYCLES whenever it likes (the MAC words are declassified: reading them shows nothing more)
HMAC_SCRIPT = [
    *_command(1, Cmd.HMAC, 0, 4),
    Step(1, Reg.STATUS, read=True, wait=True),
    Step(1, Reg.CYCLES, read=True, wait=True),
]

#: task 1 hashes an empty message; the manager takes the mailbox back and reads the window
PREEMPT_SCRIPT = [
    *_command(1, Cmd.HASH),
    Step(MANAGER, Reg.CTRL, Ctrl.CLAIM),
    Step(MANAGER, Reg.RESULT, read=True),
]


# ---------------------------------------------------------------------------------------------
# The table of properties and their broken variants
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A deliberately broken build the property must reject.

    ``mode`` ``bmc``: a counterexample from the start state within ``depth`` cycles (the
    first ``skip`` need not be checked); ``prove``: the k-induction with ``depth`` fails (a
    counterexample to the induction step, used where the flaw lies deeper than a bounded
    search reaches).  ``params`` change the harness for this variant only (a directed
    initiator, a smaller monitor budget).
    """

    flaw: str
    depth: int
    mode: Mode = "bmc"
    skip: int = 0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Property:
    """One property: how it is checked, and the broken variants it must reject.

    ``depth`` is the k of k-induction (``prove``), the bound of a bounded check (``bmc``) or
    the cover depth.
    """

    name: str
    summary: str
    harness: Callable[..., Harness]
    mode: Mode
    depth: int
    variants: tuple[Variant, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    fast: bool = False  #: part of the quick run in ``make test``
    engine: str = "smtbmc yices"
    skip: int = 0  #: the first ``skip`` steps of a bounded check need not be checked
    #: how the solver sees the memories: as flip-flops (``memory_map``) or as SMT arrays;
    #: ``auto`` is flip-flops for k-induction, arrays for bounded checks and covers (where
    #: arrays were 2.8-3.4 times faster with yices: docs/proofs.md, "Results")
    memories: Literal["flops", "arrays", "auto"] = "auto"

    @property
    def flaws(self) -> tuple[str, ...]:
        return tuple(v.flaw for v in self.variants)

    @property
    def memory_map(self) -> bool:
        """The memories become flip-flops before the solver sees them (else SMT arrays)."""
        if self.memories == "auto":
            return self.mode == "prove"
        return self.memories == "flops"


@dataclass(frozen=True)
class Job:
    """One SymbiYosys run: a property on the clean core (must pass) or on a broken one (must
    fail)."""

    prop: Property
    variant: Variant | None = None

    @property
    def flaw(self) -> str | None:
        return None if self.variant is None else self.variant.flaw

    @property
    def name(self) -> str:
        return self.prop.name if self.flaw is None else f"{self.prop.name}/{self.flaw}"

    @property
    def mode(self) -> Mode:
        return self.prop.mode if self.variant is None else self.variant.mode

    @property
    def depth(self) -> int:
        return self.prop.depth if self.variant is None else self.variant.depth

    @property
    def skip(self) -> int:
        return self.prop.skip if self.variant is None else self.variant.skip

    @property
    def expect(self) -> Literal["PASS", "FAIL", "UNKNOWN"]:
        """PASS on the clean core; FAIL (a counterexample) on a broken one, or UNKNOWN where
        the broken variant is rejected by the induction step."""
        if self.variant is None:
            return "PASS"
        return "UNKNOWN" if self.variant.mode == "prove" else "FAIL"

    @property
    def params(self) -> dict[str, Any]:
        return {**self.prop.params, **(self.variant.params if self.variant else {})}

    @property
    def directed(self) -> bool:
        """The initiator follows a script (:func:`follow`)."""
        return bool(self.params.get("script"))

    def harness(self) -> Harness:
        return self.prop.harness(self.flaw, **self.params)


#: the depth of a directed UPDATE: claim, issue, 18 data words, 86 cycles to done
UPDATE_DEPTH = 8 + 2 * 18 + 86 + 2
#: directed runs: the engine answers at once, no warm reset
_EAGER = {"eager": True, "resets": False}
#: ... and the initiator presents each write at once
_EAGER_BUS = {**_EAGER, "eager_bus": True}

PROPERTIES: tuple[Property, ...] = (
    Property(
        "sha_contract",
        "the real SHA-256 engine keeps the handshake its abstraction allows",
        ShaContractHarness,
        "prove",
        depth=4,
        variants=(Variant("narrow_contract", 6),),
        fast=True,
    ),
    Property(
        "wishbone",
        "Wishbone B4: ack/err only for an active request, one per request, never both",
        WishboneHarness,
        "prove",
        depth=4,
        variants=(Variant("ack_without_stb", 4),),
        fast=True,
    ),
    Property(
        "monitor",
        "the monitor's counters count each command or failure once, saturate, never wrap",
        MonitorHarness,
        "prove",
        depth=4,
        variants=(Variant("counter_wraps", 20, params={"budget": 2, "fail_limit": 2}),),
        params={"budget": MONITOR_BUDGET, "fail_limit": MONITOR_FAIL_LIMIT},
        fast=True,
    ),
    Property(
        "atomic_update",
        "the current reference/version are never written; the bank flip clears LOADED in "
        "the same clock edge",
        AtomicUpdateHarness,
        "prove",
        depth=3,
        variants=(
            Variant(
                "flip_split",
                UPDATE_DEPTH,
                skip=UPDATE_DEPTH - 12,
                params={"script": UPDATE_SCRIPT, "free_memories": True, **_EAGER_BUS},
            ),
        ),
    ),
    Property(
        "mailbox_rules",
        "an acked ABORT/CMD/RELEASE/CLAIM has taken effect; no change of holder while a "
        "command computes; result words beyond the result length read 0",
        MailboxWritesHarness,
        "prove",
        depth=4,
        variants=(
            Variant("abort_early", 12),
            Variant("preempt_running", 50, params={"script": PREEMPT_SCRIPT, **_EAGER_BUS}),
            Variant("stale_results", 60, params={"script": STALE_SCRIPT, **_EAGER_BUS}),
        ),
    ),
    Property(
        "keys_write_once",
        "after PROVISION: K_root, K_att, K_upd and dev_id are never written again",
        WriteOnceHarness,
        "prove",
        depth=3,
        variants=(Variant("reprovision", 14),),
    ),
    Property(
        "hmac_slots",
        "caller c's HMAC key slot is written only by c's HMAC_KEY",
        HmacSlotsHarness,
        "prove",
        depth=3,
        variants=(
            Variant("shared_hmac_slot", 60, params={"script": HMAC_KEY_SCRIPT, **_EAGER_BUS}),
        ),
    ),
    Property(
        "key_secrecy",
        "2-safety: key stores never show on the bus, except as MAC words",
        KeySecrecyHarness,
        "bmc",
        depth=12,
        variants=(Variant("key_to_result", 30, params={"script": STATUS_SCRIPT, **_EAGER_BUS}),),
    ),
    Property(
        "key_secrecy_status",
        "2-safety, directed: STATUS and its result words do not depend on the key store",
        KeySecrecyHarness,
        "bmc",
        depth=30,
        variants=(Variant("key_to_result", 30),),
        params={"script": STATUS_SCRIPT, **_EAGER_BUS},
    ),
    Property(
        "key_secrecy_hash",
        "2-safety, directed: a HASH and its digest do not depend on the key store (a "
        "scenario of key_secrecy: the digests of equal messages are equal in both copies)",
        KeySecrecyHarness,
        "bmc",
        depth=40,
        params={"script": HASH_SCRIPT, **_EAGER_BUS},
    ),
    Property(
        "key_secrecy_hmac",
        "2-safety, directed: an HMAC with an imported key that differs between the copies "
        "takes the same cycles and answers alike, but for its MAC words",
        KeySecrecyHarness,
        "bmc",
        depth=56,
        variants=(Variant("key_timing", 56),),
        params={"script": HMAC_SCRIPT, **_EAGER_BUS},
    ),
    Property(
        "iso_steer",
        "2-safety: other callers cannot change what the holder sees of its session",
        IsolationSteerHarness,
        "bmc",
        depth=12,
        variants=(Variant("len_unowned", 10),),
    ),
    Property(
        "iso_read",
        "2-safety: a task's data never shows to another caller, manager included",
        IsolationReadHarness,
        "bmc",
        depth=12,
        variants=(Variant("result_unowned", 30, params={"script": PEEK_SCRIPT, **_EAGER_BUS}),),
    ),
    Property(
        "iso_read_peek",
        "2-safety, directed: task 2 peeking at the window while and after task 1 hashes its "
        "word sees nothing of it",
        IsolationReadHarness,
        "bmc",
        depth=30,
        variants=(Variant("result_unowned", 30),),
        params={"script": PEEK_SCRIPT, **_EAGER_BUS},
    ),
    Property(
        "progress",
        "directed: STATUS, an empty HASH and READ_CTX, issued one after the other, are each "
        "done within 32 cycles of their data",
        ProgressHarness,
        "bmc",
        depth=45,
        variants=(Variant("empty_stream_hangs", 60),),
        params={"bound": 32, "script": PROGRESS_SCRIPT, **_EAGER_BUS},
    ),
    Property(
        "progress_cover",
        "directed: STATUS, an empty HASH and READ_CTX each complete with OK (covers)",
        ProgressHarness,
        "cover",
        depth=45,
        params={
            "bound": 32,
            "script": PROGRESS_SCRIPT,
            "commands": (Cmd.STATUS, Cmd.HASH, Cmd.READ_CTX),
            **_EAGER_BUS,
        },
    ),
    *(
        Property(
            f"progress_{cmd.name.lower()}",
            f"directed: {cmd.name} from any persistent state and memory contents, any data, "
            f"is done within {PROGRESS_BOUND[cmd]} cycles of its last data word",
            ProgressHarness,
            "bmc",
            depth=_progress_depth(cmd),
            # the flaw holds an OK completion: its counterexample is also the cover
            variants=(Variant("done_late", _progress_depth(cmd)),),
            fast=cmd is Cmd.STATUS,
            params={
                "bound": PROGRESS_BOUND[cmd],
                "script": _progress_script(cmd),
                "free_memories": True,
                **_EAGER_BUS,
            },
        )
        for cmd in PROGRESS_BOUND
    ),
)


def jobs(names: Sequence[str] = (), *, fast: bool = False) -> list[Job]:
    """The jobs of the properties named (all if none), each clean run before its variants."""
    known = {p.name: p for p in PROPERTIES}
    unknown = [n for n in names if n not in known]
    if unknown:
        # one short line: there are too many to name here (`mchsm formal --list` does)
        raise ValueError(f"properties must be among those `--list` names, not {unknown!r}")
    chosen = [known[n] for n in names] if names else list(PROPERTIES)
    if fast:
        chosen = [p for p in chosen if p.fast]
    out = []
    for prop in chosen:
        out.append(Job(prop))
        out += [Job(prop, variant) for variant in prop.variants]
    return out


def _check_flaws() -> None:
    """Every flaw of the RTL is some property's broken variant."""
    used = {flaw for p in PROPERTIES for flaw in p.flaws}
    missing = (set(CORE_FLAWS) | set(FLAWS)) - used
    assert not missing, f"flaws no property rejects: {sorted(missing)}"


_check_flaws()
