"""A minimal Wishbone B4 signature, spelled as amaranth-soc spells it.

amaranth-soc is not on the package registry, so the HSM carries the small piece it needs: the
classic (non-pipelined) bus with the member names ``adr, dat_w, dat_r, sel, cyc, stb, we, ack``
so that anyone who knows amaranth-soc reads it at once, and exported Verilog ports come out as
``bus__adr``, ``bus__dat_w``, ...
"""

from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Signature"]


class Signature(wiring.Signature):
    """Wishbone B4 classic bus, initiator's view (use ``In(Signature(...))`` on a target).

    Parameters
    ----------
    addr_width : int
        Width of the word address ``adr``.
    data_width : int
        Width of ``dat_w`` / ``dat_r``; 8, 16, 32 or 64.
    granularity : int
        Smallest selectable unit; ``sel`` has ``data_width // granularity`` bits.
    """

    def __init__(self, *, addr_width: int, data_width: int = 32, granularity: int | None = None):
        if not isinstance(addr_width, int) or addr_width < 0:
            raise TypeError(f"Address width must be a non-negative integer, not {addr_width!r}")
        if data_width not in (8, 16, 32, 64):
            raise ValueError(f"Data width must be one of 8, 16, 32, 64, not {data_width!r}")
        if granularity is None:
            granularity = data_width
        if granularity not in (8, 16, 32, 64) or granularity > data_width:
            raise ValueError(
                f"Granularity must be one of 8, 16, 32, 64 and at most the data width, "
                f"not {granularity!r}"
            )
        self._addr_width = addr_width
        self._data_width = data_width
        self._granularity = granularity
        super().__init__(
            {
                "adr": Out(addr_width),
                "dat_w": Out(data_width),
                "dat_r": In(data_width),
                "sel": Out(data_width // granularity),
                "cyc": Out(1),
                "stb": Out(1),
                "we": Out(1),
                "ack": In(1),
            }
        )

    @property
    def addr_width(self) -> int:
        return self._addr_width

    @property
    def data_width(self) -> int:
        return self._data_width

    @property
    def granularity(self) -> int:
        return self._granularity

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Signature)
            and self.addr_width == other.addr_width
            and self.data_width == other.data_width
            and self.granularity == other.granularity
        )

    def __hash__(self) -> int:
        return hash((Signature, self.addr_width, self.data_width, self.granularity))

    def __repr__(self) -> str:
        return (
            f"wishbone.Signature(addr_width={self.addr_width}, data_width={self.data_width}, "
            f"granularity={self.granularity})"
        )
