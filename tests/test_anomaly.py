"""The anomaly detector: its sequential tests against profiles, bounded excuses, the global CPU
factor, the evaluation (its fixed-seed subset is the ``make test`` run of ``mchsm anomaly-eval``)
and the whole path on the golden model and in the demo."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import driver_on

from mchsm.cli import main
from mchsm.constants import Cmd, Status
from mchsm.sim.backends import run_on_backend
from mchsm.sw import anomaly_eval, demo
from mchsm.sw.anomaly import AnomalyDetector, DetectorConfig, check_trace
from mchsm.sw.anomaly_eval import Report, Spec, plot_roc, run_spec
from mchsm.sw.kernel import Microkernel
from mchsm.sw.manager import Manager
from mchsm.sw.model import HsmModel
from mchsm.sw.profile import Profile, RecordedTrace, derive, named_features
from mchsm.sw.traces import TASKS, Images, TaskSystem, exfiltrating, image_of, record, run_sync
from mchsm.sw.verifier import Verifier

Maps = dict[int, dict[str, float]]


def sender(rng: random.Random, irq: int, extra: float = 0.0, pad: float = 0.0) -> dict[str, float]:
    """Task "a": one message of 8..24 bytes to "b" per interrupt, CPU 40 + 3 per interrupt."""
    sent = irq + extra
    return {
        "recv:irq": irq,
        "cpu": rng.gauss(40 + 3 * irq, 2),
        "sys:wait": 1,
        "sent:b": sent,
        "bytes:b": sum(rng.randint(8, 24) for _ in range(round(sent))) + pad,
        "sys:send": sent,
    }


def receiver(rng: random.Random, got: float, t: int) -> dict[str, float]:
    """Task "b": writes every message it is given, flushes (2 writes) every 8 periods."""
    return {
        "recv:a": got,
        "recv:all": got,
        "cpu": rng.gauss(20 + got, 1.5),
        "sys:receive": got + 1,
        "sys:write": got + (2 if t % 8 == 7 else 0),
    }


def irq(rng: random.Random) -> int:
    return rng.choice((1, 1, 1, 2, 3))


@pytest.fixture(scope="module")
def profiles() -> dict[str, Profile]:
    rng = random.Random(1)
    a, b = [], []
    for t in range(2000):
        n = irq(rng)
        a.append(sender(rng, n))
        b.append(receiver(rng, n, t))
    return {"a": derive("a", a), "b": derive("b", b)}


def watching(profiles: dict[str, Profile], config: DetectorConfig | None = None) -> AnomalyDetector:
    detector = AnomalyDetector(config)
    detector.bind({1: "a", 2: "b"})
    detector.set_profile(1, profiles["a"])
    detector.set_profile(2, profiles["b"])
    return detector


def run(
    detector: AnomalyDetector,
    periods: int,
    make: Callable[[random.Random, int], Maps],
    seed: int = 7,
) -> list[tuple[int, int, str]]:
    """Feed ``periods`` periods; returns (period, tid, what fired) of every flag."""
    rng = random.Random(seed)
    found = []
    for t in range(periods):
        for d in detector.observe_named(t, make(rng, t)):
            found.append((t, d.tid, f"{d.deviations[0].name}@{d.deviations[0].scale}"))
            detector.clear_verdict(d.tid)
    return found


def system(extra: Callable[[int], float] = lambda t: 0.0) -> Callable[[random.Random, int], Maps]:
    def make(rng: random.Random, t: int) -> Maps:
        n = irq(rng)
        e = extra(t)
        return {1: sender(rng, n, e), 2: receiver(rng, n + e, t)}

    return make


# -- the tests against a profile ------------------------------------------------------------------


def test_normal_behaviour_is_never_flagged(profiles: dict[str, Profile]) -> None:
    assert run(watching(profiles), 3000, system()) == []


def test_a_task_is_judged_from_its_first_period(profiles: dict[str, Profile]) -> None:
    """No training window: an exfiltration running from period 0 is caught in period 0."""
    detector = watching(profiles)

    def hijacked(rng: random.Random, t: int) -> Maps:
        maps = system()(rng, t)
        maps[1]["sent:c"] = 3
        maps[1]["bytes:c"] = 600
        return maps

    found = run(detector, 5, hijacked)
    assert found[0][:2] == (0, 1) and found[0][2].startswith(("sent:c", "bytes:c"))
    assert detector.state(1).bound and detector.state(1).trained


def test_small_sustained_shifts_add_up(profiles: dict[str, Profile]) -> None:
    """One extra message every other period (a +40 % channel, 1.7 sd a period on average)
    flags the sender within tens of periods; the receiver, which forwards what it is given,
    is excused (its sender's output is not explained) and never flagged."""
    found = run(watching(profiles), 100, system(lambda t: float(t % 2)))
    assert found and found[0][1] == 1 and found[0][0] < 40
    assert all(tid == 1 for _, tid, _ in found)


def test_longer_scales_catch_what_single_periods_miss(profiles: dict[str, Profile]) -> None:
    """Messages padded by 0.45 sd a period: below the per-period test's reference shift (0.5
    sd), so single periods never add up; the sums over 8 and 32 periods do."""
    pad = 0.45 * profiles["a"].features["bytes:b"].sd

    def padded(rng: random.Random, t: int) -> Maps:
        n = irq(rng)
        return {1: sender(rng, n, pad=pad), 2: receiver(rng, n, t)}

    found = run(watching(profiles), 600, padded)
    assert found and found[0][1] == 1 and found[0][2] in ("bytes:b@8", "bytes:b@32")
    single = watching(profiles)
    for test in single._tasks[1].tests.values():  # one time scale only, as before issue 20
        test.blocks, test.h, test.s, test.scales = (), [test.h[0], test.h[-1]], [0.0, 0.0], [1, 0]
    later = run(single, 600, padded)
    assert not later or later[0][0] > found[0][0]


def test_a_periodic_phase_is_expected_and_follows_reloads(profiles: dict[str, Profile]) -> None:
    detector = watching(profiles)
    assert run(detector, 100, system()) == []
    # the receiver flushes at its own periods 7, 15, ...: out of phase it is anomalous
    shifted = run(detector, 60, lambda rng, t: system()(rng, t + 3))
    assert shifted and shifted[0][1] == 2 and shifted[0][2].startswith("sys:write")
    # a reload restarts the task's phase at 0, on the device and in the detector alike
    detector.reset(2, relearn=False)
    assert run(detector, 200, system()) == []


def test_excuses_are_capped_in_time(profiles: dict[str, Profile]) -> None:
    """A sender floods the receiver: it is flagged (and, in the test, not reloaded).  The
    receiver's extra work is excused for excuse_cap periods per window, then judged against
    its normal input range, so a flood that lasts cannot hide the receiver for ever."""
    cfg = DetectorConfig()
    detector = watching(profiles, cfg)
    flood = system(lambda t: 6.0)
    found = run(detector, 80, flood)
    first_b = next(t for t, tid, _ in found if tid == 2)
    assert found[0][1] == 1 and found[0][0] <= 2
    assert first_b >= cfg.excuse_cap
    assert detector.excused[2] >= cfg.excuse_cap
    # an authorised update of the sender resets the receiver's excuse window
    detector.peer_updated(1)
    assert detector.state(2).excused == 0


def test_input_explained_by_trusted_input_needs_no_excuse(profiles: dict[str, Profile]) -> None:
    """A load step: the device interrupts the sender 4 times a period (beyond anything on the
    rig).  The sender's output is explained by its interrupts, so the receiver's input is
    trusted and its extra work is expected, for as long as it lasts."""
    detector = watching(profiles)

    def busy_device(rng: random.Random, t: int) -> Maps:
        return {1: sender(rng, 4), 2: receiver(rng, 4, t)}

    assert run(detector, 300, busy_device) == []
    assert detector.excused.get(2, 0) == 0


def test_global_cpu_load_is_not_one_tasks_anomaly() -> None:
    """Every task's CPU time x1.3 (a global load): not flagged; one task's alone: flagged."""
    rng = random.Random(3)
    rigs: dict[str, list[dict[str, float]]] = {n: [] for n in "pqrs"}
    means = {"p": 40, "q": 70, "r": 20, "s": 12}
    for _ in range(1500):
        for n, m in means.items():
            rigs[n].append({"cpu": rng.gauss(m, 0.07 * m), "sys:compute": 1})
    detector = AnomalyDetector()
    detector.bind(dict(enumerate("pqrs", 1)))
    for tid, n in enumerate("pqrs", 1):
        detector.set_profile(tid, derive(n, rigs[n]))

    def load(factors: dict[str, float]) -> Callable[[random.Random, int], Maps]:
        def make(r: random.Random, t: int) -> Maps:
            return {
                tid: {"cpu": r.gauss(means[n], 0.07 * means[n]) * factors[n], "sys:compute": 1}
                for tid, n in enumerate("pqrs", 1)
            }

        return make

    assert run(detector, 300, load(dict.fromkeys("pqrs", 1.3))) == []
    found = run(detector, 50, load({"p": 1.3, "q": 1, "r": 1, "s": 1}))
    assert found and {tid for _, tid, _ in found} == {1}


def test_refinement_stays_within_its_bound(profiles: dict[str, Profile]) -> None:
    """The CPU level may be refined by at most refine_sd sd; bytes never are."""
    cfg = DetectorConfig()
    detector = watching(profiles, cfg)

    def slow(rng: random.Random, t: int) -> Maps:
        maps = system()(rng, t)
        maps[1]["cpu"] += 0.4 * profiles["a"].features["cpu"].sd  # inside the bound
        return maps

    assert run(detector, 600, slow) == []
    tests = detector._tasks[1].tests
    bound = cfg.refine_sd * tests["cpu"].model.sd
    assert 0 < tests["cpu"].adj <= bound + 1e-9 and tests["bytes:b"].adj == 0


def test_a_task_without_a_profile_is_learned_then_judged() -> None:
    detector = AnomalyDetector(DetectorConfig(warmup=20))
    rng = random.Random(2)
    for t in range(20):
        assert detector.observe_named(t, {1: sender(rng, 1)}) == []
    state = detector.state(1)
    assert state.trained and not state.bound and state.training_periods == 0
    found = detector.observe_named(20, {1: {**sender(rng, 1), "sent:z": 5}})
    assert [d.reason for d in found] == ["new"]
    detector.reset(1)  # an update of an unprofiled task: learned again
    assert not detector.state(1).trained


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="warmup"):
        DetectorConfig(warmup=3)
    with pytest.raises(ValueError, match="log_arl"):
        DetectorConfig(log_arl=0)
    with pytest.raises(ValueError, match="excuse_cap"):
        DetectorConfig(excuse_cap=-1)


