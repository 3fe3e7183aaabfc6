"""Area and clock: what the HSM costs on each board and per added context.

Two sources, named in the report:

* the **board reports** (``build/<board>/report.json``, written by ``mchsm build`` /
  ``make bitstreams``): nextpnr's logic cells and block RAMs after packing, Fmax and the
  critical path, and the per-module table of Yosys;
* a **synthesis-only sweep** over N = 4, 8, 16 contexts on the iCE40 (Yosys ``synth_ice40``
  and ``stat``, about a minute each, where a full place and route per N would take 7 minutes
  or more on this machine): LUT4s, flip-flops and block RAMs before packing, from which the
  cost of one more context follows.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SWEEP_CONTEXTS", "area_section", "measure_area"]

#: context counts of the synthesis-only sweep
SWEEP_CONTEXTS = (4, 8, 16)
#: issue 18's targets for the iCEBreaker build with 8 contexts and the ULX3S build
TARGET_ICE40_LC = 3400
TARGET_ICE40_MHZ = 24.0
TARGET_ECP5_MHZ = 60.0

Progress = Callable[[str], None]


def _board(root: Path, name: str) -> dict[str, Any] | None:
    path = root / "build" / name / "report.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    fmax = data.get("fmax", {})
    return {
        "report": str(path.relative_to(root)),
        "title": data.get("title", name),
        "contexts": data.get("contexts"),
        "logic_cells": data.get("logic_cells"),
        "logic_available": data.get("logic_available"),
        "block_rams": data.get("block_rams"),
        "block_rams_available": data.get("block_rams_available"),
        "fmax_mhz": min((v[0] for v in fmax.values()), default=None),
        "critical_path": (data.get("critical_paths") or [None])[0],
        "breakdown": data.get("breakdown", {}),
    }


def measure_area(progress: Progress, root: Path, sweep: tuple[int, ...] = SWEEP_CONTEXTS) -> dict:
    """The board reports as they are, and the synthesis-only sweep (run now)."""
    from mchsm.boards.platforms import synth_counts

    boards = {name: _board(root, name) for name in ("icebreaker", "ulx3s")}
    for name, rep in boards.items():
        if rep is None:
            progress(f"    no build/{name}/report.json: run `make bitstreams` for its figures")
    counts = {}
    with tempfile.TemporaryDirectory(prefix="mchsm-area-") as tmp:
        for n in sweep:
            counts[n] = synth_counts(
                "icebreaker", contexts=n, out_dir=Path(tmp) / str(n), progress=progress
            )
            progress(f"    N={n}: {counts[n]['lut']} LUT4, {counts[n]['ff']} FF")
    lo, hi = min(sweep), max(sweep)
    per = {cls: (counts[hi][cls] - counts[lo][cls]) / (hi - lo) for cls in ("lut", "ff", "ram")}
    return {"boards": boards, "sweep": {str(n): c for n, c in counts.items()}, "per_context": per}


def area_section(area: dict[str, Any] | None) -> list[str]:
    """Markdown lines of the area section (empty when it was not measured)."""
    if not area:
        return []
    lines = [
        "",
        "## Area and clock",
        "",
        "| board | contexts | logic cells | block RAMs | Fmax | critical path | target |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    targets = {
        "icebreaker": f"≤ {TARGET_ICE40_LC:,} LCs, ≥ {TARGET_ICE40_MHZ:g} MHz",
        "ulx3s": f"≥ {TARGET_ECP5_MHZ:g} MHz",
    }
    for name, rep in area["boards"].items():
        if rep is None:
            lines.append(
                f"| {name} | | no report (run `make bitstreams`) | | | | {targets[name]} |"
            )
            continue
        cp = rep.get("critical_path") or {}
        path = (
            f"{cp.get('delay_ns', 0):.1f} ns, `{cp.get('start', '?')}` -> `{cp.get('end', '?')}`"
            if cp
            else ""
        )
        pct = 100 * (rep["logic_cells"] or 0) / max(1, rep["logic_available"] or 1)
        lines.append(
            f"| {rep['title']} | {rep['contexts']} | {rep['logic_cells']:,} / "
            f"{rep['logic_available']:,} ({pct:.0f} %) | {rep['block_rams']} / "
            f"{rep['block_rams_available']} | {rep['fmax_mhz'] or 0:.2f} MHz | {path} | "
            f"{targets[name]} |"
        )
    lines += [
        "",
        "Cost per context, iCE40 synthesis only (Yosys `synth_ice40` + `stat`, before packing; "
        "no place and route per N):",
        "",
        "| contexts | LUT4 | flip-flops | carry | block RAMs |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, c in area["sweep"].items():
        lines.append(f"| {n} | {c['lut']:,} | {c['ff']:,} | {c['carry']:,} | {c['ram']} |")
    per = area["per_context"]
    lines += [
        "",
        f"One more context: {per['lut']:.1f} LUT4, {per['ff']:.1f} flip-flops, "
        f"{per['ram']:.2f} block RAMs.",
    ]
    ice = area["boards"].get("icebreaker")
    if ice and ice.get("breakdown"):
        from mchsm.boards.platforms import subtree_totals

        totals = subtree_totals(ice["breakdown"])
        lines += [
            "",
            "Where the iCEBreaker's cells go (Yosys per module, with submodules, before packing):",
            "",
            "| module | LUT4 | flip-flops | block RAMs |",
            "| --- | ---: | ---: | ---: |",
        ]
        for module, c in sorted(totals.items(), key=lambda kv: -kv[1].get("lut", 0)):
            if c.get("lut", 0) >= 20:
                lines.append(
                    f"| `{module}` | {c.get('lut', 0)} | {c.get('ff', 0)} | {c.get('ram', 0)} |"
                )
    return lines
