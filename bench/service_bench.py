"""The verifier service under load: complete attestations per second, end to end over HTTP.

A fleet of :data:`DEVICES` devices (the bench's synthetic fleet, eight tasks each) is copied
into a scratch registry; ``mchsm verifier serve`` runs on it with 1 and then 2 worker processes
on a loopback port; the bounded load generator (:mod:`mchsm.sw.service.loadgen`, in this
process) plays the devices on :data:`CONNECTIONS` connections: open a session, compute the
evidence, post it, read the EAR.  One attestation = those two round trips and the signed result.
Reported: attestations per wall second, latency p50/p99, CPU per attestation of the service (all
its processes) and of the generator, beside Keylime's published 2,500 quotes/s; then a cProfile
of one worker under the same load, grouped by where the time goes.
"""

from __future__ import annotations

import os
import pstats
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mchsm.sw import protocol

from . import fleet

__all__ = ["measure_service"]

DEVICES = 10_000
CONNECTIONS = 64
#: attestations measured per configuration (after WARMUP), and the time bound of a run
COUNT = 20_000
WARMUP = 2_000
SECONDS = 60.0
KEYLIME_QUOTES_PER_SECOND = 2_500

#: the profile's groups: (label, substrings of a function's file path)
GROUPS = (
    ("HTTP server (uvicorn, httptools, uvloop)", ("uvicorn", "httptools", "uvloop", "asyncio")),
    ("framework (Starlette)", ("starlette", "anyio")),
    ("EAR: claims and ES256 signature", ("service/ear.py", "cryptography")),
    ("service handlers, JSON, metrics", ("service/app.py", "service/api.py", "json", "prometheus")),
    ("group commit (batcher, thread hand-off)", ("service/batch.py", "concurrent", "threading")),
    (
        "verifier: checks, MACs",
        (
            "verifier/check.py",
            "verifier/facade.py",
            "verifier/core.py",
            "verifier/audit.py",
            "protocol.py",
            "hmac",
        ),
    ),
    ("registry: SQL and commit", ("verifier/store.py", "verifier/sqlite.py", "sqlite3")),
)


def _devices(count: int) -> list[Any]:
    from mchsm.sw.service.loadgen import LoadDevice

    refs = {ctx: ref for ctx, (_, ref) in fleet.task_references().items()}
    out = []
    for i in range(count):
        dev = fleet.dev_id(i)
        out.append(LoadDevice(dev, protocol.derive_att_key(fleet.root_key(dev)), refs))
    return out


def _cpu(pid: int) -> float:
    import psutil

    total = 0.0
    proc = psutil.Process(pid)
    for p in (proc, *proc.children(recursive=True)):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _profile(prefix: str) -> dict[str, float]:
    """Seconds of own time per group, summed over the worker's two threads."""
    stats = None
    for f in Path(prefix).parent.glob(Path(prefix).name + ".*"):
        stats = pstats.Stats(str(f)) if stats is None else stats.add(str(f))
    if stats is None:
        return {}
    groups: dict[str, float] = {}
    # typeshed does not declare Stats.stats, the table pstats itself prints from
    for (filename, _, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{filename}:{name}"
        label = next((g for g, keys in GROUPS if any(k in where for k in keys)), "other")
        idle = ("select", "epoll", "SimpleQueue", "_thread.lock")  # a thread waiting for work
        if any(k in name for k in idle):
            label = "waiting (idle in select/locks)"
        groups[label] = groups.get(label, 0.0) + tottime
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def _run(
    tmp: Path,
    src: str,
    workers: int,
    devices: list[Any],
    progress: Callable[[str], None],
    profile: bool = False,
) -> dict[str, Any]:
    from mchsm.sw.service.loadgen import run_load
    from mchsm.sw.service.spawn import start_service

    run_dir = tmp / f"w{workers}{'p' if profile else ''}"
    run_dir.mkdir(mode=0o700)
    db = run_dir / "registry.sqlite"
    shutil.copyfile(src, db)
    os.chmod(db, 0o600)
    env = {"MCHSM_VERIFIER_KEK": fleet.KEK.hex()}
    prefix = str(run_dir / "profile")
    if profile:
        env["MCHSM_SERVICE_PROFILE"] = prefix
    service = start_service(run_dir, str(db), workers=workers, env=env, log_level="WARNING")
    for d in devices:
        d.ctr = 0
    try:
        run_load(service.url, devices, connections=CONNECTIONS, count=WARMUP, seconds=SECONDS)
        cpu0 = _cpu(service.proc.pid)
        result = run_load(
            service.url, devices, connections=CONNECTIONS, count=COUNT, seconds=SECONDS
        )
        server_cpu = _cpu(service.proc.pid) - cpu0
    finally:
        service.stop()
    n = max(result.completed, 1)
    out = {
        "workers": workers,
        "completed": result.completed,
        "outcomes": result.outcomes,
        "errors": result.errors,
        "wall_seconds": result.wall,
        "attestations_per_second": result.rate,
        "latency_p50_ms": result.percentile(0.5) * 1e3,
        "latency_p99_ms": result.percentile(0.99) * 1e3,
        "service_cpu_us_per_attestation": server_cpu / n * 1e6,
        "loadgen_cpu_us_per_attestation": result.cpu / n * 1e6,
        "load_average": os.getloadavg()[0],
    }
    if profile:
        out["profile_seconds_by_group"] = _profile(prefix)
    progress(
        f"    {workers} worker(s): {result.completed:,} attestations in {result.wall:.1f} s = "
        f"{result.rate:,.0f}/s; p50 {out['latency_p50_ms']:.1f} ms, p99 "
        f"{out['latency_p99_ms']:.1f} ms; CPU per attestation: service "
        f"{out['service_cpu_us_per_attestation']:.0f} µs, load generator "
        f"{out['loadgen_cpu_us_per_attestation']:.0f} µs; errors {result.errors or 'none'}"
    )
    return out


def measure_service(progress: Callable[[str], None], cache: Path) -> dict[str, Any]:
    """Both configurations, then the profile; a dict for results.json."""
    src, reused, built = fleet.open_fleet(cache, DEVICES, progress)
    progress(
        f"    fleet of {DEVICES:,} devices {'reused' if reused else f'built in {built:.1f} s'}"
    )
    devices = _devices(DEVICES)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mchsm-service-bench-") as tmp:
        runs = [_run(Path(tmp), src, w, devices, progress) for w in (1, 2)]
        progress("    profiling one worker under the same load (cProfile slows it down)...")
        prof = _run(Path(tmp), src, 1, devices, progress, profile=True)
    return {
        "devices": DEVICES,
        "connections": CONNECTIONS,
        "count": COUNT,
        "store": "sqlite",
        "runs": runs,
        "profile": prof.get("profile_seconds_by_group", {}),
        "keylime_quotes_per_second": KEYLIME_QUOTES_PER_SECOND,
        "seconds": time.perf_counter() - began,
    }
