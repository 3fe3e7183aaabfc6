"""Runtime anomaly detection per task, from the behaviour features the kernel counts.

The manager (context 0) feeds every scheduling period's :class:`~mchsm.sw.kernel.Features` to an
:class:`AnomalyDetector`; a task the detector flags gets ``ANOMALY`` set on its HSM context, so
it drops out of attestation's ``ok`` and loses its task key until it is reloaded.

The method, and why this one (``docs/anomaly.md`` has the long form):

- **One small model per task and per named feature** (CPU units, messages and bytes sent per
  peer, system calls by kind, HSM commands and failed HSM commands, faults; messages received
  per peer are kept as *inputs*).  Each feature is a Gaussian with a mean and a variance:
  learned over a training window of ``warmup`` periods (Welford), then tracked by an
  exponentially weighted moving average that adapts slowly (rate ``alpha``) on periods judged
  normal, so a slow drift of a task's rates is followed instead of flagged.
- **A variance floor** per feature family: a feature that never varied in training (a peer the
  task never talks to, failed HSM commands) still has a sensible scale, a count's floor grows
  with its mean like a Poisson count's, and CPU and bytes get a relative floor.
- **A per-period score** ``s = max |z|`` over the task's own features (interpretable: the
  detection names the feature), fed to **Page's CUSUM** ``C = max(0, C + s - reference)``; the
  task is flagged when ``C >= threshold``.  A blatant deviation (``s >= reference +
  threshold``) flags at once, a moderate but persistent one after a few periods, a single
  moderately odd period never does.
- **Blame goes upstream**: a task whose inflow from a peer is anomalous is not judged in that
  period (nor in the next, when it drains the backlog) if the peer is to blame: already
  flagged, or not flooded back by the task.  Otherwise a hijacked task could get an innocent
  receiver flagged (and reloaded) just by flooding it.

The paper cites online Gaussian-process regression, from the same group, for this job.  A GP
predicts each feature from context and would model input-driven work (a logger that writes
once per message received) better, but it costs O(n^2) memory and O(n^2)..O(n^3) time per task
in its support set, needs a kernel and hyper-parameters chosen per task, and its verdicts are
harder to explain.  Independent Gaussians with a floor and a CUSUM cost O(features) per period,
have a handful of parameters with a plain meaning, are deterministic (the demo's verdicts are
the same on every HSM backend) and name the feature that fired; the upstream-blame rule covers
the input-driven case that matters here.  The measured detection rate, false-positive rate and
delay (``mchsm anomaly-eval``, ``docs/anomaly.md``) are what justify it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from mchsm.sw.kernel import Features

__all__ = [
    "AnomalyDetector",
    "Detection",
    "DetectorConfig",
    "Deviation",
    "TaskModelState",
    "feature_map",
]

#: prefix of the input features: what peers sent to the task (not the task's own doing)
INPUT_PREFIX = "recv:"


def feature_map(features: Features) -> dict[str, float]:
    """The named numbers of one task's period; a name that is absent is zero.

    Names: ``cpu``; ``sent:<peer>``, ``bytes:<peer>`` and (input) ``recv:<peer>`` for IPC;
    ``sys:<kind>`` per system-call kind; ``hsm``, ``hsm_fail``, ``faults``.  HSM commands are
    counted once (as ``hsm``, not again as ``sys:hsm``) so that a burst does not score twice.
    """
    out = {"cpu": float(features.cpu)}
    for peer, count in features.ipc_sent.items():
        out[f"sent:{peer}"] = float(count)
    for peer, count in features.ipc_bytes.items():
        out[f"bytes:{peer}"] = float(count)
    for peer, count in features.ipc_received.items():
        out[f"{INPUT_PREFIX}{peer}"] = float(count)
    for kind, count in features.syscalls.items():
        if kind != "hsm":
            out[f"sys:{kind}"] = float(count)
    if features.hsm_commands:
        out["hsm"] = float(features.hsm_commands)
    if features.hsm_failures:
        out["hsm_fail"] = float(features.hsm_failures)
    if features.faults:
        out["faults"] = float(features.faults)
    return out


@dataclass(frozen=True)
class DetectorConfig:
    """The detector's parameters.  The defaults are the ones ``docs/anomaly.md`` measures."""

    #: periods of training after a task starts (or is reset) before it is judged
    warmup: int = 20
    #: adaptation rate of mean and variance on normal periods (memory ~ 1/alpha periods)
    alpha: float = 0.05
    #: residuals are clipped to +-clip standard deviations before they are learned (Huber)
    clip: float = 3.0
    #: CUSUM reference: a period scoring above this counts as evidence against the task
    reference: float = 4.0
    #: CUSUM decision threshold: flag when the accumulated evidence reaches it
    threshold: float = 10.0
    #: a period is learned from only if its score is below this (judged normal)
    learn_limit: float = 4.0
    #: standard deviation floor of a count whose mean is 0 ...
    count_floor: float = 0.5
    #: ... plus this times its mean as variance (Poisson-like: a busier count varies more)
    count_dispersion: float = 0.25
    #: CPU units: floor max(cpu_floor, cpu_relative * mean); CPU time jitters by some 10 %
    #: on real hardware (caches, interrupts), which must never look surprising
    cpu_floor: float = 1.0
    cpu_relative: float = 0.1
    #: bytes sent: floor max(bytes_floor, bytes_relative * mean)
    bytes_floor: float = 16.0
    bytes_relative: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup < 2:
            raise ValueError(f"warmup must be at least 2 periods, not {self.warmup}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), not {self.alpha}")
        if self.threshold <= 0 or self.reference <= 0:
            raise ValueError("reference and threshold must be positive")

    def variance_floor(self, name: str, mean: float) -> float:
        """The smallest variance a feature is judged with (its scale when it never varied)."""
        return _Stat(name, self).floor(mean)


