"""The ``mchsm`` command line: the demo, and the HSM's hash and HMAC on files."""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path

import click

from mchsm.constants import DEFAULT_CONTEXTS, MAX_CONTEXTS
from mchsm.sw.backends import BACKENDS, run_on_backend

#: the demo runs on the RTL by default: Amaranth's simulator needs no build, so on a cold
#: machine it finishes first (Verilator pays a one-off build of a minute or more)
DEMO_BACKEND = "amaranth"
#: hash/hmac default to the model, which streams gigabytes; the RTL backends are a flag away
DIGEST_BACKEND = "model"


def backend_option(default: str):  # type: ignore[no-untyped-def]
    return click.option(
        "--backend",
        type=click.Choice(list(BACKENDS)),
        default=default,
        show_default=True,
        help="Where the HSM runs: the golden model, or the RTL in Amaranth's simulator or "
        "Verilator.",
    )


waves_option = click.option(
    "--waves",
    type=click.Path(path_type=Path),
    default=None,
    help="RTL backends: write a waveform (VCD) to this file or directory.",
)


def _check_waves(backend: str, waves: Path | None) -> None:
    """The model has no signals: refuse --waves there rather than silently write nothing."""
    if waves is not None and backend == "model":
        raise click.BadParameter(
            "the model has no waveform; use an RTL backend "
            "(--backend amaranth, verilator or uart-sim)",
            param_hint="--waves",
        )


contexts_option = click.option(
    "--contexts",
    type=click.IntRange(1, MAX_CONTEXTS),
    default=DEFAULT_CONTEXTS,
    show_default=True,
    help="Number of task contexts N of the HSM.",
)


@click.group()
@click.version_option(package_name="mchsm")
def main() -> None:
    """mchsm: a multi-context HSM for lightweight attestation and signature-free updates."""


@main.command()
@backend_option(DEMO_BACKEND)
@contexts_option
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Verifier registry file (default: a fresh temporary file).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of task behaviour.")
@waves_option
@click.option(
    "--port",
    default=None,
    help="Run on a board: its serial port (e.g. /dev/ttyUSB1); see docs/boards.md.",
)
@click.option(
    "--baud",
    type=click.IntRange(1),
    default=None,
    help="With --port: the UART rate the bitstream was built for [default: 115200].",
)
def demo(
    backend: str,
    contexts: int,
    db: Path | None,
    seed: int,
    waves: Path | None,
    port: str | None,
    baud: int | None,
) -> None:
    """Boot a device, attest, tamper, update, and show every attack fail."""
    from mchsm.sw.demo import run_story

    if port is not None:
        _demo_on_board(port, baud, db, seed)
        return
    if baud is not None:
        raise click.BadParameter("--baud goes with --port", param_hint="--baud")

    if contexts < 4:
        raise click.BadParameter("the demo needs at least 4 contexts", param_hint="--contexts")
    _check_waves(backend, waves)
    if backend != "model":
        click.echo(f"running the demo on the RTL ({backend})...", err=True)
    with tempfile.TemporaryDirectory(prefix="mchsm-demo-") as tmp:
        path = db if db is not None else Path(tmp) / "verifier.sqlite"
        run = run_on_backend(
            backend,
            run_story,
            contexts,
            waves=waves,
            job_args={"db_path": path, "backend": backend, "contexts": contexts, "seed": seed},
        )
    report = run.value
    click.echo(report.render())
    sim = f", {run.sim_cycles} simulated clock cycles" if run.sim_cycles else ""
    click.echo(f"({backend}: {run.wall_seconds:.1f} s wall{sim})")
    if run.waves is not None:
        click.echo(f"waveform: {run.waves}")
    sys.exit(0 if report.passed else 1)


def _digest_files(
    backend: str, files: tuple[str, ...], key: bytes | None, waves: Path | None = None
) -> list[str]:
    """Compute HASH or HMAC of every file on the HSM; lines in sha256sum format.

    A waveform's path goes to stderr, so stdout stays what ``sha256sum`` prints.
    """
    from mchsm.sw.jobs import digest_files

    _check_waves(backend, waves)
    for name in files:
        if name != "-" and not Path(name).is_file():
            raise click.BadParameter(f"{name}: no such file", param_hint="FILE")
    stdin = sys.stdin.buffer.read() if "-" in files else None
    # absolute paths: a simulator backend runs the job in its own working directory
    names = [name if name == "-" else str(Path(name).resolve()) for name in files]
    run = run_on_backend(
        backend, digest_files, waves=waves, job_args={"names": names, "key": key, "stdin": stdin}
    )
    if run.waves is not None:
        click.echo(f"waveform: {run.waves}", err=True)
    return [
        line.replace(f"  {new}", f"  {old}", 1)
        for line, old, new in zip(run.value, files, names, strict=True)
    ]


