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
- the kernel mediates every HSM command of a task, so it also enforces a **budget per command
  kind** (per period and per sliding window) that the manager sets from the task's behaviour
  profile (:mod:`mchsm.sw.profile`): a command over budget is refused (``ERR_DENIED``) without
  reaching the HSM and counted.  This is the fine-grained half of the HSM's own monitor, kept in
  the kernel because the iCE40 build has no logic cells left for per-kind counters;
- device interrupts reach a task through the kernel (:meth:`Microkernel.interrupt`), so they
  are an input no task can forge;
- per scheduling period the kernel counts what each task did (CPU time, IPC messages and bytes
  per peer, system calls by kind, HSM commands by kind and how many failed or were refused,
  faults) and what it was given (messages per peer, interrupts): the behaviour features anomaly
  detection (:mod:`mchsm.sw.anomaly`) watches.

The kernel is async because its HSM driver is: it runs the same over the golden model and over
RTL simulations.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from mchsm.constants import KERNEL_BUDGET_WINDOW, MANAGER, Cmd, Status
from mchsm.sw.driver import HsmDriver, HsmPort, Reply
from mchsm.sw.errors import ArgumentError, MchsmError

__all__ = [
    "HSM_BUDGET_WINDOW",
    "AddressSpace",
    "Capability",
    "CapabilityError",
    "Features",
    "HsmBudget",
    "MemoryFault",
    "Microkernel",
    "Task",
    "TaskApi",
    "TaskState",
    "UnknownTaskError",
    "command_kind",
]

#: bytes of data memory every task gets after its code
DATA_SIZE = 4096
#: periods of the sliding window of the kernel's HSM command budgets
HSM_BUDGET_WINDOW = KERNEL_BUDGET_WINDOW


class CapabilityError(MchsmError):
    """An IPC send named an endpoint the task holds no capability for."""


class MemoryFault(MchsmError):
    """A task touched memory outside its own address space."""


class UnknownTaskError(MchsmError, KeyError):
    """No task of that name or id (a ``KeyError`` too, as a lookup that fails)."""


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
    #: messages the task took from its inbox, per sender (an input: what peers gave it)
    ipc_received: Counter[int] = field(default_factory=Counter)
    syscalls: Counter[str] = field(default_factory=Counter)  #: system calls, by kind
    hsm_commands: int = 0
    faults: int = 0
    #: bytes sent, per peer: an exfiltrating task may send few, large messages
    ipc_bytes: Counter[int] = field(default_factory=Counter)
    #: HSM commands that did not answer OK: probing other contexts or keys fails loudly
    hsm_failures: int = 0
    #: HSM commands by kind (the command's name, e.g. ``TASK_MAC``)
    hsm_kinds: Counter[str] = field(default_factory=Counter)
    #: HSM commands the kernel refused because they were over the task's budget, by kind
    hsm_refused: Counter[str] = field(default_factory=Counter)
    #: device interrupts delivered to the task (an input: the hardware's doing, not the task's)
    irqs: int = 0

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


@dataclass(frozen=True)
class HsmBudget:
    """How many HSM commands of each kind a task may issue: per period, and per sliding window
    of ``window`` periods (this one included).

    A kind that is not listed has a budget of 0: a task that never needed ``HASH`` has its
    first ``HASH`` refused.  The manager derives budgets from the task's behaviour profile,
    which is part of its measured image; they are the kernel's, so a hijacked task cannot
    raise them.
    """

    per_period: dict[str, int]
    per_window: dict[str, int]
    window: int = HSM_BUDGET_WINDOW

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ArgumentError(f"a budget window is at least 1 period, not {self.window}")
        if any(v < 0 for v in (*self.per_period.values(), *self.per_window.values())):
            raise ArgumentError("HSM budgets are counts: none may be negative")


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
        self.irqs = 0  #: interrupts delivered and not yet taken
        self.budget: HsmBudget | None = None  #: the kernel's HSM budget for this task
        #: HSM commands by kind in the last ``budget.window - 1`` periods (the budget's memory)
        self.hsm_history: deque[Counter[str]] = deque()

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

    def interrupts(self) -> int:
        """Take the device interrupts delivered since the last call (a notification wait)."""
        self._kernel._account(self._task, "wait")
        pending, self._task.irqs = self._task.irqs, 0
        return pending


def command_kind(cmd: Cmd | int) -> str:
    """The name a command is counted and budgeted under: ``TASK_MAC``, or ``0x99`` if unknown."""
    try:
        return Cmd(cmd).name
    except ValueError:
        return f"0x{int(cmd):02x}"


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
        kind = command_kind(cmd)
        features.hsm_kinds[kind] += 1
        if self._kernel._over_budget(self._task, kind, features.hsm_kinds[kind]):
            features.hsm_refused[kind] += 1
            features.hsm_failures += 1
            self.last = Reply(cmd, Status.ERR_DENIED, b"", 0)  # the HSM never sees it
            return self.last
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
        raise UnknownTaskError(f"no task {name_or_id!r}")

    def set_hsm_budget(self, name_or_id: str | int, budget: HsmBudget | None) -> None:
        """Limit the task's HSM commands per kind (``None``: no kernel budget, only the HSM's
        own monitor).  Only the manager calls this, from the task's verified profile."""
        task = self.task(name_or_id)
        task.budget = budget
        task.hsm_history.clear()

    def interrupt(self, name_or_id: str | int, count: int = 1) -> None:
        """Deliver ``count`` device interrupts to a task (the hardware's side of a driver)."""
        task = self.task(name_or_id)
        if task.state is TaskState.RUNNING and count > 0:
            task.irqs += count
            self._features[task.tid].irqs += count

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
        task.irqs = 0
        task.hsm_history.clear()
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
        for tid, task in self.tasks.items():
            if task.budget is not None:
                task.hsm_history.append(features[tid].hsm_kinds)
                while len(task.hsm_history) >= task.budget.window:
                    task.hsm_history.popleft()
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

    def _over_budget(self, task: Task, kind: str, this_period: int) -> bool:
        """Would the ``this_period``-th command of ``kind`` in this period break the budget?"""
        budget = task.budget
        if budget is None:
            return False
        if this_period > budget.per_period.get(kind, 0):
            return True
        window = this_period + sum(counts[kind] for counts in task.hsm_history)
        return window > budget.per_window.get(kind, 0)

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

    def _receive(self, task: Task) -> tuple[int, bytes] | None:
        features = self._account(task, "receive")
        if not task.inbox:
            return None
        message = task.inbox.popleft()
        features.ipc_received[message[0]] += 1  # counted when taken: the work it causes is now
        return message

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
