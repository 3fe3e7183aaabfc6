"""``make bench``: measure the HSM, the simulators and the verifier, side by side with a TPM 2.0.

Run from the repository root::

    .venv/bin/python -m bench.run                 # everything (~3 min with warm caches, 6-16 cold)
    .venv/bin/python -m bench.run --quick         # fewer sizes and repeats, no cold build
    .venv/bin/python -m bench.run --report-only   # redraw table and plot from results.json
    .venv/bin/python -m bench.run --only verifier # one section, merged into results.json

Sections, each printing progress lines as it goes:

1. HSM cycles on the RTL (cocotb + Verilator, one cached build per N): SHA-256 per block,
   HMAC of 64 bytes, ATTEST for N = 1..32, UPDATE, MEASURE 1-64 KiB; times at 12 MHz and Fmax.
2. Bytes on the wire: mchsm's attestation and update beside a TPM 2.0 quote of 8 PCRs.
3. A TPM 2.0 (swtpm + tpm2-tools) quoting and verifying, when installed; one line otherwise.
4. Verifier throughput for fleets of 1k, 100k and 1M devices (built once, cached in .cache/),
   on SQLite and on PostgreSQL (a local server from the pgserver wheel), 1 and 2 processes.
5. Simulator speed (Amaranth, cocotb + Verilator, the model) and Verilator build times.

It writes ``bench/results.json``, ``bench/results.md`` and ``bench/attest.png``.  A bench
measures and reports: it exits 0 when targets are missed (the table says by how much) and
non-zero only if a measurement itself could not be made.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench"


def _progress(message: str) -> None:
    print(message, flush=True)


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def _importable_by_simulator() -> None:
    """cocotb runs the jobs in the simulator's own Python, which imports ``bench.jobs`` by
    name: it must find this checkout on its path."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *paths])


def _evidence_sizes(tpm: dict[str, Any] | None) -> dict[str, Any]:
    """Section 2: bytes on the wire, ours from the protocol constants, the TPM's from the
    quote tpm2_quote wrote when it ran here, else from the structure definitions."""
    from bench.tpm import quote_sizes
    from mchsm.constants import EVIDENCE_SIZE, NONCE_SIZE
    from mchsm.sw.protocol import UPDATE_ACK_SIZE, UPDATE_AUTH_SIZE

    sizes = quote_sizes()
    source = "TPM 2.0 Part 2 structure definitions (no swtpm run here)"
    if tpm and not tpm.get("skipped"):
        measured = tpm["measured_sizes"]
        for key in ("rsa2048", "ecc_p256"):
            attest, sig = measured[f"tpms_attest_{key}"], measured[f"signature_{key}"]
            sizes[f"quote_{key}"] = 2 + attest + sig
        agree = all(
            measured[f"tpms_attest_{k}"] == sizes["tpms_attest"]
            and measured[f"signature_{k}"] == sizes[f"signature_{k}"]
            for k in ("rsa2048", "ecc_p256")
        )
        source = (
            "measured from tpm2_quote's output on swtpm (TPMS_ATTEST "
            f"{measured['tpms_attest_rsa2048']} B, signatures "
            f"{measured['signature_rsa2048']} / {measured['signature_ecc_p256']} B"
            f"{', as the structure definitions give' if agree else ''})"
        )
    return {
        "mchsm_challenge": NONCE_SIZE + 4,
        "mchsm_evidence": EVIDENCE_SIZE,
        "mchsm_update_auth": UPDATE_AUTH_SIZE,
        "mchsm_update_ack": UPDATE_ACK_SIZE,
        "tpm": sizes,
        "tpm_source": source,
    }


def _our_check(repeats: int = 3000) -> dict[str, float]:
    """CPU time of the cryptography of one evidence check, without SQLite: derive K_att, hash
    the 8 references into D, MAC the 96-byte message, compare.  The in-process counterpart of
    verifying a TPM quote's signature."""
    from bench.jobs import DEV
    from bench.jobs import ROOT as ROOT_KEY
    from mchsm.sw import protocol

    refs = {ctx: protocol.reference(bytes([ctx])) for ctx in range(1, 9)}
    nonce = bytes(32)
    tag = protocol.Evidence.issue(
        protocol.derive_att_key(ROOT_KEY), DEV, nonce, 0xFF, 0xFF, 1, refs
    ).tag
    cpu = time.process_time()
    for _ in range(repeats):
        k_att = protocol.derive_att_key(ROOT_KEY)
        digest = protocol.select_digest(refs, 0xFF)
        expected = protocol.attest_tag(k_att, DEV, nonce, 0xFF, 0xFF, 1, digest)
        if not protocol.tags_equal(expected, tag):
            raise AssertionError("our own evidence does not verify")
    return {"cpu_seconds": (time.process_time() - cpu) / repeats}


