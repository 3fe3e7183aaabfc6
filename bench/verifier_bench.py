"""Verifier throughput: attestation verifications per CPU second, by store, fleet size, processes.

Every verification is the real thing: :meth:`Verifier.verify` (one transaction each) or
:meth:`Verifier.verify_many` (one transaction per batch) against the registry, with the nonce
consumed, the counter advanced, an audit row appended per attempt and the batch committed
durably (SQLite: WAL fsynced at every commit; PostgreSQL: its default synchronous commit).  The
bench plays the devices: it issues the nonces (written straight into the registry, since issuing
them is not what is measured) and computes each device's evidence from the keys the synthetic
fleet gave it (:mod:`bench.fleet`).  Devices are drawn at random from the whole fleet, so a
large fleet's pages really are spread over the store.

Throughput is per CPU second of the verifier process (the verifier is single-threaded; CPU time
is what a shared, noisy machine distorts least) and per wall second.  For PostgreSQL the CPU the
server's backend spent for that connection is reported beside it (the process that verifies is
not the only one working).  With 2 processes, each verifies its own half of the devices at the
same time against the same store; the figures are the pair's attempts over their summed CPU
seconds, and over the wall time of the slower one.
"""

from __future__ import annotations

import multiprocessing
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import fleet
from mchsm.sw import protocol
from mchsm.sw.protocol import Evidence
from mchsm.sw.verifier import Attempt, Verifier
from mchsm.sw.verifier.facade import new_nonce
from mchsm.sw.verifier.store import Store

__all__ = ["BATCH", "FLEETS", "KEYLIME_QUOTES_PER_S", "measure_verifier"]

#: registry sizes (devices)
FLEETS = (1_000, 100_000, 1_000_000)
#: attempts per verify_many call
BATCH = 256
#: every device attests all of its tasks
SEL = (1 << fleet.TASKS) - 1
#: the anchor: Keylime, the attestation verifier people deploy, reports up to 2,500 TPM quotes
#: verified per second (its state in SQLite or PostgreSQL through SQLAlchemy)
KEYLIME_QUOTES_PER_S = 2_500

Progress = Callable[[str], None]


def _attempts(
    db: str, devices: int, count: int, rng: random.Random, part: int = 0, parts: int = 1
) -> list[Attempt]:
    """``count`` answered challenges of random devices of the fleet (those with index ``part``
    modulo ``parts``), their nonces registered.  Counters continue from what the registry last
    accepted, so a reused fleet keeps working."""
    refs = {ctx: ref for ctx, (_, ref) in fleet.task_references().items()}
    digest = protocol.select_digest(refs, SEL)
    pool = range(part, devices, parts)
    if count <= len(pool):
        ids = [fleet.dev_id(i) for i in rng.sample(pool, count)]
    else:
        ids = [fleet.dev_id(rng.choice(pool)) for _ in range(count)]
    with Verifier(db, kek=fleet.KEK) as v:
        last = {
            d: row[1] for d, row in v.store.read(lambda s: s.devices_for_verify(set(ids))).items()
        }
        keys: dict[bytes, bytes] = {}
        attempts: list[Attempt] = []
        rows = []
        expires = time.time() + 24 * 3600
        for dev in ids:
            nonce = new_nonce(time.time())
            last[dev] += 1
            k_att = keys.get(dev)
            if k_att is None:
                k_att = keys[dev] = protocol.derive_att_key(fleet.root_key(dev))
            tag = protocol.attest_tag(k_att, dev, nonce, SEL, SEL, last[dev], digest)
            attempts.append((dev, nonce, Evidence(SEL, SEL, last[dev], tag).pack()))
            rows.append((nonce, dev, SEL, expires, 0))

        def insert(s: Store) -> None:
            for start in range(0, len(rows), 5000):
                s.executemany(
                    "INSERT INTO nonces (nonce, dev_id, sel, expires, used) VALUES (?, ?, ?, ?, ?)",
                    rows[start : start + 5000],
                )

        v.store.write(insert)
    return attempts


