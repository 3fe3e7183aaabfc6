"""Several callers on one mailbox: interleavings and attacks that run the same on every backend.

The mailbox's promise (``docs/protocol.md`` section 9) is about what happens *between* one
caller's bus accesses, so these jobs schedule accesses of several callers one at a time:

* :func:`interleave_job` runs honest callers - the manager and tasks, each running the host
  driver's own command protocol (:func:`mchsm.sw.command.run_command`) - beside hostile tasks
  that write and read any register at any time, in an order drawn from a seed.  It returns every
  access with its outcome, what each honest command returned, and the final state.  The model
  and the RTL must return the same; :func:`check_isolation` says what the model's run must
  satisfy on its own.
* ``attack_*`` are the five attacks the mailbox must defeat, each a scripted interleaving.

Time: the golden model has none; the RTL computes for a while after a command's last data word.
Before any access of the mailbox's holder or of the manager (whose ``CLAIM`` may preempt), the
scheduler therefore lets a computing command finish (:func:`settle`), with reads that change
nothing.  Accesses of other callers go in at any time, also while a command computes: what they
see must not depend on it.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from mchsm.constants import (
    DEVICE_ID_SIZE,
    MANAGER,
    NONCE_SIZE,
    RESULT_SIZE,
    RESULT_WORDS,
    ROOT_KEY_SIZE,
    Cmd,
    CmdReg,
    Ctrl,
    IrqEnReg,
    OwnerReg,
    Reg,
    Status,
    StatusReg,
    pack_reg,
    unpack_reg,
)
from mchsm.sw.command import Burst, Outcome, Read, Reply, WaitDone, Write, run_command
from mchsm.sw.driver import HsmDriver, Transport
from mchsm.sw.errors import MailboxError, TransportError
from mchsm.sw.interpose import Interposer, perform, shown
from mchsm.sw.protocol import (
    UpdateAuth,
    attest_data,
    derive_upd_key,
    hmac_sha256,
    reference,
    sha256,
)

__all__ = [
    "Access",
    "Interleaving",
    "attack_abort_then_command",
    "attack_evict_key",
    "attack_len_race",
    "attack_read_results",
    "attack_silence",
    "attacks_job",
    "check_isolation",
    "interleave_job",
    "settle",
]

#: the task callers that take part, whatever the number of contexts: honest tasks 1 and 2,
#: hostile tasks 3 and 4; a hostile caller the HSM does not know is ``contexts + 1``
HONEST_TASKS = (1, 2)
HOSTILE_TASKS = (3, 4)
#: STATUS reads :func:`settle` waits for a computing command (MEASURE of 4 KiB: ~1,500)
SETTLE_POLLS = 100_000
#: every register a hostile caller pokes at
_REGISTERS = [reg for reg in Reg if reg is not Reg.RESULT]


@dataclass(frozen=True, slots=True)
class Access:
    """One bus access as the scheduler ran it, with what it saw.

    ``outcome`` is the word read, ``None`` for a write that was taken, ``"refused"`` for an
    access that ended with ``err``; a CYCLES read shows only ``"read"`` (the model has no clock).
    ``holder`` is who held the mailbox just before (``None``: nobody).
    """

    caller: int
    addr: int
    value: int | None  #: None for a read
    outcome: int | str | None
    #: the golden model's holder just before (None: nobody); not recorded on the RTL
    holder: int | None = field(default=None, compare=False)


async def settle(transport: Transport, holder: int | None = None) -> None:
    """Let a computing command of ``holder`` (default: whoever holds the mailbox) finish."""
    if holder is None:
        owner = unpack_reg(OwnerReg, await transport.read(Reg.OWNER, MANAGER))
        if not owner.held:
            return
        holder = int(owner.caller)
    for _ in range(SETTLE_POLLS):
        status = unpack_reg(StatusReg, await transport.read(Reg.STATUS, holder))
        if not status.busy or status.expects or not status.mine:
            return
    raise TransportError(f"a command of caller {holder} did not finish")


# ---------------------------------------------------------------------------------------------
# Callers
# ---------------------------------------------------------------------------------------------

#: an agent yields (caller, access) and is sent the outcome
Agent = Generator[tuple[int, Read | Write], Outcome, None]


@dataclass(frozen=True)
class Request:
    """One command an honest caller wants to run."""

    cmd: int
    ctx: int
    data: bytes


@dataclass
class Interleaving:
    """What :func:`interleave_job` saw: the accesses, each honest command's outcome, the end."""

    accesses: list[Access] = field(default_factory=list)
    #: (caller, request, outcome): ("ok", status, result) or (error type, ran or None)
    commands: list[tuple[int, Request, tuple[Any, ...]]] = field(default_factory=list)
    final: list[tuple[Any, ...]] = field(default_factory=list)


