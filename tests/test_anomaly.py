"""The anomaly detector: its model, the labelled traces, the evaluation targets, and the whole
path on the golden model (a hijacked task's programs run in the kernel, the detector flags it,
the manager sets ANOMALY in the HSM, attestation reports it failed, a reload clears it)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from mchsm.cli import main
from mchsm.constants import Cmd, Status
from mchsm.sw import demo
from mchsm.sw.anomaly import AnomalyDetector, DetectorConfig, feature_map
from mchsm.sw.backends import run_on_backend
from mchsm.sw.driver import HsmDriver, ModelTransport
from mchsm.sw.kernel import Features, Microkernel
from mchsm.sw.mailbox import ModelMailbox
from mchsm.sw.manager import Manager
from mchsm.sw.model import HsmModel
from mchsm.sw.traces import (
    ATTACKS,
    TASKS,
    EvalReport,
    KindResult,
    NullHsm,
    TaskSystem,
    evaluate,
    generate,
    play,
    run_detector,
    trace_rng,
)
from mchsm.sw.verifier import Verifier

W = DetectorConfig().warmup


def period(
    cpu: float = 40,
    sent: dict[int, int] | None = None,
    received: dict[int, int] | None = None,
    hsm: int = 0,
    failures: int = 0,
    size: int = 16,
) -> Features:
    """One task's features in one period, written by hand."""
    f = Features(cpu=round(cpu), hsm_commands=hsm, hsm_failures=failures)
    for peer, n in (sent or {}).items():
        f.ipc_sent[peer] = n
        f.ipc_bytes[peer] = n * size
        f.syscalls["send"] += n
    for peer, n in (received or {}).items():
        f.ipc_received[peer] = n
    f.syscalls["compute"] = 1
    return f


def noisy(rng: random.Random) -> Features:
    return period(cpu=rng.gauss(40, 3), sent={2: 1})


def trained(seed: int = 0) -> tuple[AnomalyDetector, random.Random]:
    """A detector that has learned task 1 (40 +- 3 CPU units, one message to task 2)."""
    rng = random.Random(seed)
    detector = AnomalyDetector()
    for t in range(W):
        assert detector.observe(t, {1: noisy(rng)}) == []
    return detector, rng


# -- the model ------------------------------------------------------------------------------------


def test_feature_map_names_every_behaviour() -> None:
    f = period(cpu=7, sent={3: 2}, received={1: 1}, hsm=4, failures=3)
    f.faults = 1
    f.syscalls["hsm"] = 4
    assert feature_map(f) == {
        "cpu": 7,
        "sent:3": 2,
        "bytes:3": 32,
        "recv:1": 1,
        "sys:send": 2,
        "sys:compute": 1,
        "hsm": 4,
        "hsm_fail": 3,
        "faults": 1,
    }


def test_training_judges_nothing_then_the_task_is_judged() -> None:
    detector = AnomalyDetector()
    for t in range(W - 1):  # wild behaviour while training is learned, never flagged
        assert detector.observe(t, {1: period(cpu=1000 * (t % 2), hsm=50 * (t % 3))}) == []
        assert not detector.state(1).trained
    detector.observe(W - 1, {1: period()})
    state = detector.state(1)
    assert state.trained and state.features >= 3 and not state.flagged


def test_normal_noise_never_flags() -> None:
    detector, rng = trained()
    for t in range(W, W + 2000):
        assert detector.observe(t, {1: noisy(rng)}) == []


def test_one_odd_period_is_tolerated_a_persistent_deviation_is_not() -> None:
    detector, rng = trained()
    # one period of 65 units (about 8 sigma): evidence, but not enough to flag
    assert detector.observe(W, {1: period(cpu=65, sent={2: 1})}) == []
    assert 0 < detector.state(1).cusum < detector.config.threshold
    for t in range(W + 1, W + 10):  # back to normal: the evidence decays
        detector.observe(t, {1: noisy(rng)})
    assert detector.state(1).cusum == 0
    # the same deviation, every period: flagged within a few periods
    found = []
    for t in range(W + 10, W + 15):
        found += detector.observe(t, {1: period(cpu=65, sent={2: 1})})
    assert [d.tid for d in found] == [1]
    assert found[0].period > W + 10 and found[0].deviations[0].name == "cpu"