@main.command("hash")
@backend_option(DIGEST_BACKEND)
@waves_option
@click.argument("files", nargs=-1, required=True)
def hash_files(backend: str, waves: Path | None, files: tuple[str, ...]) -> None:
    """SHA-256 of FILES computed by the HSM, printed like sha256sum."""
    for line in _digest_files(backend, files, None, waves):
        click.echo(line)


@main.command("hmac")
@backend_option(DIGEST_BACKEND)
@click.option("--key-hex", required=True, help="The HMAC key in hex (imported write-only).")
@waves_option
@click.argument("files", nargs=-1, required=True)
def hmac_files(backend: str, key_hex: str, waves: Path | None, files: tuple[str, ...]) -> None:
    """HMAC-SHA256 of FILES under a key imported into the HSM."""
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        raise click.BadParameter("the key must be hexadecimal", param_hint="--key-hex") from None
    for line in _digest_files(backend, files, key, waves):
        click.echo(line)


@main.command()
@click.option(
    "--proverif",
    default="proverif",
    show_default=True,
    help="The ProVerif executable (install it with: opam install proverif).",
)
@click.option(
    "--timeout", type=float, default=600, show_default=True, help="Seconds allowed per model."
)
@click.option(
    "--mutants",
    "mutants",
    is_flag=True,
    help="Run the mutants of proverif/mutants.json instead: each must be caught (or argued) "
    "or, if equivalent, still prove.",
)
@click.option(
    "--jobs", type=click.IntRange(1), default=2, show_default=True, help="ProVerif runs at once."
)
@click.option(
    "--only", multiple=True, metavar="ID", help="With --mutants: run only this mutant (repeatable)."
)
def prove(proverif: str, timeout: float, mutants: bool, jobs: int, only: tuple[str, ...]) -> None:
    """Run ProVerif on every protocol model and check each query against expectations."""
    from mchsm.sw.prove import ProverifError, render_table, run_proofs, surprises

    if mutants:
        _prove_mutants(proverif, timeout, jobs, only)
        return
    try:
        results = run_proofs(proverif=proverif, timeout=timeout)
    except ProverifError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(render_table(results))
    bad = surprises(results)
    if bad:
        click.echo(f"{len(bad)} result(s) differ from proverif/expected.json", err=True)
        sys.exit(1)


def _prove_mutants(proverif: str, timeout: float, jobs: int, only: tuple[str, ...]) -> None:
    """``mchsm prove --mutants``: one progress line per mutant on stderr, then the table."""
    from mchsm.sw.mutation import MutantResult, failures, render_mutants, run_mutants
    from mchsm.sw.prove import ProverifError

    def progress(done: int, total: int, result: MutantResult) -> None:
        click.echo(
            f"[{done}/{total}] {result.mutant.id}: {result.status} ({result.seconds:.1f} s)",
            err=True,
        )

    try:
        results = run_mutants(
            proverif=proverif, jobs=jobs, timeout=timeout, only=only, progress=progress
        )
    except ProverifError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(render_mutants(results))
    bad = failures(results)
    if bad:
        names = ", ".join(r.mutant.id for r in bad)
        click.echo(f"{len(bad)} mutant(s) not as their class requires: {names}", err=True)
        sys.exit(1)


