"""The anomaly detector's evaluation: attack and benign scenarios, swept, on the traced system.

Every run builds the system of :mod:`mchsm.sw.traces` afresh on the real
:class:`~mchsm.sw.kernel.Microkernel` (over :class:`~mchsm.sw.traces.NullHsm`), loads its images
(each carrying its rig-derived profile), and lets the real :class:`~mchsm.sw.manager.Manager`
watch it with an :class:`~mchsm.sw.anomaly.AnomalyDetector`, exactly as on a device: the
manager adopts each verified profile, sets the kernel's HSM budgets, issues SET_ANOMALY on a
flag and reloads a flagged task.  The scenario plays its events (a hijack, an authorised
update, a load step, a reload) on that system, period by period.  The scenarios are written
from the classes of issue 20, with their parameters drawn from seeded random sources, never
from the detector's state.

Attack classes (``target``: what must be met; ``delay``: periods from the attack's first
period to the flag, 1 = flagged at the end of the first):

``channel``
    a task adds +X % to the volume of a channel it already uses (X swept 10..300), either as
    extra messages of the usual size or as padding of its usual messages (drawn per run).
``syscall``
    one call a period of a system-call kind the task never uses (``new``) or rarely uses
    (``rare``).
``burst``
    one 64..256-byte message every P periods (P swept 3..20) on a channel the task uses.
``ramp``
    a channel's volume, or the task's CPU time, ramps from 1x to 3x over R periods (R swept
    20..200); caught "before 2x" means within R/2 periods.
``from-start``
    exfiltration to a new peer, a busy loop, HSM brute force, or +100 % on a channel, present
    from the task's first period.
``hsm``
    n extra HSM commands a period (n swept 1..4) of a kind comms uses (TASK_MAC, HASH), all
    answered OK: far under the HSM monitor's budget of 64.
``update-hijack``
    an upstream task is updated (authorised), then a downstream task is hijacked.
``collusion``
    an upstream task floods a downstream one (+300 %), which exfiltrates (+100 %) under the
    excuse of the flood.
``mimicry``
    informational: other bytes in the task's usual messages.  No behavioural detector sees it.

Benign classes (false flags per period must stay low): ``normal``, ``periodic`` (the logger's
flush every P periods, P swept 5..20, in its profile), ``new-peer`` (comms starts answering a
new poller, both with new profiles by authorised updates), ``load-step`` (the sample rate
steps by 0.5..2x and every task's CPU time by 0.8..1.3x), ``update`` (a task is updated to
another variant), ``reload`` (tasks are reloaded, same image).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mchsm.constants import Cmd
from mchsm.sw.anomaly import AnomalyDetector, DetectorConfig
from mchsm.sw.errors import ArgumentError, HsmError
from mchsm.sw.kernel import Microkernel, Program, TaskApi
from mchsm.sw.manager import Manager
from mchsm.sw.profile import Profile
from mchsm.sw.protocol import UpdateAuth, reference
from mchsm.sw.traces import (
    BASE,
    TASKS,
    TIME_SLICE,
    Images,
    NullHsm,
    TaskSystem,
    exfiltrating,
    run_sync,
)

__all__ = [
    "BENIGN",
    "CHANNELS",
    "CLASSES",
    "Outcome",
    "Report",
    "Spec",
    "build_images",
    "evaluate",
    "run_spec",
    "specs",
]

#: the channels of the deployed system: (sender, receiver)
CHANNELS = (("sensor", "control"), ("control", "logger"), ("control", "comms"), ("logger", "comms"))
#: the update variant of each task (what the ``update`` classes install)
UPDATES = {"sensor": "v2", "control": "v2", "comms": "v3", "logger": "v2"}
#: detection horizon after an attack starts (the 5/20/50 windows fit in it)
HORIZON = 60
#: periods of a benign run
BENIGN_PERIODS = 300
#: the detector's threshold values the ROC curve is drawn over (log of the per-test ARL)
ROC_THRESHOLDS = (4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 17.0, 20.0, 25.0)
QUICK_ROC = (6.0, 10.0, 14.0, 20.0)
#: runs per class of the full sweep that the ROC curve re-runs at every other threshold
ROC_ATTACK_RUNS = 40
ROC_BENIGN_RUNS = 40
QUICK_ROC_RUNS = 6


@dataclass(frozen=True)
class Class:
    """One scenario class: its sweep and run counts, full and quick."""

    name: str
    benign: bool
    params: tuple[str, ...]  #: the sweep (full)
    quick: tuple[str, ...]  #: the sweep of the fixed-seed subset
    runs: int  #: runs per parameter value (full)
    quick_runs: int
    info: bool = False  #: informational: no target


CLASSES = (
    Class("channel", False, ("10", "20", "50", "100", "200", "300"), ("20", "100", "300"), 100, 10),
    Class("syscall", False, ("new", "rare"), ("new", "rare"), 100, 8),
    Class("burst", False, ("3", "5", "10", "15", "20"), ("3", "10", "20"), 100, 8),
    Class("ramp", False, ("20", "50", "100", "200"), ("50",), 100, 16),
    Class(
        "from-start",
        False,
        ("exfil", "busy", "bruteforce", "channel"),
        ("exfil", "busy", "bruteforce", "channel"),
        100,
        6,
    ),
    Class("hsm", False, ("1", "2", "3", "4"), ("1", "2", "4"), 100, 8),
    Class("update-hijack", False, ("sensor", "control"), ("sensor", "control"), 100, 6),
    Class("collusion", False, ("control", "comms"), ("control", "comms"), 100, 6),
    Class("mimicry", False, ("content",), ("content",), 50, 4, info=True),
    Class("normal", True, ("-",), ("-",), 200, 8),
    Class("periodic", True, ("5", "8", "10", "13", "20"), ("5", "10", "20"), 60, 3),
    Class("new-peer", True, ("-",), ("-",), 200, 8),
    Class("load-step", True, ("-",), ("-",), 200, 8),
    Class("update", True, ("sensor", "control", "comms", "logger"), ("control", "logger"), 60, 4),
    Class("reload", True, ("-",), ("-",), 200, 8),
)
BENIGN = tuple(c.name for c in CLASSES if c.benign)
_CLASS = {c.name: c for c in CLASSES}


@dataclass(frozen=True)
class Spec:
    """One seeded run of one class at one parameter value (and detector threshold)."""

    cls: str
    param: str
    index: int
    seed: int = 1
    log_arl: float = DetectorConfig().log_arl

    @property
    def benign(self) -> bool:
        return _CLASS[self.cls].benign

    def rng(self) -> random.Random:
        """The run's random source: the scenario's draws and the tasks' noise."""
        return random.Random(f"mchsm-eval/{self.seed}/{self.cls}/{self.param}/{self.index}")


