"""A model of the separation microkernel that sits in front of the HSM.

What matters for the protocol, and what this model keeps:

- every task has its own address space holding its code image; a task reads and writes only
  its own space (anything else is a memory fault the kernel counts);
- the loader (the manager, caller id 0) RESETs and MEASUREs a task's image into the task's HSM
  context before the task may run: the HSM hashes what the kernel actually loaded;
- tasks talk only through IPC endpoints named by kernel-checked capabilities;
- the kernel tags every HSM access with the caller's id: a task gets an :class:`HsmPort` bound
  to its own id and has no way to name another context;
- at the end of every scheduling period the kernel tells the HSM (NEW_PERIOD), whose monitor
  limits how many commands a task may issue per period;
- per scheduling period the kernel counts what each task did (CPU time, IPC messages and bytes
  per peer, system calls by kind, HSM commands and how many failed, faults): the behaviour
  features anomaly detection (:mod:`mchsm.sw.anomaly`) watches.

The kernel is async because its HSM driver is: it runs the same over the golden model and over
RTL simulations.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from mchsm.constants import MANAGER, Cmd, Status
from mchsm.sw.driver import HsmDriver, HsmPort, Reply
from mchsm.sw.errors import MchsmError

__all__ = [
    "AddressSpace",
    "Capability",
    "CapabilityError",
    "Features",
    "MemoryFault",
    "Microkernel",
    "Task",
    "TaskApi",
    "TaskState",
]

#: bytes of data memory every task gets after its code
DATA_SIZE = 4096


class CapabilityError(MchsmError):
    """An IPC send named an endpoint the task holds no capability for."""


class MemoryFault(MchsmError):
    """A task touched memory outside its own address space."""


class TaskState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"


class AddressSpace:
    """A task's private memory: its code image, then its data."""

    def __init__(self, image: bytes, data_size: int = DATA_SIZE) -> None:
        self.memory = bytearray(image) + bytearray(data_size)
        self.code_size = len(image)

    @property
    def code(self) -> bytes:
        return bytes(self.memory[: self.code_size])

    def read(self, addr: int, size: int) -> bytes:
        if addr < 0 or size < 0 or addr + size > len(self.memory):
            raise MemoryFault(f"read of {size} bytes at 0x{addr:x} is outside the task's space")
        return bytes(self.memory[addr : addr + size])

    def write(self, addr: int, data: bytes) -> None:
        if addr < self.code_size or addr + len(data) > len(self.memory):
            raise MemoryFault(f"write at 0x{addr:x} is outside the task's data area")
        self.memory[addr : addr + len(data)] = data


@dataclass(frozen=True)
class Capability:
    """The right of ``holder`` to send to the endpoint of task ``target``."""

    holder: int
    target: int
    badge: int


@dataclass
class Features:
    """What one task did in one scheduling period (the anomaly detector's input)."""

    cpu: int = 0  #: work units executed
    ipc_sent: Counter[int] = field(default_factory=Counter)  #: messages sent, per peer
    ipc_received: Counter[int] = field(default_factory=Counter)  #: messages received, per peer
    syscalls: Counter[str] = field(default_factory=Counter)  #: system calls, by kind
    hsm_commands: int = 0
    faults: int = 0
    #: bytes sent, per peer: an exfiltrating task may send few, large messages
    ipc_bytes: Counter[int] = field(default_factory=Counter)
    #: HSM commands that did not answer OK: probing other contexts or keys fails loudly
    hsm_failures: int = 0

    def vector(self, peers: list[int]) -> list[float]:
        """A fixed-order numeric vector of these features."""
        return [
            float(self.cpu),
            *(float(self.ipc_sent[p]) for p in peers),
            *(float(self.ipc_received[p]) for p in peers),
            float(sum(self.syscalls.values())),
            float(self.hsm_commands),
            float(self.faults),
        ]


#: a task's program: called once per scheduling period with the task's system-call surface
Program = Callable[["TaskApi"], Awaitable[None]]


