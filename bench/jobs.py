"""The HSM jobs the bench runs on the RTL and the model: module-level, as cocotb imports them.

A job is an ``async def job(driver, **args)`` (see :mod:`mchsm.sim.backends`).  The Verilator
backend runs it in the simulator's own process and finds it by its name, ``bench.jobs:...``, so
these functions must stay at module level and take only JSON- or pickle-able arguments.  Cycle
counts come from the HSM's CYCLES register: from the CMD write to done, so they include the
data arriving over the bus (two cycles per word on the Wishbone classic handshake) but not the
host polling for done or reading the result.
"""

from __future__ import annotations

import time
from typing import Any

from mchsm.constants import MANAGER, Cmd
from mchsm.sim.measure import DEV, ROOT
from mchsm.sw import protocol
from mchsm.sw.driver import HsmDriver

__all__ = [
    "ATTEST_NONCE",
    "DEV",
    "ROOT",
    "expected_tag",
    "hsm_cycles_job",
    "image",
    "speed_job",
]

#: the nonce of the first measured attestation (later repeats change its first byte)
ATTEST_NONCE = bytes(range(100, 132))


def image(ctx: int) -> bytes:
    """The image the bench loads into context ``ctx`` (small: MEASURE has its own figures)."""
    return f"bench task {ctx} image".encode() * 4


def expected_tag(contexts: int, nonce: bytes, sel: int, ok: int, ctr: int) -> bytes:
    """The tag an honest HSM must return: the host checks every measured ATTEST against it, so a
    cycle count is only reported for a command that computed the right answer."""
    refs = {ctx: protocol.reference(image(ctx)) for ctx in range(1, contexts + 1)}
    k_att = protocol.derive_att_key(ROOT)
    return protocol.Evidence.issue(k_att, DEV, nonce, sel, ok, ctr, refs).tag


async def _install(driver: HsmDriver, contexts: int) -> int:
    """Provision, then install and load a task in every context; returns UPDATE's cycles."""
    port = driver.port(MANAGER)
    await port.provision(DEV, ROOT)
    k_upd = protocol.derive_upd_key(ROOT)
    update_cycles = 0
    for ctx in range(1, contexts + 1):
        auth = protocol.UpdateAuth.issue(k_upd, DEV, ctx, 0, 1, protocol.reference(image(ctx)))
        reply = await driver.run(MANAGER, Cmd.UPDATE, ctx, auth.command_data())
        reply.check()
        if ctx == 1:
            update_cycles = reply.cycles
        await port.reset(ctx)
        await port.measure(ctx, image(ctx))
    return update_cycles


async def hsm_cycles_job(
    driver: HsmDriver,
    contexts: int,
    repeats: int = 3,
    full: bool = False,
    sha_blocks: int = 257,
    measure_sizes: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Cycles of ATTEST over all ``contexts`` contexts (``repeats`` times) and of UPDATE; with
    ``full`` also SHA-256 per block, HMAC of 64 bytes and MEASURE of ``measure_sizes`` bytes.

    SHA-256 per block is the difference between HASHing ``sha_blocks`` blocks and one block,
    divided by the blocks in between: the sustained rate of the streamed engine, without the
    command's fixed cost.  Messages of ``64 k - 9`` bytes pad to exactly ``k`` blocks.
    """
    out: dict[str, Any] = {"contexts": contexts}
    out["update"] = await _install(driver, contexts)
    sel = (1 << contexts) - 1
    attests: list[dict[str, Any]] = []
    for r in range(repeats):
        nonce = bytes([r]) + ATTEST_NONCE[1:]
        reply = await driver.run(MANAGER, Cmd.ATTEST, 0, protocol.attest_data(sel, nonce))
        evidence = protocol.Evidence.unpack(reply.check())
        attests.append(
            {
                "cycles": reply.cycles,
                "nonce": nonce,
                "sel": evidence.sel,
                "ok": evidence.ok,
                "ctr": evidence.ctr,
                "tag": evidence.tag,
            }
        )
    out["attest"] = attests
    reply = await driver.run(MANAGER, Cmd.ATTEST, 0, protocol.attest_data(1, ATTEST_NONCE))
    reply.check()
    out["attest_sel1"] = reply.cycles
    if full:
        one = await driver.run(MANAGER, Cmd.HASH, 0, bytes(64 - 9))
        many = await driver.run(MANAGER, Cmd.HASH, 0, bytes(64 * sha_blocks - 9))
        digest = many.check()
        one.check()
        if digest != protocol.sha256(bytes(64 * sha_blocks - 9)):
            raise AssertionError("the HSM's SHA-256 of the long message is wrong")
        out["hash_1_block"] = one.cycles
        out[f"hash_{sha_blocks}_blocks"] = many.cycles
        out["sha_blocks"] = sha_blocks
        key = bytes(range(32))
        await driver.port(MANAGER).hmac_key(key)
        message = bytes(range(64))
        reply = await driver.run(MANAGER, Cmd.HMAC, 0, message)
        if reply.check() != protocol.hmac_sha256(key, message):
            raise AssertionError("the HSM's HMAC of 64 bytes is wrong")
        out["hmac_64B"] = reply.cycles
        measures: dict[int, int] = {}
        for size in measure_sizes:
            data = bytes(i & 0xFF for i in range(size))
            reply = await driver.run(MANAGER, Cmd.MEASURE, 1, data)
            if reply.check() != protocol.sha256(data):
                raise AssertionError(f"the HSM's digest of a {size}-byte image is wrong")
            measures[size] = reply.cycles
        out["measure"] = measures
    return out


async def speed_job(driver: HsmDriver, contexts: int, attestations: int) -> dict[str, Any]:
    """Set a device up, then run ``attestations`` ATTESTs back to back and time them.

    The timing is taken inside the job (so, on cocotb, inside the simulator process): it is the
    simulator's speed on the bus traffic of real attestations, without process start-up.
    """
    await _install(driver, contexts)
    sel = (1 << contexts) - 1
    port = driver.port(MANAGER)
    cycles_before = driver.cycles
    began = time.perf_counter()
    for r in range(attestations):
        await port.attest(r.to_bytes(4, "big") + ATTEST_NONCE[4:], sel)
    seconds = time.perf_counter() - began
    return {
        "attestations": attestations,
        "seconds": seconds,
        "hsm_cycles": driver.cycles - cycles_before,
    }