def honest(caller: int, requests: list[Request], log: Interleaving) -> Agent:
    """A caller that runs the host driver's own command protocol, one word per access."""
    for req in requests:
        steps = run_command(
            req.cmd,
            req.ctx,
            req.data,
            len(req.data),
            claim_limit=100,
            poll_limit=8,
            retries=1,
            burst=1,
        )
        outcome: Outcome = None
        try:
            op = next(steps)
            while True:
                assert not isinstance(op, Burst)  # burst=1: one word per access
                if isinstance(op, WaitDone):  # the scheduler lets a command finish anyway
                    op = steps.send(None)
                    continue
                outcome = yield caller, op
                op = steps.send(outcome)
        except StopIteration as stop:
            reply: Reply = stop.value
            log.commands.append((caller, req, ("ok", int(reply.status), reply.result)))
        except MailboxError as e:
            log.commands.append((caller, req, (type(e).__name__, getattr(e, "ran", None))))


def hostile(caller: int, rng: random.Random, count: int, contexts: int) -> Agent:
    """A caller that writes and reads anything, anytime: claims, releases, aborts, LEN, CMD,
    DATA, IRQ_EN, result words - sometimes as the holder of the mailbox, mostly not."""
    for _ in range(count):
        kind = rng.random()
        addr: int
        if kind < 0.35:
            addr = rng.choice(_REGISTERS)
        elif kind < 0.5:
            addr = Reg.RESULT + 4 * rng.randrange(RESULT_WORDS)
        else:
            addr = rng.choice([Reg.CTRL, Reg.LEN, Reg.CMD, Reg.DATA])
        if rng.random() < 0.4:
            yield caller, Read(addr)
            continue
        if rng.random() < 0.1:  # let go now and then, so that honest tasks get their turn
            yield caller, Write(Reg.CTRL, Ctrl.ABORT)
            yield caller, Write(Reg.CTRL, Ctrl.RELEASE)
            continue
        if addr == Reg.CTRL:
            value = rng.choice([*Ctrl, Ctrl.RELEASE, Ctrl.RELEASE, Ctrl.ABORT, 0, 0x5, 0x100])
        elif addr == Reg.LEN:
            value = rng.choice([0, 1, 4, rng.randrange(64), 0xFFFF_FFFF])
        elif addr == Reg.CMD:
            code = rng.choice(
                [
                    Cmd.HASH,
                    Cmd.HMAC_KEY,
                    Cmd.HMAC,
                    Cmd.STATUS,
                    Cmd.TASK_MAC,
                    Cmd.READ_CTX,
                    Cmd.RESET,
                    Cmd.MEASURE,
                    0x77,
                ]
            )
            ctx = rng.choice([0, caller, rng.randrange(1, contexts + 1)])
            value = pack_reg(CmdReg, code=code, ctx=ctx)
        else:
            value = rng.getrandbits(32)
        yield caller, Write(addr, value)


@dataclass
class Device:
    """What the manager's side knows across interleavings: the secrets it provisioned, the
    version it believes each context holds, and the image it last installed there."""

    dev_id: bytes
    root: bytes
    versions: dict[int, int]
    images: dict[int, bytes]


