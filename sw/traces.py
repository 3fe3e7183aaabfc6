"""The traced system: five task programs on the real microkernel, their images and profiles.

This is the substrate of the detector's evaluation (:mod:`mchsm.sw.anomaly_eval`) and of the
``mchsm anomaly`` tools.  The behaviour is written once, as task programs
(:class:`TaskSystem`), and the features are counted by the real
:class:`~mchsm.sw.kernel.Microkernel`, with the real :class:`~mchsm.sw.manager.Manager` on top:

- fast, with :class:`NullHsm` standing in for the HSM (it applies the access rules and the
  ANOMALY bit, and computes nothing), for the hundreds of thousands of periods the evaluation
  needs;
- or over the golden model (or an RTL backend): the same programs, unchanged.

The tasks, modelled on the demo's (every task holds a capability to every other: the kernel's
capability check does not stop an exfiltration, the detector's worst case):

``sensor``
    takes the device's interrupts (one sample each, about 1.1 a period, the rate set by the
    environment), reads and sends each sample (16 bytes) to control; now and then writes a
    calibration value.
``control``
    forwards every message it receives (8 bytes of it) to logger, sends one setpoint a period
    to comms, reads its configuration now and then.
``comms``
    drains its inbox, MACs its telemetry with its task key (now and then a report of three
    MACs), hashes a firmware block now and then.
``logger``
    keeps a period counter in its memory, writes every message it receives, and every
    ``P`` periods (16) flushes its index (4 writes) and uploads a 96-byte summary to comms.
``diag``
    a diagnostics task: idle (a little work, one read a period).

CPU work is Gaussian (CV 7-13 %), and in 2 % of periods 1.2-1.6 times the usual (a heavy
period).  Image variants (``VARIANTS``) change a task's behaviour: they are what an update
installs, each with its own profile.  Profiles are derived on a *rig*: the same system run
for :data:`RIG_PERIODS` periods with its sample rate moved across the operating range
(0.5-2x), from seeds no evaluation run uses.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from mchsm.constants import MANAGER, RESULT_SIZE, Access, Cmd, CtxFlag, Status, command_spec
from mchsm.sw.driver import HsmDriver, Reply, Transport
from mchsm.sw.errors import ArgumentError, HsmError
from mchsm.sw.kernel import Features, Microkernel, Program, TaskApi
from mchsm.sw.profile import Profile, RecordedTrace, derive, embed

__all__ = [
    "BASE",
    "RIG_PERIODS",
    "SAMPLE_RATE",
    "TASKS",
    "TIME_SLICE",
    "VARIANTS",
    "Images",
    "NullHsm",
    "TaskSystem",
    "exfiltrating",
    "image_of",
    "record",
    "record_attack",
    "rig_profiles",
    "run_sync",
]

T = TypeVar("T")

#: the tasks of the traced system, in context order (ids 1..5)
TASKS = ("sensor", "control", "comms", "logger", "diag")
#: the image variant each task is deployed with
BASE = {"sensor": "v1", "control": "v1", "comms": "v1", "logger": "v1", "diag": "v1"}
#: every image variant (what an update can install), per task
VARIANTS = {
    "sensor": ("v1", "v2"),
    "control": ("v1", "v2"),
    "comms": ("v1", "v2", "v3"),
    "logger": ("v1", "v2", "p5", "p8", "p10", "p13", "p20"),
    "diag": ("v1", "v2"),
}
#: CPU units in one scheduling period's time slice: what a busy loop burns
TIME_SLICE = 250
#: fraction of periods in which a task's CPU work is 1.2-1.6 times the usual
HEAVY_PERIODS = 0.02
#: device interrupts (samples) per period at the nominal rate
SAMPLE_RATE = 1.1
#: periods of a rig run a profile is derived from
RIG_PERIODS = 2000


class _NoBus(Transport):
    """NullHsm answers every command itself; nothing ever reaches a bus."""

    async def read(self, addr: int, caller: int) -> int:
        raise AssertionError("NullHsm has no bus")

    async def write(self, addr: int, value: int, caller: int) -> None:
        raise AssertionError("NullHsm has no bus")


class NullHsm(HsmDriver):
    """An HSM stand-in that answers at once and computes nothing.

    It applies what shapes a task's features: the access rules of every command (a task naming
    another context, or issuing a manager command, is refused), ``SET_ANOMALY``/``RESET`` of the
    ANOMALY bit (TASK_MAC is refused while it is set) and which callers have an HMAC key of
    their own.  ``READ_CTX`` says a context is loaded and matches its reference (``OK`` unless
    ANOMALY is set): it keeps no measurements.  Everything else answers OK with a zero result of
    the right size.
    """

    def __init__(self) -> None:
        super().__init__(_NoBus())
        self.anomalous: set[int] = set()
        self._hmac_keys: set[int] = set()  #: callers that imported an HMAC key

    def _status(self, caller: int, cmd: Cmd, ctx: int) -> Status:
        access = command_spec(cmd).access
        manager = caller == MANAGER
        denied = {
            Access.ANY: False,
            Access.MANAGER: not manager,
            Access.TASK: manager,
            Access.MANAGER_OR_OWN: not manager and ctx != caller,
        }[access]
        if denied:
            return Status.ERR_DENIED
        if cmd is Cmd.TASK_MAC and caller in self.anomalous:
            return Status.ERR_NOT_TRUSTED
        if cmd is Cmd.HMAC and caller not in self._hmac_keys:
            return Status.ERR_NO_KEY
        return Status.OK

    async def run(
        self,
        caller: int,
        cmd: Cmd | int,
        ctx: int = 0,
        data: bytes | Iterable[bytes] = b"",
        length: int | None = None,
    ) -> Reply:
        self.commands += 1
        try:
            code = Cmd(cmd)
        except ValueError:
            return Reply(cmd, Status.ERR_UNKNOWN_CMD, b"", 0)
        status = self._status(caller, code, ctx)
        if status is not Status.OK:
            return Reply(code, status, b"", 0)
        result = bytes(RESULT_SIZE[code])
        if code is Cmd.SET_ANOMALY:
            self.anomalous.add(ctx)
        elif code is Cmd.RESET:
            self.anomalous.discard(ctx)
        elif code is Cmd.HMAC_KEY:
            self._hmac_keys.add(caller)
        elif code is Cmd.READ_CTX:
            flags = CtxFlag.LOADED | CtxFlag.MATCH
            flags |= CtxFlag.ANOMALY if ctx in self.anomalous else CtxFlag.OK
            result = int(flags).to_bytes(4, "big") + (1).to_bytes(4, "big") + result[8:]
        return Reply(code, status, result, 0)


def _count(rng: random.Random, rate: float) -> int:
    """A regular count with mean ``rate``: its integer part, plus one with the fraction's odds."""
    whole = int(rate)
    return whole + (rng.random() < rate - whole)