@main.command()
@click.option("--fast", is_flag=True, help="Only the quick subset that make test runs.")
@click.option(
    "--only",
    multiple=True,
    metavar="PROPERTY",
    help="Run this property and its broken variants (repeatable); default: all.",
)
@click.option(
    "--vcd",
    "vcd_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep each counterexample as DIR/<property>-<variant>.vcd (GTKWave, Surfer).",
)
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("build/formal"),
    show_default=True,
    help="Directory for the SymbiYosys runs.",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 8),
    default=1,
    show_default=True,
    help="SymbiYosys runs at a time.",
)
@click.option("--list", "list_only", is_flag=True, help="List the properties and exit.")
def formal(
    fast: bool,
    only: tuple[str, ...],
    vcd_dir: Path | None,
    work: Path,
    jobs: int,
    list_only: bool,
) -> None:
    """Prove the RTL's properties with SymbiYosys and check that each broken variant fails."""
    from mchsm.rtl.formal import PROPERTIES
    from mchsm.rtl.formal import jobs as formal_jobs
    from mchsm.rtl.symbiyosys import ToolMissingError, run_jobs, table

    if list_only:
        for prop in PROPERTIES:
            flaws = ", ".join(prop.flaws) or "-"
            click.echo(f"{prop.name}: {prop.summary} [{prop.mode} {prop.depth}; rejects {flaws}]")
        return
    # a stop (SIGTERM, as from `timeout`) ends the solvers too, like a Ctrl-C
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        todo = formal_jobs(only, fast=fast)
        outcomes = run_jobs(
            todo, work, vcd_dir=vcd_dir, report=lambda s: click.echo(s, err=True), jobs_at_once=jobs
        )
    except (ValueError, ToolMissingError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(table(outcomes))
    bad = [o for o in outcomes if not o.ok]
    if bad:
        names = ", ".join(o.job.name for o in bad)
        click.echo(f"{len(bad)} unexpected result(s): {names}", err=True)
        sys.exit(1)


@main.command("anomaly-eval")
@click.option(
    "--normal-runs",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="Normal runs (their periods give the false-positive rate).",
)
@click.option(
    "--attack-runs",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Runs per attack kind, and of slow drift.",
)
@click.option(
    "--periods",
    type=click.IntRange(40),
    default=60,
    show_default=True,
    help="Scheduling periods per run.",
)
@click.option(
    "--warmup",
    type=click.IntRange(2),
    default=None,
    help="Training periods of the detector (default: the detector's own, 20).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of every trace.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def anomaly_eval(
    normal_runs: int, attack_runs: int, periods: int, warmup: int | None, seed: int, as_json: bool
) -> None:
    """Measure the anomaly detector on labelled traces; exit 1 if a target is missed.

    Targets: every attack kind detected within 5 periods in >= 99 % of its runs, and at most
    1 % of the periods of normal runs, and of slowly drifting runs, flagged.
    """
    from mchsm.sw.anomaly import DetectorConfig
    from mchsm.sw.traces import evaluate

    config = DetectorConfig() if warmup is None else DetectorConfig(warmup=warmup)
    if periods < config.warmup + 11:
        raise click.BadParameter(
            f"runs need at least {config.warmup + 11} periods with {config.warmup} of training",
            param_hint="--periods",
        )
    report = evaluate(
        normal_runs=normal_runs, attack_runs=attack_runs, periods=periods, seed=seed, config=config
    )
    click.echo(report.to_json() if as_json else report.render())
    sys.exit(1 if report.failures() else 0)


@main.group()
def rtl() -> None:
    """The HSM's hardware: Verilog export and register map."""


@rtl.command("export")
@contexts_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for mchsm_core.v and mchsm_regs.h.",
)
@click.option(
    "--lint/--no-lint",
    default=True,
    show_default=True,
    help="Check the Verilog with verilator --lint-only -Wall.",
)
def rtl_export(contexts: int, out_dir: Path, lint: bool) -> None:
    """Write the core as Verilog (top module mchsm_core) and a C header of its registers."""
    from mchsm.rtl import export

    paths = export.export(out_dir, contexts)
    for path in paths:
        click.echo(f"wrote {path}")
    if lint:
        result = export.lint(paths[0])
        if not result.clean:
            click.echo(result.output, err=True)
            raise click.ClickException("verilator --lint-only -Wall reported problems")
        click.echo("verilator --lint-only -Wall: clean")


@rtl.command("regdoc")
def rtl_regdoc() -> None:
    """Print docs/registers.md (the register map, commands and status codes)."""
    from mchsm.rtl.export import register_markdown

    click.echo(register_markdown(), nl=False)


@main.command("waves")
@click.argument("vcd", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--list",
    "list_only",
    is_flag=True,
    help="List the commands in the run: cycles, caller, status.",
)
@click.option(
    "--command",
    "which",
    default=None,
    help="Draw this command: its index from --list, or a name (ATTEST, ATTEST#2).",
)
@click.option("--start", type=click.IntRange(0), default=None, help="First cycle to draw.")
@click.option("--end", type=click.IntRange(0), default=None, help="Last cycle to draw.")
@click.option(
    "-s",
    "--signal",
    "signals",
    multiple=True,
    help="A signal to draw (dotted suffix of its path, e.g. sha.rnd); repeatable. "
    "Default: bus handshake, caller, engine state, SHA rounds, done.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PNG to write [default: the VCD's name with .png].",
)
def waves(
    vcd: Path,
    list_only: bool,
    which: str | None,
    start: int | None,
    end: int | None,
    signals: tuple[str, ...],
    out: Path | None,
) -> None:
    """Commands in a waveform from --waves, and a timing diagram (PNG) of one of them."""
    from mchsm.sim import waveplot

    try:
        spans = waveplot.commands(vcd)
        if list_only or (which is None and start is None):
            click.echo(
                f"{'#':>3}  {'command':<12}{'caller':>6}  {'start':>8}  {'cycles':>7}  status"
            )
            for s in spans:
                cycles = "-" if s.cycles is None else str(s.cycles)
                click.echo(
                    f"{s.index:>3}  {s.cmd:<12}{s.caller!s:>6}  {s.start:>8}  "
                    f"{cycles:>7}  {s.status or 'running'}"
                )
            return
        title = None
        if which is not None:
            span = waveplot.find_command(spans, which)
            last = span.end if span.end is not None else span.start + 200
            start = span.start - 4 if start is None else start
            end = last + 4 if end is None else end
            title = (
                f"{span.cmd} from caller {span.caller}: {span.cycles} cycles, "
                f"{span.status}  ({vcd.name}, cycles {span.start}..{span.end})"
            )
        assert start is not None  # --list, --command or --start: one of them was given
        target = waveplot.plot(
            vcd,
            out or vcd.with_suffix(".png"),
            start=start,
            end=start + 200 if end is None else end,
            signals=signals or waveplot.DEFAULT_SIGNALS,
            title=title,
        )
    except waveplot.WaveError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {target}")