def _reset(db: str) -> None:
    """Forget earlier bench runs: their nonces and attestation audit rows (the fleet is built
    with registration rows only), so every run starts from the same registry."""
    with Verifier(db, kek=fleet.KEK) as v:

        def reset(s: Store) -> None:
            s.execute("DELETE FROM nonces")
            s.execute("DELETE FROM audit WHERE kind <> 'register'")

        v.store.write(reset)
        if v.store.dialect == "sqlite":
            v.store.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            v.store.execute("VACUUM nonces")


def _backend_cpu(v: Verifier) -> Callable[[], float]:
    """Seconds of CPU the PostgreSQL backend serving ``v`` has used (0 for SQLite)."""
    if v.store.dialect != "postgresql":
        return lambda: 0.0
    import psutil

    pid = v.store.execute("SELECT pg_backend_pid()").fetchone()[0]
    proc = psutil.Process(pid)
    return lambda: sum(proc.cpu_times()[:2])


def _warm(db: str) -> Verifier:
    """A verifier in steady state, as a service would be: its connection open, the devices
    table read once (SQLite maps the file; the first touch of each page costs a page fault that
    a long-running verifier pays once)."""
    verifier = Verifier(db, kek=fleet.KEK)
    verifier.store.read(
        lambda s: s.execute(
            "SELECT sum(c.last_ctr), sum(length(d.root_wrapped)) FROM devices AS d "
            "JOIN counters AS c ON c.dev_id = d.dev_id"
        )
    ).fetchone()
    return verifier


def _timed(verifier: Verifier, attempts: list[Attempt], batch: int) -> tuple[float, float, float]:
    """(CPU seconds, wall seconds, server CPU seconds) to verify ``attempts``; every one must
    come back trusted."""
    server = _backend_cpu(verifier)
    bad: list[object] = []
    s0, cpu, wall = server(), time.process_time(), time.perf_counter()
    # results are checked and dropped batch by batch, as a service hands them on
    if batch <= 1:
        for a in attempts:
            report = verifier.verify(*a)
            if not report.all_trusted:
                bad.append(report)
    else:
        for start in range(0, len(attempts), batch):
            for r in verifier.verify_many(attempts[start : start + batch]):
                if not getattr(r, "all_trusted", False):
                    bad.append(r)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    s1 = server()
    if bad:
        raise AssertionError(f"{len(bad)} of {len(attempts)} verifications failed: {bad[0]!r}")
    return cpu, wall, s1 - s0


def _worker(db: str, attempts: list[Attempt], batch: int, ready: Any, start: Any, out: Any) -> None:
    with _warm(db) as verifier:
        ready.release()
        start.wait()
        out.put(_timed(verifier, attempts, batch))


def _timed_pair(db: str, halves: list[list[Attempt]], batch: int) -> tuple[float, float, float]:
    """Two processes verifying at once: (summed CPU s, wall s of the slower, summed server CPU)."""
    ctx = multiprocessing.get_context("spawn")
    ready, start, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(db, h, batch, ready, start, out)) for h in halves]
    for p in procs:
        p.start()
    for _ in procs:  # both have imported, opened and warmed their verifier
        if not ready.acquire(timeout=600):
            raise RuntimeError("a bench verifier process did not start")
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"a bench verifier process failed (exit code {p.exitcode})")
    return (
        sum(r[0] for r in results),
        max(r[1] for r in results),
        sum(r[2] for r in results),
    )


