"""Verifier throughput: attestation verifications per second on one core, by fleet size.

Every verification is the real thing: :meth:`Verifier.verify` (one transaction each) or
:meth:`Verifier.verify_many` (one transaction per batch) against a registry in WAL mode, with
the nonce consumed and an audit row appended per attempt.  The bench plays the devices: it
issues the nonces (written straight into the registry, since issuing them is not what is
measured) and computes each device's evidence from the keys the synthetic fleet gave it
(:mod:`bench.fleet`).  Devices are drawn at random from the whole fleet, so a large fleet's
pages really are spread over the file.  Throughput is reported per CPU second of this process
(the verifier is single-threaded; CPU time is what a shared, noisy machine distorts least) and
per wall second.
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import fleet
from mchsm.sw import protocol
from mchsm.sw.protocol import Evidence
from mchsm.sw.verifier import Attempt, Verifier

__all__ = ["BATCH", "FLEETS", "measure_verifier"]

#: registry sizes (devices)
FLEETS = (1_000, 100_000, 1_000_000)
#: attempts per verify_many call
BATCH = 256
#: every device attests all of its tasks
SEL = (1 << fleet.TASKS) - 1

Progress = Callable[[str], None]


def _attempts(path: Path, devices: int, count: int, rng: random.Random) -> list[Attempt]:
    """``count`` answered challenges of random devices of the fleet, their nonces registered.

    Counters continue from what the registry last accepted, so a reused fleet keeps working.
    """
    refs = {ctx: ref for ctx, (_, ref) in fleet.task_references().items()}
    digest = protocol.select_digest(refs, SEL)
    if count <= devices:
        ids = [fleet.dev_id(i) for i in rng.sample(range(devices), count)]
    else:
        ids = [fleet.dev_id(rng.randrange(devices)) for _ in range(count)]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        last: dict[bytes, int] = {}
        for start in range(0, len(ids), 500):
            chunk = list(set(ids[start : start + 500]))
            marks = ",".join("?" * len(chunk))
            last.update(
                conn.execute(
                    f"SELECT dev_id, last_ctr FROM devices WHERE dev_id IN ({marks})", chunk
                )
            )
        keys: dict[bytes, bytes] = {}
        attempts: list[Attempt] = []
        rows = []
        expires = time.time() + 24 * 3600
        for dev in ids:
            nonce = rng.randbytes(32)
            last[dev] += 1
            k_att = keys.get(dev)
            if k_att is None:
                k_att = keys[dev] = protocol.derive_att_key(fleet.root_key(dev))
            tag = protocol.hmac_sha256(
                k_att, protocol.att_message(dev, nonce, SEL, SEL, last[dev], digest)
            )
            attempts.append((dev, nonce, Evidence(SEL, SEL, last[dev], tag).pack()))
            rows.append((nonce, dev, SEL, expires))
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO nonces (nonce, dev_id, sel, expires, used) VALUES (?, ?, ?, ?, 0)", rows
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return attempts


def _reset(path: Path) -> None:
    """Forget earlier bench runs: their nonces and attestation audit rows (the fleet is built
    with registration rows only), so every run starts from the same registry."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM nonces")
        conn.execute("DELETE FROM audit WHERE kind != 'register'")
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _timed(path: Path, attempts: list[Attempt], batch: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to verify ``attempts``; every one must come back trusted."""
    with Verifier(path) as verifier:
        cpu, wall = time.process_time(), time.perf_counter()
        if batch <= 1:
            reports = [verifier.verify(*a) for a in attempts]
        else:
            reports = []
            for start in range(0, len(attempts), batch):
                reports.extend(verifier.verify_many(attempts[start : start + batch]))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    bad = [r for r in reports if not getattr(r, "all_trusted", False)]
    if bad:
        raise AssertionError(f"{len(bad)} of {len(attempts)} verifications failed: {bad[0]!r}")
    return cpu, wall


def _breakdown(path: Path, attempts: list[Attempt], batch: int) -> dict[str, float] | None:
    """Where a batched verification's CPU time goes, per attempt, in microseconds.

    Instruments one verifier's private steps (reading the batch's nonces and devices, the
    per-attempt check) and times the commit apart; the rest of the batch's body is the loop and
    the buffered writes.  Private API: if it has changed, there is no breakdown (None), not an
    error.
    """
    with Verifier(path) as verifier:
        try:
            steps = {
                "read": (verifier._load_nonces, verifier._load_devices),
                "check": (verifier._check,),
            }
            body, conn = verifier._verify_batch, verifier._conn
        except AttributeError:
            return None
        spent = dict.fromkeys(("read", "check", "body", "commit"), 0.0)

        def timed(step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any) -> Any:
                began = time.process_time()
                try:
                    return fn(*args)
                finally:
                    spent[step] += time.process_time() - began

            return wrapper

        verifier._load_nonces = timed("read", steps["read"][0])  # type: ignore[method-assign]
        verifier._load_devices = timed("read", steps["read"][1])  # type: ignore[method-assign]
        verifier._check = timed("check", steps["check"][0])  # type: ignore[method-assign]
        for start in range(0, len(attempts), batch):
            conn.execute("BEGIN IMMEDIATE")
            began = time.process_time()
            body(attempts[start : start + batch], time.time())
            spent["body"] += time.process_time() - began
            began = time.process_time()
            conn.execute("COMMIT")
            spent["commit"] += time.process_time() - began
    n = len(attempts)
    return {
        "read_us": spent["read"] / n * 1e6,
        "check_us": spent["check"] / n * 1e6,
        "loop_and_writes_us": (spent["body"] - spent["read"] - spent["check"]) / n * 1e6,
        "commit_us": spent["commit"] / n * 1e6,
    }


def measure_verifier(
    progress: Progress,
    cache: Path,
    *,
    fleets: tuple[int, ...] = FLEETS,
    single: int = 2_000,
    batched: int = 8_192,
    repeats: int = 3,
    batch: int = BATCH,
) -> dict[str, Any]:
    """Section 4: per fleet size, verifications per second with ``verify`` (``single`` attempts)
    and with ``verify_many`` in batches of ``batch`` (``batched`` attempts), ``repeats`` times
    each, interleaved; medians."""
    out: dict[str, Any] = {
        "batch": batch,
        "repeats": repeats,
        "single_attempts": single,
        "batched_attempts": batched,
        "fleets": {},
    }
    rng = random.Random(2013)
    for devices in fleets:
        began = time.perf_counter()
        path, reused, build_seconds = fleet.open_fleet(cache, devices, progress)
        what = "reused" if reused else f"built in {build_seconds:.1f} s"
        progress(
            f"    fleet of {devices:,} devices ({what}, "
            f"{path.stat().st_size / 1e6:,.0f} MB): {path}"
        )
        _reset(path)
        _timed(path, _attempts(path, devices, 500, rng), batch)  # warm the page cache
        runs: dict[str, list[tuple[float, float]]] = {"single": [], "batched": []}
        for _ in range(repeats):
            runs["single"].append(_timed(path, _attempts(path, devices, single, rng), 1))
            runs["batched"].append(_timed(path, _attempts(path, devices, batched, rng), batch))
        figures: dict[str, Any] = {
            "reused": reused,
            "build_seconds": build_seconds,
            "file_mb": path.stat().st_size / 1e6,
        }
        for mode, n in (("single", single), ("batched", batched)):
            figures[mode] = {
                "per_cpu_s": statistics.median(n / cpu for cpu, _ in runs[mode]),
                "per_wall_s": statistics.median(n / wall for _, wall in runs[mode]),
                "us_cpu_each": statistics.median(cpu / n * 1e6 for cpu, _ in runs[mode]),
            }
        figures["breakdown"] = _breakdown(path, _attempts(path, devices, 4096, rng), batch)
        _reset(path)
        out["fleets"][devices] = figures
        progress(
            f"    {devices:>9,} devices: verify {figures['single']['per_cpu_s']:,.0f}/s, "
            f"verify_many({batch}) {figures['batched']['per_cpu_s']:,.0f}/s per CPU second "
            f"({figures['batched']['per_wall_s']:,.0f}/s wall) "
            f"[{time.perf_counter() - began:.0f} s]"
        )
    return out
