"""HSM cycles in RTL simulation, and how fast the simulators themselves run.

Cycle counts come from cocotb + Verilator: one Verilator build per number of contexts N (each
build is cached under its design hash, so only the first ``make bench`` pays for it) and one
simulated job per build.  The same RTL in Amaranth's simulator gives the same counts, which the
simulator-speed section checks on the N = 8 job it runs anyway.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import jobs

__all__ = [
    "ATTEST_CONTEXTS",
    "BOARD_MHZ",
    "FALLBACK_FMAX_MHZ",
    "MEASURE_SIZES",
    "find_fmax",
    "linear_fit",
    "measure_hsm",
    "measure_simulators",
]

#: the numbers of contexts ATTEST is measured for (one Verilator build each)
ATTEST_CONTEXTS = (1, 2, 4, 8, 16, 32)
#: MEASURE image sizes in bytes: 1 KiB to 64 KiB
MEASURE_SIZES = tuple(1024 << k for k in range(7))
#: the iCE40 boards' oscillator: what the HSM runs at on the project's boards
BOARD_MHZ = 12.0
#: Used only when no board build report gives a real Fmax: the SHA-256 engine's measured
#: standalone Fmax on the iCE40 (~26 MHz).  NOT the whole design's: the core around it may be
#: slower.  Override with MCHSM_BENCH_FMAX_MHZ.
FALLBACK_FMAX_MHZ = 26.0

Progress = Callable[[str], None]


def find_fmax(root: Path) -> dict[str, Any]:
    """The Fmax to quote: from a board build report if there is one, else the fallback.

    Looks for ``build/**/report.json`` (and ``*.report.json``) under ``root``; understands
    nextpnr's ``--report`` format (``{"fmax": {clock: {"achieved": MHz}}}``), the board helper's
    (``{"fmax": {clock: [achieved, constraint]}}``) and flat files with an ``fmax_mhz`` field.
    The lowest clock found is the design's limit.
    """
    env = os.environ.get("MCHSM_BENCH_FMAX_MHZ")
    if env:
        return {
            "mhz": float(env),
            "source": "MCHSM_BENCH_FMAX_MHZ (set by the user)",
            "whole_design": None,
        }
    found: list[tuple[float, str]] = []
    build = root / "build"
    reports = (
        sorted({*build.glob("**/report.json"), *build.glob("**/*.report.json")})
        if build.is_dir()
        else []
    )
    for report in reports:
        try:
            data = json.loads(report.read_text())
        except (OSError, ValueError):
            continue
        for mhz in _fmax_values(data):
            found.append((mhz, str(report.relative_to(root))))
    if found:
        mhz, source = min(found)
        return {"mhz": mhz, "source": f"board build report {source}", "whole_design": True}
    return {
        "mhz": FALLBACK_FMAX_MHZ,
        "source": "no board build report found: the SHA-256 engine's measured standalone Fmax "
        "(~26 MHz on iCE40), NOT the whole design's",
        "whole_design": False,
    }


def _fmax_values(data: Any) -> list[float]:
    """Fmax values (MHz) in a report: nextpnr's per-clock "achieved", or "fmax_mhz" fields."""
    out: list[float] = []
    if isinstance(data, dict):
        fmax = data.get("fmax")
        if isinstance(fmax, dict):
            for clock in fmax.values():
                if isinstance(clock, dict) and isinstance(clock.get("achieved"), int | float):
                    out.append(float(clock["achieved"]))
                elif isinstance(clock, list) and clock and isinstance(clock[0], int | float):
                    out.append(float(clock[0]))
        for key, value in data.items():
            if key.lower() in ("fmax_mhz", "max_frequency_mhz") and isinstance(value, int | float):
                out.append(float(value))
            elif isinstance(value, dict | list) and key != "fmax":
                out.extend(_fmax_values(value))
    elif isinstance(data, list):
        for item in data:
            out.extend(_fmax_values(item))
    return [v for v in out if v > 0]


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares line ``y = slope x + intercept`` and its R² (1 is a perfect line)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_res = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"slope": slope, "intercept": intercept, "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0}


def _check_evidence(contexts: int, attests: list[dict[str, Any]]) -> None:
    """Every measured ATTEST must have produced the right tag, or its cycles mean nothing."""
    for a in attests:
        if a["ok"] != a["sel"]:
            raise AssertionError(
                f"ATTEST over {contexts} contexts reported ok=0x{a['ok']:x}, "
                f"expected every selected task OK"
            )
        if a["tag"] != jobs.expected_tag(contexts, a["nonce"], a["sel"], a["ok"], a["ctr"]):
            raise AssertionError(f"ATTEST over {contexts} contexts returned a wrong tag")