def manager_requests(
    rng: random.Random, device: Device, contexts: int, count: int
) -> list[Request]:
    """A plausible run of the manager: install, load (mostly the installed image, so that tasks
    become trusted), measure, attest, flag, keys.  Commands that compute long are rarer, so
    that the RTL simulators get through hundreds of interleavings."""
    out = []
    k_upd = derive_upd_key(device.root)
    for _ in range(count):
        kind = rng.choices(range(10), [2, 3, 1, 1, 1, 2, 1, 2, 2, 1])[0]
        ctx = rng.choice([*HONEST_TASKS, *HOSTILE_TASKS, rng.randrange(1, contexts + 1)])
        image = rng.randbytes(rng.randrange(0, 60))
        if kind == 0:  # install an image from the version the manager believes current
            old = device.versions[ctx]
            auth = UpdateAuth.issue(k_upd, device.dev_id, ctx, old, old + 1, reference(image))
            device.versions[ctx], device.images[ctx] = old + 1, image
            out.append(Request(Cmd.UPDATE, ctx, auth.command_data()))
        elif kind == 1:  # load a task: RESET, MEASURE its image
            loaded = device.images.get(ctx, image) if rng.random() < 0.8 else image
            out += [Request(Cmd.RESET, ctx, b""), Request(Cmd.MEASURE, ctx, loaded)]
        elif kind == 2:
            sel = rng.randrange(1, 1 << len(HONEST_TASKS + HOSTILE_TASKS))
            out.append(Request(Cmd.ATTEST, 0, attest_data(sel, rng.randbytes(NONCE_SIZE))))
        elif kind == 3:
            out.append(Request(Cmd.HMAC_KEY, 0, rng.randbytes(rng.randrange(1, 80))))
        elif kind == 4:
            out.append(Request(Cmd.HMAC, 0, image))
        elif kind == 5:
            out.append(Request(Cmd.EXTEND, ctx, rng.randbytes(32)))
        elif kind == 6:
            out.append(Request(Cmd.SET_ANOMALY, ctx, b""))
        elif kind == 7:
            out.append(Request(rng.choice([Cmd.NEW_PERIOD, Cmd.STATUS]), 0, b""))
        elif kind == 8:
            out.append(Request(Cmd.READ_CTX, ctx, b""))
        else:
            out.append(Request(Cmd.HASH, 0, image))
    return out


def task_requests(rng: random.Random, caller: int, count: int) -> list[Request]:
    out = []
    for _ in range(count):
        kind = rng.randrange(6)
        data = rng.randbytes(rng.randrange(0, 70))
        if kind == 0:
            out.append(Request(Cmd.HASH, 0, data))
        elif kind == 1:
            out.append(Request(Cmd.HMAC_KEY, 0, rng.randbytes(rng.randrange(1, 70))))
        elif kind == 2:
            out.append(Request(Cmd.HMAC, 0, data))
        elif kind == 3:
            out.append(Request(Cmd.TASK_MAC, 0, data))
        elif kind == 4:
            out.append(Request(Cmd.READ_CTX, caller, b""))
        else:
            out.append(Request(Cmd.STATUS, 0, b""))
    return out


def _pick(rng: random.Random, pending: dict[int, Any], weights: list[int]) -> int:
    """A pending agent, with probability in proportion to its weight."""
    x = rng.random() * sum(weights[i] for i in pending)
    for i in pending:
        x -= weights[i]
        if x < 0:
            return i
    return i


