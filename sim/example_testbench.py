"""Example: the exported mchsm core inside your own cocotb testbench (see docs/cosim.md).

Copy this module next to your testbench.  It needs only the mchsm package: the Wishbone bus
model, the transport and the driver are the ones the project's own co-simulation uses.
"""

import hashlib
import itertools
from typing import Any

import cocotb

from mchsm.constants import MANAGER
from mchsm.sim.cocotb_transport import CocotbTransport, reset_and_clock
from mchsm.sw.driver import HsmDriver


@cocotb.test()
async def hash_and_status(dut: Any) -> None:
    """Hash a message on the HSM and read its status, as the manager (caller id 0)."""
    await reset_and_clock(dut, period_ns=10)
    # in your SoC, point prefix/name_scheme at the HSM's bus signals; stb_pattern shakes the
    # handshake with idle cycles (optional)
    transport = CocotbTransport.for_dut(dut, prefix="bus", stb_pattern=itertools.cycle([1, 1, 0]))
    driver = HsmDriver(transport)
    info = await driver.probe()
    manager = driver.port(MANAGER)
    message = b"hello from my SoC"
    digest = await manager.hash(message)
    assert digest == hashlib.sha256(message).digest()
    assert manager.last is not None  # `last` is the reply of the port's latest command
    hash_cycles = manager.last.cycles
    status = await manager.status()
    assert manager.last is not None
    assert status.contexts == info.contexts and not status.provisioned
    dut._log.info(
        "HASH of %d bytes took %d cycles, STATUS %d", len(message), hash_cycles, manager.last.cycles
    )
