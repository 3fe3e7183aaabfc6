"""The driver's API edges: contexts outside 1..N, arguments of the wrong type, data that does
not add up to its length, and ports that cannot be turned into another caller's.

Each refusal is a typed error (:class:`~mchsm.sw.errors.MchsmError`) raised before the command
reaches the bus, checked here by counting the accesses a transport sees; a refusal that comes
after some data was sent leaves the HSM as it was and the mailbox free.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from mchsm.constants import DEVICE_ID_SIZE, MANAGER, ROOT_KEY_SIZE, Cmd, Reg
from mchsm.sw.driver import HsmDriver, HsmPort, ModelTransport, Transport
from mchsm.sw.errors import (
    ArgumentError,
    ArgumentTypeError,
    ContextError,
    MchsmError,
)
from mchsm.sw.kernel import Microkernel, TaskApi
from mchsm.sw.mailbox import ModelMailbox
from mchsm.sw.model import HsmModel
from mchsm.sw.protocol import UpdateAuth

N = 4


class Counting(Transport):
    """The model's transport, counting every access (and which were ID/INFO reads)."""

    def __init__(self, mailbox: ModelMailbox) -> None:
        self.inner = ModelTransport(mailbox)
        self.accesses: list[tuple[str, int, int]] = []

    async def read(self, addr: int, caller: int) -> int:
        self.accesses.append(("r", addr, caller))
        return await self.inner.read(addr, caller)

    async def write(self, addr: int, value: int, caller: int) -> None:
        self.accesses.append(("w", addr, caller))
        await self.inner.write(addr, value, caller)


def make() -> tuple[ModelMailbox, Counting, HsmDriver]:
    box = ModelMailbox(HsmModel(N))
    transport = Counting(box)
    return box, transport, HsmDriver(transport)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- contexts outside 1..N ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.read_ctx(0),
        lambda p: p.read_ctx(N + 1),
        lambda p: p.read_ctx(257),  # an 8-bit mask would make it context 1
        lambda p: p.read_ctx(-1),
        lambda p: p.reset(N + 1),
        lambda p: p.reset(0),
        lambda p: p.measure(257, b"image"),
        lambda p: p.measure(0, b"image"),
        lambda p: p.extend(N + 1, bytes(32)),
        lambda p: p.set_anomaly(33),
        lambda p: p.attest(bytes(32), 1 << N),  # selects context N+1
        lambda p: p.attest(bytes(32), 0xFFFF_FFFF),
    ],
    ids=[
        "read_ctx(0)",
        "read_ctx(N+1)",
        "read_ctx(257)",
        "read_ctx(-1)",
        "reset(N+1)",
        "reset(0)",
        "measure(257)",
        "measure(0)",
        "extend(N+1)",
        "set_anomaly(33)",
        "attest(sel=N+1)",
        "attest(sel=all ones)",
    ],
)
def test_contexts_outside_1_to_n_are_refused_before_any_command(call: Any) -> None:
    box, transport, driver = make()
    port = driver.port(MANAGER)
    run(port.status())
    run(driver.device())  # the driver learns N (two reads, once)
    before = len(transport.accesses)
    snapshot = [box.model.context(i).measurement for i in range(1, N + 1)]
    with pytest.raises((ContextError, ArgumentError)) as info:
        run(call(port))
    assert isinstance(info.value, MchsmError) and isinstance(info.value, ValueError)
    assert len(transport.accesses) == before  # not one bus access
    assert [box.model.context(i).measurement for i in range(1, N + 1)] == snapshot
    assert port.last is not None and port.last.cmd is Cmd.STATUS  # no command was issued


def test_n_is_learned_once_by_probing() -> None:
    _, transport, driver = make()
    port = driver.port(2)
    for _ in range(3):
        run(port.read_ctx(2))  # its own context
    probes = [a for a in transport.accesses if a[0] == "r" and a[1] in (Reg.ID, Reg.INFO)]
    # two reads, once, tagged with the port's own caller (ID and INFO are anyone's to read)
    assert probes == [("r", Reg.ID, 2), ("r", Reg.INFO, 2)]
    with pytest.raises(ContextError, match=f"this HSM has contexts 1..{N}"):
        run(port.read_ctx(N + 1))
    assert run(driver.device()).contexts == N