def test_a_peer_never_talked_to_is_judged_against_zero() -> None:
    detector, _ = trained()
    odd = period(cpu=40, sent={2: 1, 4: 3}, size=16)
    odd.ipc_bytes[4] = 384
    [found] = detector.observe(W, {1: odd})
    assert [d.name for d in found.deviations[:2]] == ["bytes:4", "sent:4"]
    assert "bytes:other=384 (expected 0.0" in found.explain(names={4: "other"})


def test_a_flagged_task_stays_flagged_until_reset() -> None:
    detector, rng = trained()
    assert detector.observe(W, {1: period(cpu=400)})
    assert detector.observe(W + 1, {1: period(cpu=400)}) == []  # reported once
    assert detector.state(1).flagged
    detector.reset(1, relearn=False)  # a reload of the same image: verdict cleared, model kept
    state = detector.state(1)
    assert state.trained and not state.flagged and state.cusum == 0
    assert detector.observe(W + 2, {1: noisy(rng)}) == []
    assert detector.observe(W + 3, {1: period(cpu=400)})  # hijacked again: caught at once
    detector.reset(1)  # an update: the model is learned afresh
    assert not detector.state(1).trained and detector.state(1).training_periods == 0


def test_slow_drift_is_followed_not_flagged() -> None:
    detector, rng = trained()
    for t in range(W, W + 200):  # CPU work doubles over 200 periods, messages stay
        grown = 1 + (t - W) / 200
        assert (
            detector.observe(t, {1: period(cpu=rng.gauss(40 * grown, 3 * grown), sent={2: 1})})
            == []
        )


def test_a_flooded_receiver_is_not_blamed_but_colluders_are() -> None:
    rng = random.Random(5)
    detector = AnomalyDetector()

    def normal() -> dict[int, Features]:
        return {
            1: period(cpu=rng.gauss(40, 3), sent={2: 1}),
            2: period(cpu=rng.gauss(20, 2), received={1: 1}),
        }

    for t in range(W):
        detector.observe(t, normal())
    # task 1 floods task 2, which works through the flood: only 1 is flagged
    flood = {1: period(cpu=40, sent={2: 20}), 2: period(cpu=80, received={1: 20})}
    assert [d.tid for d in detector.observe(W, flood)] == [1]
    assert detector.observe(W + 1, flood) == [] and detector.excused[2] == 2
    # two tasks flooding each other cannot excuse each other
    detector = AnomalyDetector()
    for t in range(W):
        detector.observe(t, normal())
    mutual = {
        1: period(cpu=40, sent={2: 20}, received={2: 20}),
        2: period(cpu=20, sent={1: 20}, received={1: 20}),
    }
    assert sorted(d.tid for d in detector.observe(W, mutual)) == [1, 2]


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="warmup"):
        DetectorConfig(warmup=1)
    with pytest.raises(ValueError, match="alpha"):
        DetectorConfig(alpha=1.5)
    assert DetectorConfig().variance_floor("sent:3", 0) == pytest.approx(0.25)
    assert DetectorConfig().variance_floor("cpu", 100) == pytest.approx(100)


# -- the traces -----------------------------------------------------------------------------------


def test_traces_are_labelled_and_reproducible() -> None:
    trace = generate("exfil", 7)
    again = generate("exfil", 7)
    assert trace.target is not None and trace.start is not None
    assert W + 5 <= trace.start <= len(trace.periods) - 6
    assert trace.names == dict(enumerate(TASKS, 1))
    assert [{t: feature_map(f) for t, f in p.items()} for p in trace.periods] == [
        {t: feature_map(f) for t, f in p.items()} for p in again.periods
    ]
    before = trace.periods[trace.start - 1][trace.target]
    after = trace.periods[trace.start][trace.target]
    assert sum(after.ipc_bytes.values()) > sum(before.ipc_bytes.values()) + 150


