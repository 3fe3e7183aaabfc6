"""The whole HSM core in Amaranth's simulator against the golden model, command by command."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import random

import pytest
from amaranth.hdl import ClockDomain, Module
from amaranth.sim import Simulator
from conftest import DEV, ROOT_KEY, model_driver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mchsm.constants import (
    MANAGER,
    Cmd,
    Ctrl,
    Reg,
    Status,
    u32,
)
from mchsm.rtl.core import MchsmCore
from mchsm.sim.amaranth_backend import CLOCK_PERIOD, AmaranthTransport, run_on_amaranth
from mchsm.sim.backends import run_on_backend
from mchsm.sim.scenarios import Command, random_commands, run_commands, scan_bus
from mchsm.sw.driver import CtxInfo, HsmDriver, StatusInfo
from mchsm.sw.protocol import (
    UpdateAuth,
    derive_att_key,
    derive_task_key,
    derive_upd_key,
    reference,
)


def on_model(commands: list[Command], contexts: int) -> list[tuple[int, bytes]]:
    return run_on_backend("model", run_commands, contexts, job_args={"commands": commands}).value


def on_rtl(commands: list[Command], contexts: int) -> list[tuple[int, bytes]]:
    result: list[tuple[int, bytes]] = run_on_amaranth(
        lambda d: run_commands(d, commands), contexts
    ).result
    return result


def assert_same(commands: list[Command], contexts: int = 4) -> list[tuple[int, bytes]]:
    model = on_model(commands, contexts)
    rtl = on_rtl(commands, contexts)
    for i, (c, a, b) in enumerate(zip(commands, model, rtl, strict=True)):
        assert a == b, (
            f"command {i} {c}: model {Status(a[0]).name} {a[1].hex()}, "
            f"RTL {Status(b[0]).name if b[0] in Status.__members__.values() else b[0]}"
            f" {b[1].hex()}"
        )
    return rtl


def test_hash_against_hashlib() -> None:
    rng = random.Random(5)
    lengths = [0, 1, 3, 4, 5, 55, 56, 63, 64, 65, 119, 120, 128, 200] + [
        rng.randrange(1001) for _ in range(6)
    ]
    data = [rng.randbytes(n) for n in lengths]
    out = on_rtl([Command(rng.randrange(0, 5), Cmd.HASH, 0, d) for d in data], 4)
    for d, (status, digest) in zip(data, out, strict=True):
        assert status == Status.OK and digest == hashlib.sha256(d).digest(), len(d)


@pytest.mark.parametrize("key_len", [0, 3, 32, 64, 65, 150])
def test_hmac_against_stdlib(key_len: int) -> None:
    key = os.urandom(key_len)
    msgs = [b"", b"abc", os.urandom(64), os.urandom(200)]
    out = on_rtl([Command(2, Cmd.HMAC_KEY, 0, key)] + [Command(2, Cmd.HMAC, 0, m) for m in msgs], 4)
    assert out[0] == (Status.OK, b"")
    for msg, (status, tag) in zip(msgs, out[1:], strict=True):
        assert status == Status.OK and tag == hmac.new(key, msg, hashlib.sha256).digest()


def _install(ctx: int, old: int, new: int, image: bytes) -> Command:
    auth = UpdateAuth.issue(derive_upd_key(ROOT_KEY), DEV, ctx, old, new, reference(image))
    return Command(MANAGER, Cmd.UPDATE, ctx, auth.command_data())


def test_protocol_story_matches_model_and_keys() -> None:
    img = {1: b"first" * 70, 2: b"second" * 33, 3: b""}
    commands = [
        Command(MANAGER, Cmd.ATTEST, 0, u32(1) + bytes(32)),  # not provisioned
        Command(MANAGER, Cmd.PROVISION, 0, DEV + ROOT_KEY),
        Command(MANAGER, Cmd.PROVISION, 0, DEV + ROOT_KEY),  # write-once
        *[_install(i, 0, 1, img[i]) for i in img],
        *[
            c
            for i in img
            for c in (Command(MANAGER, Cmd.RESET, i, b""), Command(MANAGER, Cmd.MEASURE, i, img[i]))
        ],
        Command(MANAGER, Cmd.STATUS, 0, b""),
        Command(2, Cmd.STATUS, 0, b""),
        Command(MANAGER, Cmd.READ_CTX, 2, b""),
        Command(MANAGER, Cmd.ATTEST, 0, u32(0b111) + b"n" * 32),
        Command(2, Cmd.TASK_MAC, 0, b"telemetry"),
        Command(MANAGER, Cmd.SET_ANOMALY, 2, b""),
        Command(2, Cmd.TASK_MAC, 0, b"telemetry"),
        Command(MANAGER, Cmd.ATTEST, 0, u32(0b1111) + b"m" * 32),
        _install(1, 1, 2, b"new"),
        _install(1, 1, 2, b"new"),  # replay
        _install(1, 2, 1, b"old"),  # rollback
        Command(MANAGER, Cmd.EXTEND, 3, b"d" * 32),
        Command(MANAGER, Cmd.READ_CTX, 3, b""),
        Command(3, Cmd.READ_CTX, 3, b""),
        Command(3, Cmd.READ_CTX, 1, b""),
        Command(MANAGER, Cmd.READ_CTX, 1, b""),
    ]
    out = assert_same(commands, 4)
    evidence = out[15][1]
    assert out[15][0] == Status.OK and len(evidence) == 44
    assert evidence[:8] == u32(0b111) + u32(0b111)
    # the tag, independently: the HSM's K_att is derived from ROOT_KEY as the spec says
    d = hashlib.sha256(b"".join(reference(img[i]) for i in (1, 2, 3))).digest()
    msg = b"ATT1" + DEV + b"n" * 32 + evidence[:12] + d
    assert evidence[12:] == hmac.new(derive_att_key(ROOT_KEY), msg, hashlib.sha256).digest()
    task_key = derive_task_key(ROOT_KEY, 2, reference(img[2]))
    assert out[16] == (Status.OK, hmac.new(task_key, b"telemetry", hashlib.sha256).digest())
    assert out[18][0] == Status.ERR_NOT_TRUSTED


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_random_command_sequences_match_model(seed: int) -> None:
    assert_same(random_commands(seed, 4, 25), 4)


def test_random_sequence_with_32_contexts() -> None:
    assert_same(random_commands(99, 32, 20), 32)


def test_no_bus_read_returns_a_key_word() -> None:
    k_att, k_upd = derive_att_key(ROOT_KEY), derive_upd_key(ROOT_KEY)
    hmac_key = b"an imported hmac key, 40 bytes long!!!!!"
    task_key = derive_task_key(ROOT_KEY, 1, reference(b"img"))
    keys = [ROOT_KEY, k_att, k_upd, hmac_key, task_key]
    key_words = {int.from_bytes(k[i : i + 4], "big") for k in keys for i in range(0, 32, 4)}

    async def job(driver: HsmDriver) -> list[int | None]:
        seen = await scan_bus(driver, [0, 1, 5])
        await driver.run(MANAGER, Cmd.PROVISION, 0, DEV + ROOT_KEY)
        seen += await scan_bus(driver, [0, 1, 5])
        await run_commands(
            driver,
            [
                _install(1, 0, 1, b"img"),
                Command(MANAGER, Cmd.RESET, 1, b""),
                Command(MANAGER, Cmd.MEASURE, 1, b"img"),
                Command(1, Cmd.HMAC_KEY, 0, hmac_key),
                Command(1, Cmd.TASK_MAC, 0, b"x"),
            ],
        )
        seen += await scan_bus(driver, [0, 1, 5])
        # mid-command: a half-fed HMAC stream, read while it waits for data
        t = driver.transport
        await t.write(Reg.CTRL, Ctrl.CLAIM, 1)
        await t.write(Reg.LEN, 100, 1)
        await t.write(Reg.CMD, Cmd.HMAC, 1)
        seen += await scan_bus(driver, [0, 1, 5])
        await t.write(Reg.CTRL, Ctrl.ABORT, 1)
        await t.write(Reg.CTRL, Ctrl.RELEASE, 1)
        return seen

    seen = run_on_amaranth(job, 4).result
    assert len(seen) > 700 and None in seen  # private registers refused the other callers
    assert not key_words & set(seen)


def test_warm_reset_mid_update_leaves_old_or_new_state() -> None:
    """Reset at many points of an UPDATE (densely around its commit): never a mix."""

    core = MchsmCore(2)
    top = Module()
    top.domains.sync = cd = ClockDomain()
    top.submodules.core = core
    sim = Simulator(top)
    sim.add_clock(CLOCK_PERIOD)
    seen: list[tuple[int, bool]] = []

    async def testbench(ctx) -> None:  # type: ignore[no-untyped-def]  # ctx: SimulatorContext, whose typed tick() wants a domain
        driver = HsmDriver(AmaranthTransport(ctx, core))
        port = driver.port(MANAGER)
        await port.provision(DEV, ROOT_KEY)
        refs = {0: bytes(32)}
        version = 0
        # how long a whole UPDATE takes, and where its commit is: the last cycles
        probe = _install(1, 0, 1, b"image 1")
        length = (await driver.run(MANAGER, Cmd.UPDATE, 1, probe.data)).cycles
        version, refs[1] = 1, reference(b"image 1")
        offsets = [*range(2, length - 60, 37), *range(length - 60, length + 3)]
        for n, offset in enumerate(offsets):
            image = b"image %d" % (n + 2)
            cmd = _install(1, version, version + 1, image)
            await driver.transport.write(Reg.CTRL, Ctrl.CLAIM, MANAGER)
            await driver.transport.write(Reg.LEN, len(cmd.data), MANAGER)
            await driver.transport.write(Reg.CMD, Cmd.UPDATE | 1 << 8, MANAGER)
            words = [int.from_bytes(cmd.data[i : i + 4], "big") for i in range(0, 72, 4)]
            await driver.transport.write_burst(Reg.DATA, words, MANAGER)
            for _ in range(max(0, offset - 2 * len(words) - 4)):
                await ctx.tick()
            ctx.set(cd.rst, 1)
            await ctx.tick()
            ctx.set(cd.rst, 0)
            info = CtxInfo.parse((await driver.run(MANAGER, Cmd.READ_CTX, 1)).check())
            new = (info.version, info.reference) == (version + 1, reference(image))
            old = (info.version, info.reference) == (version, refs[version])
            assert new or old, (offset, info)
            assert not info.flags & 1  # LOADED cleared by the reset
            if new:
                version += 1
                refs[version] = reference(image)
            seen.append((offset, new))
        status = StatusInfo.parse((await driver.run(MANAGER, Cmd.STATUS)).check())
        assert status.provisioned and status.dev_id == DEV  # persistent state survives

    sim.add_testbench(testbench)
    sim.run()
    assert any(new for _, new in seen) and any(not new for _, new in seen)


def test_monitor_matches_model_with_small_limits() -> None:
    """Budget and failure limit small enough that random sequences trip them often."""

    async def on_model_small(cmds: list[Command]) -> list[tuple[int, bytes]]:
        driver = model_driver(4, budget=3, fail_limit=2)
        return await run_commands(driver, cmds)

    commands = [Command(3, Cmd.STATUS, 0, b"")] * 5 + random_commands(7, 4, 30)
    commands += [Command(MANAGER, Cmd.READ_CTX, i, b"") for i in range(1, 5)]
    expected = asyncio.run(on_model_small(commands))
    flags = [int.from_bytes(r[1][:4], "big") for r in expected[-4:]]
    assert any(f & 2 for f in flags)  # the monitor did flag something in this sequence

    core = MchsmCore(4, budget=3, fail_limit=2)
    sim = Simulator(core)
    sim.add_clock(CLOCK_PERIOD)
    got: list[tuple[int, bytes]] = []

    async def testbench(ctx) -> None:  # type: ignore[no-untyped-def]  # ctx: SimulatorContext, whose typed tick() wants a domain
        got.extend(await run_commands(HsmDriver(AmaranthTransport(ctx, core)), commands))

    sim.add_testbench(testbench)
    sim.run()
    assert got == expected
