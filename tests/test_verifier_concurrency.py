"""Several verifier processes on one store: races on a nonce, counters, and ``kill -9``.

Each test forks real processes, each with its own connection, against a SQLite file and against
a PostgreSQL database (``verifier_support``).  They are kept to a few seconds each; longer runs
belong in the bench.
"""

# ruff: noqa: F811  (the store fixtures are imported from verifier_support and then used)
from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sqlite3
import time
from typing import Any

import pytest
from verifier_support import (  # noqa: F401  (fixtures)
    Device,
    Registry,
    pg_server,
    provisioned,
    registry,
)

from mchsm.sw.errors import AttestationError
from mchsm.sw.verifier import AttestationReport

#: races per test: each is one nonce presented by every process at the same instant
ROUNDS = 100
PROCESSES = 3

_fork = multiprocessing.get_context("fork")


def _racer(
    registry: Registry,
    rounds: list[list[tuple[bytes, bytes, bytes]]],
    barrier: Any,
    seed: int,
    out: Any,
) -> None:
    """Verify each round's attempts, in an order of its own, after all racers are ready."""
    rng = random.Random(seed)
    accepted: list[bytes] = []
    with registry.open() as v:
        for attempts in rounds:
            mine = attempts[:]
            rng.shuffle(mine)
            barrier.wait()
            for (_, nonce, _), result in zip(mine, v.verify_many(mine), strict=True):
                if isinstance(result, AttestationReport):
                    accepted.append(nonce)
                elif "already used" not in str(result) and "not above" not in str(result):
                    raise result
    out.put(accepted)