def test_check_trace_reports_every_deviating_stretch(profiles: dict[str, Profile]) -> None:
    rng = random.Random(4)
    periods: list[Maps] = []
    for t in range(120):
        maps = system(lambda t: 3.0 if 40 <= t < 45 or 90 <= t < 95 else 0.0)(rng, t)
        periods.append(maps)
    trace = RecordedTrace({1: "a", 2: "b"}, periods)
    found = check_trace(trace, profiles)
    stretches = {d.period // 50 for d in found if d.tid == 1}
    assert stretches == {0, 1}


# -- the substrate and the evaluation -------------------------------------------------------------


def test_runs_are_reproducible_and_labelled(images: Images) -> None:
    spec = Spec("channel", "100", 3)
    a, b = run_spec(spec, images), run_spec(spec, images)
    assert a == b and a.start is not None and a.channel and a.delay is not None
    assert a.rate > 0 and a.mode in ("messages", "size")


@pytest.fixture(scope="module")
def images() -> Images:
    """The base system's images (the runs here deploy no other variant)."""
    return Images.build([])


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], Path]:
    """``mchsm anomaly-eval`` on its fixed-seed subset, on two processes: the make-test run."""
    roc = tmp_path_factory.mktemp("roc") / "roc.png"
    result = CliRunner().invoke(
        main, ["anomaly-eval", "--json", "--jobs", "2", "--quiet", "--roc", str(roc)]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output), roc


