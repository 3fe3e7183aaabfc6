"""Turn the bench's results into the Markdown table, the target verdicts and the plot.

Kept apart from the measuring so that ``python -m bench.run --report-only`` can redraw the table
and the plot from ``bench/results.json`` without measuring anything again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.area import area_section

__all__ = ["attest_plot", "markdown", "targets"]


def _us(cycles: float, mhz: float) -> str:
    return f"{cycles / mhz:,.1f} µs"


def _time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:,.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:,.2f} ms"
    return f"{seconds * 1e6:,.1f} µs"


def _check(
    name: str, value: float, target: float, kind: str, unit: str, digits: int = 0
) -> dict[str, Any]:
    """One target: met or missed, and by how much (absolute and relative)."""
    met = value <= target if kind == "max" else value >= target
    gap = value - target if kind == "max" else target - value
    if met:
        text = "met"
        if target and unit:  # a margin on a dimensionless criterion (R², a ratio) says little
            text += f" ({abs(gap) / abs(target):.0%} margin)"
    else:
        text = (
            f"**MISSED** by {gap:,.{digits}f}{f' {unit}' if unit else ''} ({gap / abs(target):.0%})"
        )
    return {
        "name": name,
        "value": value,
        "target": target,
        "kind": kind,
        "met": met,
        "verdict": text,
    }


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue, judged on the results ``r``."""
    out: list[dict[str, Any]] = []
    hsm = r.get("hsm")
    if hsm:
        att = {int(k): v for k, v in hsm["attest"].items()}
        if "sha256" in hsm:
            out.append(
                _check(
                    "SHA-256 cycles/block",
                    hsm["sha256"]["cycles_per_block"],
                    65,
                    "max",
                    "cycles",
                    2,
                )
            )
        if "hmac_64B" in hsm:
            out.append(_check("HMAC 64 B cycles", hsm["hmac_64B"], 200, "max", "cycles"))
        if 8 in att:
            out.append(_check("ATTEST(8) cycles", att[8], 600, "max", "cycles"))
        if 32 in att:
            out.append(_check("ATTEST(32) cycles", att[32], 1400, "max", "cycles"))
        out.append(_check("ATTEST linear in N (R²)", hsm["attest_fit"]["r2"], 0.99, "min", "", 4))
        measure = {int(k): v for k, v in hsm.get("measure", {}).items()}
        if 65536 in measure:
            out.append(
                _check(
                    "MEASURE 64 KiB bytes/cycle",
                    measure[65536]["bytes_per_cycle"],
                    0.95,
                    "min",
                    "B/cycle",
                    3,
                )
            )
    ver = r.get("verifier") or {}
    for store, fleets in verifier_stores(ver).items():
        for n, f in sorted(fleets.items()):
            for mode, procs in (("batched", "1 process"), ("batched_2proc", "2 processes")):
                if mode in f:
                    # PostgreSQL: the CPU of the verifier and of its server backend together
                    key = "per_total_cpu_s" if "per_total_cpu_s" in f[mode] else "per_cpu_s"
                    out.append(
                        _check(
                            f"{store} verify_many({ver['batch']}) /s per CPU s, {n:,} devices, "
                            f"{procs}",
                            f[mode][key],
                            25_000,
                            "min",
                            "verifications/s",
                        )
                    )
        rates = [
            f["batched"].get("per_total_cpu_s", f["batched"]["per_cpu_s"]) for f in fleets.values()
        ]
        if len(rates) > 1:
            out.append(
                _check(
                    f"{store} verifier flat in fleet size (slowest/fastest)",
                    min(rates) / max(rates),
                    0.8,
                    "min",
                    "",
                    2,
                )
            )
    svc = r.get("service")
    for run in svc.get("runs", []) if svc else []:
        out.append(
            _check(
                f"service: complete attestations/s over HTTP, {run['workers']} worker(s)",
                run["attestations_per_second"],
                2_500,
                "min",
                "attestations/s",
            )
        )
    return out