@dataclass(frozen=True)
class Deviation:
    """One feature's part in a verdict: what it was, what was expected, how far off."""

    name: str
    value: float
    expected: float
    z: float

    def __str__(self) -> str:
        return f"{self.name}={self.value:g} (expected {self.expected:.1f}, z={self.z:+.1f})"


@dataclass(frozen=True)
class Detection:
    """The detector flagged task ``tid`` at the end of ``period``."""

    tid: int
    period: int
    score: float  #: this period's score, max |z| over the task's own features
    cusum: float  #: the accumulated evidence that crossed the threshold
    deviations: tuple[Deviation, ...]  #: the largest deviations, largest first

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
    trained: bool
    training_periods: int  #: periods collected so far in the current training window
    flagged: bool
    cusum: float
    features: int  #: features with a learned model


class _Stat:
    """Mean, variance and the resulting scale of one feature of one task."""

    __slots__ = ("is_input", "mean", "poisson", "relative", "sd", "sd_floor", "var")

    def __init__(
        self, name: str, config: DetectorConfig, mean: float = 0.0, var: float = 0.0
    ) -> None:
        self.is_input = name.startswith(INPUT_PREFIX)
        self.poisson = False
        if name == "cpu":
            self.sd_floor, self.relative = config.cpu_floor, config.cpu_relative
        elif name.startswith("bytes:"):
            self.sd_floor, self.relative = config.bytes_floor, config.bytes_relative
        else:
            self.sd_floor, self.relative = config.count_floor, config.count_dispersion
            self.poisson = True
        self.mean = mean
        self.var = var
        self.sd = 0.0
        self.update(mean, var)

    def floor(self, mean: float) -> float:
        """The variance floor at this mean: Poisson-like for counts, relative otherwise."""
        if self.poisson:
            return self.sd_floor * self.sd_floor + self.relative * abs(mean)
        sd = max(self.sd_floor, self.relative * abs(mean))
        return sd * sd

    def update(self, mean: float, var: float) -> None:
        """Set mean and variance, and the scale z-scores use: the variance, never below the
        floor."""
        self.mean = mean
        self.var = var
        floor = self.floor(mean)
        self.sd = math.sqrt(var if var > floor else floor)


@dataclass
class _TaskModel:
    """The features of one task, its CUSUM and, while it trains, its training window."""

    window: list[dict[str, float]] | None = field(default_factory=list)
    stats: dict[str, _Stat] = field(default_factory=dict)
    cusum: float = 0.0
    flagged: bool = False
    flooded: bool = False  #: flooded by a peer last period: this one is not judged either

    @property
    def trained(self) -> bool:
        return self.window is None

    def fit(self, config: DetectorConfig) -> None:
        """End of training: Welford mean and (sample) variance of every feature seen."""
        assert self.window is not None
        names = {name for values in self.window for name in values}
        for name in sorted(names):
            mean = m2 = 0.0
            for n, values in enumerate(self.window, 1):
                x = values.get(name, 0.0)
                delta = x - mean
                mean += delta / n
                m2 += delta * (x - mean)
            self.stats[name] = _Stat(name, config, mean, m2 / (len(self.window) - 1))
        self.window = None


