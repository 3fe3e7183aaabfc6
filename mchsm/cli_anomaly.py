"""``mchsm anomaly-eval`` and ``mchsm anomaly ...``: the detector's evaluation and its profile
tools (derive a profile from a trace, put it in an image, check a trace against it).

Kept out of ``mchsm/cli.py`` so that the main command line stays small; ``cli.py`` adds these
commands to its group.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mchsm.failures import first_line
from mchsm.inputs import writable_dir, writable_file
from mchsm.sw.errors import MchsmError

if TYPE_CHECKING:  # imported where used: the CLI starts without them
    from mchsm.sw.profile import Profile, RecordedTrace

#: where the ROC picture goes unless --roc says otherwise
DEFAULT_ROC = Path("build/anomaly_roc.png")


class _Progress:
    """One line on stderr, rewritten in place on a terminal, every couple of seconds else."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.began = time.perf_counter()
        self.last = -10.0

    def __call__(self, done: int, total: int, what: str) -> None:
        if self.quiet:
            return
        now = time.perf_counter() - self.began
        if not self.tty and now - self.last < 2.0 and done < total:
            return
        self.last = now
        line = f"anomaly-eval: {done}/{total} ({done / max(1, total):.0%}) {now:.0f} s  {what}"
        if self.tty:
            click.echo("\r" + line.ljust(78), nl=done >= total, err=True)
        else:
            click.echo(line, err=True)


@click.command("anomaly-eval")
@click.option(
    "--full",
    is_flag=True,
    help="The whole sweep (hundreds of runs per class, several minutes on 2 cores) instead "
    "of the fixed-seed subset.",
)
@click.option(
    "--jobs",
    type=click.IntRange(1),
    default=None,
    help="Worker processes (default: one per core).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of every run.")
@click.option(
    "--roc",
    "roc_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_ROC,
    show_default=True,
    help="Where to draw the ROC curve (PNG).",
)
@click.option("--no-roc", is_flag=True, help="Skip the ROC curve (and its extra runs).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the results as JSON to this file.",
)
@click.option("--check", is_flag=True, help="Exit with status 1 if a target is missed.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def anomaly_eval(
    full: bool,
    jobs: int | None,
    seed: int,
    roc_path: Path,
    no_roc: bool,
    as_json: bool,
    json_out: Path | None,
    check: bool,
    quiet: bool,
) -> None:
    """Measure the anomaly detector on attack and benign scenarios, swept.

    Prints, per scenario class and parameter: detection within 5, 20 and 50 periods, mean
    delay and false flags per period; the leakage bound of every channel; the ROC curve over
    the detector's threshold (also drawn to --roc); and the targets of issue 20.
    """
    from mchsm.sw.anomaly_eval import evaluate, plot_roc

    for path, option in ((None if no_roc else roc_path, "--roc"), (json_out, "--json-out")):
        if path is not None:
            writable_file(path, option)  # found now, not after minutes of evaluation

    report = evaluate(
        full=full,
        seed=seed,
        jobs=jobs or os.cpu_count() or 1,
        roc=() if no_roc else None,
        progress=_Progress(quiet),
    )
    if not no_roc:
        try:
            report.roc_png = str(plot_roc(report, roc_path))
        except ImportError:
            click.echo(
                "matplotlib is not installed: no ROC picture (pip install -e '.[dev]')", err=True
            )
    data = json.dumps(report.to_dict(), indent=2)
    if json_out is not None:
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(data + "\n")
        except OSError as exc:
            raise _fail(exc) from None
    click.echo(data if as_json else report.render())
    if check and report.failures():
        sys.exit(1)


@click.group("anomaly")
def anomaly() -> None:
    """Behaviour profiles: record a trace, derive a profile, bind it to an image, check."""


def _fail(exc: MchsmError | OSError) -> click.ClickException:
    return click.ClickException(str(exc))