def _work(rng: random.Random, mean: float, sd: float, factor: float) -> int:
    """CPU units of a period: Gaussian noise, and now and then a heavy period (a cold cache, an
    interrupt storm) of 1.2-1.6 times the usual work: a normal system's tail."""
    units = rng.gauss(mean * factor, sd * factor)
    if rng.random() < HEAVY_PERIODS:
        units *= rng.uniform(1.2, 1.6)
    return max(1, round(units))


def image_of(name: str, variant: str, profile: Profile | None = None) -> bytes:
    """The image of a task variant: deterministic code bytes, and the profile if given."""
    code = f"{name} firmware {variant}\n".encode() * 64
    return embed(code, profile) if profile is not None else code


#: a hijack: takes the task's genuine program, returns the attacker's
Hijack = Callable[[Program], Program]


class TaskSystem:
    """The five traced tasks on a kernel: their programs, the environment, hijacks.

    The programs draw their noise from ``rng``, so a system built with the same seed behaves
    the same on every HSM backend.  ``env`` scales the sample rate (interrupts a period) and
    ``contention`` every task's CPU work (a global load).
    """

    def __init__(
        self,
        kernel: Microkernel,
        rng: random.Random,
        variants: Mapping[str, str] | None = None,
    ) -> None:
        self.kernel = kernel
        self.rng = rng
        self.variants = {**BASE, **(variants or {})}
        self.env = 1.0
        self.contention = 1.0
        self.tids: dict[str, int] = {}
        self.genuine: dict[str, Program] = {}

    def install(self, images: Mapping[str, bytes] | None = None) -> None:
        """Create the tasks (not yet loaded) with their programs and all-to-all capabilities."""
        for name in TASKS:
            variant = self.variants[name]
            image = (images or {}).get(name) or image_of(name, variant)
            program = self.program(name, variant)
            self.genuine[name] = program
            self.tids[name] = self.kernel.create_task(name, image, program).tid
        for holder in TASKS:
            for target in TASKS:
                if holder != target:
                    self.kernel.grant(holder, target)

    def deliver(self) -> None:
        """The device's samples of this period: interrupts to sensor."""
        self.kernel.interrupt("sensor", _count(self.rng, SAMPLE_RATE * self.env))

    async def run_period(self) -> dict[int, Features]:
        self.deliver()
        return await self.kernel.run_period()

    # -- behaviour ------------------------------------------------------------------------------

    def program(self, name: str, variant: str) -> Program:
        """A fresh genuine program of task ``name``'s image ``variant``."""
        if variant not in VARIANTS.get(name, ()):
            raise ArgumentError(f"no variant {variant!r} of task {name!r}")
        program: Program = getattr(self, f"_{name}")(variant)
        return program

    def _sensor(self, variant: str) -> Program:
        rng, size, reads = self.rng, (16 if variant == "v1" else 24), (1 if variant == "v1" else 2)

        async def sensor(api: TaskApi) -> None:
            samples = api.interrupts()
            api.compute(_work(rng, 45 if variant == "v1" else 50, 3, self.contention) + 4 * samples)
            for _ in range(samples):
                for _ in range(reads):
                    data = api.read(api.data_base, size)
                api.send("control", data)
            if rng.random() < 0.02:
                api.write(api.data_base + 64, b"calibrat")

        return sensor

    def _control(self, variant: str) -> Program:
        rng = self.rng
        keep, setpoints = (8, 1) if variant == "v1" else (12, 2)

        async def control(api: TaskApi) -> None:
            forwarded = 0
            while (msg := api.receive()) is not None:
                api.send("logger", msg[1][:keep])
                forwarded += 1
            api.compute(_work(rng, 70, 6, self.contention) + 2 * forwarded)
            for _ in range(setpoints):
                api.send("comms", b"setpoint")
            if rng.random() < 0.03:
                api.read(api.data_base + 128, 32)

        return control

    def _comms(self, variant: str) -> Program:
        rng = self.rng
        base, hashing = (2, 0.05) if variant == "v3" else (1, 0.02)

        async def comms(api: TaskApi) -> None:
            api.compute(_work(rng, 22, 2, self.contention))
            while (msg := api.receive()) is not None:
                if variant == "v2" and msg[0] == self.tids.get("diag"):
                    api.send("diag", b"status: all ok;" * 2)  # replies to the poller
            for _ in range(base + 2 * (rng.random() < 0.1)):  # a report now and then
                try:
                    await api.hsm.task_mac(b"telemetry")
                except HsmError:
                    pass
            if rng.random() < hashing:  # a firmware block check now and then
                await api.hsm.call(Cmd.HASH, 0, b"firmware block")

        return comms

    def _logger(self, variant: str) -> Program:
        rng = self.rng
        every, writes, upload = {"v1": (16, 4, 96), "v2": (8, 6, 64)}.get(
            variant, (int(variant[1:]) if variant.startswith("p") else 16, 4, 96)
        )
        offset = [0]

        async def logger(api: TaskApi) -> None:
            base = api.data_base
            counter = int.from_bytes(api.read(base + 4092, 4), "big")
            api.write(base + 4092, ((counter + 1) % (1 << 32)).to_bytes(4, "big"))
            written = 0
            while (msg := api.receive()) is not None:
                api.write(base + offset[0], msg[1][:8])
                offset[0] = (offset[0] + 8) % 3968
                written += 1
            flush = counter % every == every - 1
            if flush:  # periodic flush of the index, and an upload of the summary
                for i in range(writes):
                    api.write(base + 3968 + 8 * i, b"flushed!")
                api.send("comms", api.read(base, upload))
            api.compute(_work(rng, 12, 1.5, self.contention) + written + 10 * flush)

        return logger

    def _diag(self, variant: str) -> Program:
        rng = self.rng

        async def diag(api: TaskApi) -> None:
            api.compute(_work(rng, 8 if variant == "v1" else 10, 1, self.contention))
            api.read(api.data_base, 4)
            if variant == "v2":  # polls comms every period and reads its replies
                api.send("comms", b"poll")
                while api.receive() is not None:
                    pass

        return diag

    # -- updates and hijacks -----------------------------------------------------------------

    def switch(self, name: str, variant: str) -> Program:
        """Make ``variant`` the task's genuine program (the loader's part of an update)."""
        self.variants[name] = variant
        program = self.genuine[name] = self.program(name, variant)
        self.kernel.task(name).program = program
        return program

    def hijack(self, name: str, attack: Hijack) -> None:
        """Swap the task's program for an attacked one, as an attacker controlling it would."""
        task = self.kernel.task(name)
        task.program = attack(self.genuine[name])

    def restore(self, name: str) -> None:
        """Put the task's genuine program back (the loader's part of a reload)."""
        self.kernel.task(name).program = self.genuine[name]


