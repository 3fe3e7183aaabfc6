"""Behaviour profiles: what a task image normally does, bound to that image.

A learned baseline is written by whatever runs while it learns: an attack present from a task's
first period, or a slow ramp, becomes "normal".  A profile closes that hole.  It is derived by
the image's vendor from a long trace of the genuine image on a test rig (:func:`derive`), and
travels *inside the image* (:func:`embed`): MEASURE hashes it with the code, so the reference
value the verifier installs and the update authorisation cover it, and a task cannot change
it at run time (its code area is read-only).  The manager adopts the profile of an image only
after the HSM says the loaded image matches its reference (``READ_CTX`` ``OK``), so a profile in
a tampered image is never believed.

What a profile holds, per task (``docs/anomaly.md`` has the format field by field):

- one **model per output feature** (``cpu``, ``sent:<peer>``, ``bytes:<peer>``, ``sys:<kind>``,
  ``hsm:<KIND>``, ``hsm_fail``, ``faults``): an intercept, a regression on the task's inputs
  (messages received per peer and device interrupts, this period and the last one: what its
  inputs explain), the offsets of a **periodic phase** if it has one (timer-driven work, in
  periods since load), and the residual's scale at several **time scales** (one period, sums
  over 8 and 32) with the per-scale constant of its sequential test;
- the largest value and residual seen of each feature (the envelope), and the largest inputs;
- **HSM command budgets** per command kind, per period and per sliding window, which the
  kernel enforces.

A feature the profile does not list was never seen on the rig: any use of it is new behaviour.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mchsm.constants import (
    KERNEL_BUDGET_WINDOW,
    PROFILE_LENGTH_SIZE,
    PROFILE_MAGIC,
    PROFILE_MAX_SIZE,
)
from mchsm.sw.errors import MchsmError
from mchsm.sw.kernel import Features, HsmBudget

__all__ = [
    "ALL",
    "FORMAT",
    "INPUT_PREFIX",
    "IRQ",
    "LAG",
    "TRACE_FORMAT",
    "DeriveConfig",
    "FeatureModel",
    "Profile",
    "ProfileError",
    "RecordedTrace",
    "derive",
    "embed",
    "is_input",
    "named_features",
    "split_image",
]

#: the profile format this module writes and reads
FORMAT = "mchsm-profile/1"
#: the recorded-trace format of the ``mchsm anomaly`` tools
TRACE_FORMAT = "mchsm-trace/1"
#: prefix of the input features: what the task was given, not what it did
INPUT_PREFIX = "recv:"
#: the input feature of device interrupts (delivered by the kernel; no task can forge them)
IRQ = "recv:irq"
#: the input feature of all messages received, whoever sent them (many tasks treat every
#: message alike, and then this explains their work even when a sender's rate never varied)
ALL = "recv:all"
#: suffix of an input's value in the previous period (work on a backlog lags its input)
LAG = "@1"


class ProfileError(MchsmError):
    """A profile (or a recorded trace) is malformed, or an image's profile trailer is bad."""


def is_input(name: str) -> bool:
    return name.startswith(INPUT_PREFIX)


def named_features(features: Features, names: Mapping[int, str]) -> dict[str, float]:
    """One task's period as named numbers, peers by task name (``task<id>`` if unnamed).

    Only non-zero values are listed (absent = 0), except ``cpu``.  HSM commands are counted by
    kind (``hsm:TASK_MAC``), not again as ``sys:hsm``.  ``refused:<KIND>`` counts commands the
    kernel refused over the task's budget.
    """

    def peer(tid: int) -> str:
        return names.get(tid, f"task{tid}")

    out = {"cpu": float(features.cpu)}
    for tid, count in features.ipc_sent.items():
        if count:
            out[f"sent:{peer(tid)}"] = float(count)
    for tid, count in features.ipc_bytes.items():
        if count:
            out[f"bytes:{peer(tid)}"] = float(count)
    for tid, count in features.ipc_received.items():
        if count:
            out[f"{INPUT_PREFIX}{peer(tid)}"] = float(count)
    total = sum(features.ipc_received.values())
    if total:
        out[ALL] = float(total)
    for kind, count in features.syscalls.items():
        if count and kind != "hsm":
            out[f"sys:{kind}"] = float(count)
    for kind, count in features.hsm_kinds.items():
        if count:
            out[f"hsm:{kind}"] = float(count)
    for kind, count in features.hsm_refused.items():
        if count:
            out[f"refused:{kind}"] = float(count)
    if features.hsm_failures:
        out["hsm_fail"] = float(features.hsm_failures)
    if features.faults:
        out["faults"] = float(features.faults)
    if features.irqs:
        out[IRQ] = float(features.irqs)
    return out


