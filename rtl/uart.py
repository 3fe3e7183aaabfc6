"""8N1 UART receiver and transmitter with a fixed baud divisor.

The board designs talk to the host over the FTDI chip's UART, and the bridge behind it is
byte-oriented, so the PHY is the plainest one that is still robust: the receiver synchronises
the asynchronous pin, re-checks the start bit half a bit time after its falling edge (a glitch
is not a byte), samples each bit in its middle and drops a byte whose stop bit is low (a break
or a baud mismatch).  The transmitter accepts a byte only when idle, so whoever feeds it needs
no buffer accounting.  Both are counters and shift registers only: a few dozen logic cells.

The divisor (clock cycles per bit) is a parameter, not a register: a board has one clock and
one baud rate, and a constant costs no logic.  Simulations use 4-8 cycles per bit.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["MIN_DIVISOR", "UARTRx", "UARTTx", "divisor_for"]

#: the receiver needs a distinct middle of the bit to sample, and room to re-check the start bit
MIN_DIVISOR = 4


def _check_divisor(divisor: object) -> int:
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < MIN_DIVISOR:
        raise ValueError(
            f"divisor must be an integer of at least {MIN_DIVISOR} clock cycles "
            f"per bit, not {divisor!r}"
        )
    return divisor


def divisor_for(clk_hz: float, baud: int, *, tolerance: float = 0.02) -> int:
    """Clock cycles per bit for ``baud`` at ``clk_hz``.

    Raises ``ValueError`` when the rounding error exceeds ``tolerance`` (2 %: the receiver
    samples mid-bit, so over the ten bits of a frame half a bit of drift is the limit, and the
    far end has its own error).
    """
    if not isinstance(baud, int) or baud <= 0:
        raise ValueError(f"baud must be a positive integer, not {baud!r}")
    divisor = round(clk_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(
            f"baud {baud} is too fast for a {clk_hz / 1e6:g} MHz clock "
            f"(needs at least {MIN_DIVISOR} cycles per bit)"
        )
    error = abs(clk_hz / divisor - baud) / baud
    if error > tolerance:
        raise ValueError(
            f"baud {baud} at {clk_hz / 1e6:g} MHz is off by {error:.1%} with "
            f"divisor {divisor}; the limit is {tolerance:.0%}"
        )
    return divisor


class UARTRx(wiring.Component):
    """8N1 receiver.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (at least :data:`MIN_DIVISOR`).

    Attributes
    ----------
    rx : In(1)
        The line, idle high; asynchronous (synchronised here with two flip-flops).
    source : Out(stream.Signature(8, always_ready=True))
        One ``valid`` cycle per received byte.  There is no back-pressure: a UART cannot
        wait, so the consumer must take the byte in that cycle or lose it.
    """

    rx: In(1, init=1)
    source: Out(stream.Signature(8, always_ready=True))

    def __init__(self, divisor: int) -> None:
        self.divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)

        busy = Signal()
        count = Signal(range(self.divisor))
        index = Signal(range(10))  # 0: start bit, 1..8: data bits, 9: stop bit
        shreg = Signal(8)
        valid = Signal()
        m.d.comb += [self.source.payload.eq(shreg), self.source.valid.eq(valid)]
        m.d.sync += valid.eq(0)

        with m.If(~busy):
            with m.If(~line):  # falling edge: the middle of the start bit is half a bit away
                m.d.sync += [busy.eq(1), count.eq(self.divisor // 2 - 1), index.eq(0)]
        with m.Elif(count != 0):
            m.d.sync += count.eq(count - 1)
        with m.Else():
            m.d.sync += [count.eq(self.divisor - 1), index.eq(index + 1)]
            with m.If(index == 9):
                m.d.sync += [busy.eq(0), valid.eq(line)]  # a low stop bit: not a byte
            with m.Else():
                # the start bit is shifted in too and falls out after the eighth data bit
                m.d.sync += shreg.eq(Cat(shreg[1:], line))
                with m.If((index == 0) & line):
                    m.d.sync += busy.eq(0)  # the line went high again: a glitch
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (at least :data:`MIN_DIVISOR`).

    Attributes
    ----------
    sink : In(stream.Signature(8))
        A byte is taken when ``valid`` and ``ready``; ``ready`` is high only while the
        transmitter is idle, so a byte handed over has the line to itself for ten bit times.
    tx : Out(1)
        The line, idle high.
    """

    sink: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor: int) -> None:
        self.divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        busy = Signal()
        count = Signal(range(self.divisor))
        index = Signal(range(10))  # bits sent after the start bit
        shreg = Signal(8)
        m.d.comb += self.sink.ready.eq(~busy)

        with m.If(~busy):
            with m.If(self.sink.valid):
                m.d.sync += [
                    busy.eq(1),
                    shreg.eq(self.sink.payload),
                    self.tx.eq(0),
                    count.eq(self.divisor - 1),
                    index.eq(0),
                ]
        with m.Elif(count != 0):
            m.d.sync += count.eq(count - 1)
        with m.Else():
            m.d.sync += [count.eq(self.divisor - 1), index.eq(index + 1)]
            with m.If(index == 9):
                m.d.sync += busy.eq(0)  # the stop bit has lasted its bit time
            with m.Else():
                # ones shift in behind the data: the ninth bit out is the stop bit
                m.d.sync += [self.tx.eq(shreg[0]), shreg.eq(Cat(shreg[1:], 1))]
        return m
