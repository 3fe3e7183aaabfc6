"""Behaviour profiles: derivation from a trace, the canonical format, the image trailer, and
the manager believing a profile only from an image the HSM says is the authorised one."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import driver_on

from mchsm.cli import main
from mchsm.constants import PROFILE_MAGIC, Cmd, Status
from mchsm.sw.anomaly import AnomalyDetector
from mchsm.sw.kernel import Features, Microkernel, TaskApi
from mchsm.sw.manager import Manager
from mchsm.sw.model import HsmModel
from mchsm.sw.profile import (
    Profile,
    ProfileError,
    RecordedTrace,
    derive,
    embed,
    named_features,
    split_image,
)
from mchsm.sw.traces import NullHsm, run_sync
from mchsm.sw.verifier import Verifier


def rig(n: int = 1500, seed: int = 0) -> list[dict[str, float]]:
    """A task that sends one 16-byte message per interrupt, works 40 + 3 per interrupt, flushes
    every 7 periods (two writes) and MACs once a period, three times now and then."""
    rng = random.Random(seed)
    out = []
    for t in range(n):
        irq = rng.choice((1, 1, 1, 2, 3))
        macs = 3 if rng.random() < 0.1 else 1
        out.append(
            {
                "recv:irq": irq,
                "cpu": rng.gauss(40 + 3 * irq, 2),
                "sent:b": irq,
                "bytes:b": 16 * irq,
                "sys:write": 2.0 if t % 7 == 6 else 0.0,
                "hsm:TASK_MAC": macs,
            }
        )
    return out


@pytest.fixture(scope="module")
def profile() -> Profile:
    return derive("a", rig())


def test_derive_finds_what_inputs_explain_and_the_periodic_phase(profile: Profile) -> None:
    sent = profile.features["sent:b"]
    assert sent.coef == {"recv:irq": pytest.approx(1.0)}
    assert sent.intercept == pytest.approx(0, abs=1e-6)
    assert profile.features["bytes:b"].coef == {"recv:irq": pytest.approx(16.0)}
    cpu = profile.features["cpu"]
    assert cpu.coef["recv:irq"] == pytest.approx(3.0, abs=0.3) and cpu.sd == pytest.approx(2, 0.2)
    write = profile.features["sys:write"]
    assert len(write.phase) == 7 and write.predict({}, 6) == pytest.approx(2.0)
    assert write.predict({}, 13) == pytest.approx(2.0) and write.predict({}, 3) == pytest.approx(0)
    # deterministic features are judged with their floor: one extra message is 3.3 sd
    assert sent.sd == pytest.approx(0.3) and profile.features["bytes:b"].sd == pytest.approx(1.6)
    # the heavy tail of TASK_MAC (reports) gives a smaller theta, so a larger threshold
    assert profile.features["hsm:TASK_MAC"].theta < cpu.theta <= 2.0
    assert profile.budget_period == {"TASK_MAC": 6} and profile.budget_window["TASK_MAC"] > 16
    assert profile.inputs == {"recv:irq": 3}
    assert [n for n, _, _ in cpu.blocks] == [8, 32]


def test_the_format_is_canonical_and_round_trips(profile: Profile) -> None:
    data = profile.to_json()
    again = Profile.from_json(data)
    assert again.to_json() == data and again.features.keys() == profile.features.keys()
    assert b" " not in data and json.loads(data)["format"] == "mchsm-profile/1"
    assert again.budget().per_period == {"TASK_MAC": 6}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d["features"].pop("cpu"), "models cpu"),
        (lambda d: d["features"]["cpu"].update(sd=-1), "positive"),
        (lambda d: d["features"]["cpu"].update(sd=float("nan")), "finite"),
        (lambda d: d["features"]["cpu"].update(b={"cpu": 1}), "not an input"),
        (lambda d: d["features"].update({"recv:b": d["features"]["cpu"]}), "is an input"),
        (lambda d: d["features"]["cpu"].pop("theta"), "no 'theta'"),
        (lambda d: d["features"]["cpu"].update(rare=2), "rate below 1"),
        (lambda d: d["budget"]["kinds"].update(HASH=[1]), "per window"),
        (lambda d: d["budget"]["kinds"].update(HASH=[-1, 2]), "count"),
        (lambda d: d.update(k=4.0), "clip must be larger"),
        (lambda d: d.update(task=""), "name"),
    ],
)
def test_malformed_profiles_are_refused_with_a_reason(
    profile: Profile, change: Callable[[dict[str, Any]], object], message: str
) -> None:
    doc = json.loads(profile.to_json())
    change(doc)
    with pytest.raises(ProfileError, match=message):
        Profile.from_json(json.dumps(doc))
    with pytest.raises(ProfileError, match="JSON"):
        Profile.from_json(b"{not json")


def test_the_image_carries_the_profile_and_its_reference_covers_it(profile: Profile) -> None:
    code = b"task code " * 50
    image = embed(code, profile)
    assert image.startswith(code) and image.endswith(PROFILE_MAGIC)
    assert split_image(image) == (code, Profile.from_json(profile.to_json()))
    assert split_image(code) == (code, None)
    assert embed(image, profile) == image  # re-embedding replaces, never stacks
    bad_length = image[:-12] + (10**6).to_bytes(4, "big") + PROFILE_MAGIC
    with pytest.raises(ProfileError, match="claims"):
        split_image(bad_length)
    broken = bytearray(image)
    broken[len(code) + 2] ^= 0xFF  # the profile's JSON no longer parses
    with pytest.raises(ProfileError):
        split_image(bytes(broken))
    with pytest.raises(ProfileError, match="cut short"):
        split_image(PROFILE_MAGIC)
    with pytest.raises(ProfileError, match="JSON"):  # nesting that would blow the stack
        Profile.from_json("[" * 60000)
    with pytest.raises(ProfileError, match="at most"):
        Profile.from_json(b" " * 70000)


def test_named_features_name_peers_and_count_hsm_by_kind() -> None:
    f = Features(cpu=7, hsm_commands=2, hsm_failures=1, irqs=2)
    f.ipc_sent[2] = 1
    f.ipc_bytes[2] = 16
    f.ipc_received[3] = 2
    f.ipc_received[4] = 1
    f.syscalls.update({"send": 1, "hsm": 2})
    f.hsm_kinds["TASK_MAC"] = 2
    f.hsm_refused["HASH"] = 1
    assert named_features(f, {2: "control", 3: "comms"}) == {
        "cpu": 7,
        "sent:control": 1,
        "bytes:control": 16,
        "recv:comms": 2,
        "recv:task4": 1,
        "recv:all": 3,
        "recv:irq": 2,
        "sys:send": 1,
        "hsm:TASK_MAC": 2,
        "refused:HASH": 1,
        "hsm_fail": 1,
    }


def test_derive_needs_a_trace() -> None:
    with pytest.raises(ProfileError, match="at least 8"):
        derive("a", rig(5))


# -- the manager believes a profile only from the authorised image --------------------------------


async def _device(tmp: Path, images: dict[str, bytes]) -> tuple[HsmModel, Manager, Verifier]:
    model = HsmModel(2, budget=0, fail_limit=0)
    kernel = Microkernel(driver_on(model), 2)
    manager = Manager(kernel)
    verifier = Verifier(tmp / "v.sqlite")
    record = verifier.register_device(contexts=2, name="profiled")
    await manager.provision(record.dev_id, record.root_key)

    async def worker(api: TaskApi) -> None:
        api.compute(10)
        await api.hsm.task_mac(b"telemetry")

    for name, image in images.items():
        task = kernel.create_task(name, image, worker)
        package = verifier.register_task(record.dev_id, task.tid, name, image)
        verifier.confirm(record.dev_id, await manager.apply_update(package.auth, package.image))
    return model, manager, verifier


def _worker_profile(macs: int) -> Profile:
    """The worker's profile from a rig run (with ``macs`` TASK_MACs a period)."""

    async def worker(api: TaskApi) -> None:
        api.compute(10)
        for _ in range(macs):
            await api.hsm.task_mac(b"telemetry")

    async def record() -> RecordedTrace:
        kernel = Microkernel(NullHsm(), 1)
        kernel.create_task("worker", b"rig", worker)
        await kernel.load_all()
        return RecordedTrace.record({1: "worker"}, [await kernel.run_period() for _ in range(50)])

    return derive("worker", run_sync(record()).series("worker"))


