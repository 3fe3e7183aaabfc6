"""Synthetic fleets in the verifier's own registry, on either store, built fast and cached.

Registering a million devices through :meth:`Verifier.register_device` and installing eight
tasks on each through real updates would take hours; what the verifier's hot path reads is only
the rows, so the bench lets :class:`Verifier` create an empty registry (its schema, its KEK
check value) and then bulk-inserts the devices through the registry's own store: one
``executemany`` (SQLite, journal off while building) or ``COPY`` (PostgreSQL) per chunk, with a
progress line every 200,000 devices.  Every device runs the same eight tasks, so the fleet has
one task set.  Devices are derived from their index (id and root key are hashes of it) and the
root keys are wrapped under a fixed bench KEK, so the bench can answer challenges for any
device without reading keys back.  A fleet is cached (``.cache/bench/``, or a database of the
bench's PostgreSQL server) and reused while its recipe (:data:`RECIPE`) and the verifier's
schema version are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mchsm.sw import protocol
from mchsm.sw.verifier import SCHEMA_VERSION, TaskRecord, Verifier
from mchsm.sw.verifier.check import TaskSet
from mchsm.sw.verifier.keys import Kek

__all__ = ["KEK", "RECIPE", "TASKS", "dev_id", "open_fleet", "root_key", "task_references"]

#: every device of a fleet runs this many tasks (the attestation the bench verifies covers all)
TASKS = 8
#: changing anything below changes the recipe and so rebuilds cached fleets
RECIPE = {"version": 3, "tasks": TASKS, "seed": "mchsm-bench-fleet-v1"}
_SEED = str(RECIPE["seed"]).encode()
#: the bench's key-encryption key (a bench fleet holds no secret worth a real one)
KEK = hashlib.sha256(_SEED + b"/kek").digest()
#: rows per insert call while building (bounds memory, keeps progress lines coming)
_CHUNK = 50_000

Progress = Callable[[str], None]


def dev_id(index: int) -> bytes:
    """Device ``index``'s 16-byte id: a hash, so ids spread over the key space like real ones."""
    return hashlib.sha256(_SEED + b"/dev/" + index.to_bytes(8, "big")).digest()[:16]


def root_key(dev: bytes) -> bytes:
    """The root key the fleet gave ``dev`` (the bench plays every device, so it must know it)."""
    return hashlib.sha256(_SEED + b"/root/" + dev).digest()


def task_references() -> dict[int, tuple[str, bytes]]:
    """Context -> (name, reference) of the tasks every device runs (one firmware, fleet-wide)."""
    return {
        ctx: (f"task{ctx}", protocol.reference(f"bench task {ctx} image v1".encode()))
        for ctx in range(1, TASKS + 1)
    }


def _meta(devices: int) -> dict[str, object]:
    return {**RECIPE, "devices": devices, "schema": SCHEMA_VERSION}


def open_fleet(
    cache: Path, devices: int, progress: Progress, pg: object | None = None
) -> tuple[str, bool, float]:
    """The registry of a fleet of ``devices`` devices: (db, reused, seconds spent building).

    ``pg`` is a started :class:`~mchsm.sw.verifier.localpg.LocalPostgres` for a PostgreSQL
    fleet (one database per size), None for a SQLite file under ``cache``.
    """
    if pg is None:
        return _sqlite_fleet(cache, devices, progress)
    return _pg_fleet(pg, devices, progress)


def _sqlite_fleet(cache: Path, devices: int, progress: Progress) -> tuple[str, bool, float]:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"registry-{devices}.sqlite"
    meta_file = path.with_suffix(".json")
    try:
        if path.is_file() and json.loads(meta_file.read_text()) == _meta(devices):
            return str(path), True, 0.0
    except (OSError, ValueError):
        pass
    began = time.perf_counter()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    for stale in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}.kek")):
        stale.unlink(missing_ok=True)
    Verifier(tmp, kek=KEK).close()  # the verifier creates its own schema: the bench never does
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        # a scratch file being built: no journal, no syncs, a big cache; WAL again at the end
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1048576")
        conn.execute("BEGIN")
        _fill(devices, progress, lambda sql, rows: conn.executemany(sql, rows), "?")
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()
    for old in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        old.unlink(missing_ok=True)
    os.replace(tmp, path)
    meta_file.write_text(json.dumps(_meta(devices)) + "\n")
    return str(path), False, time.perf_counter() - began