def test_racing_processes_accept_each_nonce_once_and_counters_only_rise(
    registry: Registry,
) -> None:
    with registry.open() as v:
        dev = provisioned(v)
        dev_id = dev.record.dev_id
        rounds = []
        for _ in range(ROUNDS):
            first, second = v.challenge(dev_id), v.challenge(dev_id)
            # two answers per round: ctr c and c + 1; whoever presents c + 1 first makes c stale
            rounds.append(
                [
                    (dev_id, first.nonce, dev.attest(first).pack()),
                    (dev_id, second.nonce, dev.attest(second).pack()),
                ]
            )
    barrier, out = _fork.Barrier(PROCESSES), _fork.Queue()
    procs = [
        _fork.Process(target=_racer, args=(registry, rounds, barrier, seed, out))
        for seed in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    accepted = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    every = [n for per_process in accepted for n in per_process]
    assert len(every) == len(set(every)), "a nonce was accepted twice"
    seconds = {r[1][1] for r in rounds}
    assert seconds <= set(every), "the higher answer of a round must always be accepted once"
    assert sum(1 for p in accepted if p) >= 2, "the races had more than one winner overall"
    # the counters accepted, in commit order, only ever rise, and the registry holds the last
    with registry.open() as v:
        log = [e for e in v.audit(dev_id) if e.kind == "attest" and e.outcome == "trusted"]
        ctrs = [e.detail["ctr"] for e in log]
        assert ctrs == sorted(ctrs) and len(set(ctrs)) == len(ctrs)
        assert len(log) == len(every)
        row = v.store.read(lambda s: s.device(dev_id))
        assert row is not None and row.last_ctr == ctrs[-1] == 2 * ROUNDS
        rejected = [e for e in v.audit(dev_id) if e.outcome == "rejected"]
        assert len(rejected) == ROUNDS * 2 * PROCESSES - len(every)


def _batches(v: Any, devices: list[Device], count: int, size: int) -> list[list[Any]]:
    out = []
    for _ in range(count):
        batch = []
        for _ in range(size):
            dev = random.choice(devices)
            c = v.challenge(dev.record.dev_id)
            batch.append((dev.record.dev_id, c.nonce, dev.attest(c).pack()))
        out.append(batch)
    return out


def _batch_worker(registry: Registry, batches: list[list[Any]], conn: Any) -> None:
    with registry.open() as v:
        for i, batch in enumerate(batches):
            results = v.verify_many(batch)
            # only after the commit has returned; -1 if the batch was not what was expected
            conn.send(i if all(isinstance(r, AttestationReport) for r in results) else -1)
    conn.send(None)


def test_kill_9_mid_batch_loses_nothing_and_accepts_nothing_twice(registry: Registry) -> None:
    """A verifier process killed with SIGKILL at random moments, mostly inside a batch: every
    batch it reported is in the store whole, every other batch is either whole or absent, the
    counters match the log, and presenting every attempt again accepts exactly the ones that
    had not been consumed."""
    rng = random.Random(7)
    with registry.open() as v:
        devices = [provisioned(v, tasks={1: ("t", b"img")}) for _ in range(6)]
        batches = _batches(v, devices, 16, 30)
    done: set[int] = set()
    start = 0
    kills = 0
    while start < len(batches) and kills < 4:
        parent, child = _fork.Pipe()
        proc = _fork.Process(target=_batch_worker, args=(registry, batches[start:], child))
        proc.start()
        reported: list[int] = []
        wanted = rng.randint(1, 3)
        finished = False
        while len(reported) < wanted:
            if not parent.poll(60):
                raise AssertionError("the verifier process stalled")
            got = parent.recv()
            if got is None:
                finished = True
                break
            assert got >= 0, "a batch the killed process had not committed was rejected"
            reported.append(start + got)
        time.sleep(rng.uniform(0.0, 0.02))  # somewhere in the next batch, usually
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        while parent.poll():
            got = parent.recv()
            if got is None:
                finished = True
            else:
                reported.append(start + got)
        # killed, or it had verified every batch just before the signal
        assert proc.exitcode == -signal.SIGKILL or (finished and proc.exitcode == 0)
        kills += 1
        done |= set(reported)
        _check_consistent(registry, batches, done, devices)
        # go on from the first batch not in the store (the killed one may have committed
        # a batch it never got to report)
        consumed = _consumed(registry, batches)
        start = next((i for i, b in enumerate(batches) if b[0][1] not in consumed), len(batches))
    # everything again, from a fresh process: only what was never consumed is accepted now
    with registry.open() as v:
        consumed = _consumed(registry, batches)
        for i, batch in enumerate(batches):
            results = v.verify_many(batch)
            for (_, nonce, _), result in zip(batch, results, strict=True):
                if nonce in consumed:
                    assert isinstance(result, AttestationError), (i, result)
                    assert "already used" in str(result)
                else:
                    assert isinstance(result, AttestationReport), (i, result)
    trusted = registry.sql("SELECT detail FROM audit WHERE kind = 'attest' AND outcome = 'trusted'")
    assert len(trusted) == sum(len(b) for b in batches)  # each attempt accepted exactly once
    if registry.kind == "sqlite":
        conn = sqlite3.connect(registry.db)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()


def _consumed(registry: Registry, batches: list[list[Any]]) -> set[bytes]:
    wanted = {n for b in batches for _, n, _ in b}
    return {bytes(r[0]) for r in registry.sql("SELECT nonce FROM nonces WHERE used = 1")} & wanted


def _check_consistent(
    registry: Registry, batches: list[list[Any]], done: set[int], devices: list[Device]
) -> None:
    consumed = _consumed(registry, batches)
    logged = [
        r[0] for r in registry.sql("SELECT detail FROM audit WHERE kind = 'attest' ORDER BY id")
    ]
    nonces_logged = [json.loads(d)["nonce"] for d in logged]
    assert len(nonces_logged) == len(set(nonces_logged)), "an attempt was logged twice"
    for i, batch in enumerate(batches):
        mine = {n for _, n, _ in batch}
        inside = mine & consumed
        assert inside in (set(), mine), f"batch {i} is in the store in part"
        if i in done:
            assert inside == mine, f"batch {i} was reported verified but is not in the store"
        in_log = {n.hex() for n in mine} & set(nonces_logged)
        assert len(in_log) == len(inside), f"batch {i}: audit rows and nonces disagree"
    for dev in devices:
        rows = registry.sql(
            "SELECT detail FROM audit WHERE kind = 'attest' AND dev_id = ? ORDER BY id",
            (dev.record.dev_id,),
        )
        accepted = [json.loads(r[0])["ctr"] for r in rows]
        (last,) = registry.sql(
            "SELECT last_ctr FROM counters WHERE dev_id = ?", (dev.record.dev_id,)
        )[0]
        assert last == (accepted[-1] if accepted else 0)
        assert accepted == sorted(accepted)


def test_a_counter_another_verifier_moved_reruns_the_batch(registry: Registry) -> None:
    """PostgreSQL holds no lock on a counter while a batch computes; the compare-and-set that
    writes it back finds the counter another verifier moved meanwhile, and the batch is run
    again against the new value.  (SQLite's write lock makes the race impossible there.)"""
    if registry.kind != "postgresql":
        pytest.skip("SQLite holds its write lock for the whole batch: the race cannot happen")
    with registry.open() as a, registry.open() as b:
        dev = provisioned(a)
        d = dev.record.dev_id
        first, second = a.challenge(d), a.challenge(d)
        early, late = dev.attest(first), dev.attest(second)  # ctr 1, ctr 2
        real = b.store.set_counters
        raced: list[int] = []

        def racing(rows: list[tuple[int, bytes, int]]) -> None:
            if not raced:  # between b's read of the counter and its write: a accepts ctr 2
                raced.append(a.verify(d, second.nonce, late).ctr)
            real(rows)

        b.store.set_counters = racing  # type: ignore[method-assign]  # the race, planted
        with pytest.raises(AttestationError, match="counter 1 is not above the last accepted 2"):
            b.verify(d, first.nonce, early)
        assert raced == [2]
        assert registry.sql("SELECT last_ctr FROM counters WHERE dev_id = ?", (d,)) == [(2,)]
        outcomes = [e.outcome for e in a.audit(d) if e.kind == "attest"]
        assert outcomes == ["trusted", "rejected"]  # the rerun batch left one row, not two