@anomaly.command("trace")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSON file."
)
@click.option("--periods", type=click.IntRange(8), default=2000, show_default=True)
@click.option("--seed", default="trace", show_default=True, help="Seed of the run.")
@click.option(
    "--variant",
    "variants",
    multiple=True,
    metavar="TASK=VARIANT",
    help="Run a task's image variant (e.g. logger=p10); repeatable.",
)
@click.option(
    "--attack",
    type=click.Choice(["exfil", "busy", "bruteforce"]),
    default=None,
    help="Hijack --target from --start on.",
)
@click.option("--target", default="sensor", show_default=True, help="The task to hijack.")
@click.option("--start", type=click.IntRange(0), default=0, show_default=True)
def trace_cmd(
    out: Path,
    periods: int,
    seed: str,
    variants: tuple[str, ...],
    attack: str | None,
    target: str,
    start: int,
) -> None:
    """Record a trace of the traced system (sw/traces.py) on the kernel, from load on.

    Without --attack this is a rig run: the sample rate moves across 0.5-2x every 100 periods.
    """
    from mchsm.sw.traces import TASKS, VARIANTS, record_attack

    writable_file(out, "--out")
    chosen = {}
    for item in variants:
        task, _, variant = item.partition("=")
        if variant not in VARIANTS.get(task, ()):
            raise click.BadParameter(f"{item!r}: not TASK=VARIANT", param_hint="--variant")
        chosen[task] = variant
    if target not in TASKS:
        raise click.BadParameter(f"one of {', '.join(TASKS)}", param_hint="--target")
    trace = record_attack(
        chosen, periods=periods, seed=seed, attack=attack, target=target, start=start
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(trace.to_json())
    except OSError as exc:
        raise _fail(exc) from None
    click.echo(f"{len(trace.periods)} periods of {', '.join(trace.names.values())} -> {out}")


def _read_trace(path: Path) -> RecordedTrace:
    from mchsm.sw.profile import RecordedTrace

    try:
        return RecordedTrace.from_json(path.read_bytes())
    except (MchsmError, OSError) as exc:
        raise click.ClickException(f"{path}: {first_line(str(exc))}") from None


@anomaly.command("profile")
@click.argument("trace", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--task", "tasks", multiple=True, help="Task(s) to profile (default: every task).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for <task>.profile.json.",
)
def profile_cmd(trace: Path, tasks: tuple[str, ...], out: Path) -> None:
    """Derive behaviour profiles from a recorded (rig) trace."""
    from mchsm.sw.profile import derive

    writable_dir(out, "--out")
    recorded = _read_trace(trace)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in tasks or sorted(set(recorded.names.values())):
            profile = derive(name, recorded.series(name))
            path = out / f"{name}.profile.json"
            path.write_bytes(profile.to_json())
            click.echo(profile.describe())
            click.echo(f"  -> {path} ({path.stat().st_size} bytes)")
    except (MchsmError, OSError) as exc:
        raise _fail(exc) from None


def _load_profile(path: Path) -> Profile:
    """A profile from a JSON file, or from an image that carries one."""
    from mchsm.sw.profile import Profile, ProfileError, split_image

    try:
        data = path.read_bytes()
        if data.lstrip().startswith(b"{"):
            return Profile.from_json(data)
        _, profile = split_image(data)
        if profile is None:
            raise ProfileError(f"{path} carries no profile")
        return profile
    except (MchsmError, OSError) as exc:
        raise _fail(exc) from None


@anomaly.command("embed")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("profile", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def embed_cmd(image: Path, profile: Path, out: Path) -> None:
    """Put a profile into an image (its reference value then covers the profile)."""
    from mchsm.sw.profile import embed
    from mchsm.sw.protocol import reference

    writable_file(out, "--out")

    try:
        bound = embed(image.read_bytes(), _load_profile(profile))
        out.write_bytes(bound)
    except (MchsmError, OSError) as exc:
        raise _fail(exc) from None
    click.echo(f"{out}: {len(bound)} bytes, reference {reference(bound).hex()}")


@anomaly.command("show")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def show_cmd(path: Path) -> None:
    """Describe the profile in a JSON file or carried by an image."""
    click.echo(_load_profile(path).describe())


@anomaly.command("check")
@click.argument("trace", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument(
    "profiles",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--log-arl",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="The detector's threshold (default: the detector's).",
)
def check_cmd(trace: Path, profiles: tuple[Path, ...], log_arl: float | None) -> None:
    """Judge a recorded trace against profiles (JSON files or images); exit 1 if a task is
    flagged.  Tasks without a profile are learned for 20 periods, then judged (weaker)."""
    from mchsm.sw.anomaly import DetectorConfig, check_trace

    recorded = _read_trace(trace)
    loaded = {p.task: p for p in (_load_profile(path) for path in profiles)}
    unknown = set(loaded) - set(recorded.names.values())
    if unknown:
        raise click.ClickException(f"the trace has no task {', '.join(sorted(unknown))}")
    config = DetectorConfig() if log_arl is None else DetectorConfig(log_arl=log_arl)
    found = check_trace(recorded, loaded, config)
    for d in found:
        click.echo(
            f"period {d.period:>5}  {recorded.names.get(d.tid, d.tid)!s:<10} {d.reason:<8} "
            f"{d.explain(limit=3)}"
        )
    judged = ", ".join(
        f"{n} ({'profile' if n in loaded else 'learned'})" for n in recorded.names.values()
    )
    click.echo(
        f"{len(recorded.periods)} periods; {judged}; {len(found)} flag(s)"
        + ("" if found else ": every task within its profile")
    )
    if found:
        sys.exit(1)