async def interleave_job(
    driver: HsmDriver,
    seeds: list[int],
    contexts: int,
    hostile_accesses: int = 30,
    commands: int = 4,
) -> list[Interleaving]:
    """Run one interleaving per seed, back to back on the same HSM (the manager provisions it
    first); the last one carries the final state.

    Callers: the manager, the honest tasks :data:`HONEST_TASKS`, the hostile tasks
    :data:`HOSTILE_TASKS` (the first of them every other seed) and, every third seed, a
    hostile caller the HSM does not know (``contexts + 1``); ``contexts`` must be at least 4.
    """
    transport = driver.transport
    secrets = random.Random(f"device-{seeds[:1]}")
    device = Device(secrets.randbytes(DEVICE_ID_SIZE), secrets.randbytes(ROOT_KEY_SIZE), {}, {})
    device.versions = dict.fromkeys(range(1, contexts + 1), 0)
    await driver.port(MANAGER).provision(device.dev_id, device.root)
    # the interrupt on, as the driver on a simulator turns it on: IRQ_EN is public to read
    await transport.write(Reg.IRQ_EN, pack_reg(IrqEnReg, done=1), MANAGER)
    model = getattr(transport, "mailbox", None)  # the golden model shows its holder
    out = []
    for seed in seeds:
        rng = random.Random(seed)
        log = Interleaving()
        agents: list[Agent] = [
            honest(MANAGER, manager_requests(rng, device, contexts, rng.randint(1, commands)), log),
            *(
                honest(t, task_requests(rng, t, rng.randint(1, commands - 1 or 1)), log)
                for t in HONEST_TASKS
            ),
            hostile(
                HOSTILE_TASKS[1],
                rng,
                rng.randrange(hostile_accesses // 2, hostile_accesses),
                contexts,
            ),
        ]
        if seed % 2:
            agents.append(hostile(HOSTILE_TASKS[0], rng, hostile_accesses // 3, contexts))
        if seed % 3 == 0:
            agents.append(hostile(contexts + 1, rng, hostile_accesses // 3, contexts))
        weights = [rng.choice([1, 2, 4]) for _ in agents]
        pending: dict[int, tuple[int, Read | Write]] = {}
        for i, agent in enumerate(agents):
            first = next(agent, None)
            if first is not None:
                pending[i] = first
        computing: int | None = None  # who may have a command computing on the RTL
        while pending:
            i = _pick(rng, pending, weights)
            caller, op = pending[i]
            # Only an accepted CMD or DATA write starts a computation, and only the holder's
            # are accepted: before the holder's or the manager's next access, let it finish.
            if computing is not None and caller in (computing, MANAGER):
                await settle(transport, computing)
                computing = None
            holder = model.holder if model is not None else None
            outcome = await perform(transport, caller, op)
            if isinstance(op, Write) and op.addr in (Reg.CMD, Reg.DATA) and outcome is None:
                computing = caller
            value = op.value if isinstance(op, Write) else None
            log.accesses.append(Access(caller, op.addr, value, shown(op, outcome), holder))
            try:
                pending[i] = agents[i].send(outcome)
            except StopIteration:
                del pending[i]
        await settle(transport)
        out.append(log)
    out[-1].final = await final_state(driver, contexts)
    return out


async def final_state(driver: HsmDriver, contexts: int) -> list[tuple[Any, ...]]:
    """Everything a caller can learn of the HSM's state: STATUS and READ_CTX as the manager
    (taking the mailbox back), and an HMAC under every caller's own key."""
    out: list[tuple[Any, ...]] = []
    for caller, cmd, ctx in [
        (MANAGER, Cmd.STATUS, 0),
        *((MANAGER, Cmd.READ_CTX, i) for i in range(1, contexts + 1)),
        *((c, Cmd.HMAC, 0) for c in (MANAGER, *HONEST_TASKS, *HOSTILE_TASKS)),
    ]:
        try:
            reply = await driver.run(caller, cmd, ctx, b"final" if cmd is Cmd.HMAC else b"")
            out.append((caller, int(cmd), ctx, int(reply.status), reply.result))
        except MailboxError as e:  # a hostile caller still holds it: only the manager may take
            out.append((caller, int(cmd), ctx, type(e).__name__))
    return out


# ---------------------------------------------------------------------------------------------
# What the model's interleavings must satisfy by themselves
# ---------------------------------------------------------------------------------------------

_PRIVATE = {Reg.LEN, Reg.CYCLES}


def check_isolation(logs: list[Interleaving], contexts: int) -> list[str]:
    """Isolation properties of interleavings run back to back on the golden model (one
    :func:`interleave_job`); an empty list if they hold.

    * No caller reads anything private while it does not hold the mailbox.
    * No hostile caller ever reads a word of an honest caller's secret result.
    * Every honest command that ran gives what its own inputs alone determine: a HASH is the
      SHA-256 of its data, a MEASURE the SHA-256 of the whole image, an HMAC the MAC under the
      caller's own last key, whatever anyone else wrote in between; and its result has the
      length of its own command.
    """
    problems: list[str] = []
    keys: dict[int, bytes | None] = {}  # each caller's HMAC key, as far as known
    unknown_key: set[int] = set()
    for log in logs:
        problems += _check_one(log, contexts, keys, unknown_key)
    return problems


def _check_one(
    log: Interleaving, contexts: int, keys: dict[int, bytes | None], unknown_key: set[int]
) -> list[str]:
    problems = []
    hostile = {*HOSTILE_TASKS, contexts + 1}
    for a in log.accesses:
        private = a.addr in _PRIVATE or a.addr >= Reg.RESULT
        if a.value is None and private and a.caller != a.holder and a.outcome != "refused":
            problems.append(f"caller {a.caller} read private 0x{a.addr:02x} not holding it: {a}")
    secret_words: set[int] = set()
    for caller, req, outcome in log.commands:
        if req.cmd == Cmd.HMAC_KEY:
            if outcome[0] == "ok" and outcome[1] == Status.OK:
                keys[caller] = req.data if len(req.data) <= 64 else sha256(req.data)
                unknown_key.discard(caller)
            elif outcome[0] != "ok" and outcome[1] is True:
                unknown_key.add(caller)  # it ran, but its status was lost
            continue
        if outcome[0] != "ok":
            continue
        if outcome[1] == Status.ERR_NO_KEY and keys.get(caller) and caller not in unknown_key:
            problems.append(f"caller {caller}'s HMAC key was evicted")
        if outcome[1] != Status.OK:
            continue
        result = outcome[2]
        if len(result) != RESULT_SIZE[Cmd(req.cmd)]:
            problems.append(f"{Cmd(req.cmd).name} of {caller} returned {len(result)} bytes")
        expected = None
        if req.cmd in (Cmd.HASH, Cmd.MEASURE):
            expected = sha256(req.data)
        elif req.cmd == Cmd.HMAC and caller not in unknown_key:
            key = keys.get(caller)
            if key is None:
                problems.append(f"HMAC of {caller} ran without a key of its own")
            else:
                expected = hmac_sha256(key, req.data)
        if expected is not None and result != expected:
            problems.append(f"{Cmd(req.cmd).name} of caller {caller} was steered: {req}")
        if req.cmd in (Cmd.HASH, Cmd.MEASURE, Cmd.HMAC, Cmd.TASK_MAC, Cmd.ATTEST):
            secret_words |= {int.from_bytes(result[i : i + 4], "big") for i in range(0, 32, 4)}
    secret_words.discard(0)
    for a in log.accesses:
        leaked = isinstance(a.outcome, int) and a.outcome in secret_words
        if a.caller in hostile and a.addr >= Reg.RESULT and leaked:
            problems.append(f"hostile caller {a.caller} read an honest result word: {a}")
    return problems


# ---------------------------------------------------------------------------------------------
# The five attacks, scripted
# ---------------------------------------------------------------------------------------------


def _every(start: int, stop: int, move: Any) -> dict[int, Any]:
    return dict.fromkeys(range(start, stop), move)


ATTACK_DEV = bytes(range(1, 17))
ATTACK_ROOT = bytes(range(64, 96))
#: the image the verifier authorised for context 1, and the same followed by a payload
GOOD = b"good code " * 46  # 460 bytes
PAYLOAD_IMAGE = GOOD + b"PAYLOAD " * 15 + b"!!!!"  # 584 bytes


async def attacks_job(driver: HsmDriver) -> dict[str, Any]:
    """All five attacks on one HSM, provisioned with GOOD installed for context 1."""
    m = driver.port(MANAGER)
    await m.provision(ATTACK_DEV, ATTACK_ROOT)
    auth = UpdateAuth.issue(derive_upd_key(ATTACK_ROOT), ATTACK_DEV, 1, 0, 1, reference(GOOD))
    await m.update(auth)
    return {
        "len_race": await attack_len_race(driver),
        "silence": await attack_silence(driver),
        "read_results": await attack_read_results(driver),
        "abort": await attack_abort_then_command(driver),
        "evict_key": await attack_evict_key(driver),
    }


async def attack_len_race(driver: HsmDriver) -> dict[str, Any]:
    """Attack 1: task 2 writes LEN (and claims, and writes DATA) at every point of the
    manager's MEASURE of the payload image and of its HMAC_KEY import."""

    async def race(h: Interposer) -> None:
        owner = unpack_reg(OwnerReg, await h.inner.read(Reg.OWNER, 2))
        held = "manager's" if owner.held and owner.caller == MANAGER else "other"
        await h.poke(2, Write(Reg.LEN, len(GOOD) - 1), f"LEN {held}")
        await h.poke(2, Write(Reg.DATA, 0x41414141), f"DATA {held}")
        await h.poke(2, Write(Reg.CTRL, Ctrl.CLAIM), f"CLAIM {held}")

    hostile_t = Interposer(driver.transport, MANAGER, _every(1, 400, race))
    manager = HsmDriver(hostile_t).port(MANAGER)
    await manager.reset(1)
    digest = await manager.measure(1, PAYLOAD_IMAGE)
    ctx1 = await manager.read_ctx(1)
    key = bytes(range(100, 132))
    await manager.hmac_key(key)
    mac = await manager.hmac(b"message")
    return {
        "digest_is_whole_image": digest == sha256(PAYLOAD_IMAGE),
        "trusted": ctx1.ok,
        "mac_under_whole_key": mac == hmac_sha256(key, b"message"),
        # what the task got in while the manager held the mailbox: nothing
        "taken_from_manager": [
            s for s in hostile_t.seen if "manager's" in s[0] and s[1] != "refused"
        ],
        "races": sum("manager's" in s[0] for s in hostile_t.seen),
    }


async def attack_silence(driver: HsmDriver) -> dict[str, Any]:
    """Attack 2: the manager's SET_ANOMALY while task 2's HASH takes data, and while it
    computes; the manager must learn that its own command ran, and ANOMALY must be set."""
    out: dict[str, Any] = {}
    data = bytes(range(256)) * 2

    async def interrupt(h: Interposer, label: str) -> None:
        reply = await HsmDriver(h.inner).run(MANAGER, Cmd.SET_ANOMALY, 2)
        read = await HsmDriver(h.inner).port(MANAGER).read_ctx(2)
        out[label] = (reply.status.name, reply.result, bool(read.flags & 2))
        await HsmDriver(h.inner).run(MANAGER, Cmd.RESET, 2)

    for label, after in (("while_data", 6), ("while_computing", 4 + len(data) // 4)):
        t = Interposer(driver.transport, 2, {after: functools.partial(interrupt, label=label)})
        task = HsmDriver(t, retries=0)
        try:
            got = await task.port(2).hash(data)
            out[f"{label}_task"] = ("ok", got == sha256(data))
        except MailboxError as e:
            out[f"{label}_task"] = (type(e).__name__, getattr(e, "ran", None))
    return out


async def attack_read_results(driver: HsmDriver) -> dict[str, Any]:
    """Attack 3: task 1 tries to read what task 2 and the manager computed: as a non-holder
    while they hold the mailbox, and as the next holder after a failing command of its own."""
    m = driver.port(MANAGER)
    await m.reset(1)
    await m.measure(1, GOOD)
    seen: list[int | str | None] = []

    async def peek(h: Interposer) -> None:
        for i in range(RESULT_WORDS):
            seen.append(await h.poke(1, Read(Reg.RESULT + 4 * i)))

    task2 = HsmDriver(Interposer(driver.transport, 2, _every(1, 40, peek))).port(2)
    await task2.hmac_key(b"task two's key")
    secrets = [await task2.hmac(b"task two's message"), await task2.hash(b"task two's data")]
    await m.hmac_key(b"manager key")
    secrets.append(await m.hmac(b"manager message"))
    secrets.append((await driver.run(MANAGER, Cmd.READ_CTX, 1)).result)
    after: list[int] = []
    t = driver.transport
    await t.write(Reg.CTRL, Ctrl.CLAIM, 1)
    await t.write(Reg.LEN, 0, 1)
    await t.write(Reg.CMD, pack_reg(CmdReg, code=Cmd.RESET, ctx=2), 1)
    status = unpack_reg(StatusReg, await t.read(Reg.STATUS, 1))
    after += [await t.read(Reg.RESULT + 4 * i, 1) for i in range(RESULT_WORDS)]
    await t.write(Reg.CTRL, Ctrl.RELEASE, 1)
    words = {int.from_bytes(s[i : i + 4], "big") for s in secrets for i in range(0, len(s), 4)}
    words.discard(0)
    return {
        "own_failure": Status(status.status).name,
        "after_words": sorted(set(after)),
        "peeks_refused": sum(s == "refused" for s in seen),
        "peeks": len(seen),
        "leaked": sorted(words & ({w for w in seen if isinstance(w, int)} | set(after))),
    }


async def attack_abort_then_command(driver: HsmDriver) -> list[tuple[str, int | str | None]]:
    """Attack 4: abort, then a new command at once; every access and what it saw, so the model
    and the RTL can be compared access for access."""
    t = Interposer(driver.transport, -1, {})

    def cmd(code: int) -> int:
        return pack_reg(CmdReg, code=code, ctx=0)

    script: list[tuple[int, Read | Write]] = [
        (3, Write(Reg.CTRL, Ctrl.CLAIM)),
        (3, Write(Reg.LEN, 64)),
        (3, Write(Reg.CMD, cmd(Cmd.HASH))),
        (3, Read(Reg.STATUS)),
        (3, Write(Reg.DATA, 0x01020304)),
        (4, Write(Reg.CTRL, Ctrl.ABORT)),  # not the holder
        (MANAGER, Write(Reg.CTRL, Ctrl.ABORT)),  # not the holder either
        (3, Write(Reg.CTRL, Ctrl.ABORT)),
        (3, Write(Reg.LEN, 3)),  # right after the abort: taken
        (3, Read(Reg.STATUS)),
        (3, Write(Reg.CMD, cmd(Cmd.HASH))),
        (3, Read(Reg.STATUS)),
        (3, Write(Reg.DATA, 0x61626300)),
    ]
    for caller, op in script:
        await t.poke(caller, op)
    await settle(driver.transport)
    t.seen.append(("STATUS", await driver.transport.read(Reg.STATUS, 3)))
    for i in range(8):
        await t.poke(3, Read(Reg.RESULT + 4 * i))
    await t.poke(3, Write(Reg.CTRL, Ctrl.RELEASE))
    await t.poke(3, Read(Reg.OWNER))
    return t.seen


async def attack_evict_key(driver: HsmDriver) -> dict[str, bool]:
    """Attack 5: a task imports keys of its own (and tries every other caller's id it cannot
    have) after the manager imported one; the manager's HMAC must still use its own key."""
    m, task = driver.port(MANAGER), driver.port(2)
    await m.hmac_key(b"the manager's key")
    await task.hmac_key(b"the task's key")
    await task.hmac_key(b"the task's second key" * 5)  # long: hashed, replaces its own only
    return {
        "manager": await m.hmac(b"m") == hmac_sha256(b"the manager's key", b"m"),
        "task": await task.hmac(b"t") == hmac_sha256(sha256(b"the task's second key" * 5), b"t"),
        "task1_has_none": (await driver.run(1, Cmd.HMAC, 0, b"x")).status is Status.ERR_NO_KEY,
    }
