"""A command that fails a check on one of its data words ends at once; a caller that is still
sending the rest must get the command's error status, not a lost mailbox.

The RTL checks ATTEST's selection at its first data word and ends the command there; the rest
of the data is then refused.  On the Wishbone simulators the driver's burst was already in by
then, but on a slow link (the UART, a CPU that streams its data in pieces) it was not, and the
driver reported ``MailboxLostError`` where every other backend said ``ERR_SELECT``.  Here a
second caller's accesses slow the holder's words down the same way, on the Amaranth simulator.
"""

from __future__ import annotations

from typing import Any

from mchsm.constants import Cmd, Reg, Status
from mchsm.sim.amaranth_backend import run_on_amaranth
from mchsm.sim.backends import run_on_backend
from mchsm.sw.command import Read
from mchsm.sw.driver import HsmDriver
from mchsm.sw.errors import MailboxLostError
from mchsm.sw.interpose import Interposer
from mchsm.sw.protocol import attest_data, provision_data

MANAGER = 0
OTHER = 2  # a task that only reads its own view of STATUS while the manager sends its data
#: the manager's accesses before its first DATA word: CLAIM, LEN, CMD, STATUS
FIRST_DATA = 5
CONTEXTS = 2


async def _slow_attest(driver: HsmDriver) -> dict[str, Any]:
    (await driver.run(MANAGER, Cmd.PROVISION, 0, provision_data(bytes(16), bytes(32)))).check()

    async def dawdle(h: Interposer) -> None:
        for _ in range(12):  # a dozen bus cycles: the HSM has ended the command by then
            await h.poke(OTHER, Read(Reg.STATUS))

    slow = HsmDriver(Interposer(driver.transport, MANAGER, {FIRST_DATA: dawdle}), retries=0)
    out: dict[str, Any] = {}
    for name, sel in (("empty", 0), ("beyond", 1 << CONTEXTS)):
        try:
            reply = await slow.run(MANAGER, Cmd.ATTEST, 0, attest_data(sel, bytes(32)))
            out[name] = reply.status
        except MailboxLostError as lost:
            out[name] = f"lost (ran={lost.ran})"
    # the mailbox is free again and the device works: a good ATTEST by the same caller
    good = await driver.run(MANAGER, Cmd.ATTEST, 0, attest_data(1, bytes(32)))
    out["after"] = good.status
    return out


def test_a_command_ended_at_a_data_word_reports_its_status_on_a_slow_link() -> None:
    want = {"empty": Status.ERR_SELECT, "beyond": Status.ERR_SELECT, "after": Status.OK}
    assert run_on_backend("model", _slow_attest, CONTEXTS).value == want
    assert run_on_amaranth(_slow_attest, CONTEXTS).result == want
