"""Wishbone B4 classic initiator (bus master) for cocotb 2.x, with mchsm's caller-id sideband.

The HSM's only way in is a Wishbone target, so every cocotb test of the RTL talks to it through
this model.  It is written like the cocotbext-axi masters: one class per role, transactions are
``async`` methods, and optional *patterns* shape the traffic to shake out handshake bugs.

Timing (classic, non-pipelined): a transfer's signals are driven just after a rising edge; the
model samples ``ack`` (and ``dat_r``) as the next rising edge samples them, so a target may answer
combinationally in the same cycle or registered any number of cycles later; the transfer ends at
the first rising edge that samples ``ack``.  Back-to-back transfers keep ``cyc``/``stb`` high
across that edge.  A :meth:`write_burst` is one block cycle: ``cyc`` stays high, idle cycles drop
only ``stb``.

How it samples costs Python wake-ups, which is what a cocotb simulation spends its time on.  On
Verilator (``sample_at_edge``, the default there) the model reads ``ack`` in the rising edge's own
callback: Verilator calls it before it evaluates the edge and applies writes after it, so what
the callback reads is exactly what the edge samples - one wake-up per cycle.  Elsewhere it reads
in the ReadOnly phase of each cycle and then waits for the edge - two per cycle.  Only the
signals that change are written: in a burst, ``dat_w`` alone.

Amaranth names the members of an interface port ``bus__adr``, ``bus__dat_w`` ...; the name scheme
is a parameter for other conventions (``"{prefix}_{name}_o"`` and the like).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import cocotb
from cocotb.handle import LogicObject
from cocotb.simtime import get_sim_time
from cocotb.triggers import Lock, ReadOnly, RisingEdge

from mchsm.sw.errors import ArgumentError, BusRefusedError, TransportError

__all__ = ["WishboneBusError", "WishboneError", "WishboneMaster", "WishboneTimeoutError"]


class WishboneError(TransportError):
    """A Wishbone transfer did not complete normally (a :class:`TransportError` of mchsm's)."""


class WishboneTimeoutError(WishboneError, TimeoutError):
    """The target did not acknowledge within ``timeout_cycles``."""


class WishboneBusError(WishboneError, BusRefusedError):
    """The target ended a transfer with ``err`` (or ``rty``): for the HSM, a refused access."""


def _on_verilator() -> bool:
    """Whether the simulator is Verilator, whose edge callbacks come before the edge's
    evaluation (see the module docstring)."""
    return str(getattr(cocotb, "SIM_NAME", "") or "").lower().startswith("verilator")


class WishboneMaster:
    """Drives a Wishbone B4 classic target.

    Parameters
    ----------
    dut
        The cocotb handle holding the bus signals.
    prefix : str
        Interface name (``bus`` for ``bus__adr`` ...).
    clock
        Clock signal; default ``dut.clk``.
    caller_signal
        The caller-id sideband, driven with every transfer; default ``dut.caller`` if present.
    name_scheme : str
        How a member's port is named, from ``prefix`` and ``name`` (``adr``, ``dat_w`` ...).
    stb_pattern : iterable of int, optional
        One value per cycle in which the master could start a transfer: truthy = strobe,
        falsy = stay idle this cycle.  ``itertools.cycle([1, 1, 1, 0])`` idles every 4th cycle.
        When it runs out the master strobes whenever it can.
    timeout_cycles : int
        Cycles to wait for ``ack`` before :class:`WishboneTimeoutError`.
    sample_at_edge : bool, optional
        Sample ``ack``/``dat_r`` in the rising edge's callback instead of the ReadOnly phase
        before it: right only on a simulator that calls back before it evaluates the edge (see
        the module docstring).  Default: on for Verilator, off elsewhere.
    """

    def __init__(
        self,
        dut: Any,
        prefix: str = "bus",
        clock: LogicObject | None = None,
        caller_signal: Any = None,
        *,
        name_scheme: str = "{prefix}__{name}",
        stb_pattern: Iterable[int | bool] | None = None,
        timeout_cycles: int = 1000,
        sample_at_edge: bool | None = None,
    ) -> None:
        self.dut = dut
        self.prefix = prefix
        self.name_scheme = name_scheme
        self.clock = clock if clock is not None else dut.clk
        if caller_signal is None:
            caller_signal = self._lookup("caller", raw=True, required=False)
        self.caller_signal = caller_signal
        self.adr = self._lookup("adr")
        self.dat_w = self._lookup("dat_w")
        self.dat_r = self._lookup("dat_r")
        self.cyc = self._lookup("cyc")
        self.stb = self._lookup("stb")
        self.we = self._lookup("we")
        self.ack = self._lookup("ack")
        self.sel = self._lookup("sel", required=False)
        self.err = self._lookup("err", required=False)
        self.rty = self._lookup("rty", required=False)
        self.data_width = len(self.dat_w)
        self.addr_width = len(self.adr)
        self.byte_shift = (self.data_width // 8).bit_length() - 1
        self.timeout_cycles = timeout_cycles
        self.sample_at_edge = _on_verilator() if sample_at_edge is None else sample_at_edge
        self._pattern: Iterator[int | bool] | None = None
        self.set_stb_pattern(stb_pattern)
        self._lock = Lock()
        self._edge_time: int | None = None  # sim time of the edge that ended our last transfer
        #: statistics: completed transfers, cycles waited for ack, idle cycles inserted
        self.reads = 0
        self.writes = 0
        self.wait_cycles = 0
        self.idle_cycles = 0
        self._idle()
        self.adr.value = 0
        self.dat_w.value = 0
        self.we.value = 0

    def _lookup(self, name: str, *, raw: bool = False, required: bool = True) -> Any:
        full = name if raw else self.name_scheme.format(prefix=self.prefix, name=name)
        try:
            return getattr(self.dut, full)
        except AttributeError:
            if required:
                raise ArgumentError(
                    f"Wishbone master: the DUT has no signal {full!r} (prefix {self.prefix!r}, "
                    f"name scheme {self.name_scheme!r})"
                ) from None
            return None

    def set_stb_pattern(self, pattern: Iterable[int | bool] | None) -> None:
        """Replace the strobe pattern (None: strobe whenever possible)."""
        self._pattern = iter(pattern) if pattern is not None else None

    def _may_strobe(self) -> bool:
        if self._pattern is None:
            return True
        try:
            return bool(next(self._pattern))
        except StopIteration:
            self._pattern = None
            return True

    def _idle(self, *, hold_cyc: bool = False) -> None:
        self.cyc.value = 1 if hold_cyc else 0
        self.stb.value = 0
        if self.sel is not None:
            self.sel.value = 0

    def _word(self, addr_byte: int) -> int:
        if addr_byte < 0 or addr_byte % (1 << self.byte_shift):
            raise ArgumentError(
                f"Wishbone address 0x{addr_byte:x} is not aligned to "
                f"{self.data_width // 8}-byte words"
            )
        word = addr_byte >> self.byte_shift
        if word >> self.addr_width:
            raise ArgumentError(
                f"Wishbone address 0x{addr_byte:x} is beyond the "
                f"{self.addr_width}-bit word address of {self.prefix}"
            )
        return word

    async def read(self, addr_byte: int, caller: int = 0) -> int:
        """Read the word at byte address ``addr_byte`` as ``caller``."""
        (value,) = await self._block(self._word(addr_byte), [None], caller)
        return value

    async def write(self, addr_byte: int, value: int, caller: int = 0) -> None:
        """Write ``value`` to byte address ``addr_byte`` as ``caller``."""
        await self._block(self._word(addr_byte), [value], caller)

    async def write_burst(self, addr_byte: int, values: Sequence[int], caller: int = 0) -> None:
        """Write ``values`` one after the other to the same address, in one block cycle."""
        if values:
            await self._block(self._word(addr_byte), list(values), caller)

    async def read_burst(self, addr_byte: int, count: int, caller: int = 0) -> list[int]:
        """Read the same address ``count`` times in one block cycle."""
        return await self._block(self._word(addr_byte), [None] * count, caller) if count else []

    async def _block(self, word: int, values: list[int | None], caller: int) -> list[int]:
        """One Wishbone cycle of transfers to ``word``: None reads, an int writes."""
        mask = (1 << self.data_width) - 1
        edge = RisingEdge(self.clock)
        at_edge = self.sample_at_edge
        async with self._lock:
            if self._edge_time != get_sim_time():
                # not right after our own last transfer: start on a clean edge
                await edge
            out: list[int] = []
            driven = False  # the strobe and address are on the bus from the last word
            try:
                for i, value in enumerate(values):
                    while not self._may_strobe():
                        self._idle(hold_cyc=i > 0)
                        driven = False
                        await edge
                        self.idle_cycles += 1
                    if driven and (value is None) == (values[i - 1] is None):
                        if value is not None:  # the next word of a burst: only its data
                            self.dat_w.value = value & mask
                    else:
                        self._drive(word, value, caller, mask)
                        driven = True
                    waited = 0
                    while True:
                        if at_edge:
                            await edge  # the values this edge samples (module docstring)
                        else:
                            await ReadOnly()
                        # ack and err/rty exclude each other: the latter only read without ack
                        ack = self.ack.value == 1
                        err = not ack and self.err is not None and self.err.value == 1
                        rty = not ack and self.rty is not None and self.rty.value == 1
                        data = self._sample() if ack and value is None else 0
                        if not at_edge:
                            await edge
                        if ack or err or rty:
                            break
                        waited += 1
                        self.wait_cycles += 1
                        if waited >= self.timeout_cycles:
                            raise WishboneTimeoutError(
                                f"Wishbone {self.prefix}: no ack for the "
                                f"{'read' if value is None else 'write'} of byte address "
                                f"0x{word << self.byte_shift:x} (word 0x{word:x}) by caller "
                                f"{caller} within {self.timeout_cycles} cycles: is the address "
                                f"decoded, the clock running, the DUT out of reset?"
                            )
                    if err or rty:
                        raise WishboneBusError(
                            f"Wishbone {self.prefix}: the target answered "
                            f"{'err' if err else 'rty'} to the "
                            f"{'read' if value is None else 'write'} of byte address "
                            f"0x{word << self.byte_shift:x} by caller {caller}"
                        )
                    if value is None:
                        self.reads += 1
                    else:
                        self.writes += 1
                    out.append(data)
            finally:
                self._idle()  # a following transfer in this time step re-asserts (back-to-back)
                self._edge_time = get_sim_time()
            return out

    def _drive(self, word: int, value: int | None, caller: int, mask: int) -> None:
        self.adr.value = word
        self.we.value = 0 if value is None else 1
        if value is not None:
            self.dat_w.value = value & mask
        if self.sel is not None:
            self.sel.value = (1 << len(self.sel)) - 1
        if self.caller_signal is not None:
            self.caller_signal.value = caller
        elif caller:
            raise ArgumentError(f"caller {caller}: the DUT has no caller-id sideband")
        self.cyc.value = 1
        self.stb.value = 1

    def _sample(self) -> int:
        try:
            return int(self.dat_r.value)
        except ValueError:
            raise WishboneError(
                f"Wishbone {self.prefix}: dat_r is {self.dat_r.value} (X/Z) while acked"
            ) from None