def _calibrate() -> dict[str, float]:
    """How fast one core of this machine runs plain Python and a SHA-256 HMAC, so that the
    verifier's and the model's figures can be compared with a run on another machine."""
    from mchsm.sw import protocol

    loops = []
    for _ in range(3):
        cpu = time.process_time()
        total = 0
        for i in range(10_000_000):
            total += i
        loops.append(time.process_time() - cpu)
    cpu = time.process_time()
    for _ in range(20_000):
        protocol.hmac_sha256(bytes(32), bytes(96))
    return {
        "python_loop_1e7_cpu_seconds": min(loops),
        "hmac_sha256_96B_cpu_us": (time.process_time() - cpu) / 20_000 * 1e6,
    }


def _write(results: dict[str, Any]) -> None:
    results["targets"] = report.targets(results)
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    # the table is rendered from the JSON as written, so a --report-only run gives the same
    results = json.loads((OUT / "results.json").read_text())
    (OUT / "results.md").write_text(report.markdown(results))
    try:
        report.attest_plot(results, OUT / "attest.png")
    except ImportError as exc:  # matplotlib comes with the bench extra
        _progress(f"    no plot: {exc} (pip install -e '.[bench]')")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def main(argv: list[str] | None = None) -> int:
    """Run the bench; returns the exit code (0 unless a measurement could not be made)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller fleets and fewer repeats, no cold build (a smoke run)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite results.md and attest.png from results.json",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["hsm", "tpm", "verifier", "service", "simulators", "area", "cold-build"],
        help="leave a section out (repeatable)",
    )
    parser.add_argument(
        "--only",
        choices=["hsm", "tpm", "verifier", "service", "simulators", "area"],
        help="run only this section and merge it into the existing results.json",
    )
    parser.add_argument(
        "--stores",
        type=lambda s: tuple(s.split(",")),
        default=("sqlite", "postgresql"),
        help="verifier stores to measure (default sqlite,postgresql)",
    )
    parser.add_argument(
        "--fleets",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        help="comma-separated fleet sizes (default 1000,100000,1000000)",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        _write(json.loads((OUT / "results.json").read_text()))
        _progress(f"rewrote {OUT / 'results.md'} and {OUT / 'attest.png'}")
        return 0

    from bench import hsm, tpm, verifier_bench

    _importable_by_simulator()
    began = time.perf_counter()
    # fleets are big (the 1M-device registry is ~0.8 GB) and slow to build: kept between runs
    cache = Path(os.environ.get("MCHSM_BENCH_CACHE", ROOT / ".cache" / "bench"))
    results: dict[str, Any] = {
        "commit": _git("rev-parse", "--short", "HEAD") or "unknown",
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": _machine(),
        "quick": args.quick,
        # the machine is shared: how busy it was says how much to trust the wall times
        "load_average_start": os.getloadavg()[0],
        "notes": [],
    }
    results["fmax"] = hsm.find_fmax(ROOT)
    results["calibration"] = _calibrate()
    _progress(
        f"== machine: {results['machine']}; a 10^7-iteration Python loop takes "
        f"{results['calibration']['python_loop_1e7_cpu_seconds']:.2f} s CPU, an HMAC-SHA256 "
        f"{results['calibration']['hmac_sha256_96B_cpu_us']:.1f} µs"
    )
    skip = set(args.skip)
    if args.quick:
        skip.add("cold-build")
    if args.only:
        skip |= {"hsm", "tpm", "verifier", "service", "simulators", "area", "cold-build"} - {
            args.only
        }

    def section(title: str) -> float:
        _progress(f"== {title} [{time.perf_counter() - began:.0f} s]")
        return time.perf_counter()

    if "hsm" not in skip:
        t = section("1. HSM cycles on the RTL (cocotb + Verilator, one build per N)")
        contexts = (1, 8, 32) if args.quick else hsm.ATTEST_CONTEXTS
        sizes = (1024, 65536) if args.quick else hsm.MEASURE_SIZES
        results["hsm"] = hsm.measure_hsm(_progress, contexts, sizes)
        results["hsm"]["seconds"] = time.perf_counter() - t

    if "tpm" not in skip:
        t = section("3. TPM 2.0 side by side (swtpm + tpm2-tools)")
        missing = tpm.tpm_missing()
        if missing:
            results["tpm"] = {"skipped": missing}
            _progress(f"    skipped the TPM part: {missing}")
        else:
            try:
                results["tpm"] = tpm.measure_tpm(_progress, repeats=8 if args.quick else 25)
            except (RuntimeError, OSError) as exc:
                results["tpm"] = {"skipped": f"swtpm/tpm2-tools failed: {exc}"}
                _progress(f"    skipped the TPM part: {exc}")
            else:
                net = results["tpm"]["net_seconds"]
                _progress(
                    f"    tpm2_quote net {net['quote_rsa2048'] * 1e3:.1f} ms (RSA-2048), "
                    f"{net['quote_ecc_p256'] * 1e3:.1f} ms (ECC P-256); tpm2_checkquote "
                    f"net {net['checkquote_rsa2048'] * 1e3:.1f} / "
                    f"{net['checkquote_ecc_p256'] * 1e3:.1f} ms"
                )
            results["tpm"]["seconds"] = time.perf_counter() - t
    results["our_check"] = _our_check()

    section("2. Bytes on the wire")
    results["evidence"] = _evidence_sizes(results.get("tpm"))
    ev = results["evidence"]
    _progress(
        f"    mchsm {ev['mchsm_challenge']} + {ev['mchsm_evidence']} B per attestation; "
        f"TPM quote {ev['tpm']['quote_rsa2048']} B (RSA) / {ev['tpm']['quote_ecc_p256']} B "
        f"(ECC) + challenge {ev['tpm']['challenge']} B [{ev['tpm_source'][:40]}...]"
    )

    if "verifier" not in skip:
        t = section("4. Verifier throughput (SQLite and PostgreSQL; 1 and 2 processes)")
        fleets = args.fleets or ((1_000, 100_000) if args.quick else verifier_bench.FLEETS)
        kwargs = {"single": 500, "batched": 2048, "repeats": 2} if args.quick else {}
        results["verifier"] = verifier_bench.measure_verifier(
            _progress, cache, fleets=fleets, stores=args.stores, **kwargs
        )
        results["verifier"]["seconds"] = time.perf_counter() - t

    if "service" not in skip:
        from bench import service_bench

        t = section("4b. Verifier service over HTTP (1 and 2 workers, loopback load generator)")
        results["service"] = service_bench.measure_service(_progress, cache)
        results["service"]["seconds"] = time.perf_counter() - t

    if "simulators" not in skip:
        t = section("5. Simulator speed and Verilator build time")
        results["simulators"] = hsm.measure_simulators(
            _progress, cold_build="cold-build" not in skip, repeats=1 if args.quick else 3
        )
        results["simulators"]["seconds"] = time.perf_counter() - t

    if "area" not in skip:
        from bench import area

        t = section("6. Area and clock (board reports; synthesis-only sweep over N)")
        results["area"] = area.measure_area(_progress, ROOT)
        results["area"]["seconds"] = time.perf_counter() - t

    results["runtime_seconds"] = runtime = time.perf_counter() - began
    results["load_average_end"] = os.getloadavg()[0]
    if args.only and (OUT / "results.json").exists():
        # one section measured now, the others as the last full run left them
        merged = json.loads((OUT / "results.json").read_text())
        merged[args.only] = results[args.only]
        merged.setdefault("notes", []).append(
            f"Section {args.only!r} re-measured alone at {results['commit']} on {results['date']}"
            f" (load average {results['load_average_start']:.1f} on {os.cpu_count()} cores)."
        )
        results = merged
    _write(results)
    _progress(
        f"== done in {runtime:.0f} s: {OUT / 'results.md'}, "
        f"{OUT / 'results.json'}, {OUT / 'attest.png'}"
    )
    for t in results["targets"]:
        _progress(
            f"    {'met   ' if t['met'] else 'MISSED'} {t['name']}: "
            f"{t['value']:,.4g} (target {'≤' if t['kind'] == 'max' else '≥'} "
            f"{t['target']:,})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