class Task:
    """A task: a name, a context id, an address space and a program."""

    def __init__(self, tid: int, name: str, image: bytes, program: Program | None) -> None:
        self.tid = tid
        self.name = name
        self.image = bytes(image)  #: the stored image (what the loader loads: "flash")
        self.program = program
        self.space: AddressSpace | None = None
        self.state = TaskState.CREATED
        self.inbox: deque[tuple[int, bytes]] = deque()
        self.capabilities: dict[str, Capability] = {}

    def __repr__(self) -> str:
        return f"Task({self.tid}, {self.name!r}, {self.state.value})"


class TaskApi:
    """The system calls a task may make.  Everything goes through the kernel."""

    def __init__(self, kernel: Microkernel, task: Task) -> None:
        self._kernel = kernel
        self._task = task

    @property
    def name(self) -> str:
        return self._task.name

    @property
    def data_base(self) -> int:
        """Address of the first byte of this task's data area (right after its code)."""
        assert self._task.space is not None
        return self._task.space.code_size

    @property
    def hsm(self) -> HsmPort:
        """This task's HSM port: every command is tagged with this task's id."""
        return self._kernel._hsm_port(self._task)

    def compute(self, units: int) -> None:
        self._kernel._account(self._task, "compute").cpu += units

    def send(self, endpoint: str, message: bytes) -> None:
        self._kernel._send(self._task, endpoint, message)

    def receive(self) -> tuple[int, bytes] | None:
        return self._kernel._receive(self._task)

    def read(self, addr: int, size: int) -> bytes:
        return self._kernel._memory(self._task, "read", addr, size)

    def write(self, addr: int, data: bytes) -> None:
        self._kernel._memory(self._task, "write", addr, data)


class _KernelPort(HsmPort):
    """A task's HSM port: tagged with the task's id, and every command counted as a feature."""

    def __init__(self, kernel: Microkernel, task: Task) -> None:
        super().__init__(kernel.driver, task.tid)
        self._kernel = kernel
        self._task = task

    async def call(
        self,
        cmd: Cmd | int,
        ctx: int = 0,
        data: bytes | Iterable[bytes] = b"",
        length: int | None = None,
    ) -> Reply:
        features = self._kernel._account(self._task, "hsm")
        features.hsm_commands += 1
        reply = await super().call(cmd, ctx, data, length)
        if reply.status is not Status.OK:
            features.hsm_failures += 1
        return reply


