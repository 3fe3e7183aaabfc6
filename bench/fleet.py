"""Synthetic fleets in the verifier's own registry file, built fast and cached.

Registering a million devices through :meth:`Verifier.register_device` and installing eight
tasks on each through real updates would take hours; what the verifier's hot path reads is only
the rows, so the bench writes them straight into the schema that :class:`Verifier` creates, with
``executemany`` in one transaction and the journal off, then switches the file to WAL as the
verifier expects.  Devices are derived from their index (id and root key are hashes of it), so
the bench can answer challenges for any device without reading keys back, and a fleet is
cached under ``.cache/bench/`` and reused while its recipe (:data:`RECIPE`) and the verifier's
schema version are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mchsm.sw import protocol
from mchsm.sw import verifier as verifier_module
from mchsm.sw.verifier import Verifier

__all__ = [
    "RECIPE",
    "TASKS",
    "dev_id",
    "fleet_path",
    "open_fleet",
    "root_key",
    "task_references",
]

#: every device of a fleet runs this many tasks (the attestation the bench verifies covers all)
TASKS = 8
#: changing anything below changes the recipe and so rebuilds cached fleets
RECIPE = {"version": 1, "tasks": TASKS, "seed": "mchsm-bench-fleet-v1"}
_SEED = RECIPE["seed"].encode()
#: rows per executemany call while building (bounds memory, keeps progress lines coming)
_CHUNK = 50_000


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


def fleet_path(cache: Path, devices: int) -> Path:
    """Where the cached registry of ``devices`` devices lives."""
    return cache / f"registry-{devices}.sqlite"


def _meta(devices: int) -> dict[str, object]:
    return {**RECIPE, "devices": devices, "schema": verifier_module.SCHEMA_VERSION}


def open_fleet(
    cache: Path, devices: int, progress: Callable[[str], None] = print
) -> tuple[Path, bool, float]:
    """The registry of a fleet of ``devices`` devices: (path, reused, seconds spent building).

    A cached file is reused when its side-car JSON names the same recipe and schema; otherwise
    it is built into a temporary file and renamed into place, so an interrupted build leaves
    nothing half-made behind.
    """
    cache.mkdir(parents=True, exist_ok=True)
    path = fleet_path(cache, devices)
    meta_file = path.with_suffix(".json")
    try:
        if path.is_file() and json.loads(meta_file.read_text()) == _meta(devices):
            return path, True, 0.0
    except (OSError, ValueError):
        pass
    began = time.perf_counter()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    for stale in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        stale.unlink(missing_ok=True)
    Verifier(tmp).close()  # the verifier creates its own schema: the bench never copies it
    _fill(tmp, devices, progress)
    for old in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        old.unlink(missing_ok=True)
    os.replace(tmp, path)
    meta_file.write_text(json.dumps(_meta(devices)) + "\n")
    return path, False, time.perf_counter() - began


def _fill(path: Path, devices: int, progress: Callable[[str], None]) -> None:
    """Devices, their tasks and one registration audit row each, in key order."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # a scratch file being built: no journal, no syncs, a big cache; WAL again at the end
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1048576")
        conn.execute("BEGIN")
        refs = task_references()
        now = time.time()
        ids = sorted(dev_id(i) for i in range(devices))  # appending in key order is fastest
        for start in range(0, devices, _CHUNK):
            chunk = ids[start : start + _CHUNK]
            conn.executemany(
                "INSERT INTO devices (dev_id, root_key, contexts, name, last_ctr, created) "
                "VALUES (?, ?, ?, ?, 0, ?)",
                ((d, root_key(d), TASKS, f"bench-{d[:4].hex()}", now) for d in chunk),
            )
            conn.executemany(
                "INSERT INTO tasks (dev_id, ctx, name, version, reference) VALUES (?, ?, ?, 1, ?)",
                _task_rows(chunk, refs),
            )
            conn.executemany(
                "INSERT INTO audit (time, dev_id, kind, ctx, outcome, detail) "
                "VALUES (?, ?, 'register', NULL, 'ok', ?)",
                (
                    (
                        now,
                        d,
                        json.dumps(
                            {"contexts": TASKS, "name": f"bench-{d[:4].hex()}"},
                            separators=(",", ":"),
                        ),
                    )
                    for d in chunk
                ),
            )
            done = min(start + _CHUNK, devices)
            if devices >= 200_000 and done % 200_000 < _CHUNK:
                progress(f"    {done:,} / {devices:,} devices written")
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


def _task_rows(
    ids: list[bytes], refs: dict[int, tuple[str, bytes]]
) -> Iterator[tuple[bytes, int, str, bytes]]:
    for d in ids:
        for ctx, (name, ref) in refs.items():
            yield d, ctx, name, ref