# ---------------------------------------------------------------------------------------------
# FPGA boards: `mchsm build` and `mchsm demo --port` (see docs/boards.md)
# ---------------------------------------------------------------------------------------------

#: boards `mchsm build` knows; the same keys as mchsm.boards.platforms.BOARDS (a test checks),
#: spelled out here so that the CLI starts without importing the build machinery
BOARD_NAMES = ("icebreaker", "ulx3s")


def _demo_on_board(port: str, baud: int | None, db: Path | None, seed: int) -> None:
    """The demo story against the HSM on a board, over its UART (``mchsm demo --port``)."""
    import asyncio
    import time

    from mchsm.constants import LINK_DEFAULT_BAUD
    from mchsm.sw.demo import run_story
    from mchsm.sw.driver import HsmDriver
    from mchsm.sw.errors import MchsmError
    from mchsm.sw.uart_link import SerialTransport

    began = time.perf_counter()
    try:
        with SerialTransport(port, baud or LINK_DEFAULT_BAUD) as transport:
            driver = HsmDriver(transport)
            info = asyncio.run(driver.probe())
            status = asyncio.run(driver.port(0).status())
            if status.provisioned:
                raise click.ClickException(
                    f"the HSM on {port} is already provisioned (its root key is write-once and "
                    f"survives a logic reset); reload the bitstream for a fresh device, e.g. "
                    f"press CRESET on an iCEBreaker or run iceprog/openFPGALoader again"
                )
            if info.contexts < 4:
                raise click.ClickException(
                    f"the demo needs at least 4 contexts; the board's HSM has {info.contexts}"
                )
            click.echo(
                f"running the demo on the board at {port} ({info.contexts} contexts)...", err=True
            )
            with tempfile.TemporaryDirectory(prefix="mchsm-demo-") as tmp:
                path = db if db is not None else Path(tmp) / "verifier.sqlite"
                report = asyncio.run(
                    run_story(
                        driver, path, backend=f"board ({port})", contexts=info.contexts, seed=seed
                    )
                )
            stats = transport.stats
    except MchsmError as e:
        raise click.ClickException(f"{port}: {e}") from None
    click.echo(report.render())
    click.echo(
        f"(board: {time.perf_counter() - began:.1f} s wall, {stats.frames} frames, "
        f"{stats.bytes_out} bytes out, {stats.bytes_in} in, {stats.retries} retries)"
    )
    sys.exit(0 if report.passed else 1)


@main.command("build")
@click.option(
    "--board",
    type=click.Choice(BOARD_NAMES),
    required=True,
    help="Target board: iCEBreaker (iCE40UP5K) or ULX3S 85F (ECP5).",
)
@contexts_option
@click.option(
    "--baud",
    type=click.IntRange(1),
    default=115_200,
    show_default=True,
    help="UART rate (must divide the board clock to within 2 %).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Build directory [default: build/BOARD].",
)
@click.option(
    "--breakdown",
    is_flag=True,
    help="Also count cells per module (Yosys -noflatten; a few minutes more).",
)
def build(board: str, contexts: int, baud: int, out_dir: Path | None, breakdown: bool) -> None:
    """Bitstream for a board with Yosys and nextpnr from PyPI (YoWASP), plus a report.

    Writes the bitstream, report.md and report.json (logic cells, block RAMs, Fmax against the
    board clock, tool versions, build time) to the build directory.  Exits 1 if the design
    does not fit or misses timing.  The first run compiles the WebAssembly tools (minutes).
    """
    from mchsm.boards.platforms import BuildError, build_bitstream

    out = out_dir if out_dir is not None else Path("build") / board
    try:
        report = build_bitstream(
            board,
            contexts=contexts,
            baud=baud,
            out_dir=out,
            breakdown=breakdown,
            progress=lambda msg: click.echo(msg, err=True),
        )
    except (BuildError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(report.to_markdown())
    click.echo(f"report: {out / 'report.md'}, {out / 'report.json'}", err=True)
    sys.exit(0 if report.passed else 1)