def test_in_range_contexts_still_reach_the_hsm() -> None:
    """The edge is exact: context N is accepted and reset/measured as before."""
    box, _, driver = make()
    port = driver.port(MANAGER)
    run(port.reset(N))
    digest = run(port.measure(N, b"task image"))
    assert digest == hashlib.sha256(b"task image").digest()
    assert run(port.read_ctx(N)).measurement == box.model.context(N).measurement


# -- arguments of the wrong type -----------------------------------------------------------------


def _auth() -> UpdateAuth:
    return UpdateAuth(ctx=1, old=0, new=1, ref=bytes(32), tag=bytes(32))


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda p: p.read_ctx("1"), "context must be an integer"),
        (lambda p: p.read_ctx(1.0), "not float"),
        (lambda p: p.read_ctx(True), "not bool"),
        (lambda p: p.read_ctx(None), "not NoneType"),
        (lambda p: p.hash("abc"), "encode it first"),
        (lambda p: p.hash(None), "not NoneType"),
        (lambda p: p.hash(1.5), "not float"),
        (lambda p: p.hash(["abc"], 3), "data chunks must be bytes, not str"),
        (lambda p: p.hash(iter(["abc"]), 3), "data chunks must be bytes, not str .at byte 0"),
        (lambda p: p.hash(b"abc", "3"), "length must be an integer"),
        (lambda p: p.hmac_key("secret"), "the HMAC key must be bytes"),
        (lambda p: p.hmac(None), "not NoneType"),
        (lambda p: p.task_mac(["x", "y"], 2), "data chunks must be bytes, not str"),
        (lambda p: p.hash([b"abc"], 4), "the data has 3 bytes, not the 4 declared"),
        (lambda p: p.measure(1, "image"), "encode it first"),
        (lambda p: p.extend(1, "d" * 32), "the digest EXTEND takes must be bytes"),
        (lambda p: p.extend(1, b"short"), "must be 32 bytes, not 5"),
        (lambda p: p.provision("d" * DEVICE_ID_SIZE, bytes(ROOT_KEY_SIZE)), "device id must be"),
        (lambda p: p.provision(bytes(DEVICE_ID_SIZE), None), "root key must be bytes"),
        (lambda p: p.attest("n" * 32, 1), "the nonce must be bytes"),
        (lambda p: p.attest(bytes(32), "1"), "selection mask must be an integer"),
        (lambda p: p.attest(bytes(32), 0), "selection mask must be an integer in 1.."),
        (lambda p: p.update("auth"), "UPDATE takes an UpdateAuth"),
        (lambda p: p.update(None), "UPDATE takes an UpdateAuth"),
        (lambda p: p.call("5"), "command code must be an integer"),
        (lambda p: p.call(Cmd.HASH, 0, b"x", -1), "length must be an integer in 0.."),
    ],
)
def test_wrong_arguments_are_typed_errors(call: Any, says: str) -> None:
    box, transport, driver = make()
    port = driver.port(MANAGER)
    run(port.status())
    before = len(transport.accesses)
    with pytest.raises(ArgumentError, match=says) as info:
        run(call(port))
    assert isinstance(info.value, MchsmError)
    if isinstance(info.value, ArgumentTypeError):
        assert isinstance(info.value, TypeError)  # still what a caller catching TypeError gets
    if "at byte" not in says:  # an iterator's chunks are checked as they are sent
        assert len(transport.accesses) == before
    assert box.holder is None  # whatever happened, the mailbox is free
    assert run(port.hash(b"abc")) == hashlib.sha256(b"abc").digest()  # and the HSM works


def test_update_auth_fields_are_checked() -> None:
    _, _, driver = make()
    port = driver.port(MANAGER)
    for bad, says in (
        ({"ctx": N + 1}, "context"),
        ({"old": -1}, "old version"),
        ({"new": 1 << 32}, "new version"),
        ({"ref": "r" * 32}, "reference must be bytes"),
        ({"tag": bytes(31)}, "tag must be 32 bytes"),
    ):
        fields = {"ctx": 1, "old": 0, "new": 1, "ref": bytes(32), "tag": bytes(32), **bad}
        with pytest.raises(ArgumentError, match=says):
            run(port.update(UpdateAuth(**fields)))  # type: ignore[arg-type]  # wrong on purpose


# -- data that does not add up to its length -----------------------------------------------------


def _chunks(*parts: bytes) -> Iterator[bytes]:
    yield from parts


