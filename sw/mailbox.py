"""The golden model behind the mailbox register map: the model as a bus device.

The RTL is a Wishbone slave with the register map of ``docs/protocol.md`` section 9; this class
gives the golden model exactly that face (32-bit reads and writes tagged with the caller id), so
the one host driver runs unchanged against the model and against the hardware.
"""

from __future__ import annotations

from mchsm.constants import (
    CTRL_ABORT,
    CTRL_CLEAR,
    MAGIC,
    MANAGER,
    PROTOCOL_VERSION,
    RESULT_WORDS,
    STATUS_BUSY,
    STATUS_DONE,
    STATUS_RESULT_LEN_SHIFT,
    Reg,
    Status,
)
from mchsm.sw.model import HsmModel, Response

__all__ = ["ModelMailbox"]

MASK32 = 0xFFFF_FFFF


class ModelMailbox:
    """Register-level front end of :class:`HsmModel`.

    Parameters
    ----------
    model : HsmModel
        The HSM behind the mailbox.
    """

    def __init__(self, model: HsmModel) -> None:
        self.model = model
        self.length = 0
        self.status = Status.OK
        self.done = False
        self.owner = MANAGER
        self.irq_enable = False
        self.result = b""

    @property
    def busy(self) -> bool:
        return self.model.busy

    @property
    def irq(self) -> bool:
        """The done interrupt line."""
        return self.done and self.irq_enable

    def read(self, addr: int, caller: int) -> int:
        """A 32-bit bus read at byte offset ``addr`` by ``caller``."""
        if addr == Reg.ID:
            return MAGIC
        if addr == Reg.INFO:
            return PROTOCOL_VERSION | self.model.contexts << 8
        if addr == Reg.LEN:
            return self.length
        if addr == Reg.STATUS:
            return (
                int(self.status)
                | (STATUS_BUSY if self.busy else 0)
                | (STATUS_DONE if self.done else 0)
                | len(self.result) << STATUS_RESULT_LEN_SHIFT
            )
        if addr == Reg.IRQ_EN:
            return int(self.irq_enable)
        if addr == Reg.OWNER:
            return self.owner
        if Reg.RESULT <= addr < Reg.RESULT + 4 * RESULT_WORDS and addr % 4 == 0:
            if caller != self.owner or self.busy:
                return 0
            offset = addr - Reg.RESULT
            return int.from_bytes(self.result[offset : offset + 4].ljust(4, b"\0"), "big")
        return 0  # CYCLES is 0 in the model; unmapped addresses read as 0

    def write(self, addr: int, value: int, caller: int) -> None:
        """A 32-bit bus write at byte offset ``addr`` by ``caller``."""
        value &= MASK32
        if addr == Reg.LEN:
            if not self.busy:
                self.length = value
        elif addr == Reg.CMD:
            self._start(value, caller)
        elif addr == Reg.DATA:
            if self.busy and caller == self.owner:
                take = min(4, self.model.remaining)
                response = self.model.feed(value.to_bytes(4, "big")[:take])
                if response is not None:
                    self._finish(response)
        elif addr == Reg.CTRL:
            if caller not in (self.owner, MANAGER):
                return
            if value & CTRL_ABORT and self.busy:
                self._finish(self.model.abort())
            if value & CTRL_CLEAR:
                self.done = False
        elif addr == Reg.IRQ_EN:
            self.irq_enable = bool(value & 1)

    def _start(self, value: int, caller: int) -> None:
        if self.busy:
            return
        self.owner = caller
        self.done = False
        self.result = b""
        response = self.model.start(caller, value & 0xFF, (value >> 8) & 0xFF, self.length)
        if response is not None:
            self._finish(response)

    def _finish(self, response: Response) -> None:
        self.status = response.status
        self.result = response.result if response.ok else b""
        self.done = True