def test_eval_subset_covers_every_class_and_meets_the_targets(
    subset: tuple[dict[str, object], Path],
) -> None:
    data, roc = subset
    rows = data["rows"]
    assert isinstance(rows, list)
    classes = {r["class"] for r in rows}
    assert classes == {c.name for c in anomaly_eval.CLASSES}
    targets = data["targets"]
    assert isinstance(targets, list) and len(targets) == 12
    # the subset has a few runs per value: every target must be met or missed by less than
    # two standard errors of its sample (the full sweep, docs/anomaly.md, measures them)
    far = [t for t in targets if not t["near"]]
    assert far == [], far
    assert sum(t["met"] for t in targets) >= 10
    assert roc.read_bytes().startswith(b"\x89PNG")
    assert data["roc_png"] == str(roc)
    roc_points = data["roc"]
    assert isinstance(roc_points, list) and len(roc_points) == len(anomaly_eval.QUICK_ROC)
    # a lower threshold never detects less
    within = [p["within20"] for p in sorted(roc_points, key=lambda p: p["log_arl"])]
    assert within == sorted(within, reverse=True)


def test_eval_subset_leakage_bounds(subset: tuple[dict[str, object], Path]) -> None:
    data, _ = subset
    bounds = data["leakage"]
    assert isinstance(bounds, list)
    assert [b["channel"] for b in bounds] == [f"{s}->{r}" for s, r in anomaly_eval.CHANNELS]
    for b in bounds:
        assert 0 < b["asymptotic"] < b["normal"]