def measure_store(
    progress: Progress,
    cache: Path,
    pg: object | None,
    *,
    fleets: tuple[int, ...],
    single: int,
    batched: int,
    repeats: int,
    batch: int,
    processes: tuple[int, ...] = (1, 2),
) -> dict[str, Any]:
    """One store's figures, per fleet size: verify (1 process), verify_many (1 and 2 processes)."""
    store = "sqlite" if pg is None else "postgresql"
    out: dict[str, Any] = {}
    rng = random.Random(2013)
    for devices in fleets:
        began = time.perf_counter()
        db, reused, build_seconds = fleet.open_fleet(cache, devices, progress, pg)
        what = "reused" if reused else f"built in {build_seconds:.1f} s"
        progress(f"    {store}: fleet of {devices:,} devices ({what})")
        _reset(db)
        verifier = _warm(db)
        _timed(verifier, _attempts(db, devices, 500, rng), batch)  # warm the caches
        runs: dict[str, list[tuple[float, float, float]]] = {"single": [], "batched": []}
        for _ in range(repeats):
            runs["single"].append(_timed(verifier, _attempts(db, devices, single, rng), 1))
            runs["batched"].append(_timed(verifier, _attempts(db, devices, batched, rng), batch))
            if 2 in processes:
                halves = [_attempts(db, devices, batched // 2, rng, i, 2) for i in range(2)]
                runs.setdefault("batched_2proc", []).append(_timed_pair(db, halves, batch))
        verifier.close()
        figures: dict[str, Any] = {"reused": reused, "build_seconds": build_seconds}
        for mode, n in (("single", single), ("batched", batched), ("batched_2proc", batched)):
            if mode not in runs:
                continue
            m = runs[mode]
            figures[mode] = {
                "per_cpu_s": statistics.median(n / cpu for cpu, _, _ in m),
                "per_wall_s": statistics.median(n / wall for _, wall, _ in m),
                "us_cpu_each": statistics.median(cpu / n * 1e6 for cpu, _, _ in m),
                "server_us_cpu_each": statistics.median(srv / n * 1e6 for _, _, srv in m),
                # the verifier's CPU and, for PostgreSQL, its server backends' together
                "per_total_cpu_s": statistics.median(n / (cpu + srv) for cpu, _, srv in m),
            }
        _reset(db)
        out[str(devices)] = figures
        pair = figures.get("batched_2proc")
        progress(
            f"    {store} {devices:>9,} devices: verify {figures['single']['per_cpu_s']:,.0f}/s, "
            f"verify_many({batch}) {figures['batched']['per_cpu_s']:,.0f}/s per CPU second "
            f"({figures['batched']['per_wall_s']:,.0f}/s wall)"
            + (
                f"; 2 processes {pair['per_cpu_s']:,.0f}/s per CPU s, "
                f"{pair['per_wall_s']:,.0f}/s wall"
                if pair
                else ""
            )
            + (
                f"; server {figures['batched']['server_us_cpu_each']:.0f} µs CPU each, "
                f"{figures['batched']['per_total_cpu_s']:,.0f}/s per CPU s with it"
                if pg is not None
                else ""
            )
            + f" [{time.perf_counter() - began:.0f} s]"
        )
    return out


def measure_verifier(
    progress: Progress,
    cache: Path,
    *,
    fleets: tuple[int, ...] = FLEETS,
    single: int = 2_000,
    batched: int = 8_192,
    repeats: int = 3,
    batch: int = BATCH,
    stores: tuple[str, ...] = ("sqlite", "postgresql"),
) -> dict[str, Any]:
    """Section 4: per store and fleet size, verifications per second with ``verify`` (``single``
    attempts) and with ``verify_many`` in batches of ``batch`` (``batched`` attempts) in 1 and 2
    processes, ``repeats`` times each, interleaved; medians."""
    out: dict[str, Any] = {
        "batch": batch,
        "repeats": repeats,
        "single_attempts": single,
        "batched_attempts": batched,
        "keylime_quotes_per_s": KEYLIME_QUOTES_PER_S,
        "stores": {},
    }
    kwargs: dict[str, Any] = {
        "fleets": fleets,
        "single": single,
        "batched": batched,
        "repeats": repeats,
        "batch": batch,
    }
    if "sqlite" in stores:
        out["stores"]["sqlite"] = measure_store(progress, cache, None, **kwargs)
    if "postgresql" in stores:
        from mchsm.sw.verifier.localpg import LocalPostgres, PostgresUnavailable

        try:
            # durable (fsync, synchronous commit), kept between runs like the SQLite fleets
            server = LocalPostgres(cache / "postgresql", settings={"shared_buffers": "512MB"})
            server.start()
        except PostgresUnavailable as exc:
            progress(f"    PostgreSQL skipped: {exc}")
            out["stores"]["postgresql"] = {"skipped": str(exc)}
        else:
            try:
                out["stores"]["postgresql"] = measure_store(progress, cache, server, **kwargs)
            finally:
                server.stop(remove=False)
    return out
