"""Cycle counts of the HSM's commands, read from its own CYCLES register in simulation.

CYCLES counts clock cycles from the CMD write to done, so a figure includes the time the data
takes to arrive over the bus (two cycles per word with the Wishbone classic handshake), but not
the time the host takes to poll for done or read the result.
"""

from __future__ import annotations

from mchsm.constants import MANAGER, Cmd
from mchsm.sw.driver import HsmDriver
from mchsm.sw.protocol import UpdateAuth, attest_data, derive_upd_key, provision_data, reference

__all__ = ["DEV", "ROOT", "measure_commands"]

DEV = bytes(range(16))
ROOT = bytes(range(32, 64))


async def measure_commands(
    driver: HsmDriver, contexts: int, measure_sizes: tuple[int, ...] = (4096,)
) -> dict[str, int]:
    """Cycles of the commands the project reports, on a fresh HSM with ``contexts`` contexts."""
    out: dict[str, int] = {}
    port = driver.port(MANAGER)

    async def cycles(cmd: Cmd, ctx: int = 0, data: bytes = b"", caller: int = MANAGER) -> int:
        reply = await driver.run(caller, cmd, ctx, data)
        reply.check()
        return reply.cycles

    out["provision"] = await cycles(Cmd.PROVISION, data=provision_data(DEV, ROOT))
    one = await cycles(Cmd.HASH, data=bytes(64 - 9))
    many = await cycles(Cmd.HASH, data=bytes(64 * 33 - 9))
    out["hash_1_block"] = one
    out["sha_cycles_per_block_x100"] = round(100 * (many - one) / 32)
    await port.hmac_key(bytes(range(32)))
    out["hmac_64B"] = await cycles(Cmd.HMAC, data=bytes(64))
    k_upd = derive_upd_key(ROOT)
    image = b"task image"
    for ctx in range(1, contexts + 1):
        ref = reference(image)
        data = UpdateAuth.issue(k_upd, DEV, ctx, 0, 1, ref).command_data()
        out["update" if ctx == 1 else "_update"] = await cycles(Cmd.UPDATE, ctx, data)
        await port.reset(ctx)
        await port.measure(ctx, image)
    out.pop("_update", None)
    out["reset"] = await cycles(Cmd.RESET, 1)
    for size in measure_sizes:
        out[f"measure_{size}B"] = await cycles(Cmd.MEASURE, 1, bytes(size))
    out["extend"] = await cycles(Cmd.EXTEND, 1, bytes(32))
    sel = (1 << contexts) - 1
    out[f"attest_{contexts}"] = await cycles(Cmd.ATTEST, 0, attest_data(sel, bytes(32)))
    out["attest_1"] = await cycles(Cmd.ATTEST, 0, attest_data(1, bytes(32)))
    out["task_mac_64B"] = await cycles(Cmd.TASK_MAC, 0, bytes(64), caller=2)
    out["status"] = await cycles(Cmd.STATUS)
    out["read_ctx"] = await cycles(Cmd.READ_CTX, 1)
    return out
