"""The HSM's monitor (``docs/protocol.md`` section 8): per task, the commands it issued this
monitoring period and the commands that failed since its last RESET.

It owns the counters and says when a task is to be flagged; the ``ANOMALY`` bits themselves
stay in the engine (:class:`~mchsm.rtl.core.MchsmCore`), which also sets and clears them for
SET_ANOMALY and RESET.  The engine tells the monitor when a command starts and ends, and when
a RESET or a NEW_PERIOD clears counters.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from mchsm.constants import CALLER_BITS, Status

__all__ = ["Monitor"]


class Monitor(wiring.Component):
    """Command and failure counters of ``contexts`` tasks.

    Parameters
    ----------
    contexts : int
        Task contexts (tasks 1..N are callers 1..N).
    budget : int
        Commands a task may issue per period (0: no limit, no counting).
    fail_limit : int
        Failed commands since RESET that flag a task (0: no limit, no counters at all).
    wraps : bool
        The deliberate flaw ``counter_wraps`` (``CORE_FLAWS``): the command count wraps.

    Attributes
    ----------
    caller : In(CALLER_BITS)
        Who issued the running command (the manager and unknown callers are never counted).
    start : In(1)
        A command was issued this cycle.
    over_budget : Out(1)
        ... and it takes its task above the budget: flag the task.
    finish : In(1)
        The command ends this cycle, with ``status``.
    status : In(Status)
    over_limit : Out(1)
        ... and it is the task's ``fail_limit``-th failure: flag the task.
    new_period : In(1)
        NEW_PERIOD: every task's command count to 0.
    forgive : In(1)
        RESET of context index ``index``: its failure count to 0.
    index : In(5)
        Context index (task - 1) of ``forgive``.
    commands, failures : tuple of Signal
        The counters of each task (for the formal proofs).
    """

    def __init__(self, contexts: int, budget: int, fail_limit: int, *, wraps: bool = False):
        self.contexts = contexts
        self.budget = budget
        self.fail_limit = fail_limit
        self.wraps = wraps
        self.commands = tuple(
            Signal(range(budget + 2), name=f"commands{i + 1}") for i in range(contexts)
        )
        # no failure counters without a limit: a zero-width one exports as a `wire [-1:0]`
        self.failures = tuple(
            Signal(range(fail_limit + 1), name=f"failures{i + 1}")
            for i in range(contexts if fail_limit else 0)
        )
        super().__init__(
            {
                "caller": In(CALLER_BITS),
                "start": In(1),
                "over_budget": Out(1),
                "finish": In(1),
                "status": In(Status),
                "over_limit": Out(1),
                "new_period": In(1),
                "forgive": In(1),
                "index": In(5),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        n = self.contexts
        iw = max(1, (n - 1).bit_length())  # context index width
        commands, failures = Array(self.commands), Array(self.failures)
        task = (self.caller >= 1) & (self.caller <= n)
        tidx = (self.caller - 1)[:iw]  # the caller's context index

        # commands this period: counted at the start (the budget allows exactly `budget`)
        with m.If(self.start & task):
            count = commands[tidx]
            if self.budget:  # this command takes the count above the budget: flagged
                with m.If(count >= self.budget):
                    m.d.comb += self.over_budget.eq(1)
                if self.wraps:
                    m.d.sync += count.eq(count + 1)
                else:
                    with m.If(count <= self.budget):  # saturates at budget + 1
                        m.d.sync += count.eq(count + 1)
        with m.If(self.new_period):
            m.d.sync += [count.eq(0) for count in commands]

        # failures since RESET: counted at the end
        with m.If(self.forgive):
            m.d.sync += failures[self.index[:iw]].eq(0)
        if self.fail_limit:
            # an aborted command proves nothing, and preemption must not flag a task
            counted = (self.status != Status.OK) & (self.status != Status.ERR_ABORTED)
            with m.If(self.finish & counted & task):
                fails = failures[tidx]
                with m.If(fails >= self.fail_limit - 1):
                    m.d.comb += self.over_limit.eq(1)
                with m.If(fails != self.fail_limit):
                    m.d.sync += fails.eq(fails + 1)
        return m
