"""Isolation between callers at the mailbox (docs/protocol.md section 9), on every backend.

Five attacks that worked before the mailbox had a holder - a LEN race that cut the manager's
MEASURE and key import short, a command silently not run, results read by the next caller, an
abort the RTL finished one poll late, an HMAC key evicted - each on the model, the RTL in
Amaranth and in Verilator, and the board design over its UART (uart-sim).  Then random
interleavings of the manager, honest tasks and hostile tasks, access by access: on the model
against the isolation properties (:func:`~mchsm.sim.isolation.check_isolation`), and on both RTL
simulators against the model, every access compared.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mchsm.constants import Cmd, Reg, Status
from mchsm.sim.amaranth_backend import run_on_amaranth
from mchsm.sim.backends import run_on_backend
from mchsm.sim.isolation import (
    HOSTILE_TASKS,
    Access,
    Interleaving,
    attacks_job,
    check_isolation,
    interleave_job,
)
from mchsm.sw.errors import MchsmError

BACKENDS = ["model", "amaranth", "verilator", "uart-sim"]
#: the manager, honest tasks 1 and 2, hostile tasks 3 and 4, an unknown caller 9; 8 contexts,
#: as the demo and the other Verilator tests have, so that the suite builds one core design
CONTEXTS = 8


@functools.cache
def attacks(backend: str) -> dict[str, Any]:
    return run_on_backend(backend, attacks_job, CONTEXTS).value


@pytest.mark.parametrize("backend", BACKENDS)
def test_len_race_cannot_change_what_the_manager_measures_or_imports(backend: str) -> None:
    r = attacks(backend)["len_race"]
    assert r["digest_is_whole_image"], "MEASURE hashed less than the whole image"
    assert not r["trusted"], "the image with a payload attests trusted"
    assert r["mac_under_whole_key"], "the imported key was cut short"
    assert r["taken_from_manager"] == [] and r["races"] > 300


@pytest.mark.parametrize("backend", BACKENDS)
def test_manager_commands_are_never_silenced(backend: str) -> None:
    r = attacks(backend)["silence"]
    # the manager's SET_ANOMALY ran - its own reply, no result - and ANOMALY is set, whether
    # the task's HASH was taking data or computing
    assert r["while_data"] == r["while_computing"] == ("OK", b"", True)
    # the task learns what became of its HASH: aborted, or ran with its result lost
    assert r["while_data_task"] == ("MailboxLostError", False)
    assert r["while_computing_task"] == ("MailboxLostError", True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_caller_reads_a_result_it_did_not_ask_for(backend: str) -> None:
    r = attacks(backend)["read_results"]
    assert r["peeks"] > 1000 and r["peeks_refused"] == r["peeks"]
    assert r["own_failure"] == "ERR_DENIED" and r["after_words"] == [0]
    assert r["leaked"] == []


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_abort_then_command_same_on_model_and_rtl(backend: str) -> None:
    assert attacks(backend)["abort"] == attacks("model")["abort"]
    seen = dict(attacks("model")["abort"])
    assert seen["4:Write@0x18"] == seen["0:Write@0x18"] == "refused"  # only the holder aborts


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_task_cannot_evict_the_managers_key(backend: str) -> None:
    assert attacks(backend)["evict_key"] == {"manager": True, "task": True, "task1_has_none": True}


# ---------------------------------------------------------------------------------------------
# Random interleavings
# ---------------------------------------------------------------------------------------------


def _model(seeds: list[int], hostile: int = 30) -> list[Interleaving]:
    job_args = {"seeds": seeds, "contexts": CONTEXTS, "hostile_accesses": hostile}
    return run_on_backend("model", interleave_job, CONTEXTS, job_args=job_args).value


@settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(first=st.integers(0, 2**31), hostile=st.integers(4, 40))
def test_model_interleavings_keep_callers_apart(first: int, hostile: int) -> None:
    """200 examples of 50 interleavings each: 10,000 on the model."""
    logs = _model(list(range(first, first + 50)), hostile)
    assert check_isolation(logs, CONTEXTS) == []


def test_isolation_check_bites() -> None:
    """A mailbox that let LEN be written by anyone, or that returned a result to a caller that
    does not hold it, is caught by the check."""
    logs = _model(list(range(20)))
    steered = dataclasses.replace
    for log in logs:
        for k, (caller, req, outcome) in enumerate(log.commands):
            if req.cmd == Cmd.HASH and outcome[:2] == ("ok", Status.OK):
                log.commands[k] = (caller, req, ("ok", Status.OK, bytes(32)))
                assert any("was steered" in p for p in check_isolation(logs, CONTEXTS))
                log.commands[k] = (caller, req, outcome)
                break
    assert check_isolation(logs, CONTEXTS) == []
    leak = next(
        a
        for log in logs
        for a in log.accesses
        if a.addr >= Reg.RESULT and a.outcome == "refused" and a.caller in HOSTILE_TASKS
    )
    leaked = steered(leak, outcome=12345)
    log = Interleaving(accesses=[leaked])
    assert any("read private" in p for p in check_isolation([log], CONTEXTS))


def _compare(backend: str, seeds: list[int], hostile: int, commands: int) -> None:
    job_args = {
        "seeds": seeds,
        "contexts": CONTEXTS,
        "hostile_accesses": hostile,
        "commands": commands,
    }
    model = run_on_backend("model", interleave_job, CONTEXTS, job_args=job_args).value
    rtl = run_on_backend(backend, interleave_job, CONTEXTS, job_args=job_args).value
    assert check_isolation(model, CONTEXTS) == []
    for seed, m, r in zip(seeds, model, rtl, strict=True):
        for k, (a, b) in enumerate(zip(m.accesses, r.accesses, strict=True)):
            assert a == b, f"seed {seed}, access {k}: model {a}, {backend} {b}"
        assert m.commands == r.commands, f"seed {seed}"
    assert model[-1].final == rtl[-1].final
    ran = sum(o[0] == "ok" for m in model for _, _, o in m.commands)
    assert ran > 3 * len(seeds)  # the honest callers did get their commands through


@pytest.mark.parametrize("part", range(4))
def test_amaranth_interleavings_same_as_model(part: int) -> None:
    """200 short interleavings in 4 parts (so that they spread over the workers): Amaranth's
    simulator runs this core at some 15,000 cycles a second."""
    _compare("amaranth", list(range(1000 + 50 * part, 1050 + 50 * part)), 12, 2)


def test_verilator_interleavings_same_as_model() -> None:
    _compare("verilator", list(range(2000, 2250)), 30, 4)


def test_access_records_compare_outcomes_not_the_models_holder() -> None:
    a = Access(1, Reg.STATUS, None, 0x800, holder=2)
    assert a == Access(1, Reg.STATUS, None, 0x800) != Access(1, Reg.STATUS, None, 0)


def _without_race_counts(result: dict[str, Any]) -> dict[str, Any]:
    out = dict(result)
    out["len_race"] = {k: v for k, v in result["len_race"].items() if k != "races"}
    return out


@pytest.mark.parametrize("flaw", ["len_unowned", "result_unowned", "stale_results", "abort_early"])
def test_attacks_catch_a_flawed_mailbox(flaw: str) -> None:
    """The attack tests bite: with one mailbox rule broken (rtl/mailbox.py ``FLAWS``) the RTL
    gives away something the model does not, or the manager's command fails outright.
    (``preempt_running`` shows only in timing: that is the formal proofs' part.)"""
    try:
        flawed = run_on_amaranth(attacks_job, CONTEXTS, flaws=frozenset({flaw})).result
    except MchsmError:
        return  # e.g. the manager's RESET got ERR_LENGTH: a task changed its LEN
    assert _without_race_counts(flawed) != _without_race_counts(attacks("model"))


@pytest.mark.parametrize("flaw", ["len_unowned", "result_unowned"])
def test_interleavings_catch_a_flawed_mailbox(flaw: str) -> None:
    """The random interleavings bite too: a hostile task's access that the model refuses is
    taken by the flawed RTL within a few interleavings."""
    job_args = {"seeds": list(range(3000, 3005)), "contexts": CONTEXTS, "commands": 2}
    model = run_on_backend("model", interleave_job, CONTEXTS, job_args=job_args).value

    async def job(driver: Any) -> list[Interleaving]:
        return await interleave_job(driver, **job_args)  # type: ignore[arg-type]  # the values are of the right types

    rtl = run_on_amaranth(job, CONTEXTS, flaws=frozenset({flaw})).result
    assert any(m.accesses != r.accesses for m, r in zip(model, rtl, strict=True))