def test_manager_adopts_a_profile_only_from_the_authorised_image(tmp_path: Path) -> None:
    strict, lax = _worker_profile(1), _worker_profile(20)
    genuine = embed(b"worker code " * 40, strict)

    async def run() -> None:
        model, manager, verifier = await _device(tmp_path, {"worker": genuine})
        with verifier:
            detector = AnomalyDetector()
            await manager.watch(detector)
            adopted = detector.profile(1)
            assert adopted is not None and adopted.to_json() == strict.to_json()
            assert detector.state(1).bound and manager.kernel.task(1).budget == strict.budget()
            for _ in range(5):
                assert await manager.run_period() == []
            # flash rewritten with the same code and a permissive profile: not authorised
            manager.kernel.install("worker", embed(b"worker code " * 40, lax))
            await manager.reload("worker")
            assert not model.context(1).ok
            assert detector.profile(1) is adopted  # the last verified profile stays
            assert manager.kernel.task(1).budget == strict.budget()
            assert "does not match its reference" in manager.unverified[1]

    asyncio.run(run())


def test_a_task_over_its_profile_budget_is_refused_and_flagged(tmp_path: Path) -> None:
    async def run() -> None:
        model, manager, verifier = await _device(
            tmp_path, {"worker": embed(b"w" * 300, _worker_profile(1))}
        )
        with verifier:
            await manager.watch(AnomalyDetector())
            assert await manager.run_period() == []
            task = manager.kernel.task("worker")
            original = task.program
            assert original is not None

            async def hashing(api: TaskApi) -> None:
                await original(api)
                assert (await api.hsm.call(Cmd.HASH, 0, b"x")).status is Status.ERR_DENIED

            task.program = hashing
            assert await manager.run_period() == [1]
            assert model.context(1).anomaly
            assert manager.detections[-1].reason == "budget"
            assert "refused:HASH" in manager.detections[-1].explain()

    asyncio.run(run())