class AnomalyDetector:
    """Per-task online models of behaviour; :meth:`observe` returns the tasks to flag.

    A task is trained for ``config.warmup`` periods after it is first seen (or reset to
    relearn), then judged every period.  Once flagged it is not judged again (and nothing is
    learned from it) until it is reset: the manager does that when it reloads or updates the
    task.
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._models: dict[int, _TaskModel] = {}
        #: periods in which a task was not judged because a peer flooded it (upstream blame)
        self.excused: dict[int, int] = {}

    # -- state ---------------------------------------------------------------------------------

    def reset(self, tid: int, *, relearn: bool = True) -> None:
        """Clear the verdict on task ``tid``: not flagged, no evidence accumulated.

        With ``relearn`` its model is forgotten too and trained afresh: right after an update,
        whose new image may behave differently.  A reload of the same image brings back the
        behaviour the model was learned from, so keeping the model (``relearn=False``) leaves
        no blind training window for an attacker who hijacks the task again.
        """
        model = self._models.get(tid)
        if relearn or model is None:
            self._models[tid] = _TaskModel()
        else:
            model.flagged = model.flooded = False
            model.cusum = 0.0

    def state(self, tid: int) -> TaskModelState:
        model = self._models.get(tid) or _TaskModel()
        return TaskModelState(
            tid=tid,
            trained=model.trained,
            training_periods=0 if model.window is None else len(model.window),
            flagged=model.flagged,
            cusum=model.cusum,
            features=len(model.stats),
        )

    # -- judging -------------------------------------------------------------------------------

    def _z(self, model: _TaskModel, values: Mapping[str, float]) -> tuple[dict[str, float], float]:
        """z-score of every feature the task has a model for or shows now (absent = 0), and
        the period's score: the largest |z| of the task's own (not input) features.

        A feature never seen before is added with mean 0 and variance 0: it was absent, so
        zero, all along; its floor is its scale.
        """
        stats = model.stats
        for name in values:
            if name not in stats:
                stats[name] = _Stat(name, self.config)
        z: dict[str, float] = {}
        score = 0.0
        for name, st in stats.items():
            zi = z[name] = (values.get(name, 0.0) - st.mean) / st.sd
            if not st.is_input and abs(zi) > score:
                score = abs(zi)
        return z, score

    def _flooded(self, z: Mapping[str, float], flagged: set[int]) -> bool:
        """Upstream blame: is the task's inflow from some peer anomalous, and the peer to blame?

        The peer is to blame if it was flagged in an earlier period, or if the task does not
        send anomalously back to it.  Two tasks flooding each other are therefore both judged
        (colluding tasks cannot excuse each other), while a task echoing a flood back to a
        source already flagged is not.
        """
        k = self.config.reference
        for name, value in z.items():
            if name.startswith(INPUT_PREFIX) and value >= k:
                peer = name[len(INPUT_PREFIX) :]
                if peer.isdigit() and int(peer) in flagged:
                    return True
                if z.get(f"sent:{peer}", 0.0) < k and z.get(f"bytes:{peer}", 0.0) < k:
                    return True
        return False

    def _learn(self, model: _TaskModel, values: Mapping[str, float]) -> None:
        """Exponentially weighted update of mean and variance, residuals Huber-clipped."""
        a = self.config.alpha
        clip = self.config.clip
        for name, st in model.stats.items():
            bound = clip * st.sd
            r = min(max(values.get(name, 0.0) - st.mean, -bound), bound)
            st.update(st.mean + a * r, (1 - a) * (st.var + a * r * r))

    def observe(self, period: int, features: Mapping[int, Features]) -> list[Detection]:
        """Take one period's features of the running tasks; return the tasks flagged now."""
        cfg = self.config
        flagged = {tid for tid, model in self._models.items() if model.flagged}
        scored: dict[int, tuple[dict[str, float], dict[str, float], float]] = {}
        for tid, raw in features.items():
            model = self._models.setdefault(tid, _TaskModel())
            if model.flagged:
                continue
            values = feature_map(raw)
            if model.window is not None:
                model.window.append(values)
                if len(model.window) >= cfg.warmup:
                    model.fit(cfg)
                continue
            scored[tid] = (values, *self._z(model, values))

        k = cfg.reference
        detections: list[Detection] = []
        for tid, (values, z, score) in scored.items():
            model = self._models[tid]
            flooded = self._flooded(z, flagged)
            if flooded or model.flooded:  # the period of a flood and the next (the backlog)
                model.flooded = flooded
                self.excused[tid] = self.excused.get(tid, 0) + 1
                continue
            model.cusum = max(0.0, model.cusum + score - k)
            if model.cusum >= cfg.threshold:
                model.flagged = True
                own = sorted(
                    (n for n in z if not n.startswith(INPUT_PREFIX)), key=lambda n: -abs(z[n])
                )
                deviations = tuple(
                    Deviation(n, values.get(n, 0.0), model.stats[n].mean, z[n]) for n in own[:3]
                )
                detections.append(Detection(tid, period, score, model.cusum, deviations))
            elif score < cfg.learn_limit:
                self._learn(model, values)
        return detections
