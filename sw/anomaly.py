"""Runtime anomaly detection per task, against a behaviour profile bound to the task's image.

The manager (context 0) feeds every scheduling period's :class:`~mchsm.sw.kernel.Features` to an
:class:`AnomalyDetector`; a task the detector flags gets ``ANOMALY`` set on its HSM context, so
it drops out of attestation's ``ok`` and loses its task key until it is reloaded.

The method, and why (``docs/anomaly.md`` has the long form and the measured figures):

- **The baseline is not learned on the device.**  Every task is judged, from its first period,
  against the profile carried inside its measured image (:mod:`mchsm.sw.profile`): derived by
  the vendor on a test rig, covered by the reference value and the update authorisation, and
  adopted by the manager only when the HSM says the loaded image is the authorised one.  What
  runs while the detector watches never becomes normal.  The model may refine the level of CPU
  time online (it depends on the device), but only within ``refine_sd`` standard deviations of
  the profile; counts and bytes are the image's behaviour and are not refined; relearning
  beyond that needs an authorised update (a new image, a new profile).
- **Outputs are judged against what the inputs explain.**  Each feature's expected value is the
  profile's regression on the task's inputs (messages received per peer and device interrupts,
  this period and the last) plus its periodic phase (periods since load).  A task flooded by a
  peer is expected to do more, and an innocent receiver is not blamed for a flood.
- **Excuses are bounded.**  An input explains output only if the sender's own output to this
  task is explained (by *its* inputs; device interrupts always are).  An input beyond the
  receiver's normal range from a sender that is not explained is an *excuse*, granted for at
  most ``excuse_cap`` periods in any ``excuse_window``; after that the input counts only up to
  its normal range.  When a peer is updated (authorised), its new profile says what it sends,
  and the receivers' excuse state is reset (:meth:`AnomalyDetector.peer_updated`).
- **Small evidence accumulates.**  Per feature and per time scale (single periods, sums over 8
  and over 32 periods) a one-sided CUSUM of the standardised residual, clipped to +-clip sd,
  with a small reference shift k = 0.5 sd: a sustained shift of one sd is caught in tens of
  periods, half a sd over 32-period sums in a few hundred.  The threshold of each test is
  ``log_arl / theta``, where ``theta`` (in the profile) makes the test's false-alarm rate about
  ``exp(-log_arl)`` per period on the rig's residuals, whatever the feature's distribution:
  ``log_arl`` is the detector's one threshold knob (the ROC curve sweeps it).
- **Large evidence acts at once.**  A feature the profile never saw (a new peer, a new system
  call or HSM command kind, a fault) flags the task in the period it appears; so does a command
  the kernel refused over the profile's HSM budget.  A residual beyond the feature's envelope
  (3 sd beyond the largest on the rig, or 1.5 times it) counts half a threshold of the
  rare-event test; twice the envelope flags at once.
- **Rare events add up.**  Per feature, a Bernoulli CUSUM of periods with a residual of 3 sd
  or more, against their rate on the rig: a few odd periods spread over a long time (an upload
  too many on a channel used once in 16 periods) flag the task.
- **Global load.**  CPU time is judged relative to the median of the other tasks' CPU ratios
  (observed / expected): a load step that slows every task is not one task's anomaly.

What no behavioural detector sees: mimicry within the profile (other bytes in the same
messages, a rate change below the leakage bound).  ``docs/anomaly.md`` gives those bounds.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from mchsm.sw.errors import ArgumentError
from mchsm.sw.kernel import Features
from mchsm.sw.profile import (
    ALL,
    INPUT_PREFIX,
    IRQ,
    LAG,
    FeatureModel,
    Profile,
    RecordedTrace,
    derive,
    is_input,
    named_features,
)

__all__ = [
    "AnomalyDetector",
    "Detection",
    "DetectorConfig",
    "Deviation",
    "TaskModelState",
    "check_trace",
    "feature_map",
]


def feature_map(features: Features) -> dict[str, float]:
    """The named numbers of one task's period, peers by context id (``sent:3``)."""
    return named_features(features, {})