def test_report_names_missed_targets() -> None:
    row = anomaly_eval.Row("channel", "100", False, runs=10, within20=8)
    report = Report(False, 1, DetectorConfig(), [row], [], [])
    [target] = report.targets()
    assert not target.met and target.measured == pytest.approx(0.8)
    assert "MISSED channel +100 %" in report.render()


def test_roc_picture(tmp_path: Path) -> None:
    report = Report(False, 1, DetectorConfig(), [], [], [])
    report.roc = [
        {"log_arl": 6.0, "fp_rate": 0.01, "within20": 0.99, "within50": 1.0, "runs": 5},
        {"log_arl": 14.0, "fp_rate": 0.0, "within20": 0.9, "within50": 0.97, "runs": 5},
    ]
    path = plot_roc(report, tmp_path / "roc.png")
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 5000


# -- on the golden model --------------------------------------------------------------------------


async def _device(
    db: Path, images: dict[str, bytes], seed: str
) -> tuple[HsmModel, Manager, TaskSystem, Verifier, bytes]:
    """A provisioned golden-model HSM with the traced tasks installed (references from a
    verifier) and loaded.  The HSM's own monitor is off: only the manager's detector acts."""
    model = HsmModel(len(TASKS), budget=0, fail_limit=0)
    kernel = Microkernel(driver_on(model), len(TASKS))
    manager = Manager(kernel)
    verifier = Verifier(db)
    record_ = verifier.register_device(contexts=len(TASKS), name="traced")
    await manager.provision(record_.dev_id, record_.root_key)
    system = TaskSystem(kernel, random.Random(seed))
    system.install(images)
    for task in kernel.tasks.values():
        package = verifier.register_task(record_.dev_id, task.tid, task.name, task.image)
        verifier.confirm(record_.dev_id, await manager.apply_update(package.auth, package.image))
    return model, manager, system, verifier, record_.dev_id