def exfiltrating(
    original: Program,
    endpoint: str,
    rng: random.Random,
    messages: tuple[int, int] = (3, 12),
    size: tuple[int, int] = (64, 256),
) -> Program:
    """A hijacked program: the task's normal work, then chunks of its memory to ``endpoint``.

    Keeping the normal work is the attacker's best move: everything the task used to do still
    looks normal, and only the new traffic can give it away.
    """

    async def hijacked(api: TaskApi) -> None:
        await original(api)
        for _ in range(rng.randint(*messages)):
            api.send(endpoint, api.read(0, rng.randint(*size)))

    return hijacked


# -- the rig --------------------------------------------------------------------------------------


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends, without an event loop (a loop per run costs more
    than the run): with :class:`NullHsm` nothing in the kernel or the programs waits."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return cast(T, stop.value)
    coro.close()
    raise RuntimeError("the run waited for something; it must run without a loop")


async def _record(
    variants: Mapping[str, str],
    periods: int,
    seed: str,
    env_range: tuple[float, float],
    attack: tuple[str, str, int] | None = None,
) -> RecordedTrace:
    kernel = Microkernel(NullHsm(), len(TASKS))
    rng = random.Random(seed)
    system = TaskSystem(kernel, rng, variants)
    system.install()
    await kernel.load_all()
    out = []
    for period in range(periods):
        if period % 100 == 0 and env_range != (1.0, 1.0):
            system.env = rng.uniform(*env_range)
        if attack is not None and period == attack[2]:
            system.hijack(attack[1], _attack(system, attack[0], attack[1]))
        out.append(await system.run_period())
    return RecordedTrace.record({t: n for n, t in system.tids.items()}, out)