def measure_hsm(
    progress: Progress,
    contexts: tuple[int, ...] = ATTEST_CONTEXTS,
    measure_sizes: tuple[int, ...] = MEASURE_SIZES,
) -> dict[str, Any]:
    """Section 1: cycles of SHA-256, HMAC, ATTEST(N), UPDATE and MEASURE on the RTL."""
    from mchsm.sim.verilator import simulate_job

    out: dict[str, Any] = {"backend": "cocotb + Verilator", "attest": {}, "builds": {}}
    for n in contexts:
        full = n == 8
        began = time.perf_counter()
        run = simulate_job(
            jobs.hsm_cycles_job,
            n,
            job_args={
                "contexts": n,
                "repeats": 3,
                "full": full,
                "measure_sizes": tuple(measure_sizes) if full else (),
            },
        )
        value = run.value
        _check_evidence(n, value["attest"])
        cycles = [a["cycles"] for a in value["attest"]]
        if len(set(cycles)) != 1:
            progress(f"    note: ATTEST({n}) took {cycles} cycles on repeats (expected equal)")
        out["attest"][n] = statistics.median(cycles)
        out["builds"][n] = {
            "cached": run.build.cached,
            "seconds": round(run.build.seconds, 3),
            "cold_seconds": run.build.cold_seconds,
            "runtime_cached": run.build.runtime_cached,
            "hash": run.build.hash[:12],
            "sim_cycles": run.cycles,
            "sim_wall_seconds": round(run.wall_seconds, 2),
        }
        if full:
            out["update"] = value["update"]
            blocks = value["sha_blocks"]
            long_ = value[f"hash_{blocks}_blocks"]
            out["sha256"] = {
                "hash_1_block": value["hash_1_block"],
                f"hash_{blocks}_blocks": long_,
                "blocks": blocks,
                "cycles_per_block": (long_ - value["hash_1_block"]) / (blocks - 1),
            }
            out["hmac_64B"] = value["hmac_64B"]
            out["attest_sel1_n8"] = value["attest_sel1"]
            out["measure"] = {
                size: {"cycles": c, "bytes_per_cycle": size / c}
                for size, c in value["measure"].items()
            }
        build = (
            "cached build"
            if run.build.cached
            else f"cold build {run.build.cold_seconds:.1f} s "
            f"({'cached' if run.build.runtime_cached else 'fresh'} Verilator runtime)"
        )
        progress(
            f"    N={n:>2}: {build}; {run.cycles:,} cycles simulated in "
            f"{time.perf_counter() - began:.1f} s; ATTEST {out['attest'][n]} cycles"
        )
    ns = sorted(out["attest"])
    out["attest_fit"] = linear_fit([float(n) for n in ns], [float(out["attest"][n]) for n in ns])
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: attestations per speed run: the model is ~10^4 times faster than the Amaranth simulator
SPEED_ATTESTATIONS = {"model": 200, "amaranth": 8, "verilator": 40}


