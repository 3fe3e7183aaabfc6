"""The long isolation run: many interleavings of several callers, model against RTL.

``make fuzz`` runs this.  Interleavings (:func:`mchsm.sim.isolation.interleave_job`) go in
batches of fresh seeds; each batch runs on the golden model, is checked against the isolation
properties, and runs on every RTL backend asked for, access for access against the model.  A
progress line per batch, a summary table at the end, and exit status 1 if anything diverged or
broke isolation.  Diverging seeds are printed, so one can be replayed with ``--first``.

    python -m mchsm.sim.fuzz --batches 20 --batch 100 --backends amaranth,verilator
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from mchsm.sim.backends import BACKENDS, run_on_backend
from mchsm.sim.isolation import Interleaving, check_isolation, interleave_job

__all__ = ["FuzzTally", "main"]

CONTEXTS = 4


@dataclass
class FuzzTally:
    """What one backend saw over the whole run."""

    interleavings: int = 0
    accesses: int = 0
    diverged: int = 0
    seconds: float = 0.0


def _diverged(model: list[Interleaving], rtl: list[Interleaving], seeds: list[int]) -> list[int]:
    bad = [
        s
        for s, m, r in zip(seeds, model, rtl, strict=True)
        if m.accesses != r.accesses or m.commands != r.commands
    ]
    if model[-1].final != rtl[-1].final and not bad:
        bad.append(seeds[-1])
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mchsm.sim.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100, help="interleavings per batch")
    parser.add_argument("--first", type=int, default=100_000, help="first seed")
    parser.add_argument(
        "--backends", default="amaranth,verilator", help="RTL backends, comma-separated"
    )
    parser.add_argument("--hostile", type=int, default=30, help="accesses of a hostile caller")
    parser.add_argument("--commands", type=int, default=4, help="commands of an honest caller")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in BACKENDS or b == "model"]
    if unknown:
        rtl = ", ".join(b for b in BACKENDS if b != "model")
        parser.error(f"--backends must name RTL backends among {rtl}, not {', '.join(unknown)}")
    tally = {name: FuzzTally() for name in ["model", *backends]}
    violations: list[str] = []
    diverging: dict[str, list[int]] = {b: [] for b in backends}
    began = time.perf_counter()
    for k in range(args.batches):
        seeds = list(range(args.first + k * args.batch, args.first + (k + 1) * args.batch))
        job_args = {
            "seeds": seeds,
            "contexts": CONTEXTS,
            "hostile_accesses": args.hostile,
            "commands": args.commands,
        }
        runs = {}
        for name in tally:
            run = run_on_backend(name, interleave_job, CONTEXTS, job_args=job_args)
            runs[name] = run.value
            t = tally[name]
            t.interleavings += len(seeds)
            t.accesses += sum(len(log.accesses) for log in run.value)
            t.seconds += run.wall_seconds
        violations += check_isolation(runs["model"], CONTEXTS)
        for name in backends:
            bad = _diverged(runs["model"], runs[name], seeds)
            tally[name].diverged += len(bad)
            diverging[name] += bad
        done = (k + 1) * args.batch
        print(
            f"[{k + 1}/{args.batches}] {done} interleavings, "
            f"{sum(len(d) for d in diverging.values())} diverged, {len(violations)} isolation "
            f"violations, {time.perf_counter() - began:.0f} s",
            flush=True,
        )
    print()
    print(f"{'backend':10} {'interleavings':>14} {'accesses':>10} {'diverged':>9} {'seconds':>8}")
    for name, t in tally.items():
        print(f"{name:10} {t.interleavings:>14} {t.accesses:>10} {t.diverged:>9} {t.seconds:>8.1f}")
    print(f"isolation violations on the model: {len(violations)}")
    for line in violations[:10]:
        print(f"  {line}")
    for name, seeds in diverging.items():
        if seeds:
            print(f"{name} diverged from the model at seeds {seeds[:20]}")
    return 1 if violations or any(diverging.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