def _attack(system: TaskSystem, kind: str, name: str) -> Hijack:
    """The hijacks of ``mchsm anomaly trace --attack``."""
    rng = system.rng
    if kind == "exfil":
        peer = next(p for p in reversed(TASKS) if p != name)
        return lambda original: exfiltrating(original, peer, rng)
    if kind == "busy":

        def busy(original: Program) -> Program:
            async def loop(api: TaskApi) -> None:
                api.compute(TIME_SLICE - rng.randrange(8))

            return loop

        return busy
    if kind == "bruteforce":

        def brute(original: Program) -> Program:
            async def probe(api: TaskApi) -> None:
                await original(api)
                for ctx in range(1, len(TASKS) + 1):
                    await api.hsm.call(Cmd.READ_CTX, ctx)

            return probe

        return brute
    raise ArgumentError(f"unknown attack {kind!r}: exfil, busy or bruteforce")


def record_attack(
    variants: Mapping[str, str] | None = None,
    *,
    periods: int = RIG_PERIODS,
    seed: str = "trace",
    attack: str | None = None,
    target: str = "sensor",
    start: int = 0,
) -> RecordedTrace:
    """A trace like :func:`record`'s (a rig run), with ``target`` hijacked by ``attack``
    (``exfil``, ``busy``, ``bruteforce``) from period ``start`` on."""
    plan = (attack, target, start) if attack else None
    return run_sync(_record({**BASE, **(variants or {})}, periods, seed, (0.5, 2.0), plan))