def _pg_fleet(pg: Any, devices: int, progress: Progress) -> tuple[str, bool, float]:
    import psycopg

    name = f"fleet_{devices}"
    admin = pg.url()  # pg: a pgserver PostgresServer (pgserver has no type hints)
    url = pg.url(name)
    recipe = json.dumps(_meta(devices))
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists:
        with psycopg.connect(url, autocommit=True) as conn:
            table = conn.execute("SELECT to_regclass('public.bench_recipe')").fetchone()
            row = conn.execute(
                "SELECT recipe FROM public.bench_recipe" if table and table[0] else "SELECT NULL"
            ).fetchone()
        if row and row[0] == recipe:
            return url, True, 0.0
        pg.drop_database(name)
    began = time.perf_counter()
    pg.create_database(name)
    Verifier(url, kek=KEK).close()
    with psycopg.connect(url) as conn:
        conn.execute("SET search_path TO mchsm")

        def insert(sql: str, rows: list[tuple[object, ...]]) -> None:
            table, cols = sql.split("INSERT INTO ", 1)[1].split(" VALUES")[0].split(" ", 1)
            with conn.cursor().copy(f"COPY {table} {cols} FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

        _fill(devices, progress, insert, "%s")
        conn.execute("CREATE TABLE public.bench_recipe (recipe TEXT)")
        conn.execute("INSERT INTO public.bench_recipe VALUES (%s)", (recipe,))
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return url, False, time.perf_counter() - began


def _fill(
    devices: int,
    progress: Progress,
    insert: Callable[[str, list[tuple[object, ...]]], object],
    mark: str,
) -> None:
    """Devices, their task set and one registration audit row each, in key order."""
    tasks = TaskSet([TaskRecord(c, n, 1, r) for c, (n, r) in task_references().items()])
    insert(
        "INSERT INTO task_sets (id, body) VALUES (?, ?)".replace("?", mark),
        [(tasks.id, tasks.body)],
    )
    kek = Kek(KEK, "the bench KEK")
    now = time.time()
    ids = sorted(dev_id(i) for i in range(devices))  # appending in key order is fastest
    began = time.perf_counter()
    for start in range(0, devices, _CHUNK):
        chunk = ids[start : start + _CHUNK]
        names = [f"bench-{d[:4].hex()}" for d in chunk]
        insert(
            "INSERT INTO devices (dev_id, root_wrapped, contexts, name, task_set, created) "
            "VALUES (?, ?, ?, ?, ?, ?)".replace("?", mark),
            [
                (d, kek.wrap(d, root_key(d)), TASKS, n, tasks.id, now)
                for d, n in zip(chunk, names, strict=True)
            ],
        )
        insert(
            "INSERT INTO counters (dev_id, last_ctr) VALUES (?, ?)".replace("?", mark),
            [(d, 0) for d in chunk],
        )
        insert(
            "INSERT INTO audit (time, dev_id, kind, ctx, outcome, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)".replace("?", mark),
            [
                (now, d, "register", None, "ok", f'{{"contexts":{TASKS},"name":"{n}"}}')
                for d, n in zip(chunk, names, strict=True)
            ],
        )
        done = min(start + _CHUNK, devices)
        if devices >= 200_000 and done % 200_000 < _CHUNK:
            rate = done / max(time.perf_counter() - began, 1e-9)
            progress(f"    {done:,} / {devices:,} devices written ({rate:,.0f}/s)")