@dataclass(frozen=True)
class DetectorConfig:
    """The detector's parameters.  The defaults are the ones ``docs/anomaly.md`` measures."""

    #: threshold: each test raises a false alarm about once in exp(log_arl) normal periods
    log_arl: float = 14.0
    #: the envelope of a feature: max(largest residual on the rig + envelope_margin,
    #: envelope_factor * largest), in sd; beyond it a period is half the way to a flag, beyond
    #: twice the envelope (and envelope_margin + 6 sd) it flags at once
    envelope_margin: float = 3.0
    envelope_factor: float = 1.5
    #: online refinement of the level of the features named here (CPU time depends on the
    #: device, counts and bytes are the image's behaviour): rate, and bound in the feature's sd
    refine: tuple[str, ...] = ("cpu",)
    refine_rate: float = 0.02
    refine_sd: float = 0.5
    #: periods of excuse (input beyond its range from an unexplained sender) per window
    excuse_cap: int = 10
    excuse_window: int = 50
    #: the global CPU factor (median of the other tasks) is believed within [1/bound, bound]
    common_bound: float = 1.5
    #: a task whose image carries no profile is learned for this many periods, then judged
    #: against a provisional profile derived from them (weaker: see docs/anomaly.md)
    warmup: int = 20

    def __post_init__(self) -> None:
        if self.warmup < 8:
            raise ArgumentError(f"warmup must be at least 8 periods, not {self.warmup}")
        if self.log_arl <= 0:
            raise ArgumentError(f"log_arl must be positive, not {self.log_arl}")
        if not 0 <= self.refine_rate < 1 or self.refine_sd < 0:
            raise ArgumentError("refine_rate must be in [0, 1) and refine_sd >= 0")
        if self.excuse_cap < 0 or self.excuse_window < 1 or self.common_bound < 1:
            raise ArgumentError("excuse_cap >= 0, excuse_window >= 1 and common_bound >= 1")


@dataclass(frozen=True)
class Deviation:
    """One feature's part in a verdict: what it was, what was expected, how far off."""

    name: str
    value: float
    expected: float
    z: float  #: residual in sd (of the scale that fired); inf for new behaviour
    scale: int = 1  #: periods summed by the test that fired; 0: the rare-event test

    def __str__(self) -> str:
        if math.isinf(self.z):
            return f"{self.name}={self.value:g} (never in the profile)"
        where = {0: ", too often", 1: ""}.get(self.scale, f", over {self.scale} periods")
        return f"{self.name}={self.value:g} (expected {self.expected:.1f}, z={self.z:+.1f}{where})"


@dataclass(frozen=True)
class Detection:
    """The detector flagged task ``tid`` at the end of ``period``."""

    tid: int
    period: int
    score: float  #: the evidence that crossed: the largest test value over its threshold
    cusum: float  #: that test's value
    deviations: tuple[Deviation, ...]  #: the largest deviations, largest first
    reason: str = "cusum"  #: new | budget | envelope | cusum

    def explain(self, limit: int = 2, names: Mapping[int, str] | None = None) -> str:
        """The largest deviations in words; ``names`` turns peer ids into task names."""
        out = []
        for d in self.deviations[:limit]:
            text = str(d)
            family, _, peer = d.name.partition(":")
            if names and peer.isdigit() and int(peer) in names:
                text = text.replace(d.name, f"{family}:{names[int(peer)]}", 1)
            out.append(text)
        return ", ".join(out)


@dataclass(frozen=True)
class TaskModelState:
    """What the detector knows about one task (for reports and tests)."""

    tid: int
    trained: bool  #: judged (has a profile, bound or provisional)
    training_periods: int  #: periods collected so far for a provisional profile
    flagged: bool
    cusum: float  #: the largest test value over its threshold (1 flags)
    features: int  #: features with a model
    bound: bool = False  #: the profile came from the task's verified image
    excused: int = 0  #: excuse periods in the current window