def record(
    variants: Mapping[str, str] | None = None,
    *,
    periods: int = RIG_PERIODS,
    seed: str = "rig",
    env_range: tuple[float, float] = (0.5, 2.0),
) -> RecordedTrace:
    """A trace of the system with these image variants, from load on, with the sample rate
    moved every 100 periods across ``env_range`` (the rig's operating range)."""
    return run_sync(_record({**BASE, **(variants or {})}, periods, seed, env_range))


def rig_profiles(
    variants: Mapping[str, str] | None = None,
    *,
    tasks: Iterable[str] = TASKS,
    periods: int = RIG_PERIODS,
    seed: str = "rig",
) -> dict[str, Profile]:
    """The profiles of ``tasks``, derived from one rig run of the system with ``variants``."""
    trace = record(variants, periods=periods, seed=f"mchsm-rig/{seed}")
    return {name: derive(name, trace.series(name)) for name in tasks}


@dataclass(frozen=True)
class Images:
    """Every variant's profile, and the image carrying it: what the vendor ships."""

    profiles: dict[tuple[str, str], Profile]

    def image(self, name: str, variant: str) -> bytes:
        return image_of(name, variant, self.profiles[name, variant])

    def deployed(self, variants: Mapping[str, str]) -> dict[str, bytes]:
        return {name: self.image(name, variant) for name, variant in variants.items()}

    @classmethod
    def build(
        cls,
        wanted: Iterable[tuple[str, str]] | None = None,
        *,
        periods: int = RIG_PERIODS,
        progress: Callable[[str], None] | None = None,
    ) -> Images:
        """Derive the profile of every wanted variant (default: all; none: the base system's)
        on the rig.

        The base system gives every task's base profile; each other variant is derived from a
        rig run with that variant in place (and comms v2 together with its poller, diag v2).
        """
        if wanted is None:
            wanted = [(n, v) for n, vs in VARIANTS.items() for v in vs]
        wanted = sorted(set(wanted))
        profiles: dict[tuple[str, str], Profile] = {}
        base = rig_profiles(periods=periods, seed="base")
        profiles.update({(n, BASE[n]): p for n, p in base.items()})
        if progress:
            progress("base")
        for name, variant in wanted:
            if (name, variant) in profiles:
                continue
            together = {name: variant}
            if (name, variant) in (("comms", "v2"), ("diag", "v2")):
                together = {"comms": "v2", "diag": "v2"}
            got = rig_profiles(together, tasks=together, periods=periods, seed=f"{name}-{variant}")
            profiles.update({(n, together[n]): p for n, p in got.items()})
            if progress:
                progress(f"{name} {variant}")
        return cls(profiles)
