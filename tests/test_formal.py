"""The formal proofs of the RTL (rtl/formal.py) and their runner, in the quick subset.

``make formal`` runs every property and every broken variant (60 jobs; their times are in
docs/proofs.md); here the quick subset runs - the SHA-256 engine's handshake, the Wishbone
rules, the monitor's counters and STATUS's progress bound - each with the broken variant it
must reject, and the runner's verdicts and traces are checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from amaranth.back import rtlil
from click.testing import CliRunner

from mchsm.cli import main
from mchsm.rtl import formal
from mchsm.rtl.core import CORE_FLAWS, MchsmCore
from mchsm.rtl.mailbox import FLAWS
from mchsm.rtl.sha256 import SHA256
from mchsm.rtl.sha_contract import AbstractSHA256
from mchsm.rtl.symbiyosys import Outcome, run_jobs, table


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Outcome], Path]:
    work = tmp_path_factory.mktemp("formal")
    vcd = work / "vcd"
    outcomes = run_jobs(formal.jobs(fast=True), work, vcd_dir=vcd, report=lambda _: None)
    return outcomes, vcd


def test_fast_subset_proves_and_rejects(fast_run: tuple[list[Outcome], Path]) -> None:
    outcomes, _ = fast_run
    assert {o.job.name for o in outcomes} >= {"wishbone", "wishbone/ack_without_stb"}
    broken = [o for o in outcomes if o.job.flaw]
    assert broken, "the quick subset must include a broken variant"
    problems = [(o.job.name, o.status, o.detail) for o in outcomes if not o.ok]
    assert problems == []
    assert all(o.status == "FAIL" for o in broken)
    assert all(o.status == "PASS" for o in outcomes if o.job.flaw is None)


def test_counterexamples_are_kept_as_vcd(fast_run: tuple[list[Outcome], Path]) -> None:
    outcomes, vcd = fast_run
    for o in outcomes:
        if o.job.flaw:
            assert o.trace is not None and o.trace.parent == vcd
            text = o.trace.read_text()
            assert ("$enddefinitions" in text and "bus__ack" in text) or "sha" in text


def test_table_names_engine_depth_and_result(fast_run: tuple[list[Outcome], Path]) -> None:
    outcomes, _ = fast_run
    text = table(outcomes)
    assert "| wishbone | clean | smtbmc yices | unbounded (k=4) |" in text
    assert "rejected (counterexample)" in text


def test_a_broken_variant_that_passes_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """`mchsm formal` exits non-zero when a broken variant is not rejected."""
    job = formal.jobs(["wishbone"])[1]
    assert job.flaw == "ack_without_stb"

    def fake_run(jobs: list[formal.Job], *args: object, **kw: object) -> list[Outcome]:
        return [Outcome(j, "PASS", 0.1, "", None) for j in jobs]

    monkeypatch.setattr("mchsm.rtl.symbiyosys.run_jobs", fake_run)
    result = CliRunner().invoke(main, ["formal", "--only", "wishbone"])
    assert result.exit_code == 1
    assert "unexpected result(s): wishbone/ack_without_stb" in result.output
    assert "PASS (expected FAIL)" in result.output


def test_cli_lists_properties_and_refuses_unknown_ones() -> None:
    runner = CliRunner()
    listed = runner.invoke(main, ["formal", "--list"])
    assert listed.exit_code == 0
    for prop in formal.PROPERTIES:
        assert prop.name in listed.output
    bad = runner.invoke(main, ["formal", "--only", "nosuch"])
    assert bad.exit_code != 0
    assert "properties must be among" in bad.output and "Traceback" not in bad.output


def test_every_flaw_is_rejected_by_some_property() -> None:
    used = {flaw for prop in formal.PROPERTIES for flaw in prop.flaws}
    assert set(CORE_FLAWS) | set(FLAWS) <= used
    assert "preempt_running" in used


def test_flaws_are_off_by_default_and_change_the_design() -> None:
    default = rtlil.convert(MchsmCore(2))
    assert default == rtlil.convert(MchsmCore(2, flaws=frozenset()))
    for flaw in (*CORE_FLAWS, *FLAWS):
        assert rtlil.convert(MchsmCore(2, flaws=frozenset({flaw}))) != default, flaw
    with pytest.raises(ValueError, match="flaws must be among"):
        MchsmCore(2, flaws=frozenset({"nosuch"}))


def test_the_abstract_engine_has_every_port_of_the_real_one() -> None:
    """The proofs put AbstractSHA256 where the core's SHA256 goes: the same port list is written
    in both classes, so a port added to the engine and not to its stand-in must fail here."""
    engines = SHA256(), AbstractSHA256()
    for elaboratable in (*engines, engines[1].protocol):
        elaboratable._MustUse__silence = True  # only the signatures are looked at
    real, stand_in = (
        {p: (m.flow, m.shape) for p, m in e.signature.members.flatten() if m.is_port}
        for e in engines
    )
    assert real == {path: stand_in[path] for path in real if path in stand_in}
    assert ("msg", "payload") in real  # the message stream is a stream.Signature


def test_mac_words_follow_the_result_layouts() -> None:
    assert list(formal.MAC_WORDS[formal.Cmd.ATTEST]) == list(range(3, 11))
    assert list(formal.MAC_WORDS[formal.Cmd.UPDATE]) == list(range(1, 9))
    assert list(formal.MAC_WORDS[formal.Cmd.HMAC]) == list(range(8))


def test_progress_runs_name_every_command() -> None:
    """Every command has its progress run (with a bound and a broken variant), PROVISION
    included; the docs give each bound."""
    runs = {p.name for p in formal.PROPERTIES if p.name.startswith("progress_")}
    missing = {cmd for cmd in formal.Cmd if f"progress_{cmd.name.lower()}" not in runs}
    assert missing == set()
    for prop in formal.PROPERTIES:
        if prop.name.startswith("progress_") and prop.name != "progress_cover":
            assert prop.flaws == ("done_late",)
            assert prop.depth > prop.params["bound"]
    text = (Path(__file__).parent.parent / "docs" / "proofs.md").read_text()
    for cmd, bound in formal.PROGRESS_BOUND.items():
        assert f"{cmd.name} {bound}" in text, cmd


def test_flip_split_is_rejected_by_a_run_from_the_start_state() -> None:
    (prop,) = [p for p in formal.PROPERTIES if p.name == "atomic_update"]
    (variant,) = prop.variants
    assert variant.flaw == "flip_split" and variant.mode == "bmc"
    assert variant.params["script"] == formal.UPDATE_SCRIPT


def _solvers_below(pid: int) -> list[int]:
    """The yices processes among ``pid``'s descendants."""
    from mchsm.rtl.symbiyosys import _descendants

    found = []
    for child in _descendants(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"yices" in cmd:
            found.append(child)
    return found


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie waiting for its reaper has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_stop_ends_the_solvers_at_once(tmp_path: Path) -> None:
    """SIGTERM while two jobs run their solvers: `mchsm formal --jobs 2` ends them within
    seconds (not when a job ends, minutes later), prints one line and exits non-zero."""
    import signal
    import subprocess
    import sys
    import time

    mchsm = str(Path(sys.executable).parent / "mchsm")
    args = ["formal", "--jobs", "2", "--only", "progress_task_mac", "--work", str(tmp_path)]
    proc = subprocess.Popen(
        [mchsm, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(_solvers_below(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        solvers = _solvers_below(proc.pid)
        assert len(solvers) == 2, "both jobs should have reached their solvers"
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        out, err = proc.communicate(timeout=60)
        assert time.monotonic() - stopped < 15
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    *progress, last = err.strip().splitlines()
    assert all(line.endswith(" ...") or "running:" in line for line in progress), progress
    assert last.startswith("mchsm formal: stopped: 0 of 2 jobs had finished")
    assert "Traceback" not in err and "UNEXPECTED" not in err and out == ""
    assert not [pid for pid in solvers if _alive(pid)]


def test_a_stopped_run_starts_no_solver(tmp_path: Path) -> None:
    """A job that finishes elaborating after the stop starts no SymbiYosys process."""
    from mchsm.rtl import symbiyosys

    symbiyosys._STOPPING.set()
    try:
        outcome = symbiyosys.run_job(formal.jobs(["wishbone"])[0], tmp_path)
    finally:
        symbiyosys._STOPPING.clear()
    assert outcome.status == "ERROR" and outcome.detail == "stopped before it started"
    assert not (tmp_path / "wishbone" / "job.sby").exists()


def test_the_costliest_jobs_start_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With several solvers at a time, a long job that started last would end the run late:
    the runner starts the deepest first (PROVISION's progress runs) and still reports the
    outcomes in the order of the jobs."""
    from mchsm.rtl import symbiyosys

    started: list[str] = []

    def fake_run_job(job: formal.Job, *args: object, **kw: object) -> Outcome:
        started.append(job.name)
        return Outcome(job, job.expect, 0.0, "", None)

    monkeypatch.setattr(symbiyosys, "run_job", fake_run_job)
    todo = formal.jobs()
    outcomes = run_jobs(todo, tmp_path, report=lambda _: None)
    assert started[:2] == ["progress_provision", "progress_provision/done_late"]
    assert [o.job.name for o in outcomes] == [j.name for j in todo]
    assert symbiyosys.cost(todo[0]) < symbiyosys.cost(formal.jobs(["key_secrecy_hmac"])[0])