class _Test:
    """The sequential tests of one feature: CUSUMs per scale, block sums, the rare-event test
    and the refinement.

    ``s`` holds the test values: single periods, then one per block scale, then the rare-event
    test (a Bernoulli log-likelihood CUSUM of periods with a residual of ``clip`` sd or more:
    base rate ``p0`` from the rig, alternative ``p1 = max(4 p0, 1/16)``; a residual beyond the
    envelope adds half its threshold), ``h`` their thresholds.
    """

    __slots__ = (
        "acc",
        "adj",
        "blocks",
        "envelope",
        "h",
        "load",
        "model",
        "quiet",
        "rel",
        "s",
        "scales",
        "spike",
        "z_env",
        "z_instant",
    )

    def __init__(self, model: FeatureModel, config: DetectorConfig) -> None:
        self.model = model
        # a refined level drifts a little; summed over a block that drift would add up, so a
        # refined feature (CPU time) is judged per period only
        self.blocks = () if model.name in config.refine else model.blocks
        self.h = [
            config.log_arl / model.theta,
            *(config.log_arl / th for _, _, th in self.blocks),
            config.log_arl,
        ]
        #: periods summed by each test (0: the rare-event test)
        self.scales = [1, *(n for n, _, _ in self.blocks), 0]
        p0 = model.rare or 1e-3
        p1 = max(4 * p0, 1 / 16)
        self.spike = math.log(p1 / p0)  #: evidence of one rare period
        self.quiet = math.log((1 - p1) / (1 - p0))  #: of an ordinary one (negative)
        #: evidence of a period beyond the envelope: two of them within 32 periods flag
        self.envelope = self.h[-1] / 2 - 16 * self.quiet
        self.s = [0.0] * len(self.h)
        self.acc = [0.0] * len(self.blocks)
        self.load = [0.0] * len(self.blocks)  #: sum of the variance factors in each block
        self.adj = 0.0
        self.rel = model.sd / model.mean if model.mean > 0 else 0.0  #: relative sd
        self.z_env = max(model.zmax + config.envelope_margin, config.envelope_factor * model.zmax)
        self.z_instant = max(2 * self.z_env, self.z_env + 6)

    def clear(self) -> None:
        self.s = [0.0] * len(self.h)
        self.acc = [0.0] * len(self.blocks)
        self.load = [0.0] * len(self.blocks)

    def evidence(self) -> float:
        return max(s / h for s, h in zip(self.s, self.h, strict=True))


@dataclass
class _Task:
    tid: int
    profile: Profile | None = None
    bound: bool = False
    tests: dict[str, _Test] = field(default_factory=dict)
    window: list[dict[str, float]] | None = field(default_factory=list)
    t: int = 0  #: periods since load
    prev: dict[str, float] = field(default_factory=dict)  #: last period's inputs
    excuses: deque[int] = field(default_factory=deque)
    flagged: bool = False

    def install(self, profile: Profile | None, config: DetectorConfig, bound: bool) -> None:
        self.profile = profile
        self.bound = bound and profile is not None
        self.tests = (
            {} if profile is None else {n: _Test(m, config) for n, m in profile.features.items()}
        )
        self.window = [] if profile is None else None
        self.restart()

    def restart(self) -> None:
        self.t = 0
        self.prev = {}
        self.excuses.clear()
        self.flagged = False
        for test in self.tests.values():
            test.clear()

    def evidence(self) -> float:
        return max((test.evidence() for test in self.tests.values()), default=0.0)