@dataclass
class Outcome:
    """What happened in one run."""

    cls: str
    param: str
    index: int
    log_arl: float
    benign: bool
    periods: int = 0  #: periods run
    start: int | None = None  #: the attack's first period
    delay: int | None = None  #: attack periods until the target was flagged (1 = the first)
    deadline: int | None = None  #: ramp: the delay by which it must be caught (before 2x)
    flagged: int = 0  #: periods with a flag of a task that was not attacked
    excused: int = 0  #: periods some task was judged with an excuse
    rate: float = 0.0  #: the attack's rate (bytes a period for channels, calls for syscalls)
    channel: str = ""  #: "sender->receiver" for channel-type attacks
    mode: str = ""  #: channel attacks: extra "messages", or padding ("size")
    reason: str = ""  #: why the target was flagged (feature and test)


# -- attacks --------------------------------------------------------------------------------------


class _Padded(TaskApi):
    """A hijacked task's view of its system calls: what it sends to ``endpoint`` is padded."""

    def __init__(self, api: TaskApi, endpoint: str, extra: Callable[[], int]) -> None:
        super().__init__(api._kernel, api._task)
        self._endpoint = endpoint
        self._extra = extra

    def send(self, endpoint: str, message: bytes) -> None:
        if endpoint == self._endpoint:
            message = message + bytes(self._extra())
        super().send(endpoint, message)


def _volume(profiles: dict[str, Profile], sender: str, receiver: str) -> tuple[float, float]:
    """Messages a period and bytes per message of a channel, from its sender's profile."""
    features = profiles[sender].features
    messages = features[f"sent:{receiver}"].mean
    size = features[f"bytes:{receiver}"].mean / messages
    return messages, size


def _extra_traffic(
    rng: random.Random,
    receiver: str,
    size: float,
    messages: Callable[[int], float],
    mode: str,
    rate: float,
) -> Callable[[Program], Program]:
    """A hijack adding traffic on a channel: ``messages(t)`` extra messages a period (of the
    usual size), or the same volume as padding of the usual messages (``mode == "size"``)."""

    def hijack(original: Program) -> Program:
        clock = [0]
        carry = [0.0]

        async def hijacked(api: TaskApi) -> None:
            t = clock[0]
            clock[0] += 1
            if mode == "size":
                # the volume of messages(t) usual-sized messages, spread over what it sends
                def extra() -> int:
                    carry[0] += messages(t) * size / max(rate, 1e-9)
                    whole = int(carry[0])
                    carry[0] -= whole
                    return whole

                await original(_Padded(api, receiver, extra))
                return
            await original(api)
            for _ in range(_count(rng, messages(t))):
                api.send(receiver, bytes(round(size)))

        return hijacked

    return hijack


def _count(rng: random.Random, rate: float) -> int:
    whole = int(rate)
    return whole + (rng.random() < rate - whole)


def _extra_calls(kind: str, per_period: float, rng: random.Random) -> Callable[[Program], Program]:
    def hijack(original: Program) -> Program:
        async def hijacked(api: TaskApi) -> None:
            await original(api)
            for _ in range(_count(rng, per_period)):
                if kind == "read":
                    api.read(api.data_base + 1024, 8)
                elif kind == "write":
                    api.write(api.data_base + 1024, b"stolen!!")
                elif kind == "receive":
                    api.receive()
                elif kind == "wait":
                    api.interrupts()
                else:  # an HSM command kind
                    try:
                        await api.hsm.call(Cmd[kind], 0, rng.randbytes(32))
                    except HsmError:
                        pass

        return hijacked

    return hijack