@pytest.mark.parametrize("kind", ATTACKS)
def test_each_attack_is_detected_quickly(kind: str) -> None:
    expected = {"exfil": ("bytes", "sent"), "busy": ("cpu",), "bruteforce": ("hsm", "hsm_fail")}
    for seed in range(5):
        trace = generate(kind, seed)
        found = run_detector(trace)
        assert found, f"{kind} seed {seed} not detected"
        hit = found[-1]
        assert hit.tid == trace.target and trace.start is not None
        assert 0 <= hit.period - trace.start < 5
        assert hit.deviations[0].name.split(":")[0] in expected[kind]


def test_drift_runs_are_not_flagged() -> None:
    flagged = sum(len(run_detector(generate("drift", seed))) for seed in range(20))
    assert flagged == 0


def test_null_hsm_answers_like_the_access_rules() -> None:
    hsm = NullHsm()

    async def run() -> list[Status]:
        return [
            (await hsm.run(*args)).status
            for args in [
                (1, Cmd.READ_CTX, 2),
                (1, Cmd.READ_CTX, 1),
                (1, Cmd.RESET, 1),
                (0, Cmd.RESET, 1),
                (1, Cmd.TASK_MAC, 0),
                (0, Cmd.TASK_MAC, 0),
                (1, Cmd.HMAC, 0),
                (0, Cmd.SET_ANOMALY, 1),
                (1, Cmd.TASK_MAC, 0),
                (0, Cmd.RESET, 1),
                (1, Cmd.TASK_MAC, 0),
                (1, 0x99, 0),
            ]
        ]

    assert asyncio.run(run()) == [
        Status.ERR_DENIED,
        Status.OK,
        Status.ERR_DENIED,
        Status.OK,
        Status.OK,
        Status.ERR_DENIED,
        Status.ERR_NO_KEY,
        Status.OK,
        Status.ERR_NOT_TRUSTED,
        Status.OK,
        Status.OK,
        Status.ERR_UNKNOWN_CMD,
    ]


# -- the evaluation -------------------------------------------------------------------------------


def test_eval_targets_met_on_fixed_seed_traces() -> None:
    """The figures of docs/anomaly.md (the informational stealthy kinds left out for time)."""
    began = time.perf_counter()
    report = evaluate(kinds=("normal", *ATTACKS, "drift"))
    assert report.failures() == [], report.render()
    assert report.results["normal"].monitored == 200 * (60 - W)
    for kind in ATTACKS:
        result = report.results[kind]
        assert result.runs == 100 and result.collateral == 0
        assert max(result.delays) <= 5
    assert time.perf_counter() - began < 60


def test_eval_report_names_missed_targets() -> None:
    slow = KindResult("exfil", runs=10, detected=9, late=1, delays=[1] * 9 + [7])
    noisy_ = KindResult("normal", runs=1, monitored=100, flagged=2)
    report = EvalReport(DetectorConfig(), 60, 1, {"exfil": slow, "normal": noisy_})
    failures = report.failures()
    assert len(failures) == 2 and "exfil: 90.0%" in failures[0] and "normal: 2.00%" in failures[1]
    assert "TARGETS MISSED" in report.render()
    assert json.loads(report.to_json())["passed"] is False


