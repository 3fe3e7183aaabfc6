"""The golden model behind the mailbox register map: the model as a bus device.

The RTL is a Wishbone target with the register map and the holder rules of ``docs/protocol.md``
section 9; this class gives the golden model exactly that face (32-bit reads and writes tagged
with the caller id, refusals as :class:`~mchsm.sw.errors.BusRefusedError` where the RTL answers
``err``), so the one host driver runs unchanged against the model and against the hardware, and
the interleaving tests compare the two bus access for bus access.

The model has no time: a command completes in the access that gives it its last data word, so
it is never seen in phase *run*.  The RTL matches it whenever the host lets a running command
finish before the holder's (or the manager's) next access, which is what the driver does.
"""

from __future__ import annotations

from mchsm.constants import (
    BUS_ADDR_WIDTH,
    MAGIC,
    MANAGER,
    PROTOCOL_VERSION,
    RESULT_WORDS,
    CmdReg,
    Ctrl,
    InfoReg,
    OwnerReg,
    Reg,
    Status,
    StatusReg,
    pack_reg,
    unpack_reg,
)
from mchsm.sw.errors import ArgumentError, BusRefusedError
from mchsm.sw.model import HsmModel, Response

__all__ = ["ModelMailbox"]

MASK32 = 0xFFFF_FFFF
#: bytes the mailbox decodes (word addresses are BUS_ADDR_WIDTH bits)
ADDRESS_SPACE = 4 << BUS_ADDR_WIDTH
_RESULT_END = Reg.RESULT + 4 * RESULT_WORDS
_ACTIONS = {int(action): action for action in Ctrl}


class ModelMailbox:
    """Register-level front end of :class:`HsmModel`, with the holder rules of the spec.

    Parameters
    ----------
    model : HsmModel
        The HSM behind the mailbox.
    """

    def __init__(self, model: HsmModel) -> None:
        self.model = model
        self.holder: int | None = None  #: who holds the mailbox (None: nobody)
        self.irq_enable = False
        self._clear()

    def _clear(self) -> None:
        """What a release, a preemption or a reset leaves: nothing of the last holder's."""
        self.length = 0
        self.status = Status.OK
        self.done = False
        self.result = b""

    @property
    def busy(self) -> bool:
        """The holder's command still takes data (the model has no *run* phase)."""
        return self.model.busy

    @property
    def irq(self) -> bool:
        """The done interrupt line."""
        return self.done and self.irq_enable

    @staticmethod
    def _refuse(what: str, caller: int) -> BusRefusedError:
        return BusRefusedError(f"the HSM refused {what} by caller {caller}")

    @staticmethod
    def _check_address(addr: int) -> None:
        if not 0 <= addr < ADDRESS_SPACE or addr % 4:
            raise ArgumentError(
                f"mailbox address must be a multiple of 4 below 0x{ADDRESS_SPACE:x}, not {addr!r}"
            )

    # -- reads ------------------------------------------------------------------------------

    def read(self, addr: int, caller: int) -> int:
        """A 32-bit bus read at byte offset ``addr`` by ``caller``."""
        self._check_address(addr)
        mine = self.holder is not None and caller == self.holder
        if addr == Reg.ID:
            return MAGIC
        if addr == Reg.INFO:
            return pack_reg(InfoReg, version=PROTOCOL_VERSION, contexts=self.model.contexts)
        if addr == Reg.STATUS:
            return self.status_word(caller)
        if addr == Reg.IRQ_EN:
            return int(self.irq_enable)
        if addr == Reg.OWNER:
            held = self.holder is not None
            return pack_reg(OwnerReg, caller=self.holder or 0, held=held)
        if addr in (Reg.LEN, Reg.CYCLES) or Reg.RESULT <= addr < _RESULT_END:
            if not mine:
                raise self._refuse(f"the read of {self._name(addr)}", caller)
            if addr == Reg.LEN:
                return self.length
            if addr == Reg.CYCLES:
                return 0  # the model has no clock
            offset = addr - Reg.RESULT
            return int.from_bytes(self.result[offset : offset + 4].ljust(4, b"\0"), "big")
        return 0  # CMD, DATA, CTRL and unmapped addresses read as 0

    def status_word(self, caller: int) -> int:
        """``STATUS`` as ``caller`` reads it: everything for the holder, only ``held`` else."""
        if self.holder is None or caller != self.holder:
            return pack_reg(StatusReg, held=self.holder is not None)
        return pack_reg(
            StatusReg,
            status=int(self.status),
            busy=self.busy,
            done=self.done,
            expects=self.busy,
            held=True,
            mine=True,
            reslen=len(self.result),
        )

    # -- writes -----------------------------------------------------------------------------

    def write(self, addr: int, value: int, caller: int) -> None:
        """A 32-bit bus write at byte offset ``addr`` by ``caller``."""
        self._check_address(addr)
        value &= MASK32
        mine = self.holder is not None and caller == self.holder
        if addr == Reg.CTRL:
            self._ctrl(value, caller)
        elif addr == Reg.IRQ_EN:
            if caller != MANAGER:
                raise self._refuse("the write of IRQ_EN", caller)
            self.irq_enable = bool(value & 1)
        elif addr in (Reg.LEN, Reg.CMD):
            if not mine or self.busy:
                raise self._refuse(f"the write of {self._name(addr)}", caller)
            if addr == Reg.LEN:
                self.length = value
            else:
                self._start(value, caller)
        elif addr == Reg.DATA:
            if not mine or not self.busy:
                raise self._refuse("the write of DATA", caller)
            take = min(4, self.model.remaining)
            response = self.model.feed(value.to_bytes(4, "big")[:take])
            if response is not None:
                self._finish(response)
        # every other register ignores writes

    def _ctrl(self, value: int, caller: int) -> None:
        action = _ACTIONS.get(value)
        if action is None:
            raise self._refuse(f"CTRL = 0x{value:x} (not one action)", caller)
        mine = self.holder is not None and caller == self.holder
        if action is Ctrl.CLAIM:
            if self.holder is None or mine:
                self.holder = caller
            elif caller == MANAGER:  # preemption: a task's command is never in *run* here
                if self.busy:
                    self.model.abort()
                self._clear()
                self.holder = MANAGER
            else:
                raise self._refuse("CLAIM (the mailbox is held)", caller)
        elif not mine:
            raise self._refuse(f"{action.name} (not the holder)", caller)
        elif action is Ctrl.RELEASE:
            if self.busy:
                raise self._refuse("RELEASE while the command takes data", caller)
            self._clear()
            self.holder = None
        elif action is Ctrl.ABORT:
            if not self.busy:
                raise self._refuse("ABORT with no command taking data", caller)
            self._finish(self.model.abort())
        else:  # CLEAR
            self.done = False

    def _start(self, value: int, caller: int) -> None:
        self.done = False
        self.status = Status.OK
        self.result = b""
        fields = unpack_reg(CmdReg, value)
        response = self.model.start(caller, fields.code, fields.ctx, self.length)
        if response is not None:
            self._finish(response)

    def _finish(self, response: Response) -> None:
        self.status = response.status
        self.result = response.result if response.ok else b""
        self.done = True

    @staticmethod
    def _name(addr: int) -> str:
        if Reg.RESULT <= addr < _RESULT_END:
            return f"RESULT word {(addr - Reg.RESULT) // 4}"
        return Reg(addr).name