def _busy(rng: random.Random) -> Callable[[Program], Program]:
    def hijack(original: Program) -> Program:
        async def busy(api: TaskApi) -> None:
            api.compute(TIME_SLICE - rng.randrange(8))

        return busy

    return hijack


def _bruteforce(rng: random.Random, tid: int, others: list[int]) -> Callable[[Program], Program]:
    def hijack(original: Program) -> Program:
        async def brute(api: TaskApi) -> None:
            await original(api)
            for _ in range(rng.randint(8, 24)):
                choice = rng.randrange(5)
                if choice == 0:
                    await api.hsm.call(Cmd.READ_CTX, rng.choice(others))
                elif choice == 1:
                    await api.hsm.call(Cmd.RESET, rng.choice(others))
                elif choice == 2:
                    await api.hsm.call(Cmd.UPDATE, tid, rng.randbytes(72))
                elif choice == 3:
                    await api.hsm.call(Cmd.HMAC, 0, rng.randbytes(32))
                else:
                    await api.hsm.call(Cmd.TASK_MAC, 0, rng.randbytes(32))

        return brute

    return hijack


class _Hog(TaskApi):
    """A hijacked task's view that burns ``extra`` more CPU units in its first compute (the
    kernel counts CPU time, not how a program spends it: no extra system call)."""

    def __init__(self, api: TaskApi, extra: int) -> None:
        super().__init__(api._kernel, api._task)
        self._extra = extra

    def compute(self, units: int) -> None:
        super().compute(units + self._extra)
        self._extra = 0


def _cpu_ramp(rng: random.Random, mean: float, length: int) -> Callable[[Program], Program]:
    def hijack(original: Program) -> Program:
        clock = [0]

        async def hog(api: TaskApi) -> None:
            progress = min(clock[0] / length, 1.0)
            clock[0] += 1
            await original(_Hog(api, round(mean * 2 * progress)))

        return hog

    return hijack


def _mimic(original: Program) -> Program:
    async def mimic(api: TaskApi) -> None:  # the same calls, other bytes in the messages
        await original(api)

    return mimic


# -- one run --------------------------------------------------------------------------------------

Event = Callable[["_Run"], Awaitable[None]]


class _Run:
    """The system, the manager and the scenario's plan of one run."""

    def __init__(self, spec: Spec, images: Images) -> None:
        self.spec = spec
        self.images = images
        self.rng = spec.rng()
        variants = dict(BASE)
        if spec.cls == "periodic":
            variants["logger"] = f"p{spec.param}"
        self.kernel = Microkernel(NullHsm(), len(TASKS))
        self.system = TaskSystem(self.kernel, self.rng, variants)
        self.manager = Manager(self.kernel)
        self.detector = AnomalyDetector(replace(DetectorConfig(), log_arl=spec.log_arl))
        self.events: dict[int, list[Event]] = {}
        self.target: str | None = None  #: the task whose detection counts
        self.attackers: set[str] = set()
        self.versions = dict.fromkeys(TASKS, 1)
        self.out = Outcome(spec.cls, spec.param, spec.index, spec.log_arl, spec.benign)

    def profiles(self) -> dict[str, Profile]:
        return {n: self.images.profiles[n, v] for n, v in self.system.variants.items()}

    def at(self, period: int, event: Event) -> None:
        self.events.setdefault(period, []).append(event)

    def hijack(self, period: int, name: str, attack: Callable[[Program], Program]) -> None:
        self.attackers.add(name)

        async def go(run: _Run) -> None:
            run.system.hijack(name, attack)

        self.at(period, go)

    def update(self, period: int, name: str, variant: str) -> None:
        async def go(run: _Run) -> None:
            ctx = run.kernel.task(name).tid
            image = run.images.image(name, variant)
            old = run.versions[name]
            run.versions[name] = old + 1
            auth = UpdateAuth(ctx=ctx, old=old, new=old + 1, ref=reference(image), tag=bytes(32))
            run.system.switch(name, variant)
            await run.manager.apply_update(auth, image)

        self.at(period, go)

    async def execute(self, periods: int) -> Outcome:
        self.system.install(self.images.deployed(self.system.variants))
        await self.kernel.load_all()
        await self.manager.watch(self.detector)
        out = self.out
        start = out.start if out.start is not None else periods
        for period in range(periods):
            for event in self.events.get(period, []):
                await event(self)
            self.system.deliver()
            flagged = await self.manager.run_period()
            out.periods = period + 1
            innocent = False
            for tid in flagged:
                name = self.kernel.tasks[tid].name
                if name == self.target and period >= start:
                    out.delay = period - start + 1
                    detection = self.manager.detections[-1]
                    dev = detection.deviations[0] if detection.deviations else None
                    out.reason = f"{detection.reason}:{dev.name}@{dev.scale}" if dev else ""
                    out.excused = sum(self.detector.excused.values())
                    return out
                if name not in self.attackers or period < start:
                    innocent = True
                self.system.restore(name)  # the loader loads the genuine image
                await self.manager.reload(tid)
            out.flagged += innocent
        out.excused = sum(self.detector.excused.values())
        return out


