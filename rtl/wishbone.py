"""A minimal Wishbone B4 signature, spelled as amaranth-soc spells it.

amaranth-soc is not on the package registry, so the HSM carries the small piece it needs: the
classic (non-pipelined) bus with the member names ``adr, dat_w, dat_r, sel, cyc, stb, we, ack``
and the optional features (``err``, ...) so that anyone who knows amaranth-soc reads it at once,
and exported Verilog ports come out as ``bus__adr``, ``bus__dat_w``, ...
"""

from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["FEATURES", "Signature"]

#: optional members, as amaranth-soc names them: (direction seen from the initiator, width)
FEATURES = {
    "err": (In, 1),
    "rty": (In, 1),
    "stall": (In, 1),
    "lock": (Out, 1),
    "cti": (Out, 3),
    "bte": (Out, 2),
}


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
    features : iterable of str
        Optional members (:data:`FEATURES`); the HSM uses ``err`` to refuse an access.
    """

    def __init__(
        self,
        *,
        addr_width: int,
        data_width: int = 32,
        granularity: int | None = None,
        features: frozenset[str] | set[str] | tuple[str, ...] = (),
    ):
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
        features = frozenset(features)
        unknown = features - set(FEATURES)
        if unknown:
            raise ValueError(
                f"Features must be among {', '.join(FEATURES)}, not {', '.join(sorted(unknown))}"
            )
        self._addr_width = addr_width
        self._data_width = data_width
        self._granularity = granularity
        self._features = features
        members = {
            "adr": Out(addr_width),
            "dat_w": Out(data_width),
            "dat_r": In(data_width),
            "sel": Out(data_width // granularity),
            "cyc": Out(1),
            "stb": Out(1),
            "we": Out(1),
            "ack": In(1),
        }
        for name in FEATURES:  # in amaranth-soc's order
            if name in features:
                direction, width = FEATURES[name]
                members[name] = direction(width)
        super().__init__(members)

    @property
    def addr_width(self) -> int:
        return self._addr_width

    @property
    def data_width(self) -> int:
        return self._data_width

    @property
    def granularity(self) -> int:
        return self._granularity

    @property
    def features(self) -> frozenset[str]:
        return self._features

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Signature)
            and self.addr_width == other.addr_width
            and self.data_width == other.data_width
            and self.granularity == other.granularity
            and self.features == other.features
        )

    def __hash__(self) -> int:
        return hash((Signature, self.addr_width, self.data_width, self.granularity, self.features))

    def __repr__(self) -> str:
        features = f", features={set(sorted(self.features))!r}" if self.features else ""
        return (
            f"wishbone.Signature(addr_width={self.addr_width}, data_width={self.data_width}, "
            f"granularity={self.granularity}{features})"
        )
