"""The board design in cocotb + Verilator, with the host speaking the real byte protocol.

``--backend uart-sim`` runs :class:`~mchsm.boards.top.UartHsm` - HSM core, UART bridge and PHY,
exactly what goes on a board, with a 4-clock baud divisor - and connects the host driver to its
``rx``/``tx`` pins through a serial-port model.  The transport is
:class:`~mchsm.sw.uart_link.FramedTransport`, the same frame codec and retry rules as
:class:`~mchsm.sw.uart_link.SerialTransport` on a real board: only the way bytes move differs.
So the bridge, the PHY and the host link code are tested end to end without hardware.

Why cocotb + Verilator and not Amaranth's simulator: a frame is ten line bits per byte, each a
few clocks, and the demo moves some 15 kB; Amaranth's simulator runs the whole design at under
2k cycles/s, Verilator at millions.  The serial model costs one Python wake-up per run of equal
bits when sending and one per bit when receiving, and the clock is cocotb's C++ clock.

The cocotb test :func:`run_uart_job` follows :mod:`mchsm.sim.cocotb_job`'s conventions (job by
name in ``MCHSM_JOB``, arguments and the pickled outcome through files), so
:func:`simulate_uart_job` works like :func:`~mchsm.sim.verilator.simulate_job`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Generic, TypeVar

import cocotb
from cocotb.clock import Clock
from cocotb.queue import Queue
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, FallingEdge, SimTimeoutError, Timer, with_timeout

from mchsm.constants import DEFAULT_CONTEXTS, LINK_MAX_BURST
from mchsm.sim.cocotb_job import job_spec, record_job
from mchsm.sw.uart_link import CorruptReply, FramedTransport, LinkReply, ReplyDecoder, reply_size

__all__ = [
    "TOPLEVEL",
    "SerialPortModel",
    "UartJobRun",
    "UartSimTransport",
    "run_uart_job",
    "simulate_uart_job",
    "uart_verilog",
]

T = TypeVar("T")

TOPLEVEL = "mchsm_uart"
#: nanoseconds per clock in the simulation (the divisor, not the period, sets the baud rate)
CLOCK_NS = 10


@lru_cache(maxsize=4)
def uart_verilog(contexts: int = DEFAULT_CONTEXTS) -> str:
    """Verilog of the board design with the simulation divisor and timeout (cached: the
    conversion takes seconds and the RTL cannot change in-process)."""
    from amaranth.back import verilog

    from mchsm.boards.top import UartHsm

    return str(verilog.convert(UartHsm(contexts), name=TOPLEVEL, emit_src=False))


class SerialPortModel:
    """The host's serial port on the DUT's pins: drives ``rx``, decodes ``tx``, 8N1.

    Parameters
    ----------
    rx
        The DUT's receive pin (driven here, idle high).
    tx
        The DUT's transmit pin (sampled here).
    bit_ns : int
        Line bit time in nanoseconds (divisor x clock period).
    """

    def __init__(self, rx: Any, tx: Any, bit_ns: int) -> None:
        self.rx = rx
        self.tx = tx
        self.bit_ns = bit_ns
        self.received: Queue[int] = Queue()
        self.bytes_out = 0
        self.bytes_in = 0
        rx.value = 1
        self._reader = cocotb.start_soon(self._read_line())

    async def write(self, data: bytes) -> None:
        """Put ``data`` on the line back to back; one timer per run of equal bits."""
        bits = [b for byte in data for b in (0, *((byte >> i) & 1 for i in range(8)), 1)]
        i = 0
        while i < len(bits):
            j = i
            while j < len(bits) and bits[j] == bits[i]:
                j += 1
            self.rx.value = bits[i]
            await Timer(self.bit_ns * (j - i), unit="ns")
            i = j
        self.bytes_out += len(data)

    async def _read_line(self) -> None:
        half, full = Timer(self.bit_ns // 2, unit="ns"), Timer(self.bit_ns, unit="ns")
        while True:
            await FallingEdge(self.tx)
            await half  # middle of the start bit
            if self.tx.value != 0:
                continue  # a glitch, not a start bit
            byte = 0
            for i in range(8):
                await full
                byte |= int(self.tx.value) << i
            await full
            if self.tx.value == 1:  # stop bit; a byte without one is dropped, as by a UART
                self.received.put_nowait(byte)
                self.bytes_in += 1

    async def read(self, timeout_ns: int) -> bytes:
        """At least one byte (all that have arrived), or b"" after ``timeout_ns``."""
        try:
            first = await with_timeout(self.received.get(), timeout_ns, "ns")
        except SimTimeoutError:
            return b""
        out = bytearray([first])
        while not self.received.empty():
            out.append(self.received.get_nowait())
        return bytes(out)


class UartSimTransport(FramedTransport):
    """:class:`FramedTransport` over :class:`SerialPortModel`: the board's link, simulated.

    The reply deadline is counted in line bytes (simulated time), so a slow host never causes
    a spurious timeout; ``timeout_log2`` is the DUT's idle timeout, after which error replies
    come.
    """

    name = "uart-sim"

    def __init__(
        self, port: SerialPortModel, *, clock_ns: int, timeout_log2: int, retries: int = 3
    ) -> None:
        super().__init__(retries=retries)
        self.port = port
        self.clock_ns = clock_ns
        self.idle_ns = (2 << timeout_log2) * clock_ns

    async def exchange(self, frame: bytes, reply_words: int) -> LinkReply | CorruptReply | None:
        await self.port.write(frame)
        decoder = ReplyDecoder()
        # the reply's bytes, an idle timeout (error replies come after one) and the bus time
        # of a full burst into a busy DATA port (the FIFO drains at a SHA-256 block per ~70
        # cycles, i.e. about 5 cycles per word)
        budget = (
            (reply_size(reply_words) + 2) * 10 * self.port.bit_ns
            + 2 * self.idle_ns
            + LINK_MAX_BURST * 16 * self.clock_ns
        )
        deadline = get_sim_time("ns") + budget
        while (left := deadline - get_sim_time("ns")) > 0:
            chunk = await self.port.read(int(left))
            replies = decoder.feed(chunk)
            if replies:
                return replies[0]
        # nothing usable: wait for the bridge to drain and answer, then drop what came
        await Timer(self.idle_ns + reply_size(LINK_MAX_BURST) * 10 * self.port.bit_ns, unit="ns")
        while not self.port.received.empty():
            self.port.received.get_nowait()
        return None


@cocotb.test()
async def run_uart_job(dut: Any) -> None:
    """Reset the board design, run the job through the UART link, record its outcome."""
    from mchsm.boards.top import SIM_DIVISOR, SIM_TIMEOUT_LOG2

    async def setup(period: float) -> tuple[UartSimTransport, Callable[[], dict[str, Any]]]:
        dut.rx.value = 1
        dut.rst.value = 1
        # the C++ clock: a Python one would cost two wake-ups per cycle of a long simulation
        Clock(dut.clk, period, unit="ns", impl="gpi").start(start_high=False)
        await ClockCycles(dut.clk, 2)
        dut.rst.value = 0
        await FallingEdge(dut.clk)  # line edges between clock edges: no race with sampling
        port = SerialPortModel(dut.rx, dut.tx, round(SIM_DIVISOR * period))
        transport = UartSimTransport(port, clock_ns=round(period), timeout_log2=SIM_TIMEOUT_LOG2)
        return transport, lambda: {
            "frames": transport.stats.frames,
            "retries": transport.stats.retries,
            "bytes_out": port.bytes_out,
            "bytes_in": port.bytes_in,
        }

    await record_job(setup)


@dataclass(frozen=True)
class UartJobRun(Generic[T]):
    """A job's value and what running it over the simulated UART cost."""

    value: T
    cycles: int  #: clock cycles of the job (from the end of reset)
    sim_time_ns: float
    wall_seconds: float  #: host time of the whole simulation
    job_wall_seconds: float  #: host time spent inside the job
    hsm_cycles: int  #: sum of the HSM's CYCLES register over the job's commands
    commands: int
    frames: int  #: request frames sent (retries included)
    retries: int
    bytes_out: int  #: bytes the host put on the line
    bytes_in: int  #: bytes the board sent back
    waves: Path | None