def _plan(run: _Run) -> int:
    """Set up the run's scenario; returns how many periods it lasts."""
    spec, rng, out = run.spec, run.rng, run.out
    profiles = run.profiles()
    cls, param = spec.cls, spec.param

    def channel_attack(start: int, percent: float, mode: str | None = None) -> None:
        sender, receiver = rng.choice(CHANNELS)
        messages, size = _volume(profiles, sender, receiver)
        mode = mode or rng.choice(("messages", "size"))
        extra = percent / 100 * messages
        run.target = sender
        out.start, out.channel, out.rate = start, f"{sender}->{receiver}", extra * size
        out.mode = mode
        run.hijack(
            start, sender, _extra_traffic(rng, receiver, size, lambda t: extra, mode, messages)
        )

    if cls == "channel":
        channel_attack(rng.randint(10, 60), float(param))
        return out.start + HORIZON  # type: ignore[operator]  # channel_attack set start
    if cls == "syscall":
        name = rng.choice(TASKS)
        sys = profiles[name].features
        if param == "new":
            kinds = [k for k in ("read", "write", "receive", "wait") if f"sys:{k}" not in sys]
        else:
            rare = [
                (n, k)
                for n in TASKS
                for k in ("read", "write", "receive", "wait")
                if f"sys:{k}" in profiles[n].features
                and profiles[n].features[f"sys:{k}"].mean < 0.1
            ]
            name, kind = rng.choice(rare)
            kinds = [kind]
        kind = rng.choice(kinds)
        run.target = name
        out.start, out.rate, out.channel = rng.randint(10, 60), 1.0, f"{name}:{kind}"
        run.hijack(out.start, name, _extra_calls(kind, 1.0, rng))
        return out.start + HORIZON
    if cls == "burst":
        every = int(param)
        sender, receiver = rng.choice(CHANNELS)
        run.target = sender
        out.start, out.channel = rng.randint(10, 60), f"{sender}->{receiver}"
        sizes = [rng.randint(64, 256) for _ in range(HORIZON // every + 1)]
        out.rate = sum(sizes) / len(sizes) / every

        def burst(original: Program) -> Program:
            clock = [0]

            async def bursting(api: TaskApi) -> None:
                await original(api)
                if clock[0] % every == 0:
                    api.send(receiver, bytes(sizes[clock[0] // every]))
                clock[0] += 1

            return bursting

        run.hijack(out.start, sender, burst)
        return out.start + HORIZON
    if cls == "ramp":
        length = int(param)
        out.start = rng.randint(10, 60)
        out.deadline = length // 2  # it reaches 2x after half the ramp
        if rng.random() < 0.5:
            name = rng.choice(TASKS)
            run.target, out.channel = name, f"{name}:cpu"
            out.rate = profiles[name].features["cpu"].mean
            run.hijack(out.start, name, _cpu_ramp(rng, out.rate, length))
        else:
            sender, receiver = rng.choice(CHANNELS)
            messages, size = _volume(profiles, sender, receiver)
            run.target, out.channel = sender, f"{sender}->{receiver}"
            out.rate = 2 * messages * size  # at the end of the ramp
            mode = rng.choice(("messages", "size"))
            attack = _extra_traffic(
                rng,
                receiver,
                size,
                lambda t: 2 * messages * min(t / length, 1.0),
                mode,
                messages,
            )
            run.hijack(out.start, sender, attack)
        return out.start + max(HORIZON, length + 10)
    if cls == "from-start":
        out.start = 0
        if param == "channel":
            channel_attack(0, 100.0)
            return HORIZON
        name = rng.choice(TASKS)
        run.target, out.channel = name, name
        if param == "exfil":
            used = {k.partition(":")[2] for k in profiles[name].features if k.startswith("sent:")}
            peer = rng.choice([p for p in TASKS if p != name and p not in used])
            out.channel = f"{name}->{peer}"
            out.rate = 7.5 * 160
            run.hijack(0, name, lambda original: exfiltrating(original, peer, rng))
        elif param == "busy":
            run.hijack(0, name, _busy(rng))
        else:
            tid = TASKS.index(name) + 1
            others = [i for i in range(1, len(TASKS) + 1) if i != tid]
            run.hijack(0, name, _bruteforce(rng, tid, others))
        return HORIZON
    if cls == "hsm":
        kind = rng.choice(("TASK_MAC", "HASH"))
        run.target, out.channel = "comms", f"comms:{kind}"
        out.start, out.rate = rng.randint(10, 60), float(param)
        run.hijack(out.start, "comms", _extra_calls(kind, float(param), rng))
        return out.start + HORIZON
    if cls == "update-hijack":
        updated = rng.randint(10, 30)
        run.update(updated, param, UPDATES[param])
        out.start = updated + rng.randint(5, 30)
        after = {**profiles, param: run.images.profiles[param, UPDATES[param]]}
        if param == "sensor":
            sender, receiver = "control", rng.choice(("logger", "comms"))
        else:
            sender, receiver = rng.choice((("logger", "comms"), ("comms", "HSM")))
        run.target, out.channel = sender, f"{sender}->{receiver}"
        if receiver == "HSM":
            out.rate = 2.0
            run.hijack(out.start, sender, _extra_calls("TASK_MAC", 2.0, rng))
        else:
            messages, size = _volume(after, sender, receiver)
            out.rate = messages * size
            run.hijack(
                out.start,
                sender,
                _extra_traffic(rng, receiver, size, lambda t: messages, "messages", messages),
            )
        return out.start + HORIZON
    if cls == "collusion":
        out.start = rng.randint(10, 60)
        upstream, victim = ("sensor", "control") if param == "control" else ("control", "comms")
        messages, size = _volume(profiles, upstream, victim)
        flood = 3 * messages
        run.hijack(
            out.start,
            upstream,
            _extra_traffic(rng, victim, size, lambda t: flood, "messages", flood),
        )
        run.target = victim
        if victim == "control":
            receiver = rng.choice(("logger", "comms"))
            m2, s2 = _volume(profiles, "control", receiver)
            out.channel, out.rate = f"control->{receiver}", m2 * s2
            run.hijack(
                out.start,
                "control",
                _extra_traffic(rng, receiver, s2, lambda t: m2, "messages", m2),
            )
        else:
            out.channel, out.rate = "comms:TASK_MAC", 2.0
            run.hijack(out.start, "comms", _extra_calls("TASK_MAC", 2.0, rng))
        return out.start + HORIZON
    if cls == "mimicry":
        sender, receiver = rng.choice(CHANNELS)
        messages, size = _volume(profiles, sender, receiver)
        run.target, out.channel, out.rate = sender, f"{sender}->{receiver}", messages * size
        out.start = rng.randint(10, 60)
        run.hijack(out.start, sender, _mimic)
        return out.start + HORIZON
    # benign
    if cls == "new-peer":
        when = rng.randint(30, 150)
        run.update(when, "comms", "v2")
        run.update(when, "diag", "v2")
    elif cls == "load-step":
        when = rng.randint(30, 150)
        env = rng.uniform(1.3, 2.0) if rng.random() < 0.5 else rng.uniform(0.5, 0.75)
        contention = rng.uniform(1.1, 1.3) if rng.random() < 0.5 else rng.uniform(0.8, 0.9)

        async def step(run: _Run) -> None:
            run.system.env, run.system.contention = env, contention

        run.at(when, step)
    elif cls == "update":
        run.update(rng.randint(30, 150), param, UPDATES[param])
    elif cls == "reload":
        for when in sorted(rng.sample(range(20, BENIGN_PERIODS - 20), 2)):
            name = rng.choice(TASKS)

            async def again(run: _Run, name: str = name) -> None:
                await run.manager.reload(name)

            run.at(when, again)
    elif cls not in ("normal", "periodic"):
        raise ArgumentError(f"unknown scenario class {cls!r}")
    return BENIGN_PERIODS


def run_spec(spec: Spec, images: Images) -> Outcome:
    """Run one scenario (deterministic for its spec)."""
    run = _Run(spec, images)
    periods = _plan(run)
    return run_sync(run.execute(periods))


# -- the whole evaluation -------------------------------------------------------------------------


def specs(*, full: bool = False, seed: int = 1, thresholds: Sequence[float] = ()) -> list[Spec]:
    """Every run of the evaluation (the fixed-seed subset unless ``full``), at the default
    threshold and, for the ROC curve, at each of ``thresholds``."""
    out = []
    default = DetectorConfig().log_arl
    for c in CLASSES:
        params = c.params if full else c.quick
        runs = c.runs if full else c.quick_runs
        # the ROC curve re-runs a part of the runs at every threshold (all of the subset's)
        per_class = (ROC_BENIGN_RUNS if c.benign else ROC_ATTACK_RUNS) if full else QUICK_ROC_RUNS
        again = -(-per_class // len(params))
        for param in params:
            for i in range(runs):
                out.append(Spec(c.name, param, i, seed, default))
                if not c.info and i < again:
                    out.extend(Spec(c.name, param, i, seed, t) for t in thresholds if t != default)
    return out


def _wanted() -> list[tuple[str, str]]:
    variants = {(n, v) for n, v in BASE.items()}
    variants |= {(n, v) for n, v in UPDATES.items()}
    variants |= {("comms", "v2"), ("diag", "v2")}
    variants |= {("logger", f"p{p}") for p in _CLASS["periodic"].params}
    return sorted(variants)


def build_images(progress: Callable[[str], None] | None = None) -> Images:
    """Every image variant the evaluation deploys, with its rig-derived profile."""
    return Images.build(_wanted(), progress=progress)


def _batch(images: Images, batch: list[Spec]) -> list[Outcome]:
    return [run_spec(s, images) for s in batch]


def _rig_batch(pairs: list[tuple[str, str]]) -> dict[tuple[str, str], Profile]:
    return Images.build(pairs).profiles


@dataclass
class Row:
    """One line of the table: a class at one parameter value, at the default threshold."""

    cls: str
    param: str
    benign: bool
    runs: int = 0
    within5: int = 0
    within20: int = 0
    within50: int = 0
    in_time: int = 0  #: ramp: caught before 2x
    delays: list[int] = field(default_factory=list)
    periods: int = 0
    flagged: int = 0
    rate: float = 0.0  #: mean attack rate
    channels: dict[str, list[Outcome]] = field(default_factory=dict)

    def add(self, o: Outcome) -> None:
        self.runs += 1
        self.periods += o.periods
        self.flagged += o.flagged
        self.rate += (o.rate - self.rate) / self.runs
        if o.delay is not None:
            self.delays.append(o.delay)
            self.within5 += o.delay <= 5
            self.within20 += o.delay <= 20
            self.within50 += o.delay <= 50
            self.in_time += o.deadline is not None and o.delay <= o.deadline
        if o.channel:
            self.channels.setdefault(o.channel, []).append(o)

    def frac(self, n: int) -> float:
        return n / self.runs if self.runs else math.nan

    @property
    def fp_rate(self) -> float:
        return self.flagged / self.periods if self.periods else math.nan

    @property
    def mean_delay(self) -> float | None:
        return sum(self.delays) / len(self.delays) if self.delays else None


@dataclass(frozen=True)
class Target:
    """One target of issue 20, and whether it was met."""

    what: str
    measured: float
    goal: float
    at_most: bool = False
    runs: int = 0  #: runs (attack targets) or periods (false flags) measured

    @property
    def met(self) -> bool:
        return self.measured <= self.goal if self.at_most else self.measured >= self.goal

    @property
    def noise(self) -> float:
        """Two standard errors of a rate ``goal`` measured on ``runs`` runs: a miss by less
        than this on the small fixed-seed subset says little; the full sweep decides."""
        if not self.runs:
            return 0.0
        return 2 * math.sqrt(self.goal * (1 - self.goal) / self.runs)

    @property
    def near(self) -> bool:
        """Met, or missed by less than the noise of its sample."""
        if self.at_most:
            return self.measured <= self.goal + self.noise
        return self.measured >= self.goal - self.noise


@dataclass
class Report:
    """The evaluation's figures (default threshold), the ROC points and the leakage bounds."""

    full: bool
    seed: int
    config: DetectorConfig
    rows: list[Row]
    roc: list[dict[str, float]]
    bounds: list[dict[str, object]]
    seconds: float = 0.0
    roc_png: str | None = None

    def row(self, cls: str, param: str) -> Row | None:
        return next((r for r in self.rows if r.cls == cls and r.param == param), None)

    def targets(self) -> list[Target]:
        out = []

        def within(cls: str, params: Iterable[str], n: int, what: str) -> None:
            rows = [r for p in params if (r := self.row(cls, p)) is not None]
            if rows:
                hits = sum(getattr(r, f"within{n}") for r in rows)
                runs = sum(r.runs for r in rows)
                out.append(Target(what, hits / runs, 0.9, runs=runs))

        within("channel", ["100"], 20, "channel +100 % caught within 20 periods")
        within("syscall", ["new"], 20, "new syscall kind, 1 call a period, within 20")
        within("from-start", _CLASS["from-start"].params, 20, "attacks from period 0, within 20")
        within("hsm", ["2", "3", "4"], 20, "2-4 extra HSM commands a period, within 20")
        within("burst", ["10"], 50, "burst every 10 periods, within 50")
        ramp = self.row("ramp", "50")
        if ramp is not None:
            out.append(
                Target(
                    "ramp to 3x over 50 periods caught before 2x",
                    ramp.frac(ramp.in_time),
                    0.9,
                    runs=ramp.runs,
                )
            )
        for cls in BENIGN:
            rows = [r for r in self.rows if r.cls == cls]
            if rows:
                periods = max(1, sum(r.periods for r in rows))
                rate = sum(r.flagged for r in rows) / periods
                out.append(Target(f"{cls}: periods with a false flag", rate, 0.005, True, periods))
        return out

    def failures(self) -> list[Target]:
        return [t for t in self.targets() if not t.met]

    def to_dict(self) -> dict[str, object]:
        return {
            "full": self.full,
            "seed": self.seed,
            "seconds": round(self.seconds, 1),
            "config": asdict(self.config),
            "rows": [
                {
                    "class": r.cls,
                    "param": r.param,
                    "benign": r.benign,
                    "runs": r.runs,
                    "within5": r.frac(r.within5),
                    "within20": r.frac(r.within20),
                    "within50": r.frac(r.within50),
                    "before2x": r.frac(r.in_time) if r.cls == "ramp" else None,
                    "mean_delay": r.mean_delay,
                    "fp_rate": r.fp_rate,
                    "periods": r.periods,
                    "rate": r.rate,
                }
                for r in self.rows
            ],
            "roc": self.roc,
            "leakage": self.bounds,
            "targets": [
                {
                    "what": t.what,
                    "measured": t.measured,
                    "goal": t.goal,
                    "met": t.met,
                    "runs": t.runs,
                    "noise": t.noise,
                    "near": t.near,
                }
                for t in self.targets()
            ],
            "roc_png": self.roc_png,
        }

    def render(self) -> str:
        lines = [
            f"anomaly detector, {'full sweep' if self.full else 'fixed-seed subset'} (seed "
            f"{self.seed}, {sum(r.runs for r in self.rows)} runs, {self.seconds:.0f} s); "
            f"threshold log_arl {self.config.log_arl:g}",
            "",
            f"{'class':<14}{'param':>10}{'runs':>6}{'<=5':>7}{'<=20':>7}{'<=50':>7}"
            f"{'delay':>7}{'FP/period':>11}  note",
        ]
        for r in self.rows:
            delay = "-" if r.mean_delay is None else f"{r.mean_delay:.1f}"
            note = ""
            if r.cls == "ramp":
                note = f"before 2x: {r.frac(r.in_time):.0%}"
            elif r.cls in ("channel", "burst", "mimicry") or (
                r.cls == "from-start" and r.param == "channel"
            ):
                note = f"{r.rate:.1f} B/period"
            elif r.cls == "hsm":
                note = f"{r.rate:g} commands/period"
            if r.benign:
                lines.append(
                    f"{r.cls:<14}{r.param:>10}{r.runs:>6}{'':>7}{'':>7}{'':>7}{'':>7}"
                    f"{r.fp_rate:>10.3%}  {r.periods} periods"
                )
            else:
                lines.append(
                    f"{r.cls:<14}{r.param:>10}{r.runs:>6}{r.frac(r.within5):>7.0%}"
                    f"{r.frac(r.within20):>7.0%}{r.frac(r.within50):>7.0%}{delay:>7}"
                    f"{r.fp_rate:>10.3%}  {note}"
                )
        lines += [
            "",
            "<=N: runs whose attacker was flagged within N periods of the attack's start; delay: "
            "mean over those flagged;",
            "FP/period: periods in which a task that was not attacked was flagged.",
            "",
            "leakage bounds, per channel (bytes a period an exfiltration adds on a channel it "
            "already uses):",
            f"{'channel':<18}{'normal':>9}{'<50% in 50':>12}{'>=90% in 50':>13}{'never':>9}",
        ]
        for b in self.bounds:
            lines.append(
                f"{b['channel']!s:<18}{b['normal']:>9.1f}{_fmt(b['hidden']):>12}"
                f"{_fmt(b['caught']):>13}{b['asymptotic']:>9.2f}"
            )
        lines += [
            "normal: the channel's volume; <50% in 50: the largest swept rate caught in under "
            "half the runs within 50 periods;",
            ">=90% in 50: from this swept rate on, 90 % caught; never: below this "
            "rate no test accumulates evidence (k sd_L / L at the best scale, plus the online "
            "refinement).",
            "",
            "ROC over the threshold (log_arl): FP per period over benign periods, detection "
            "within 20 periods over attack runs",
        ]
        for p in self.roc:
            lines.append(
                f"  log_arl {p['log_arl']:>5g}: FP {p['fp_rate']:.4%}  detected <=20 "
                f"{p['within20']:.1%}  <=50 {p['within50']:.1%}"
            )
        if self.roc_png:
            lines.append(f"ROC curve: {self.roc_png}")
        lines += ["", "targets (issue 20):"]
        for t in self.targets():
            mark = "met" if t.met else "MISSED"
            noise = "" if t.met or self.full else f"  (by less than the +-{t.noise:.0%} noise)"
            if t.at_most:
                lines.append(f"  {mark:<7}{t.what}: {t.measured:.3%} (<= {t.goal:.1%})")
            else:
                lines.append(
                    f"  {mark:<7}{t.what}: {t.measured:.0%} of {t.runs} (>= {t.goal:.0%})"
                    + (noise if t.near else "")
                )
        if not self.full:
            lines.append(
                "  (the fixed-seed subset: a few runs per value; mchsm anomaly-eval --full "
                "measures the targets)"
            )
        return "\n".join(lines)


def _fmt(value: object) -> str:
    return "-" if value is None else f"{value:.1f}"


def _bounds(rows: Sequence[Row], images: Images, config: DetectorConfig) -> list[dict[str, object]]:
    """Per channel: its normal volume, the swept rates caught in < 50 % / >= 90 % of the runs
    within 50 periods, and the rate below which no test ever accumulates evidence."""
    per: dict[str, dict[float, list[Outcome]]] = {}
    for r in rows:
        if r.cls == "channel":
            for channel, outs in r.channels.items():
                per.setdefault(channel, {}).setdefault(float(r.param), []).extend(outs)
    out = []
    for sender, receiver in CHANNELS:
        channel = f"{sender}->{receiver}"
        profile = images.profiles[sender, BASE[sender]]
        messages, size = _volume({sender: profile}, sender, receiver)
        model = profile.features[f"bytes:{receiver}"]
        k = profile.reference
        scales = [(1, model.sd), *((n, s) for n, s, _ in model.blocks)]
        refined = config.refine_sd * model.sd if f"bytes:{receiver}" in config.refine else 0.0
        asymptotic = min(k * s / n for n, s in scales) + refined
        hidden = caught = None
        swept = []  #: (rate, runs, caught within 50) per swept percentage
        for percent, outs in sorted(per.get(channel, {}).items()):
            rate = percent / 100 * messages * size
            hits = sum(o.delay is not None and o.delay <= 50 for o in outs)
            swept.append((rate, len(outs), hits))
            if hits < 0.5 * len(outs):
                hidden = rate
        for rate, runs, hits in reversed(swept):  # the smallest rate from which on every
            if hits < 0.9 * runs:  # swept rate is caught in 90 % of the runs
                break
            caught = rate
        out.append(
            {
                "channel": channel,
                "normal": messages * size,
                "hidden": hidden,
                "caught": caught,
                "asymptotic": asymptotic,
                "swept": [{"rate": r, "runs": n, "within50": h} for r, n, h in swept],
            }
        )
    return out


def _roc(outcomes: Sequence[Outcome]) -> list[dict[str, float]]:
    """One point per threshold, every point over the same runs (those run at every one)."""
    thresholds = sorted({o.log_arl for o in outcomes})
    seen: dict[tuple[str, str, int], int] = {}
    for o in outcomes:
        key = (o.cls, o.param, o.index)
        seen[key] = seen.get(key, 0) + 1
    common = {k for k, n in seen.items() if n == len(thresholds)}
    points = []
    for t in thresholds:
        at = [
            o
            for o in outcomes
            if o.log_arl == t and not _CLASS[o.cls].info and (o.cls, o.param, o.index) in common
        ]
        benign = [o for o in at if o.benign]
        attacks = [o for o in at if not o.benign]
        periods = sum(o.periods for o in benign)
        points.append(
            {
                "log_arl": t,
                "fp_rate": sum(o.flagged for o in benign) / periods if periods else math.nan,
                "within20": sum(o.delay is not None and o.delay <= 20 for o in attacks)
                / max(1, len(attacks)),
                "within50": sum(o.delay is not None and o.delay <= 50 for o in attacks)
                / max(1, len(attacks)),
                "runs": len(at),
                "periods": periods,
            }
        )
    return points


def plot_roc(report: Report, path: Path) -> Path:
    """Draw the ROC curve (detection within 20 and 50 periods against false flags per period)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = report.roc
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110)
    # no false flag in n benign periods: drawn at the 95 % upper bound 3/n, as an open marker
    xs = [p["fp_rate"] or 3 / max(1, p.get("periods", 0)) for p in pts]
    zero = [p["fp_rate"] == 0 for p in pts]
    for key, label in (("within20", "caught within 20 periods"), ("within50", "within 50")):
        seen = [(x, p[key]) for x, p, z in zip(xs, pts, zero, strict=True) if not z]
        line = ax.plot([x for x, _ in seen], [y for _, y in seen], marker="o", label=label)[0]
        bounds = [(x, p[key]) for x, p, z in zip(xs, pts, zero, strict=True) if z]
        ax.plot(
            [x for x, _ in bounds],
            [y for _, y in bounds],
            ls="none",
            marker="o",
            color=line.get_color(),
            mfc="white",
        )
    for p, x in zip(pts, xs, strict=True):
        ax.annotate(
            f"{p['log_arl']:g}",
            (x, p["within20"]),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=7,
        )
        if p["log_arl"] == report.config.log_arl:
            ax.axvline(x, color="grey", lw=0.6, ls=":")
    ax.axvline(0.005, color="red", lw=0.8, ls="--", label="target: 0.5 % FP/period")
    ax.set_xscale("log")
    ax.set_xlabel("false flags per period, benign runs (open: none seen, 95 % bound)")
    ax.set_ylabel("fraction of attack runs caught")
    low = min((p["within20"] for p in pts), default=0.0)
    ax.set_ylim(max(0.0, low - 0.1), 1.01)
    ax.set_title(
        "anomaly detector: ROC over the threshold log_arl (numbers; grey: default)", fontsize=10
    )
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate(
    *,
    full: bool = False,
    seed: int = 1,
    jobs: int = 1,
    roc: Sequence[float] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> Report:
    """Run the evaluation (the fixed-seed subset unless ``full``) on ``jobs`` processes."""
    began = time.perf_counter()
    thresholds = tuple(roc if roc is not None else (ROC_THRESHOLDS if full else QUICK_ROC))
    todo = specs(full=full, seed=seed, thresholds=thresholds)
    wanted = _wanted()
    total = len(todo) + len(wanted)
    done = 0

    def tick(what: str, n: int = 1) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total, what)

    outcomes: list[Outcome] = []
    if jobs <= 1:
        images = Images.build(wanted, progress=lambda w: tick(f"profile {w}", 0))
        tick("profiles", len(wanted))
        for spec in todo:
            outcomes.append(run_spec(spec, images))
            tick(f"{spec.cls} {spec.param}")
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            profiles: dict[tuple[str, str], Profile] = {}
            rest = [w for w in wanted if BASE[w[0]] != w[1]]
            futures = [pool.submit(_rig_batch, rest[i::jobs]) for i in range(jobs)]
            for f in as_completed(futures):
                profiles.update(f.result())
            images = Images(profiles)
            tick("profiles", len(wanted))
            size = max(1, min(16, len(todo) // (8 * jobs)))
            batches = [todo[i : i + size] for i in range(0, len(todo), size)]
            runs = [pool.submit(_batch, images, b) for b in batches]
            for run in as_completed(runs):
                got = run.result()
                outcomes.extend(got)
                tick(f"{got[-1].cls} {got[-1].param}", len(got))
    config = DetectorConfig()
    rows: dict[tuple[str, str], Row] = {}
    for c in CLASSES:
        for p in c.params if full else c.quick:
            rows[c.name, p] = Row(c.name, p, c.benign)
    for o in sorted(outcomes, key=lambda o: (o.cls, o.param, o.index)):
        if o.log_arl == config.log_arl:
            rows[o.cls, o.param].add(o)
    row_list = list(rows.values())
    return Report(
        full=full,
        seed=seed,
        config=config,
        rows=row_list,
        roc=_roc(outcomes),
        bounds=_bounds(row_list, images, config),
        seconds=time.perf_counter() - began,
    )