# -- the tools ------------------------------------------------------------------------------------


def test_cli_trace_profile_embed_show_check(tmp_path: Path) -> None:
    runner = CliRunner()
    trace = tmp_path / "rig.json"
    result = runner.invoke(
        main, ["anomaly", "trace", "--out", str(trace), "--periods", "600", "--seed", "t1"]
    )
    assert result.exit_code == 0, result.output
    assert len(RecordedTrace.from_json(trace.read_bytes()).periods) == 600
    result = runner.invoke(main, ["anomaly", "profile", str(trace), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "profile of 'sensor'" in result.output and "recv:irq" in result.output
    profiles = sorted((tmp_path / "p").glob("*.profile.json"))
    assert len(profiles) == 5
    # a fresh normal trace is within the profiles; an attacked one is not
    normal = tmp_path / "normal.json"
    runner.invoke(main, ["anomaly", "trace", "--out", str(normal), "--periods", "300"])
    result = runner.invoke(main, ["anomaly", "check", str(normal), *map(str, profiles)])
    assert result.exit_code == 0, result.output
    assert "0 flag(s): every task within its profile" in result.output
    attacked = tmp_path / "attacked.json"
    attack = ["--attack", "exfil", "--target", "control", "--start", "40"]
    runner.invoke(main, ["anomaly", "trace", "--out", str(attacked), "--periods", "100", *attack])
    result = runner.invoke(main, ["anomaly", "check", str(attacked), *map(str, profiles)])
    assert result.exit_code == 1
    assert "period    40  control    new" in result.output
    # the image tools
    image = tmp_path / "image.bin"
    image.write_bytes(b"code" * 100)
    bound = tmp_path / "bound.bin"
    result = runner.invoke(
        main, ["anomaly", "embed", str(image), str(profiles[0]), "--out", str(bound)]
    )
    assert result.exit_code == 0 and "reference" in result.output
    result = runner.invoke(main, ["anomaly", "show", str(bound)])
    assert result.exit_code == 0 and "profile of 'comms'" in result.output
    # bad input: one line, no traceback
    result = runner.invoke(main, ["anomaly", "show", str(image)])
    assert result.exit_code != 0 and "carries no profile" in result.output
    assert "Traceback" not in result.output
    (tmp_path / "bad.json").write_text("{}")
    result = runner.invoke(main, ["anomaly", "check", str(tmp_path / "bad.json"), str(bound)])
    assert result.exit_code != 0 and "not a trace" in result.output