# -- the profile --------------------------------------------------------------------------------


def _num(x: float) -> float:
    """Six significant digits: a profile is a few kilobytes, not a float dump."""
    return float(f"{x:.6g}")


@dataclass(frozen=True)
class FeatureModel:
    """The normal behaviour of one output feature of one task.

    ``predict`` gives its expected value in a period from the task's inputs and the period's
    phase; ``sd`` is the scale of the residual per period, ``blocks`` the scale of the residual
    summed over ``L`` periods (``(L, sd_L, theta_L)``).  ``theta`` is the adjustment
    coefficient (Cramer-Lundberg exponent) of the per-period test's increments, measured on
    the rig: a test whose threshold is ``log_arl / theta`` raises a false alarm about once
    every ``exp(log_arl)`` periods on normal behaviour, whatever the feature's distribution.
    """

    name: str
    mean: float  #: mean on the rig
    peak: float  #: largest value on the rig
    intercept: float
    coef: dict[str, float]  #: input name (``recv:<peer>``, ``recv:irq``, with ``@1``) -> weight
    phase: tuple[float, ...]  #: offset per phase (periods since load, modulo its length)
    sd: float
    zmax: float  #: largest residual seen on the rig, in sd
    theta: float
    blocks: tuple[tuple[int, float, float], ...]
    #: rate of periods with a residual of at least ``clip`` sd on the rig (with one more
    #: assumed): the base rate of the rare-event test
    rare: float = 0.0

    def predict(self, inputs: Mapping[str, float], t: int) -> float:
        value = self.intercept
        for name, weight in self.coef.items():
            value += weight * inputs.get(name, 0.0)
        if self.phase:
            value += self.phase[t % len(self.phase)]
        return value

    def to_dict(self) -> dict[str, object]:
        return {
            "mean": _num(self.mean),
            "peak": _num(self.peak),
            "a": _num(self.intercept),
            "b": {k: _num(v) for k, v in sorted(self.coef.items())},
            "phase": [_num(v) for v in self.phase],
            "sd": _num(self.sd),
            "zmax": _num(self.zmax),
            "theta": _num(self.theta),
            "blocks": [[n, _num(s), _num(t)] for n, s, t in self.blocks],
            "rare": _num(self.rare),
        }