class AnomalyDetector:
    """Per-task sequential tests against profiles; :meth:`observe` returns the tasks to flag.

    The manager binds task names (:meth:`bind`) and installs each task's verified profile
    (:meth:`set_profile`) when it loads it.  A task without one is learned for
    ``config.warmup`` periods and then judged against a provisional profile.  Once flagged a
    task is not judged again until it is reset (the manager reloads it).
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._tasks: dict[int, _Task] = {}
        self.names: dict[int, str] = {}
        #: periods in which a task's output was judged with an excuse (input beyond its range
        #: from an unexplained sender), per task
        self.excused: dict[int, int] = {}

    # -- state ---------------------------------------------------------------------------------

    def bind(self, names: Mapping[int, str]) -> None:
        """Name the tasks (profiles name peers by task name)."""
        self.names = dict(names)

    def set_profile(self, tid: int, profile: Profile | None, *, bound: bool = True) -> None:
        """Judge task ``tid`` against ``profile`` from now on (``None``: learn a provisional
        one).  Its tests start afresh, as after a load."""
        task = self._tasks.setdefault(tid, _Task(tid))
        task.install(profile, self.config, bound)

    def profile(self, tid: int) -> Profile | None:
        task = self._tasks.get(tid)
        return task.profile if task else None

    def reset(self, tid: int, *, relearn: bool = True) -> None:
        """Clear the verdict on task ``tid`` (it was reloaded): not flagged, no evidence, phase
        from 0.

        ``relearn`` forgets the online refinement, and a provisional profile (a task whose
        image carries none is learned again).  A profile from the image is never forgotten
        here: only :meth:`set_profile` (the manager, after an authorised update) replaces it.
        """
        task = self._tasks.setdefault(tid, _Task(tid))
        if relearn:
            if task.bound:
                for test in task.tests.values():
                    test.adj = 0.0
            else:
                task.install(None, self.config, False)
        task.restart()

    def clear_verdict(self, tid: int) -> None:
        """Clear the verdict and the evidence on task ``tid`` without a reload (its phase goes
        on): what :func:`check_trace` does after a flag, to see what follows."""
        task = self._tasks.setdefault(tid, _Task(tid))
        task.flagged = False
        for test in task.tests.values():
            test.clear()

    def peer_updated(self, tid: int) -> None:
        """Task ``tid`` was updated: its receivers' input models come from its new profile
        (what it sends), so their excuse state starts afresh."""
        for other in self._tasks.values():
            if other.tid != tid:
                other.excuses.clear()

    def state(self, tid: int) -> TaskModelState:
        task = self._tasks.get(tid) or _Task(tid)
        return TaskModelState(
            tid=tid,
            trained=task.profile is not None,
            training_periods=0 if task.window is None else len(task.window),
            flagged=task.flagged,
            cusum=task.evidence(),
            features=len(task.tests),
            bound=task.bound,
            excused=len(task.excuses),
        )

    # -- judging -------------------------------------------------------------------------------

    def observe(self, period: int, features: Mapping[int, Features]) -> list[Detection]:
        """Take one period's features of the running tasks; return the tasks flagged now."""
        names = self.names
        return self.observe_named(
            period, {tid: named_features(f, names) for tid, f in features.items()}
        )

    def _name(self, tid: int) -> str:
        return self.names.get(tid, f"task{tid}")

    def observe_named(
        self, period: int, maps: Mapping[int, Mapping[str, float]]
    ) -> list[Detection]:
        """:meth:`observe` on named features (:func:`~mchsm.sw.profile.named_features`)."""
        cfg = self.config
        judged: dict[int, tuple[_Task, Mapping[str, float], dict[str, float]]] = {}
        for tid, values in maps.items():
            task = self._tasks.setdefault(tid, _Task(tid))
            if task.flagged:
                continue
            if task.profile is None:
                assert task.window is not None
                task.window.append(dict(values))
                if len(task.window) >= cfg.warmup:
                    task.install(derive(self._name(tid), task.window), cfg, bound=False)
                    task.t = cfg.warmup  # its phase goes on from the periods it learned
                continue
            inputs = {k: v for k, v in values.items() if is_input(k)}
            for k, v in task.prev.items():
                inputs[k + LAG] = v
            judged[tid] = (task, values, inputs)

        # what each judged task's inputs explain, taken at face value
        expected = {
            tid: {n: t.model.predict(inputs, task.t) + t.adj for n, t in task.tests.items()}
            for tid, (task, _, inputs) in judged.items()
        }
        untrusted = self._unexplained(judged, expected)
        ratios = {
            tid: (values.get("cpu", 0.0) / expected[tid]["cpu"], task.tests["cpu"].rel)
            for tid, (task, values, _) in judged.items()
            if expected[tid].get("cpu", 0.0) > 0
        }

        detections = []
        for tid, (task, values, inputs) in judged.items():
            prediction = expected[tid]
            clamped = self._excuse(task, period, inputs, untrusted.get(tid, {}))
            if clamped is not None:
                prediction = {
                    n: t.model.predict(clamped, task.t) + t.adj for n, t in task.tests.items()
                }
            found = self._judge(task, period, values, prediction, self._common(tid, ratios))
            if found is not None:
                task.flagged = True
                detections.append(found)
            task.t += 1
            task.prev = {k: v for k, v in inputs.items() if not k.endswith(LAG)}
        return detections

    def _unexplained(
        self,
        judged: Mapping[int, tuple[_Task, Mapping[str, float], dict[str, float]]],
        expected: Mapping[int, Mapping[str, float]],
    ) -> dict[int, dict[str, float]]:
        """Per receiver: the inputs from senders whose output to it is not explained, and how
        far each may count (its normal range: the larger of what the receiver's profile saw
        and what the sender's profile says it sends)."""
        by_name = {self._name(tid): tid for tid in self._tasks}
        out: dict[int, dict[str, float]] = {}
        for tid, (task, values, _) in judged.items():
            assert task.profile is not None
            me = self._name(tid)
            for name, value in values.items():
                if not name.startswith(INPUT_PREFIX) or name in (IRQ, ALL) or value <= 0:
                    continue
                peer = by_name.get(name[len(INPUT_PREFIX) :])
                sender = self._tasks.get(peer) if peer is not None else None
                limit = task.profile.inputs.get(name, 0.0)
                if sender is not None and sender.profile is not None:
                    sent = sender.profile.features.get(f"sent:{me}")
                    limit = max(limit, sent.peak if sent else 0.0)
                if sender is not None and not sender.flagged:
                    if sender.profile is None:
                        continue  # a sender still learning is not judged: its input neither
                    if (
                        peer is not None
                        and peer in judged
                        and self._explained(sender, judged[peer][1], expected[peer], me)
                    ):
                        continue
                out.setdefault(tid, {})[name] = limit
        return out

    @staticmethod
    def _explained(
        sender: _Task, values: Mapping[str, float], expected: Mapping[str, float], to: str
    ) -> bool:
        """Is the sender's output to ``to`` explained by its own inputs this period?"""
        for name in (f"sent:{to}", f"bytes:{to}"):
            test = sender.tests.get(name)
            value = values.get(name, 0.0)
            if test is None:
                if value > 0:
                    return False
                continue
            z = (value - expected[name]) / test.model.sd
            if z >= test.z_env or any(s >= h / 2 for s, h in zip(test.s, test.h, strict=True)):
                return False
        return True

    def _excuse(
        self,
        task: _Task,
        period: int,
        inputs: Mapping[str, float],
        unexplained: Mapping[str, float],
    ) -> dict[str, float] | None:
        """The inputs to judge with if an excuse is spent up (``None``: as they are)."""
        beyond = {
            name: limit
            for name, limit in unexplained.items()
            if inputs.get(name, 0.0) > limit or inputs.get(name + LAG, 0.0) > limit
        }
        if not beyond:
            return None
        window = self.config.excuse_window
        while task.excuses and task.excuses[0] <= period - window:
            task.excuses.popleft()
        if len(task.excuses) < self.config.excuse_cap:
            task.excuses.append(period)
            self.excused[task.tid] = self.excused.get(task.tid, 0) + 1
            return None
        clamped = dict(inputs)
        for name, limit in beyond.items():
            for lag in ("", LAG):
                value = clamped.get(name + lag, 0.0)
                if value > limit:
                    clamped[name + lag] = limit
                    if ALL + lag in clamped:  # the total counts the clamped input as clamped
                        clamped[ALL + lag] -= value - limit
        return clamped

    def _common(self, tid: int, ratios: Mapping[int, tuple[float, float]]) -> tuple[float, float]:
        """The global CPU factor for task ``tid`` and its relative uncertainty: the median of
        the other judged tasks' ratios (observed / expected; a single task cannot move it),
        uncertain by about 1.25 / sqrt(m) of their median relative sd."""
        others = sorted(r for t, r in ratios.items() if t != tid)
        m = len(others)
        if m < 2:
            return 1.0, 0.0
        half = m // 2
        median = others[half][0] if m % 2 else (others[half - 1][0] + others[half][0]) / 2
        spread = sorted(rel for _, rel in others)[half]
        bound = self.config.common_bound
        return min(max(median, 1 / bound), bound), 1.25 * spread / math.sqrt(m)

    def _judge(
        self,
        task: _Task,
        period: int,
        values: Mapping[str, float],
        prediction: Mapping[str, float],
        common: tuple[float, float],
    ) -> Detection | None:
        """Update the task's tests with this period; a :class:`Detection` if it is flagged."""
        cfg = self.config
        assert task.profile is not None
        k, c = task.profile.reference, task.profile.clip
        new = [
            Deviation(n, v, 0.0, math.inf)
            for n, v in values.items()
            if v > 0 and n not in task.tests and not is_input(n)
        ]
        if new:
            refused = [d for d in new if d.name.startswith("refused:")]
            reason = "budget" if refused else "new"
            return Detection(task.tid, period, math.inf, math.inf, tuple(refused or new), reason)
        envelope = False
        instant: Deviation | None = None
        top = 0.0
        residuals: dict[str, float] = {}
        now: dict[str, tuple[float, float, float]] = {}  #: value, expected, z per feature
        block_z: dict[tuple[str, int], float] = {}
        end = task.t + 1
        for name, test in task.tests.items():
            x = values.get(name, 0.0)
            mu = prediction[name]
            model = test.model
            # work per input varies per input: a level the inputs raise above the rig's mean
            # varies more, by the square root of the ratio (as a sum of per-input work does)
            var = mu / model.mean if model.coef and mu > model.mean > 0 else 1.0
            sd = model.sd * math.sqrt(var)
            if name == "cpu":
                g, rel = common
                mu *= g
                sd = math.sqrt(sd * sd + (mu * rel) ** 2)
            r = x - mu
            residuals[name] = r
            z = r / sd
            now[name] = (x, mu, z)
            s = test.s
            s[0] = max(0.0, s[0] + (c if z > c else -c if z < -c else z) - k)
            if z >= test.z_env:  # beyond anything the rig showed: half the way to a flag
                envelope = True
                if z >= test.z_instant:
                    instant = Deviation(name, x, mu, z)
                s[-1] += test.envelope
            else:
                s[-1] = max(0.0, s[-1] + (test.spike if z >= c else test.quiet))
            for i, (length, sd_l, _) in enumerate(test.blocks, 1):
                test.acc[i - 1] += r
                test.load[i - 1] += var
                if end % length == 0:
                    zl = test.acc[i - 1] / (sd_l * math.sqrt(test.load[i - 1] / length))
                    block_z[name, length] = zl
                    test.acc[i - 1] = test.load[i - 1] = 0.0
                    s[i] = max(0.0, s[i] + (c if zl > c else -c if zl < -c else zl) - k)
            for v, h in zip(s, test.h, strict=True):
                if v >= top * h:
                    top = v / h
        if instant is not None:
            return Detection(task.tid, period, math.inf, math.inf, (instant,), "envelope")
        if top >= 1.0:
            ranked = sorted(
                (
                    (v / h, name, scale)
                    for name, test in task.tests.items()
                    for v, h, scale in zip(test.s, test.h, test.scales, strict=True)
                ),
                reverse=True,
            )
            deviations = []
            for _, name, scale in ranked[:3]:
                x, mu, z = now[name]
                deviations.append(Deviation(name, x, mu, block_z.get((name, scale), z), scale))
            crossed = ranked[0]
            test = task.tests[crossed[1]]
            return Detection(
                task.tid,
                period,
                top,
                test.s[test.scales.index(crossed[2])],
                tuple(deviations),
                "envelope" if envelope else "cusum",
            )
        if not envelope and top < 0.25 and cfg.refine_rate > 0:
            for name in cfg.refine:
                refined = task.tests.get(name)
                if refined is None:
                    continue
                bound = cfg.refine_sd * refined.model.sd
                adj = refined.adj + cfg.refine_rate * residuals[name]
                refined.adj = min(max(adj, -bound), bound)
        return None


def check_trace(
    trace: RecordedTrace,
    profiles: Mapping[str, Profile],
    config: DetectorConfig | None = None,
) -> list[Detection]:
    """Judge a recorded trace against ``profiles`` (by task name); every flag, in order.

    A task without a profile is learned for ``config.warmup`` periods first.  After a flag the
    task's verdict is cleared and judging goes on, so one run shows every stretch that
    deviates (on a device the task would be reloaded).
    """
    detector = AnomalyDetector(config)
    detector.bind(trace.names)
    for tid, name in trace.names.items():
        profile = profiles.get(name)
        detector.set_profile(tid, profile, bound=profile is not None)
    found = []
    for period, maps in enumerate(trace.periods):
        for detection in detector.observe_named(period, maps):
            found.append(detection)
            detector.clear_verdict(detection.tid)
    return found