def test_cli_anomaly_eval_json() -> None:
    result = CliRunner().invoke(
        main, ["anomaly-eval", "--normal-runs", "4", "--attack-runs", "3", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["passed"] and data["results"]["exfil"]["runs"] == 3
    assert data["results"]["normal"]["monitored"] == 4 * (60 - W)
    assert {"delay_mean", "delay_p95", "delay_max", "detection_rate"} <= data["results"][
        "busy"
    ].keys()
    result = CliRunner().invoke(main, ["anomaly-eval", "--periods", "40", "--warmup", "30"])
    assert result.exit_code != 0 and "at least 41 periods" in result.output


# -- on the golden model --------------------------------------------------------------------------


async def _device(
    db: Path, kind: str, seed: int
) -> tuple[HsmModel, Manager, TaskSystem, Verifier, bytes]:
    """A provisioned golden-model HSM with the traced tasks installed (references from a
    verifier) and loaded: the same system :func:`generate` runs on :class:`NullHsm`.

    The HSM's own monitor (command budget per NEW_PERIOD, failure limit) is another layer with
    its own tests; it is off here, so that only the manager's detector acts.
    """
    model = HsmModel(len(TASKS), budget=0, fail_limit=0)
    kernel = Microkernel(HsmDriver(ModelTransport(ModelMailbox(model))), len(TASKS))
    manager = Manager(kernel)
    verifier = Verifier(db)
    record = verifier.register_device(contexts=len(TASKS), name="traced")
    await manager.provision(record.dev_id, record.root_key)
    system = TaskSystem(kernel, trace_rng(kind, seed))
    system.install()
    for task in kernel.tasks.values():
        package = verifier.register_task(record.dev_id, task.tid, task.name, task.image)
        verifier.confirm(record.dev_id, await manager.apply_update(package.auth, package.image))
    return model, manager, system, verifier, record.dev_id


def test_traces_on_the_golden_model_equal_the_fast_ones(tmp_path: Path) -> None:
    """The fast path is faithful: the same programs over the golden model count the same."""

    async def run() -> list[dict[int, dict[str, float]]]:
        _, manager, system, verifier, _ = await _device(tmp_path / "v.sqlite", "exfil", 3)
        with verifier:
            trace = await play(system, "exfil", seed=3)
        assert manager.kernel.driver.commands > 60  # every TASK_MAC went to the model
        return [{t: feature_map(f) for t, f in p.items()} for p in trace.periods]

    fast = generate("exfil", 3)
    assert asyncio.run(run()) == [{t: feature_map(f) for t, f in p.items()} for p in fast.periods]


def test_hijacked_task_on_the_golden_model_gets_anomaly_set(tmp_path: Path) -> None:
    """Real programs in the kernel over the golden model: the sensor is hijacked to exfiltrate
    to the logger (which works through the flood and is not blamed); the detector flags it,
    the manager sets ANOMALY in the HSM, attestation reports exactly it failed, its TASK_MAC
    is refused; a reload clears ANOMALY and the detector's verdict."""

    async def run() -> None:
        model, manager, system, verifier, dev_id = await _device(
            tmp_path / "v.sqlite", "normal", 11
        )
        with verifier:
            manager.watch(AnomalyDetector())
            for _ in range(W + 10):
                assert await manager.run_period() == []
            sensor = system.tids["sensor"]
            system.hijack("sensor", "exfil", peer="logger")
            flagged: list[int] = []
            delay = 0
            while not flagged and delay < 5:
                delay += 1
                flagged = await manager.run_period()
            assert flagged == [sensor] and delay <= 2
            assert model.context(sensor).anomaly and not model.context(sensor).ok
            status = await manager.port.status()
            assert status.anomaly == 1 << (sensor - 1)
            assert {d.tid for d in manager.detections} == {sensor}
            assert await manager.run_period() == []  # still hijacked: flagged once only
            port = manager.kernel._hsm_port(manager.kernel.task("sensor"))
            assert (await port.call(Cmd.TASK_MAC, 0, b"stolen")).status is Status.ERR_NOT_TRUSTED
            challenge = verifier.challenge(dev_id)
            report = verifier.verify(
                dev_id, challenge.nonce, await manager.attest(challenge.nonce, challenge.sel)
            )
            assert report.failed == [sensor]

            system.restore("sensor")
            await manager.reload("sensor")
            assert model.context(sensor).ok and not manager.flagged
            assert manager.detector is not None
            state = manager.detector.state(sensor)
            assert state.trained and not state.flagged
            for _ in range(5):
                assert await manager.run_period() == []
            assert Counter(d.tid for d in manager.detections) == {sensor: 1}

    asyncio.run(run())


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
    assert "ERR_NOT_TRUSTED" in step.detail


def test_demo_step_fails_if_nothing_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step passes only if the detector caught comms: a harmless "hijack" must fail it."""
    monkeypatch.setattr(demo, "exfiltrating", lambda genuine, *args: genuine)
    steps = _demo_steps(tmp_path)
    assert not steps[-2].passed and "not flagged within 5 periods" in steps[-2].detail
    assert steps[-1].passed  # and nothing else in the story changed