class Microkernel:
    """Tasks, their address spaces, capabilities, the loader and the HSM tagging.

    Parameters
    ----------
    driver : HsmDriver
        The HSM, through whatever transport.
    contexts : int
        Number of task contexts the HSM has; task ids are 1..contexts.
    """

    def __init__(self, driver: HsmDriver, contexts: int) -> None:
        self.driver = driver
        self.contexts = contexts
        self.tasks: dict[int, Task] = {}
        self._ports: dict[int, HsmPort] = {}
        self._features: dict[int, Features] = {}
        self._period_hooks: list[Callable[[int, dict[int, Features]], None]] = []
        self.period = 0
        self.manager_port = driver.port(MANAGER)

    # -- tasks and capabilities -----------------------------------------------------------------

    def create_task(
        self, name: str, image: bytes, program: Program | None = None, tid: int | None = None
    ) -> Task:
        """Create a task in the next free context (not yet loaded or running)."""
        if tid is None:
            free = [i for i in range(1, self.contexts + 1) if i not in self.tasks]
            if not free:
                raise MchsmError(f"all {self.contexts} contexts are in use")
            tid = free[0]
        if not 1 <= tid <= self.contexts or tid in self.tasks:
            raise MchsmError(f"context {tid} is not free (1..{self.contexts})")
        task = Task(tid, name, image, program)
        self.tasks[tid] = task
        self._features[tid] = Features()
        return task

    def task(self, name_or_id: str | int) -> Task:
        for task in self.tasks.values():
            if name_or_id in (task.tid, task.name):
                return task
        raise KeyError(f"no task {name_or_id!r}")

    def grant(self, holder: str | int, target: str | int, endpoint: str | None = None) -> None:
        """Give ``holder`` the capability to send to ``target`` under the name ``endpoint``."""
        src, dst = self.task(holder), self.task(target)
        name = endpoint or dst.name
        src.capabilities[name] = Capability(holder=src.tid, target=dst.tid, badge=src.tid)

    # -- the loader -------------------------------------------------------------------------------

    async def load(self, name_or_id: str | int) -> bytes:
        """Load a task's stored image: RESET and MEASURE it into its context, then start it.

        Returns the digest of the image the HSM computed.
        """
        task = self.task(name_or_id)
        task.state = TaskState.STOPPED
        task.space = AddressSpace(task.image)
        task.inbox.clear()
        await self.manager_port.reset(task.tid)
        digest = await self.manager_port.measure(task.tid, task.space.code)
        task.state = TaskState.RUNNING
        return digest

    async def load_all(self) -> None:
        for tid in sorted(self.tasks):
            await self.load(tid)

    def install(self, name_or_id: str | int, image: bytes) -> None:
        """Replace a task's stored image (what an update or an attacker with flash access does)."""
        self.task(name_or_id).image = bytes(image)

    # -- scheduling and features ---------------------------------------------------------------

    def on_period(self, hook: Callable[[int, dict[int, Features]], None]) -> None:
        """Call ``hook(period, features)`` at the end of every scheduling period."""
        self._period_hooks.append(hook)

    async def run_period(self) -> dict[int, Features]:
        """Run every running task's program once; return and reset this period's features."""
        for tid in sorted(self.tasks):
            task = self.tasks[tid]
            if task.state is TaskState.RUNNING and task.program is not None:
                try:
                    await task.program(TaskApi(self, task))
                except (MemoryFault, CapabilityError):
                    pass  # counted where it happened; the task's period ends there
        features, self._features = self._features, {tid: Features() for tid in self.tasks}
        # the HSM's monitor counts each task's commands per period: tell it a new one starts
        await self.manager_port.new_period()
        for hook in self._period_hooks:
            hook(self.period, features)
        self.period += 1
        return features

    # -- system calls (called through TaskApi) --------------------------------------------------

    def _account(self, task: Task, kind: str) -> Features:
        features = self._features[task.tid]
        features.syscalls[kind] += 1
        return features

    def _hsm_port(self, task: Task) -> HsmPort:
        port = self._ports.get(task.tid)
        if port is None:
            port = self._ports[task.tid] = _KernelPort(self, task)
        return port

    def _send(self, task: Task, endpoint: str, message: bytes) -> None:
        features = self._account(task, "send")
        cap = task.capabilities.get(endpoint)
        if cap is None or cap.holder != task.tid:
            features.faults += 1
            raise CapabilityError(f"task {task.name!r} holds no capability for {endpoint!r}")
        target = self.tasks[cap.target]
        if target.state is not TaskState.RUNNING:
            return  # messages to a stopped task are dropped, as on a real kernel's endpoint
        target.inbox.append((cap.badge, bytes(message)))
        features.ipc_sent[cap.target] += 1
        features.ipc_bytes[cap.target] += len(message)
        self._features[cap.target].ipc_received[task.tid] += 1

    def _receive(self, task: Task) -> tuple[int, bytes] | None:
        self._account(task, "receive")
        return task.inbox.popleft() if task.inbox else None

    def _memory(self, task: Task, kind: str, addr: int, arg: int | bytes) -> bytes:
        features = self._account(task, kind)
        assert task.space is not None
        try:
            if kind == "read":
                assert isinstance(arg, int)
                return task.space.read(addr, arg)
            assert isinstance(arg, bytes)
            task.space.write(addr, arg)
            return b""
        except MemoryFault:
            features.faults += 1
            raise