@pytest.mark.parametrize(
    ("data", "length", "says"),
    [
        (lambda: _chunks(b"abc", b"def"), 10, "ended after 6 of the 10 bytes"),
        (lambda: _chunks(b"abc", b"defgh"), 5, "longer than the 5 bytes"),
        (lambda: b"abc", 10, "ended after 3 of the 10 bytes"),
        (
            lambda: _chunks(bytes(5000), "tail"),  # type: ignore[arg-type]  # str on purpose
            5004,
            "data chunks must be bytes, not str",
        ),
    ],
    ids=["short", "long", "short-bytes", "bad-chunk"],
)
def test_data_that_does_not_match_its_length_is_aborted(data: Any, length: int, says: str) -> None:
    """The sysfs trap from the API side: a length of 10 and 6 bytes of data used to leave the
    HSM waiting for data until 10 million polls ran out.  Now the command is aborted at once:
    nothing changed, the mailbox is free, the next command works."""
    box, _, driver = make()
    port = driver.port(MANAGER)
    run(port.reset(1))
    before = box.model.context(1).measurement
    with pytest.raises(ArgumentError, match=says):
        run(port.measure(1, data(), length))
    assert box.model.context(1).measurement == before
    assert box.holder is None and not box.busy
    assert run(port.hash(b"abc")) == hashlib.sha256(b"abc").digest()


def test_a_failing_data_source_aborts_the_command() -> None:
    """A file that fails half-way (EIO): its error comes through, and the HSM is left clean."""
    box, _, driver = make()

    def failing() -> Iterator[bytes]:
        yield bytes(4096)
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        run(driver.port(MANAGER).hash(failing(), 10_000))
    assert box.holder is None and not box.busy


# -- a task's port is its own ---------------------------------------------------------------------


def test_a_port_cannot_be_rebound() -> None:
    _, _, driver = make()
    port = driver.port(3)
    for name in ("caller", "_caller", "_driver"):
        with pytest.raises(AttributeError):
            setattr(port, name, 0)
        with pytest.raises(AttributeError):
            delattr(port, name)
    with pytest.raises(AttributeError, match="bound to its caller once"):
        port.__init__(driver, 0)  # type: ignore[misc]  # calling __init__ again on purpose
    with pytest.raises(ArgumentTypeError):
        HsmPort(object(), 1)  # type: ignore[arg-type]  # not a driver, on purpose
    with pytest.raises(ArgumentError):
        driver.port(64)
    assert port.caller == 3


def _public(obj: object) -> Iterator[tuple[str, object]]:
    for name in dir(obj):
        if name.startswith("_"):
            continue
        try:
            value = getattr(obj, name)
        except Exception:  # a property that refuses: nothing reachable through it
            continue
        if callable(value) and not isinstance(value, type):
            continue  # methods: what they can do is what the port/TaskApi tests check
        yield name, value


def test_no_public_path_from_a_task_to_another_caller() -> None:
    """Everything a task's program can reach by public attributes, from its TaskApi: no
    driver, transport, kernel, mailbox or model, and no port but its own."""
    _, _, driver = make()
    kernel = Microkernel(driver, N)
    forbidden = (HsmDriver, Transport, Microkernel, ModelMailbox, HsmModel)
    reached: list[str] = []

    async def explore(api: TaskApi) -> None:
        seen: set[int] = set()
        frontier: list[tuple[str, object]] = [("api", api)]
        for _ in range(4):
            nxt = []
            for path, obj in frontier:
                if id(obj) in seen or isinstance(obj, str | bytes | int | float | bool):
                    continue
                seen.add(id(obj))
                assert not isinstance(obj, forbidden), f"{path} reaches {type(obj).__name__}"
                if isinstance(obj, HsmPort):
                    assert obj.caller == api_tid, f"{path} is caller {obj.caller}'s port"
                reached.append(path)
                nxt += [(f"{path}.{name}", value) for name, value in _public(obj)]
            frontier = nxt
        reply = await api.hsm.call(Cmd.READ_CTX, 2)  # another task's context: the HSM says no
        reached.append(reply.status.name)

    task = kernel.create_task("explorer", b"code", explore)
    api_tid = task.tid
    kernel.create_task("victim", b"victim code")
    run(kernel.load_all())
    run(kernel.run_period())
    assert "api.hsm" in reached and "ERR_DENIED" in reached