def measure_simulators(
    progress: Progress,
    *,
    contexts: int = 8,
    cold_build: bool = True,
    repeats: int = 3,
    attestations: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Section 5: simulated cycles per second and attestations per second on every backend, and
    the Verilator build time: cold in a fresh cache directory, then cached.

    Every backend runs :func:`bench.jobs.speed_job` (set up 8 tasks, then attest back to back);
    cycles per second is the whole job's simulated cycles over its wall time inside the
    simulator, attestations per second is timed around the attestation loop alone.
    """
    from mchsm.export import TOP_NAME, verilog_text
    from mchsm.sim.amaranth_backend import run_on_amaranth
    from mchsm.sim.backends import run_on_backend
    from mchsm.sim.verilator import build, simulate_job

    counts = {**SPEED_ATTESTATIONS, **(attestations or {})}
    out: dict[str, Any] = {"contexts": contexts, "attestations": counts}

    def args(backend: str) -> dict[str, Any]:
        return {"contexts": contexts, "attestations": counts[backend]}

    model = [
        run_on_backend("model", jobs.speed_job, contexts, job_args=args("model")).value
        for _ in range(repeats)
    ]
    out["model"] = {
        "attest_per_s": statistics.median(m["attestations"] / m["seconds"] for m in model)
    }
    progress(f"    model: {out['model']['attest_per_s']:,.0f} attestations/s")

    amaranth = []
    for _ in range(repeats):

        async def job(driver: Any) -> dict[str, Any]:
            return await jobs.speed_job(driver, **args("amaranth"))

        cpu = time.process_time()
        run = run_on_amaranth(job, contexts)
        amaranth.append((run, time.process_time() - cpu))
    out["amaranth"] = _speed_figures([(r.cycles, r.seconds, cpu, r.result) for r, cpu in amaranth])
    progress(
        f"    Amaranth simulator: {out['amaranth']['cycles_per_s']:,.0f} cycles/s, "
        f"{out['amaranth']['attest_per_s']:.1f} attestations/s"
    )

    verilator = []
    for _ in range(repeats):
        cpu = _children_cpu()
        vrun = simulate_job(jobs.speed_job, contexts, job_args=args("verilator"))
        verilator.append((vrun, _children_cpu() - cpu))
    out["verilator"] = _speed_figures(
        [(r.cycles, r.job_wall_seconds, cpu, r.value) for r, cpu in verilator]
    )
    out["verilator"]["process_wall_seconds"] = statistics.median(
        r.wall_seconds for r, _ in verilator
    )
    progress(
        f"    cocotb + Verilator: {out['verilator']['cycles_per_s']:,.0f} cycles/s, "
        f"{out['verilator']['attest_per_s']:.1f} attestations/s (simulator process "
        f"{out['verilator']['process_wall_seconds']:.1f} s with start-up)"
    )
    # the same RTL must give the same HSM cycles per attestation on both simulators
    per = [r.result["hsm_cycles"] / r.result["attestations"] for r, _ in amaranth[:1]]
    per += [r.value["hsm_cycles"] / r.value["attestations"] for r, _ in verilator[:1]]
    same = per[0] == per[1]
    out["same_cycles_on_both_rtl_backends"] = same
    if not same:
        progress("    WARNING: Amaranth and Verilator disagree on the HSM cycles of the same job")

    out["hash_cli"] = measure_hash_cli(repeats)
    progress(
        f"    mchsm hash --backend verilator of {HASH_CLI_BYTES >> 10} KiB: "
        f"{out['hash_cli']['wall_seconds']:.1f} s wall, {out['hash_cli']['cpu_seconds']:.1f} s CPU"
    )

    began = time.perf_counter()
    text = verilog_text(contexts)
    out["verilog_export_seconds"] = time.perf_counter() - began
    cached = build(text, TOP_NAME)
    out["build_cached_seconds"] = cached.seconds
    out["build_cold_with_cached_runtime_seconds"] = (
        cached.cold_seconds if cached.runtime_cached else None
    )
    if cold_build:
        progress("    cold Verilator build in a fresh cache directory (about a minute) ...")
        with tempfile.TemporaryDirectory(prefix="mchsm-bench-cache-") as tmp:
            cpu = _children_cpu()
            began = time.perf_counter()
            cold = build(text, TOP_NAME, cache_dir=tmp)
            out["build_cold_seconds"] = time.perf_counter() - began
            out["build_cold_cpu_seconds"] = _children_cpu() - cpu
            out["build_cold_runtime_cached"] = cold.runtime_cached
        progress(
            f"    cold build {out['build_cold_seconds']:.1f} s wall, "
            f"{out['build_cold_cpu_seconds']:.1f} s CPU; cached {cached.seconds * 1e3:.0f} ms"
        )
    else:
        out["build_cold_seconds"] = None
    return out


#: the file `mchsm hash --backend verilator` is timed on (the issue's figure: 256 KiB)
HASH_CLI_BYTES = 256 << 10


def measure_hash_cli(repeats: int = 3) -> dict[str, Any]:
    """``mchsm hash --backend verilator`` of a 256 KiB file as a user runs it: the whole command,
    start-up and cached build included; median wall and CPU (its processes) over ``repeats``."""
    import hashlib
    import subprocess
    import sys

    data = bytes(i * 7 & 0xFF for i in range(HASH_CLI_BYTES))
    walls, cpus = [], []
    with tempfile.TemporaryDirectory(prefix="mchsm-bench-hash-") as tmp:
        path = Path(tmp) / "data.bin"
        path.write_bytes(data)
        main = "import sys; from mchsm.cli import main; sys.exit(main())"  # the `mchsm` script
        cli = [sys.executable, "-c", main, "hash", "--backend", "verilator", str(path)]
        for _ in range(repeats):
            cpu = _children_cpu()
            began = time.perf_counter()
            done = subprocess.run(cli, capture_output=True, text=True, check=False)
            walls.append(time.perf_counter() - began)
            cpus.append(_children_cpu() - cpu)
            if done.returncode or hashlib.sha256(data).hexdigest() not in done.stdout:
                raise RuntimeError(f"mchsm hash failed: {(done.stderr or done.stdout)[-300:]}")
    return {
        "bytes": HASH_CLI_BYTES,
        "wall_seconds": statistics.median(walls),
        "cpu_seconds": statistics.median(cpus),
    }


def _speed_figures(runs: list[tuple[int, float, float, dict[str, Any]]]) -> dict[str, Any]:
    """Medians over repeats of (cycles, job seconds, CPU seconds, job value)."""
    return {
        "cycles": runs[0][0],
        "job_seconds": statistics.median(r[1] for r in runs),
        "cycles_per_s": statistics.median(r[0] / r[1] for r in runs),
        "cpu_seconds": statistics.median(r[2] for r in runs),
        # robust to a shared machine: the simulated cycles over the CPU time the run used
        "cycles_per_cpu_s": statistics.median(r[0] / r[2] for r in runs if r[2] > 0),
        "attest_per_s": statistics.median(r[3]["attestations"] / r[3]["seconds"] for r in runs),
    }
