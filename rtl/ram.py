"""Block RAM read ports that cost no logic: the one place that knows how Yosys maps them.

Amaranth's synchronous read port (``Memory.read_port()``) promises the *old* word when the same
address is written in the same clock cycle.  An iCE40 or ECP5 block RAM does not promise that,
so Yosys emulates it with a bypass: a register of the write data, an address comparator and a
32-bit multiplexer behind every such read port, about 40 flip-flops and 40 LUT4s each (the
``no_rw_check`` attribute does not reach a port that is synchronous already).  The HSM never
uses a word it reads in the cycle that word is written - every memory's access pattern says
so where it is used - and the netlist tests run the synthesised design, which would show a
collision that was missed.

:func:`read_port` builds the same port as an asynchronous read plus a plain output register
and marks the memory ``no_rw_check``: Yosys folds the register back into the block RAM and,
told that collisions are never looked at, adds nothing.  In simulation and in the formal
proofs the register reads the memory before the clock edge's write, exactly as the
synchronous port did, so behaviour and timing are unchanged (data one cycle after its address).

One thing Amaranth cannot say: that the register has no initial value.  Every Amaranth signal
has one (here 0), and a block RAM's output latch has none, so Yosys would emulate it with a
flag and a 32-bit multiplexer per port.  The register is therefore marked
(:data:`LATCH_ATTR`) and every synthesis script runs :data:`YOSYS_AFTER_READ` right after
reading the design, which drops the initial value of the marked registers only.  (Nothing
reads them before their first address: every memory source of the engine spends a cycle on
its first address, and the bridge and the mailbox read only what they addressed.)
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Module, Signal, Value
from amaranth.lib import memory

__all__ = ["LATCH_ATTR", "NO_RW_CHECK", "YOSYS_AFTER_READ", "ReadPort", "read_port"]

#: memory attributes: a read in the cycle of a write to the same address is never used
NO_RW_CHECK = {"no_rw_check": 1}
#: marks the output register of a :func:`read_port` (a block RAM's output latch)
LATCH_ATTR = "mchsm_bram_latch"
#: Yosys commands for every synthesis of the design, right after ``read_rtlil``: the marked
#: registers have no initial value, like the block RAM latch they become
YOSYS_AFTER_READ = f"setattr -unset init a:{LATCH_ATTR}"


@dataclass(frozen=True)
class ReadPort:
    """What a read port shows the design: ``addr`` in, ``data`` one cycle later."""

    addr: Value
    data: Signal


def read_port(m: Module, mem: memory.Memory, name: str) -> ReadPort:
    """A read port of ``mem`` (a memory made with ``attrs=NO_RW_CHECK``) without collision
    logic: asynchronous read, registered in the ``sync`` domain (``reset_less``, like a block
    RAM's output latch)."""
    if mem.attrs.get("no_rw_check") != 1:
        raise ValueError(f"{name}: the memory must carry NO_RW_CHECK")
    port = mem.read_port(domain="comb")
    data = Signal(mem.shape, name=f"{name}_data", reset_less=True, attrs={LATCH_ATTR: 1})
    m.d.sync += data.eq(port.data)
    return ReadPort(addr=port.addr, data=data)
