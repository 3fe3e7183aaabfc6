"""The microkernel model: loader, isolation, capabilities, HSM tagging, behaviour features."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from conftest import driver_on

from mchsm.constants import Cmd, Status
from mchsm.sw.kernel import CapabilityError, MemoryFault, Microkernel, TaskApi
from mchsm.sw.model import HsmModel


def make() -> tuple[HsmModel, Microkernel]:
    model = HsmModel(4)
    return model, Microkernel(driver_on(model), 4)


def test_loader_measures_what_it_loads() -> None:
    model, kernel = make()
    task = kernel.create_task("a", b"image of a" * 30)
    digest = asyncio.run(kernel.load("a"))
    assert digest == hashlib.sha256(task.image).digest()
    expected = hashlib.sha256(bytes(32) + digest).digest()
    assert model.context(task.tid).measurement == expected and model.context(task.tid).loaded
    assert task.space is not None and task.space.code == task.image


def test_address_spaces_are_separate() -> None:
    _, kernel = make()
    seen: list[str] = []

    async def snoop(api: TaskApi) -> None:
        api.read(0, 8)
        try:
            api.read(api.data_base + 4096, 8)  # one past its own space
        except MemoryFault as exc:
            seen.append(str(exc))
        api.write(0, b"patch")  # its own code is read-only: the period ends here

    kernel.create_task("victim", b"secret code")
    kernel.create_task("snoop", b"snoop code", snoop)
    asyncio.run(kernel.load_all())
    features = asyncio.run(kernel.run_period())
    assert seen and "outside" in seen[0]
    assert features[2].faults == 2
    assert kernel.task("victim").space.code == b"secret code"  # type: ignore[union-attr]  # the task has a space


def test_ipc_only_through_capabilities() -> None:
    _, kernel = make()
    got: list[tuple[int, bytes]] = []

    async def sender(api: TaskApi) -> None:
        api.send("receiver", b"hello")
        api.send("nobody", b"x")

    async def receiver(api: TaskApi) -> None:
        while (msg := api.receive()) is not None:
            got.append(msg)

    kernel.create_task("sender", b"s", sender)
    kernel.create_task("receiver", b"r", receiver)
    kernel.grant("sender", "receiver")
    asyncio.run(kernel.load_all())
    f1 = asyncio.run(kernel.run_period())
    f2 = asyncio.run(kernel.run_period())
    assert got == [(1, b"hello"), (1, b"hello")]  # badge = the sender's id, set by the kernel
    assert f1[1].ipc_sent[2] == 1 and f1[1].faults == 1
    assert f1[2].ipc_received[1] == 1
    assert f2[1].syscalls["send"] == 2
    with pytest.raises(CapabilityError):
        kernel._send(kernel.task("receiver"), "sender", b"no cap")


def test_hsm_access_is_tagged_with_the_task_id() -> None:
    model, kernel = make()
    replies = {}

    async def probe(api: TaskApi) -> None:
        replies["own"] = await api.hsm.call(Cmd.READ_CTX, 2)
        replies["other"] = await api.hsm.call(Cmd.READ_CTX, 1)
        replies["reset"] = await api.hsm.call(Cmd.RESET, 2)

    kernel.create_task("one", b"1")
    kernel.create_task("probe", b"2", probe)
    asyncio.run(kernel.load_all())
    features = asyncio.run(kernel.run_period())
    assert replies["own"].status is Status.OK
    assert replies["other"].status is Status.ERR_DENIED
    assert replies["reset"].status is Status.ERR_DENIED
    assert features[2].hsm_commands == 3
    assert model.context(2).loaded  # the task could not reset itself


def test_period_hooks_see_features() -> None:
    _, kernel = make()
    periods = []

    async def busy(api: TaskApi) -> None:
        api.compute(7)

    kernel.create_task("busy", b"b", busy)
    kernel.on_period(lambda n, f: periods.append((n, f[1].cpu)))
    asyncio.run(kernel.load_all())
    asyncio.run(kernel.run_period())
    asyncio.run(kernel.run_period())
    assert periods == [(0, 7), (1, 7)]
    assert kernel.task(1).name == "busy"


def test_contexts_run_out() -> None:
    _, kernel = make()
    for i in range(4):
        kernel.create_task(f"t{i}", b"x")
    with pytest.raises(Exception, match="all 4 contexts are in use"):
        kernel.create_task("t5", b"x")


def test_hsm_monitor_flags_a_task_hammering_the_hsm_within_one_period() -> None:
    """The kernel ends every period with NEW_PERIOD, so only a burst inside one period counts."""
    from mchsm.constants import MONITOR_BUDGET

    model, kernel = make()
    burst = {"n": MONITOR_BUDGET // 2}

    async def chatty(api: TaskApi) -> None:
        for _ in range(burst["n"]):
            await api.hsm.call(Cmd.STATUS)

    kernel.create_task("chatty", b"c", chatty)
    asyncio.run(kernel.load_all())
    for _ in range(3):  # half the budget every period: never flagged
        asyncio.run(kernel.run_period())
    assert not model.context(1).anomaly
    burst["n"] = MONITOR_BUDGET + 1
    asyncio.run(kernel.run_period())
    assert model.context(1).anomaly


# -- the kernel's HSM budgets, interrupts and input counting (docs/anomaly.md) -----------------


def test_hsm_budget_per_kind_refuses_without_reaching_the_hsm() -> None:
    """Over its per-period or per-window budget, or of a kind the budget does not list, a
    command is refused by the kernel (ERR_DENIED) and counted; the HSM never sees it."""
    from mchsm.sw.kernel import HsmBudget

    _, kernel = make()
    plan = {"n": 2, "kind": Cmd.HASH}
    statuses: list[Status] = []

    async def hasher(api: TaskApi) -> None:
        for _ in range(plan["n"]):
            statuses.append((await api.hsm.call(plan["kind"], 0, b"block")).status)

    kernel.create_task("hasher", b"h", hasher)
    asyncio.run(kernel.load_all())
    kernel.set_hsm_budget("hasher", HsmBudget({"HASH": 2}, {"HASH": 5}, window=4))
    features = asyncio.run(kernel.run_period())  # 2 of 2 per period: fine
    assert statuses == [Status.OK, Status.OK] and not features[1].hsm_refused
    assert features[1].hsm_kinds == {"HASH": 2}
    plan["n"] = 3  # the third in one period is over the per-period budget
    statuses.clear()
    features = asyncio.run(kernel.run_period())
    assert statuses == [Status.OK, Status.OK, Status.ERR_DENIED]
    assert features[1].hsm_refused == {"HASH": 1} and features[1].hsm_failures == 1
    plan["n"] = 1  # 2 + 3 in the window already: the window budget of 5 is spent
    statuses.clear()
    features = asyncio.run(kernel.run_period())
    assert statuses == [Status.ERR_DENIED]
    plan["kind"] = Cmd.TASK_MAC  # a kind the budget does not list: budget 0
    statuses.clear()
    asyncio.run(kernel.run_period())
    assert statuses == [Status.ERR_DENIED]
    asyncio.run(kernel.load("hasher"))  # a reload forgets the window
    plan["kind"] = Cmd.HASH
    plan["n"] = 2
    statuses.clear()
    asyncio.run(kernel.run_period())
    assert statuses == [Status.OK, Status.OK]
    kernel.set_hsm_budget("hasher", None)  # no budget: only the HSM's own monitor
    plan["n"] = 5
    statuses.clear()
    asyncio.run(kernel.run_period())
    assert statuses == [Status.OK] * 5


def test_refused_commands_never_reach_the_hsm() -> None:
    from mchsm.sw.kernel import HsmBudget

    _, kernel = make()
    sent: list[int] = []
    original = kernel.driver.run

    # a spy with the driver's signature
    async def counting(caller, cmd, ctx=0, data=b"", length=None):  # type: ignore[no-untyped-def]
        sent.append(int(cmd))
        return await original(caller, cmd, ctx, data, length)

    kernel.driver.run = counting  # type: ignore[method-assign]  # a spy on the driver's one entry

    async def prober(api: TaskApi) -> None:
        await api.hsm.call(Cmd.READ_CTX, 2)

    kernel.create_task("prober", b"p", prober)
    asyncio.run(kernel.load_all())
    kernel.set_hsm_budget("prober", HsmBudget({}, {}))
    sent.clear()
    features = asyncio.run(kernel.run_period())
    assert int(Cmd.READ_CTX) not in sent and features[1].hsm_refused == {"READ_CTX": 1}
    with pytest.raises(ValueError, match="negative"):
        HsmBudget({"HASH": -1}, {})


def test_interrupts_reach_only_their_task_and_count_as_input() -> None:
    _, kernel = make()
    taken: list[int] = []

    async def driver(api: TaskApi) -> None:
        taken.append(api.interrupts())

    kernel.create_task("driver", b"d", driver)
    kernel.create_task("other", b"o")
    asyncio.run(kernel.load_all())
    kernel.interrupt("driver", 3)
    features = asyncio.run(kernel.run_period())
    assert taken == [3] and features[1].irqs == 3 and features[2].irqs == 0
    assert features[1].syscalls["wait"] == 1
    features = asyncio.run(kernel.run_period())
    assert taken == [3, 0] and features[1].irqs == 0


def test_messages_received_count_when_taken_from_the_inbox() -> None:
    """ipc_received is what the task took (and worked on) in the period, per sender."""
    _, kernel = make()

    async def late_sender(api: TaskApi) -> None:  # runs after the receiver (higher id)
        api.send("receiver", b"x")

    async def receiver(api: TaskApi) -> None:
        while api.receive() is not None:
            pass

    kernel.create_task("receiver", b"r", receiver)
    kernel.create_task("sender", b"s", late_sender)
    kernel.grant("sender", "receiver")
    asyncio.run(kernel.load_all())
    first = asyncio.run(kernel.run_period())
    second = asyncio.run(kernel.run_period())
    assert first[1].ipc_received[2] == 0 and first[2].ipc_sent[1] == 1
    assert second[1].ipc_received[2] == 1