def test_the_fast_substrate_counts_what_the_golden_model_does(tmp_path: Path) -> None:
    """The programs over NullHsm and over the golden model give the same features."""

    async def on_model() -> list[dict[int, dict[str, float]]]:
        images = {n: image_of(n, "v1") for n in TASKS}
        _, manager, system, verifier, _ = await _device(tmp_path / "v.sqlite", images, "same")
        with verifier:
            out = []
            for _ in range(40):
                system.deliver()
                out.append(await manager.kernel.run_period())
            assert manager.kernel.driver.commands > 40  # every TASK_MAC went to the model
            names = {t: n for n, t in system.tids.items()}
            return [{t: named_features(f, names) for t, f in p.items()} for p in out]

    async def on_null() -> list[dict[int, dict[str, float]]]:
        from mchsm.sw.traces import NullHsm

        kernel = Microkernel(NullHsm(), len(TASKS))
        system = TaskSystem(kernel, random.Random("same"))
        system.install()
        await kernel.load_all()
        out = []
        for _ in range(40):
            system.deliver()
            out.append(await kernel.run_period())
        names = {t: n for n, t in system.tids.items()}
        return [{t: named_features(f, names) for t, f in p.items()} for p in out]

    assert asyncio.run(on_model()) == run_sync(on_null())


def test_hijacked_task_on_the_golden_model_gets_anomaly_set(tmp_path: Path, images: Images) -> None:
    """Images carrying their profiles, on the golden model: sensor is hijacked to exfiltrate
    to logger (which works through the flood and is not blamed); the detector flags it, the
    manager sets ANOMALY in the HSM, attestation reports exactly it failed, its next command
    is refused; a reload clears ANOMALY and the detector's verdict."""

    async def go() -> None:
        deployed = images.deployed(dict.fromkeys(TASKS, "v1"))
        model, manager, system, verifier, dev_id = await _device(
            tmp_path / "v.sqlite", deployed, "golden"
        )
        with verifier:
            await manager.watch(AnomalyDetector())
            assert all(manager.detector.state(t).bound for t in range(1, 6))  # type: ignore[union-attr]  # watch() set it
            for _ in range(20):
                system.deliver()
                assert await manager.run_period() == []
            sensor = system.tids["sensor"]
            system.hijack("sensor", lambda p: exfiltrating(p, "logger", system.rng))
            system.deliver()
            assert await manager.run_period() == [sensor]  # a new peer: flagged at once
            assert model.context(sensor).anomaly and not model.context(sensor).ok
            assert {d.tid for d in manager.detections} == {sensor}
            assert "sent:logger" in manager.detections[0].explain()
            system.deliver()
            assert await manager.run_period() == []  # still hijacked: flagged once only
            port = manager.kernel._hsm_port(manager.kernel.task("comms"))
            assert (await port.call(Cmd.TASK_MAC, 0, b"x")).status is Status.OK
            challenge = verifier.challenge(dev_id)
            report = verifier.verify(
                dev_id, challenge.nonce, await manager.attest(challenge.nonce, challenge.sel)
            )
            assert report.failed == [sensor]
            system.restore("sensor")
            await manager.reload("sensor")
            assert model.context(sensor).ok and not manager.flagged
            for _ in range(10):
                system.deliver()
                assert await manager.run_period() == []

    asyncio.run(go())


def test_rig_profiles_bind_every_task_to_its_image() -> None:
    trace = record(periods=300, seed="mchsm-test")
    profile = derive("sensor", trace.series("sensor"))
    assert profile.features["sent:control"].coef == {"recv:irq": pytest.approx(1.0)}


# -- the demo -------------------------------------------------------------------------------------


def _demo_steps(tmp_path: Path) -> list[demo.Step]:
    return run_on_backend(
        "model",
        demo.run_story,
        8,
        job_args={"db_path": tmp_path / "v.sqlite", "backend": "model", "contexts": 8, "seed": 5},
    ).value.steps


def test_demo_step_catches_the_hijacked_comms(tmp_path: Path) -> None:
    step = _demo_steps(tmp_path)[-2]
    assert step.title.startswith("hijack comms") and step.passed, step.detail
    assert "comms flagged after 1 period" in step.detail and "comms=failed" in step.detail
    assert "ERR_NOT_TRUSTED" in step.detail and "(verified)" in step.detail


def test_demo_step_fails_if_nothing_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step passes only if the detector caught comms: a harmless "hijack" must fail it."""
    monkeypatch.setattr(demo, "exfiltrating", lambda genuine, *args: genuine)
    steps = _demo_steps(tmp_path)
    assert not steps[-2].passed and "not flagged within 5 periods" in steps[-2].detail
    assert steps[-1].passed  # and nothing else in the story changed