def simulate_uart_job(
    job: Callable[..., Awaitable[T]],
    contexts: int = DEFAULT_CONTEXTS,
    *,
    job_args: Mapping[str, Any] | None = None,
    waves: bool = False,
    timeout: float | None = None,
    run_dir: Path | str | None = None,
    waves_file: Path | str | None = None,
) -> UartJobRun[T]:
    """Run ``job(driver, **job_args)`` against the simulated board over the UART link.

    The job's arguments travel pickled and its value comes back pickled, as with
    :func:`mchsm.sim.verilator.simulate_job`.  The Verilator build is cached like every other
    (a cold build takes about a minute).  A job's exception is raised here again with the
    simulator-side traceback as a note.  ``waves`` writes a VCD into the run directory (kept),
    or to ``waves_file``; ``timeout`` is wall-clock seconds.
    """
    from mchsm.sim.verilator import build, launch_job

    spec = job_spec(job)
    info = build(uart_verilog(contexts), TOPLEVEL, waves=waves)
    outcome, sim = launch_job(
        info,
        "mchsm.sim.uart_sim",
        spec,
        dict(job_args or {}),
        {"MCHSM_CLOCK_NS": str(CLOCK_NS)},
        waves=waves,
        timeout=timeout,
        run_dir=run_dir,
        waves_file=waves_file,
    )
    del outcome["ok"]
    return UartJobRun(wall_seconds=sim.wall_seconds, waves=sim.waves, **outcome)