def verifier_stores(ver: dict[str, Any] | None) -> dict[str, dict[int, dict[str, Any]]]:
    """store -> fleet size -> figures; results written before PostgreSQL are SQLite's."""
    if not ver:
        return {}
    if "fleets" in ver:
        return {"sqlite": {int(k): v for k, v in ver["fleets"].items()}}
    return {
        store: {int(k): v for k, v in fleets.items()}
        for store, fleets in ver.get("stores", {}).items()
        if not fleets.get("skipped")
    }


def markdown(r: dict[str, Any]) -> str:
    """The results table (Markdown), with the run's provenance above it and notes below."""
    rows: list[tuple[str, str, str, str, str]] = []
    verdicts = {t["name"]: t["verdict"] for t in targets(r)}

    def row(section: str, what: str, result: str, target: str = "", name: str = "") -> None:
        rows.append((section, what, result, target, verdicts.get(name, "")))

    fmax = r.get("fmax", {"mhz": 26.0, "whole_design": False})
    mhz, board = float(fmax["mhz"]), 12.0
    fmax_label = f"{mhz:g} MHz{'' if fmax.get('whole_design') else '†'}"

    def cyc(c: float) -> str:
        return f"{c:,.0f} cycles = {_us(c, board)} @ 12 MHz, {_us(c, mhz)} @ {fmax_label}"

    hsm = r.get("hsm")
    if hsm:
        s = "HSM (RTL, Verilator)"
        if "sha256" in hsm:
            sha = hsm["sha256"]
            row(
                s,
                f"SHA-256, sustained, per 64-byte block ({sha['blocks']}-block message)",
                f"{sha['cycles_per_block']:.2f} cycles/block",
                "≤ 65",
                "SHA-256 cycles/block",
            )
        if "hmac_64B" in hsm:
            row(
                s,
                "HMAC-SHA256 of 64 bytes (HMAC command, key imported)",
                cyc(hsm["hmac_64B"]),
                "≤ 200",
                "HMAC 64 B cycles",
            )
        for n, c in sorted((int(k), v) for k, v in hsm["attest"].items()):
            target = {8: "≤ 600", 32: "≤ 1400"}.get(n, "")
            row(
                s,
                f"ATTEST, {n} context{'s' if n > 1 else ''} selected",
                cyc(c),
                target,
                f"ATTEST({n}) cycles",
            )
        fit = hsm["attest_fit"]
        row(
            s,
            "ATTEST(N) least-squares line",
            f"{fit['slope']:.1f} cycles/context × N + {fit['intercept']:.1f}, R² = {fit['r2']:.4f}",
            "linear (R² ≥ 0.99)",
            "ATTEST linear in N (R²)",
        )
        if "update" in hsm:
            row(s, "UPDATE (authorisation checked, reference installed, ack)", cyc(hsm["update"]))
        for size, m in sorted((int(k), v) for k, v in hsm.get("measure", {}).items()):
            row(
                s,
                f"MEASURE {size // 1024} KiB image",
                f"{m['bytes_per_cycle']:.3f} B/cycle ({m['cycles']:,} cycles = "
                f"{_us(m['cycles'], board)} @ 12 MHz)",
                "≥ 0.95 B/cycle" if size == 65536 else "",
                "MEASURE 64 KiB bytes/cycle" if size == 65536 else "",
            )

    ev = r.get("evidence")
    if ev:
        s = "Bytes on the wire"
        row(
            s,
            "mchsm attestation of 8 tasks: challenge (nonce 32 + sel 4) + evidence 44",
            f"{ev['mchsm_challenge']} + {ev['mchsm_evidence']} = "
            f"{ev['mchsm_challenge'] + ev['mchsm_evidence']} B",
        )
        row(
            s,
            "mchsm update authorisation + ack",
            f"{ev['mchsm_update_auth']} + {ev['mchsm_update_ack']} = "
            f"{ev['mchsm_update_auth'] + ev['mchsm_update_ack']} B",
        )
        t = ev["tpm"]
        for key, label in (("rsa2048", "RSA-2048"), ("ecc_p256", "ECDSA P-256")):
            row(
                s,
                f"TPM 2.0 quote of 8 PCRs, {label}: challenge + TPM2B_ATTEST + "
                f"TPMT_SIGNATURE (+ 8 PCR values)",
                f"{t['challenge']} + {t[f'quote_{key}']} = {t['challenge'] + t[f'quote_{key}']}"
                f" B (+ {t['pcr_values']} = {t['challenge'] + t[f'quote_{key}'] + t['pcr_values']}"
                f" B)",
            )
        row(s, "source of the TPM sizes", ev["tpm_source"])

    tpm = r.get("tpm")
    sims = r.get("simulators", {})
    ver = r.get("verifier")
    if tpm is not None:
        s = "TPM 2.0 side by side"
        if tpm.get("skipped"):
            row(s, "swtpm + tpm2-tools", f"skipped: {tpm['skipped']}")
        else:
            net, med = tpm["net_seconds"], tpm["median_seconds"]
            att8 = hsm["attest"].get(8, hsm["attest"].get("8")) if hsm else None
            for key, label in (("rsa2048", "RSA-2048"), ("ecc_p256", "ECC P-256")):
                ratio = ""
                if att8:
                    ratio = (
                        f"; {net[f'quote_{key}'] / (att8 / board * 1e-6):,.0f}× mchsm "
                        f"ATTEST(8) @ 12 MHz"
                    )
                row(
                    s,
                    f"tpm2_quote, 8 PCRs, {label} AK (swtpm, net of tool start-up)",
                    f"{_time(net[f'quote_{key}'])} (raw {_time(med[f'quote_{key}'])}; "
                    f"swtpm CPU {_time(tpm['tpm_process_cpu_seconds'][f'quote_{key}'])})"
                    f"{ratio}",
                )
            row(
                s,
                "tool start-up subtracted: tpm2_getrandom 1 / tpm2_print",
                f"{_time(med['startup_tpm_tool'])} / {_time(med['startup_offline_tool'])}",
            )
            quart = tpm.get("net_quartiles_seconds", {})
            for key, label in (("rsa2048", "RSA-2048"), ("ecc_p256", "ECC P-256")):
                name = f"checkquote_{key}"
                lo, hi = quart.get(name, (net[name], net[name]))
                check = (
                    _time(net[name])
                    if lo > 0
                    else f"lost in start-up noise (median {net[name] * 1e3:+.1f} ms, quartiles "
                    f"{lo * 1e3:+.1f}…{hi * 1e3:+.1f} ms)"
                )
                row(
                    s,
                    f"tpm2_checkquote, {label} (net of start-up) / same check in process",
                    f"{check} / {_time(tpm['in_process_verify_cpu_seconds'][key])} CPU",
                )
        if hsm and 8 in {int(k) for k in hsm["attest"]}:
            c = {int(k): v for k, v in hsm["attest"].items()}[8]
            model = sims.get("model", {}).get("attest_per_s")
            row(
                s,
                "mchsm ATTEST(8): RTL at 12 MHz / at Fmax / golden model (Python) wall",
                f"{_us(c, board)} / {_us(c, mhz)} / " + (f"{_time(1 / model)}" if model else "n/a"),
            )
        if r.get("our_check"):
            row(
                s,
                "mchsm evidence check, crypto only, in process (K_att, D, HMAC)",
                f"{_time(r['our_check']['cpu_seconds'])} CPU",
            )
        sqlite = verifier_stores(ver).get("sqlite")
        if ver and sqlite:
            f1k = sqlite[min(sqlite)]
            row(
                s,
                "mchsm Verifier.verify, whole check + SQLite (smallest fleet) / per item "
                f"of verify_many({ver['batch']})",
                f"{f1k['single']['us_cpu_each']:,.0f} µs / {f1k['batched']['us_cpu_each']:,.0f} µs"
                " CPU",
            )

    if ver:
        keylime = ver.get("keylime_quotes_per_s", 2_500)
        for store, fleets in verifier_stores(ver).items():
            s = {
                "sqlite": "Verifier, SQLite (WAL, fsync per commit)",
                "postgresql": "Verifier, PostgreSQL (local server, synchronous commit)",
            }[store]
            row(
                s,
                "anchor: Keylime, the attestation verifier people deploy (SQLite or PostgreSQL "
                "through SQLAlchemy), reports up to",
                f"{keylime:,} quotes verified/s",
            )
            for n, f in sorted(fleets.items()):
                row(
                    s,
                    f"{n:,} devices × 8 tasks: verify (1 transaction each)",
                    f"{f['single']['per_cpu_s']:,.0f}/s per CPU s "
                    f"({f['single']['per_wall_s']:,.0f}/s wall)",
                )
                for mode, procs in (("batched", "1 process"), ("batched_2proc", "2 processes")):
                    if mode not in f:
                        continue
                    m = f[mode]
                    if store == "postgresql" and "per_total_cpu_s" in m:
                        figure = (
                            f"{m['per_total_cpu_s']:,.0f}/s per CPU s of verifier and server "
                            f"({m['per_cpu_s']:,.0f}/s per verifier CPU s, server "
                            f"{m['server_us_cpu_each']:.0f} µs each; {m['per_wall_s']:,.0f}/s "
                            f"wall, {m['per_wall_s'] / keylime:,.1f}× Keylime)"
                        )
                    else:
                        figure = (
                            f"{m['per_cpu_s']:,.0f}/s per CPU s ({m['per_wall_s']:,.0f}/s wall, "
                            f"{m['per_wall_s'] / keylime:,.1f}× Keylime)"
                        )
                    row(
                        s,
                        f"{n:,} devices × 8 tasks: verify_many, batches of {ver['batch']}, {procs}",
                        figure,
                        "≥ 25,000/s",
                        f"{store} verify_many({ver['batch']}) /s per CPU s, {n:,} devices, {procs}",
                    )
            name = f"{store} verifier flat in fleet size (slowest/fastest)"
            found = [t for t in targets(r) if t["name"] == name]
            if found:
                row(s, "flatness: slowest / fastest fleet, 1 process", f"{found[0]['value']:.2f}",
                    "≥ 0.8 (flat)", name)  # fmt: skip

    if sims:
        s = "Simulators"
        for key, label in (("amaranth", "Amaranth simulator"), ("verilator", "cocotb + Verilator")):
            if key in sims:
                f = sims[key]
                row(
                    s,
                    f"{label}: ATTEST(8) workload",
                    f"{f['cycles_per_s']:,.0f} cycles/s, {f['attest_per_s']:,.1f} attestations/s"
                    + (
                        f" ({f['cycles_per_cpu_s']:,.0f} cycles per CPU s)"
                        if "cycles_per_cpu_s" in f and key == "amaranth"  # Verilator's CPU
                        # time is its whole process's, start-up included: not per cycle
                        else ""
                    ),
                )
        if "hash_cli" in sims:
            h = sims["hash_cli"]
            row(
                s,
                f"`mchsm hash --backend verilator` of {h['bytes'] >> 10} KiB, start-up included",
                f"{h['wall_seconds']:.1f} s wall, {h['cpu_seconds']:.1f} s CPU",
            )
        if "same_cycles_on_both_rtl_backends" in sims:
            row(
                s,
                "HSM cycles per ATTEST identical on both RTL simulators",
                "yes" if sims["same_cycles_on_both_rtl_backends"] else "**NO**",
            )
        if "model" in sims:
            row(
                s,
                "golden model (no cycles): same workload",
                f"{sims['model']['attest_per_s']:,.0f} attestations/s",
            )
        if sims.get("build_cold_seconds"):
            row(
                s,
                "Verilator build, cold (fresh cache: runtime + design)",
                f"{sims['build_cold_seconds']:.1f} s wall, {sims['build_cold_cpu_seconds']:.1f}"
                " s CPU",
            )
        if sims.get("build_cold_with_cached_runtime_seconds"):
            row(
                s,
                "Verilator build, design only (runtime cached), when it was made",
                f"{sims['build_cold_with_cached_runtime_seconds']:.1f} s",
            )
        if "build_cached_seconds" in sims:
            row(
                s,
                "Verilator build, cached / Verilog export of the design",
                f"{sims['build_cached_seconds'] * 1e3:,.0f} ms / "
                f"{sims['verilog_export_seconds']:.1f} s",
            )

    lines = [
        f"Commit `{r.get('commit', '?')}`{' (with uncommitted changes)' if r.get('dirty') else ''}"
        f", {r.get('date', '?')}, {r.get('machine', '?')}; `make bench` took "
        f"{r.get('runtime_seconds', 0):.0f} s (load average {r.get('load_average_start', 0):.1f}"
        f" at the start, {r.get('load_average_end', 0):.1f} at the end).",
        "",
        "| section | measurement | result | target | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    last = None
    for section, what, result, target, verdict in rows:
        lines.append(
            f"| {section if section != last else ''} | {what} | {result} | {target} | {verdict} |"
        )
        last = section
    lines.append("")
    lines.append(f"† Fmax: {fmax.get('source', '?')}.")
    lines.append("")
    cal = r.get("calibration")
    if cal:
        lines.append(
            f"Machine speed, to compare machines by: a 10^7-iteration Python loop takes "
            f"{cal['python_loop_1e7_cpu_seconds']:.2f} s of CPU here and an HMAC-SHA256 "
            f"of 96 bytes {cal['hmac_sha256_96B_cpu_us']:.1f} µs (via `cryptography`); "
            f"the software figures (verifier, model, simulators) scale with them."
        )
        lines.append("")
    lines.append(
        "Cycles are the HSM's CYCLES register: from the CMD write to done, including the "
        "data arriving over the Wishbone bus (2 cycles per word), not the host's polling."
    )
    lines += service_section(r.get("service"))
    lines += area_section(r.get("area"))
    for note in r.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def service_section(svc: dict[str, Any] | None) -> list[str]:
    """The verifier service under load (bench/service_bench.py), as markdown lines."""
    if not svc:
        return []
    lines = [
        "",
        f"## Verifier service under load ({svc['store']}, {svc['devices']:,} devices, "
        f"{svc['connections']} connections, loopback)",
        "",
        "One attestation = open a session, post the evidence, receive the signed EAR (two HTTP "
        f"round trips). Keylime publishes {svc['keylime_quotes_per_second']:,} quotes/s.",
        "",
        "| workers | attestations/s | p50 ms | p99 ms | service CPU µs/att. | load gen CPU µs/att. "
        "| load average |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in svc["runs"]:
        lines.append(
            f"| {run['workers']} | {run['attestations_per_second']:,.0f} | "
            f"{run['latency_p50_ms']:.1f} | {run['latency_p99_ms']:.1f} | "
            f"{run['service_cpu_us_per_attestation']:.0f} | "
            f"{run['loadgen_cpu_us_per_attestation']:.0f} | {run['load_average']:.1f} |"
        )
    prof = svc.get("profile") or {}
    total = sum(prof.values()) or 1.0
    if prof:
        lines += ["", "Where one worker's time goes (cProfile, both threads, wall seconds):", ""]
        lines += [f"- {k}: {v:.2f} s ({100 * v / total:.0f} %)" for k, v in prof.items()]
    return lines


def attest_plot(r: dict[str, Any], path: Path) -> None:
    """ATTEST cycles and bytes on the wire against N, and the latencies beside the TPM's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hsm, ev, tpm = r.get("hsm"), r.get("evidence"), r.get("tpm") or {}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    if hsm:
        pts = sorted((int(k), v) for k, v in hsm["attest"].items())
        ns, cs = [p[0] for p in pts], [p[1] for p in pts]
        fit = hsm["attest_fit"]
        ax.plot(ns, cs, "o", label="ATTEST (RTL, Verilator)")
        ax.plot(
            [0, max(ns)],
            [fit["intercept"], fit["intercept"] + fit["slope"] * max(ns)],
            "-",
            label=f"{fit['slope']:.1f}·N + {fit['intercept']:.0f} (R² {fit['r2']:.4f})",
        )
        ax.plot([8, 32], [600, 1400], "rv", label="targets (≤)")
        ax.set_xlabel("contexts selected N")
        ax.set_ylabel("cycles")
        ax.set_title("ATTEST cycles")
        sec = ax.secondary_yaxis("right", functions=(lambda c: c / 12.0, lambda u: u * 12.0))
        sec.set_ylabel("µs at 12 MHz")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[1]
    if ev:
        ns = list(range(1, 33))
        ours = ev["mchsm_challenge"] + ev["mchsm_evidence"]
        ax.plot(ns, [ours] * len(ns), "-", color="tab:blue", label="mchsm: challenge + evidence")
        ax.plot(
            ns,
            [ev["mchsm_evidence"]] * len(ns),
            "--",
            color="tab:blue",
            label="mchsm: evidence only",
        )
        t_ns = [n for n in ns if n <= 24]
        from bench.tpm import quote_sizes

        for key, label, color in (
            ("rsa2048", "RSA-2048", "tab:red"),
            ("ecc_p256", "ECDSA P-256", "tab:purple"),
        ):
            q = [quote_sizes(n)[f"quote_{key}"] + quote_sizes(n)["challenge"] for n in t_ns]
            ax.plot(t_ns, q, "-", color=color, label=f"TPM 2.0: challenge + quote, {label}")
            ax.plot(
                t_ns,
                [v + 32 * n for v, n in zip(q, t_ns, strict=True)],
                ":",
                color=color,
                label=f"TPM 2.0: the same + PCR values, {label}",
            )
        ax.axvline(24, color="grey", lw=0.8)
        ax.text(
            24.3,
            ax.get_ylim()[1] * 0.9 if ax.get_ylim()[1] else 900,
            "24 PCRs:\nPC-client TPM",
            fontsize=7,
            va="top",
        )
        ax.set_xlabel("tasks (contexts / PCRs) attested N")
        ax.set_ylabel("bytes on the wire")
        ax.set_title("one attestation: bytes")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ax = axes[2]
    bars: list[tuple[str, float]] = []
    mhz = float(r.get("fmax", {}).get("mhz", 26.0))
    if hsm:
        att = {int(k): v for k, v in hsm["attest"].items()}
        if 8 in att:
            bars += [
                ("mchsm ATTEST(8)\n@12 MHz", att[8] / 12e6),
                (f"mchsm ATTEST(8)\n@{mhz:g} MHz", att[8] / (mhz * 1e6)),
            ]
    model = r.get("simulators", {}).get("model", {}).get("attest_per_s")
    if model:
        bars.append(("mchsm ATTEST(8)\nmodel (Python)", 1 / model))
    if tpm and not tpm.get("skipped"):
        net = tpm["net_seconds"]
        bars += [
            ("TPM quote\nRSA-2048", net["quote_rsa2048"]),
            ("TPM quote\nECC P-256", net["quote_ecc_p256"]),
            ("TPM quote check\nin process, RSA", tpm["in_process_verify_cpu_seconds"]["rsa2048"]),
            ("TPM quote check\nin process, ECC", tpm["in_process_verify_cpu_seconds"]["ecc_p256"]),
        ]
    if r.get("our_check"):
        bars.append(("mchsm evidence check\ncrypto only", r["our_check"]["cpu_seconds"]))
    ver = r.get("verifier")
    sqlite = verifier_stores(ver).get("sqlite")
    if ver and sqlite:
        f = sqlite[min(sqlite)]
        bars += [
            ("mchsm verify\n(1 txn)", f["single"]["us_cpu_each"] * 1e-6),
            (f"mchsm verify_many\n/item ({ver['batch']})", f["batched"]["us_cpu_each"] * 1e-6),
        ]
    if bars:
        colors = ["tab:blue" if b[0].startswith("mchsm") else "tab:red" for b in bars]
        ax.barh([b[0] for b in bars], [b[1] * 1e6 for b in bars], color=colors)
        ax.set_xscale("log")
        ax.set_xlabel("µs (log)")
        ax.set_title("latency: mchsm (blue) vs TPM 2.0 (red)")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"mchsm bench, commit {r.get('commit', '?')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