@dataclass(frozen=True)
class Profile:
    """A task image's behaviour profile (see the module docstring)."""

    task: str
    periods: int  #: periods of the rig trace it was derived from
    reference: float  #: the sequential tests' reference shift k, in sd
    clip: float  #: residuals are clipped to +-clip sd in the tests
    features: dict[str, FeatureModel]
    inputs: dict[str, float]  #: largest value of every input on the rig (lag 0)
    budget_period: dict[str, int]  #: HSM commands per kind per period
    budget_window: dict[str, int]  #: HSM commands per kind per window
    window: int = KERNEL_BUDGET_WINDOW

    def budget(self) -> HsmBudget:
        """The kernel's HSM budget for this image."""
        return HsmBudget(dict(self.budget_period), dict(self.budget_window), self.window)

    def to_json(self) -> bytes:
        """Canonical JSON: the same profile always gives the same bytes (and measurement)."""
        doc = {
            "format": FORMAT,
            "task": self.task,
            "periods": self.periods,
            "k": _num(self.reference),
            "clip": _num(self.clip),
            "features": {n: m.to_dict() for n, m in sorted(self.features.items())},
            "inputs": {n: _num(v) for n, v in sorted(self.inputs.items())},
            "budget": {
                "window": self.window,
                "kinds": {
                    k: [self.budget_period.get(k, 0), self.budget_window.get(k, 0)]
                    for k in sorted(set(self.budget_period) | set(self.budget_window))
                },
            },
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Profile:
        """Parse and check a profile; anything malformed raises :class:`ProfileError`."""
        if len(data) > PROFILE_MAX_SIZE:
            raise ProfileError(f"a profile is at most {PROFILE_MAX_SIZE} bytes")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ProfileError(f"a profile must be JSON: {exc}") from None
        return _parse_profile(doc)

    def describe(self) -> str:
        """A person's view: one line per feature."""
        lines = [
            f"profile of {self.task!r}: {len(self.features)} features from {self.periods} "
            f"rig periods; tests k={self.reference:g} clip={self.clip:g}",
        ]
        for name, m in sorted(self.features.items()):
            explained = ", ".join(f"{w:+.3g}*{u}" for u, w in sorted(m.coef.items()))
            phase = f", period {len(m.phase)}" if m.phase else ""
            blocks = " ".join(f"sd{n}={s:.3g}" for n, s, _ in m.blocks)
            lines.append(
                f"  {name:<22} mean {m.mean:8.3f} peak {m.peak:7.6g} sd {m.sd:7.3f} "
                f"theta {m.theta:5.2f} {blocks}"
                + (f"  = {m.intercept:.3g} {explained}" if explained else "")
                + phase
            )
        if self.inputs:
            lines.append(
                "  inputs (peak): "
                + ", ".join(f"{n}={v:g}" for n, v in sorted(self.inputs.items()))
            )
        kinds = sorted(set(self.budget_period) | set(self.budget_window))
        lines.append(
            f"  HSM budget (per period / per {self.window} periods): "
            + (
                ", ".join(
                    f"{k} {self.budget_period.get(k, 0)}/{self.budget_window.get(k, 0)}"
                    for k in kinds
                )
                or "none: every HSM command is refused"
            )
        )
        return "\n".join(lines)


def _bad(what: str) -> ProfileError:
    return ProfileError(f"malformed profile: {what}")


def _finite(value: object, what: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{what} must be a number")
    x = float(value)
    if not math.isfinite(x) or (positive and x <= 0):
        raise _bad(f"{what} must be a finite{' positive' if positive else ''} number, not {x}")
    return x


def _rate(value: object, what: str) -> float:
    x = _finite(value, what, positive=True)
    if x >= 1:
        raise _bad(f"{what} is a rate below 1, not {x}")
    return x


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(f"{what} must be a count (a whole number >= 0)")
    return value


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not value.isprintable():
        raise _bad(f"{what} must be a printable name of 1..64 characters")
    return value


def _parse_feature(name: str, doc: object) -> FeatureModel:
    if not isinstance(doc, dict):
        raise _bad(f"feature {name!r} must be an object")
    try:
        coef = doc["b"]
        phase = doc["phase"]
        blocks = doc["blocks"]
        if (
            not isinstance(coef, dict)
            or not isinstance(phase, list)
            or not isinstance(blocks, list)
        ):
            raise _bad(f"feature {name!r}: b is an object, phase and blocks are lists")
        if len(coef) > 64 or len(phase) > 256 or len(blocks) > 8:
            raise _bad(f"feature {name!r} is too large")
        parsed_blocks = []
        for block in blocks:
            if not isinstance(block, list) or len(block) != 3:
                raise _bad(f"feature {name!r}: a block is [periods, sd, theta]")
            n = _count(block[0], f"{name} block length")
            if n < 2:
                raise _bad(f"feature {name!r}: a block spans at least 2 periods")
            parsed_blocks.append(
                (
                    n,
                    _finite(block[1], f"{name} block sd", positive=True),
                    _finite(block[2], f"{name} block theta", positive=True),
                )
            )
        for u in coef:
            if not is_input(_name(u, f"{name} input")):
                raise _bad(f"feature {name!r} is explained by {u!r}, which is not an input")
        return FeatureModel(
            name=name,
            mean=_finite(doc["mean"], f"{name} mean"),
            peak=_finite(doc["peak"], f"{name} peak"),
            intercept=_finite(doc["a"], f"{name} intercept"),
            coef={u: _finite(w, f"{name} weight of {u}") for u, w in coef.items()},
            phase=tuple(_finite(v, f"{name} phase") for v in phase),
            sd=_finite(doc["sd"], f"{name} sd", positive=True),
            zmax=_finite(doc["zmax"], f"{name} zmax"),
            theta=_finite(doc["theta"], f"{name} theta", positive=True),
            blocks=tuple(parsed_blocks),
            rare=_rate(doc["rare"], f"{name} rare"),
        )
    except KeyError as exc:
        raise _bad(f"feature {name!r} has no {exc.args[0]!r}") from None


def _parse_profile(doc: object) -> Profile:
    if not isinstance(doc, dict):
        raise _bad("the top level must be an object")
    if doc.get("format") != FORMAT:
        raise ProfileError(f"not a profile of format {FORMAT} (format {doc.get('format')!r})")
    try:
        features = doc["features"]
        inputs = doc["inputs"]
        budget = doc["budget"]
        if not isinstance(features, dict) or not isinstance(inputs, dict):
            raise _bad("features and inputs must be objects")
        if not isinstance(budget, dict) or not isinstance(budget.get("kinds"), dict):
            raise _bad("budget must be an object with kinds")
        if len(features) > 512 or len(inputs) > 256 or len(budget["kinds"]) > 64:
            raise _bad("too many features, inputs or budget kinds")
        models = {}
        for name, f in features.items():
            _name(name, "a feature name")
            if is_input(name):
                raise _bad(f"{name!r} is an input, not a feature the task is judged on")
            models[name] = _parse_feature(name, f)
        if "cpu" not in models:
            raise _bad("every profile models cpu")
        per_period, per_window = {}, {}
        for kind, pair in budget["kinds"].items():
            _name(kind, "an HSM command kind")
            if not isinstance(pair, list) or len(pair) != 2:
                raise _bad(f"budget of {kind} is [per period, per window]")
            per_period[kind] = _count(pair[0], f"budget of {kind}")
            per_window[kind] = _count(pair[1], f"window budget of {kind}")
        window = _count(budget["window"], "budget window")
        if window < 1:
            raise _bad("the budget window is at least 1 period")
        reference = _finite(doc["k"], "k", positive=True)
        clip = _finite(doc["clip"], "clip", positive=True)
        if clip <= reference:
            raise _bad("clip must be larger than k")
        return Profile(
            task=_name(doc["task"], "task"),
            periods=_count(doc["periods"], "periods"),
            reference=reference,
            clip=clip,
            features=models,
            inputs={_name(n, "an input"): _finite(v, f"input {n}") for n, v in inputs.items()},
            budget_period=per_period,
            budget_window=per_window,
            window=window,
        )
    except KeyError as exc:
        raise _bad(f"no {exc.args[0]!r}") from None


# -- the image trailer ----------------------------------------------------------------------------


def embed(image: bytes, profile: Profile) -> bytes:
    """The image that carries ``profile``: ``code || profile || u32 length || magic``.

    An image that already carries a profile gets it replaced (the code is kept).
    """
    code, _ = split_image(image)
    payload = profile.to_json()
    if len(payload) > PROFILE_MAX_SIZE:
        raise ProfileError(f"the profile is {len(payload)} bytes, more than {PROFILE_MAX_SIZE}")
    return code + payload + len(payload).to_bytes(PROFILE_LENGTH_SIZE, "big") + PROFILE_MAGIC


def split_image(image: bytes) -> tuple[bytes, Profile | None]:
    """The code of an image and the profile it carries (``None`` if it carries none).

    An image that ends with the magic but whose trailer does not parse raises
    :class:`ProfileError`: it claims a profile, and a broken one must not pass for none.
    """
    image = bytes(image)
    if not image.endswith(PROFILE_MAGIC):
        return image, None
    tail = len(PROFILE_MAGIC) + PROFILE_LENGTH_SIZE
    if len(image) < tail:
        raise ProfileError("the image's profile trailer is cut short")
    size = int.from_bytes(image[-tail : -len(PROFILE_MAGIC)], "big")
    if size > PROFILE_MAX_SIZE or size > len(image) - tail:
        raise ProfileError(f"the image's profile trailer claims {size} bytes, which it cannot hold")
    return image[: len(image) - tail - size], Profile.from_json(image[-tail - size : -tail])


# -- derivation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeriveConfig:
    """How a profile is derived from a rig trace.  The defaults are the documented ones."""

    reference: float = 0.5  #: k: the tests accumulate residuals above k sd (a small shift)
    clip: float = 3.0  #: residuals clipped to +-clip sd: one odd period adds at most clip - k
    scales: tuple[int, ...] = (8, 32)  #: block sums judged besides single periods
    max_inputs: int = 4  #: regressors a feature may use (forward selection)
    min_gain: float = 0.05  #: a regressor must remove this fraction of the residual variance
    max_period: int = 32  #: longest periodic phase looked for
    periodic: float = 0.25  #: a phase must explain this fraction of the residual variance
    count_floor: float = 0.3  #: smallest sd of a count (one extra event is 3.3 sd)
    #: smallest sd of bytes sent, relative to the channel's usual message size (and >= 1 byte):
    #: message sizes are a protocol's, a padding of a tenth of a message is one sd
    bytes_floor: float = 0.1
    cpu_floor: float = 1.0  #: smallest sd of cpu, in units ...
    cpu_relative: float = 0.03  #: ... and relative to its mean
    theta_max: float = 2.0  #: a feature never seen to vary still needs 3 odd periods
    period_margin: float = 1.5  #: HSM budget per period: margin * peak + 1
    window_margin: float = 1.25  #: HSM budget per window: margin * peak window sum + 2


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _std(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the systems here are at most 5 x 5)."""
    n = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        if abs(m[col][col]) < 1e-12:
            return [0.0] * n
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            for c in range(col, n + 1):
                m[r][c] -= f * m[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return math.fsum(map(operator.mul, a, b))


class _Design:
    """The centred inputs of one task and their cross products, computed once for all of its
    features: every least-squares fit is then a small solve."""

    def __init__(self, regressors: Mapping[str, Sequence[float]]) -> None:
        self.names = list(regressors)
        self.means = {u: _mean(xs) for u, xs in regressors.items()}
        self.centred = {u: [x - self.means[u] for x in xs] for u, xs in regressors.items()}
        self.gram = {
            (u, v): _dot(self.centred[u], self.centred[v]) for u in self.names for v in self.names
        }

    def fit(
        self, yc: Sequence[float], yy: float, xty: Mapping[str, float], chosen: Sequence[str]
    ) -> tuple[list[float], float]:
        """Weights of ``chosen`` for the centred ``yc`` and the residual sum of squares."""
        if not chosen:
            return [], yy
        g = [[self.gram[u, v] for v in chosen] for u in chosen]
        ridge = 1e-9 * max(1.0, *(g[i][i] for i in range(len(chosen))))
        for i in range(len(chosen)):
            g[i][i] += ridge
        b = _solve(g, [xty[u] for u in chosen])
        return b, max(0.0, yy - _dot(b, [xty[u] for u in chosen]))


def _phase(resid: Sequence[float], cfg: DeriveConfig) -> tuple[float, ...]:
    """Per-phase offsets of the residual if a periodic phase explains enough of it."""
    n = len(resid)
    m = _mean(resid)
    r = [x - m for x in resid]
    total = _dot(r, r)
    if total <= 1e-9:
        return ()
    best: dict[int, tuple[float, list[float]]] = {}
    for p in range(2, min(cfg.max_period, n // 4) + 1):
        means = [math.fsum(r[j::p]) / len(r[j::p]) for j in range(p)]
        explained = sum(len(r[j::p]) * means[j] ** 2 for j in range(p)) / total
        # a random phase split explains about (p - 1) / n of the variance by chance
        best[p] = (explained - (p - 1) / n, means)
    if not best:
        return ()
    top = max(v[0] for v in best.values())
    if top < cfg.periodic:
        return ()
    period = min(p for p, v in best.items() if v[0] >= 0.9 * top)
    return tuple(best[period][1])


def _theta(increments: Sequence[float], top: float, prior: float, cap: float) -> float:
    """The exponent theta > 0 with E[exp(theta X)] = 1 for the increments X.

    ``prior`` of the mass is put on the largest possible increment ``top``: an odd period the
    rig did not happen to show is not assumed impossible.  For Gaussian increments with mean -k
    and unit variance theta is 2k.  The increments are binned to 0.01 (a few hundred values at
    most), which moves theta by less than 1 %.
    """
    hist = Counter(round(x, 2) for x in increments)
    weights = [(x, c / len(increments)) for x, c in hist.items()]

    def f(theta: float) -> float:
        body = sum(w * math.exp(theta * x) for x, w in weights)
        return (1 - prior) * body + prior * math.exp(theta * top) - 1

    lo, hi = 1e-4, cap
    if f(hi) <= 0:
        return cap
    if f(lo) >= 0:
        return lo
    for _ in range(40):
        mid = (lo + hi) / 2
        if f(mid) > 0:
            hi = mid
        else:
            lo = mid
    return lo


def _floor(
    name: str, values: Sequence[float], series: Mapping[str, Sequence[float]], cfg: DeriveConfig
) -> float:
    """The smallest sd a feature is judged with."""
    if name == "cpu":
        return max(cfg.cpu_floor, cfg.cpu_relative * abs(_mean(values)))
    if name.startswith("bytes:"):
        sent = series.get("sent:" + name.partition(":")[2], ())
        messages = sum(sent)
        size = sum(values) / messages if messages else max(values, default=1.0)
        return max(1.0, cfg.bytes_floor * size)
    return cfg.count_floor


def derive(
    task: str, periods: Sequence[Mapping[str, float]], config: DeriveConfig | None = None
) -> Profile:
    """Derive the profile of ``task`` from its named features, one map per period since load.

    The rig trace should be long (thousands of periods) and cover the image's normal variety
    (its inputs' range, its periodic work, its rare paths): whatever it never shows is new
    behaviour on the device.
    """
    cfg = config or DeriveConfig()
    n = len(periods)
    if n < 8:
        raise ProfileError(f"a profile needs a trace of at least 8 periods, not {n}")
    names = sorted({k for p in periods for k, v in p.items() if v} | {"cpu"})
    series = {k: [float(p.get(k, 0.0)) for p in periods] for k in names}
    inputs = [k for k in names if is_input(k)]
    regressors: dict[str, list[float]] = {}
    for u in inputs:
        regressors[u] = series[u]
        regressors[u + LAG] = [0.0, *series[u][:-1]]
    design = _Design({u: xs for u, xs in regressors.items() if _std(xs) > 1e-9})
    features: dict[str, FeatureModel] = {}
    for name in names:
        if is_input(name) or name.startswith("refused:"):
            continue
        features[name] = _derive_feature(name, series[name], series, design, cfg)
    kinds = [k.partition(":")[2] for k in names if k.startswith("hsm:")]
    per_period, per_window = {}, {}
    for kind in kinds:
        ys = series[f"hsm:{kind}"]
        w = KERNEL_BUDGET_WINDOW
        sums = [sum(ys[max(0, t - w + 1) : t + 1]) for t in range(n)]
        per_period[kind] = math.ceil(cfg.period_margin * max(ys)) + 1
        per_window[kind] = math.ceil(cfg.window_margin * max(sums)) + 2
    return Profile(
        task=task,
        periods=n,
        reference=cfg.reference,
        clip=cfg.clip,
        features=features,
        inputs={u: max(series[u]) for u in inputs},
        budget_period=per_period,
        budget_window=per_window,
    )


def _block_sums(xs: Sequence[float], length: int) -> list[float]:
    """Sums over every window of ``length`` consecutive values."""
    acc = [0.0, *itertools.accumulate(xs)]
    return [acc[t + length] - acc[t] for t in range(len(xs) - length + 1)]


def _derive_feature(
    name: str,
    y: list[float],
    series: Mapping[str, Sequence[float]],
    design: _Design,
    cfg: DeriveConfig,
) -> FeatureModel:
    n = len(y)
    my = _mean(y)
    yc = [v - my for v in y]
    yy = _dot(yc, yc)
    xty = {u: _dot(design.centred[u], yc) for u in design.names}
    # forward selection of the inputs that explain the feature
    chosen: list[str] = []
    b: list[float] = []
    rss = yy
    exact = 1e-6 * yy + 1e-9  # a residual this small is a perfect fit (up to the ridge)
    while len(chosen) < cfg.max_inputs and rss > exact:
        trials = [
            (design.fit(yc, yy, xty, [*chosen, u]), u) for u in design.names if u not in chosen
        ]
        if not trials:
            break
        # the best fit; on a tie the aggregate input (it generalises to a sender whose rate
        # never varied on the rig), then the unlagged one
        least = min(t[0][1] for t in trials)
        close = [t for t in trials if t[0][1] <= least * (1 + 1e-6) + 1e-9]
        (tb, trss), u = min(close, key=lambda t: (not t[1].startswith(ALL), LAG in t[1], t[1]))
        if rss - trss < cfg.min_gain * rss or rss - trss < exact:
            break
        chosen.append(u)
        b, rss = tb, trss

    def explained(weights: Sequence[float]) -> list[float]:
        out = [0.0] * n
        for u, w in zip(chosen, weights, strict=True):
            col = design.centred[u]
            for t in range(n):
                out[t] += w * col[t]
        return out

    phase: tuple[float, ...] = ()
    fit = explained(b)
    for _ in range(3):  # backfitting: the phase of what the inputs leave, then refit
        phase = _phase([yc[t] - fit[t] for t in range(n)], cfg)
        if not phase or not chosen:
            break
        target = [yc[t] - phase[t % len(phase)] for t in range(n)]
        tm = _mean(target)
        tc = [v - tm for v in target]
        b, _ = design.fit(
            tc, _dot(tc, tc), {u: _dot(design.centred[u], tc) for u in chosen}, chosen
        )
        fit = explained(b)
    p = len(phase)
    # prediction = my + fit + phase = intercept + sum w x + phase, with the offsets centred
    intercept = my - sum(w * design.means[u] for u, w in zip(chosen, b, strict=True))
    resid = [yc[t] - fit[t] - (phase[t % p] if p else 0.0) for t in range(n)]
    if p:
        shift = _mean(phase)
        phase = tuple(v - shift for v in phase)
        intercept += shift
    mr = _mean(resid)
    intercept += mr
    resid = [r - mr for r in resid]
    sd = max(_std(resid), _floor(name, y, series, cfg))
    z = [r / sd for r in resid]
    k, c = cfg.reference, cfg.clip
    theta = _theta([min(max(v, -c), c) - k for v in z], c - k, 1.0 / (n + 1), cfg.theta_max)
    rare = (sum(v >= c for v in z) + 1) / (n + 2)
    blocks = []
    for length in cfg.scales:
        if n < 4 * length:
            continue
        sums = _block_sums(resid, length)
        sd_l = max(_std(sums), 0.5 * math.sqrt(length) * sd)
        zs = [s / sd_l for s in sums]
        th = _theta(
            [min(max(v, -c), c) - k for v in zs], c - k, length / (n + length), cfg.theta_max
        )
        blocks.append((length, sd_l, th))
    return FeatureModel(
        name=name,
        mean=my,
        peak=max(y),
        intercept=intercept,
        coef=dict(zip(chosen, b, strict=True)),
        phase=phase,
        sd=sd,
        zmax=max(max(z), 0.0),
        theta=theta,
        blocks=tuple(blocks),
        rare=rare,
    )


# -- recorded traces ------------------------------------------------------------------------------


@dataclass
class RecordedTrace:
    """What the ``mchsm anomaly`` tools read and write: every task's named features per period.

    Every task is taken to be loaded at period 0 (its phase counts from there).
    """

    names: dict[int, str]
    periods: list[dict[int, dict[str, float]]] = field(default_factory=list)

    def series(self, task: str) -> list[dict[str, float]]:
        """One task's named features, period by period (an empty map where it did not run)."""
        tids = [tid for tid, name in self.names.items() if name == task]
        if not tids:
            known = ", ".join(sorted(self.names.values()))
            raise ProfileError(f"the trace has no task {task!r} (it has {known})")
        return [p.get(tids[0], {}) for p in self.periods]

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": TRACE_FORMAT,
                "names": {str(t): n for t, n in sorted(self.names.items())},
                "periods": [
                    {str(t): {k: v for k, v in sorted(f.items())} for t, f in sorted(p.items())}
                    for p in self.periods
                ],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> RecordedTrace:
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ProfileError(f"a trace must be JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != TRACE_FORMAT:
            raise ProfileError(f"not a trace of format {TRACE_FORMAT}")
        try:
            names = {int(t): _name(n, "a task name") for t, n in doc["names"].items()}
            periods = [
                {
                    int(t): {_name(k, "a feature"): _finite(v, k) for k, v in f.items()}
                    for t, f in p.items()
                }
                for p in doc["periods"]
            ]
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            raise ProfileError(f"malformed trace: {exc}") from None
        return cls(names, periods)

    @classmethod
    def record(
        cls, names: Mapping[int, str], periods: Iterable[Mapping[int, Features]]
    ) -> RecordedTrace:
        """A trace of the kernel's features (``{tid: Features}`` per period)."""
        names = dict(names)
        return cls(
            names,
            [{tid: named_features(f, names) for tid, f in p.items()} for p in periods],
        )
