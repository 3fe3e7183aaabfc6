"""The board design: HSM core + UART bridge + UART PHY + status LEDs.

:class:`UartHsm` is the whole design with plain ports (``rx``, ``tx``, ``leds__*``), so the same
netlist is what ``mchsm build`` puts on a board and what ``--backend uart-sim`` runs in
Verilator (with a fast baud divisor and a short timeout).  :class:`BoardTop` binds it to an
``amaranth-boards`` platform: it takes the UART and LED resources named in
:mod:`mchsm.boards.platforms` and derives the baud divisor, the idle timeout and the heartbeat
from the platform's clock.

The caller id of every bus cycle comes from the UART frame.  That is fine on a development
board and wrong anywhere else: see ``docs/boards.md``.
"""

from __future__ import annotations

import math
from typing import Any

from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import data, io, wiring
from amaranth.lib.wiring import In, Out

from mchsm.constants import (
    DEFAULT_CONTEXTS,
    LINK_DEFAULT_BAUD,
    LINK_IDLE_TIMEOUT_S,
    Reg,
    StatusReg,
)
from mchsm.rtl.bridge import UartBridge
from mchsm.rtl.core import MchsmCore
from mchsm.rtl.uart import UARTRx, UARTTx, divisor_for
from mchsm.sw.errors import ArgumentError, ArgumentTypeError

__all__ = ["LED_ROLES", "SIM_DIVISOR", "SIM_TIMEOUT_LOG2", "BoardTop", "LedSignature", "UartHsm"]

#: what each status LED shows, in the order boards map them
LED_ROLES = ("heartbeat", "activity", "error", "busy", "done", "irq")
#: uart-sim defaults: 4 clocks per bit, line idle after 256 clocks (6.4 byte times)
SIM_DIVISOR = 4
SIM_TIMEOUT_LOG2 = 8


class LedSignature(wiring.Signature):
    """The status LEDs, one bit each, active high.

    ``heartbeat`` blinks while the clock runs; ``activity`` lights while the bridge handles a
    frame and ``error`` after it rejected one (both stretched to be visible); ``busy`` and
    ``done`` are the HSM's STATUS bits as last read over the link; ``irq`` is the HSM's
    interrupt line.
    """

    def __init__(self) -> None:
        super().__init__({role: Out(1) for role in LED_ROLES})


class UartHsm(wiring.Component):
    """The HSM reachable over a UART: what a board carries, without the pins.

    Parameters
    ----------
    contexts : int
        Task contexts of the HSM core.
    divisor : int
        Clock cycles per UART bit.
    timeout_log2 : int
        The bridge's idle timeout and bus watchdog, ``2**timeout_log2`` clock cycles.
    blink_log2 : int
        The heartbeat LED blinks with a period of ``2**blink_log2`` cycles; the activity and
        error LEDs stay lit for up to ``2**(blink_log2 - 3)`` cycles after their event.

    Attributes
    ----------
    rx : In(1)
        UART from the host (idle high).
    tx : Out(1)
        UART to the host (idle high).
    leds : Out(LedSignature())
    """

    def __init__(
        self,
        contexts: int = DEFAULT_CONTEXTS,
        *,
        divisor: int = SIM_DIVISOR,
        timeout_log2: int = SIM_TIMEOUT_LOG2,
        blink_log2: int = 6,
    ) -> None:
        if not isinstance(blink_log2, int) or not 4 <= blink_log2 <= 30:
            raise ArgumentError(f"blink_log2 must be an integer in 4..30, not {blink_log2!r}")
        self.contexts = contexts
        self.divisor = divisor
        self.timeout_log2 = timeout_log2
        self.blink_log2 = blink_log2
        super().__init__(
            {
                "rx": In(1, init=1),
                "tx": Out(1, init=1),
                "leds": Out(LedSignature()),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.core = core = MchsmCore(self.contexts)
        m.submodules.bridge = bridge = UartBridge(timeout_log2=self.timeout_log2)
        m.submodules.uart_rx = uart_rx = UARTRx(self.divisor)
        m.submodules.uart_tx = uart_tx = UARTTx(self.divisor)

        wiring.connect(m, uart_rx.source, bridge.rx)
        wiring.connect(m, bridge.tx, uart_tx.sink)
        wiring.connect(m, bridge.bus, core.bus)
        m.d.comb += [
            uart_rx.rx.eq(self.rx),
            self.tx.eq(uart_tx.tx),
            core.caller.eq(bridge.caller),
        ]

        # ---- LEDs: a free-running counter blinks and times the stretched pulses -------------
        leds = self.leds
        blink = Signal(self.blink_log2)
        m.d.sync += blink.eq(blink + 1)
        stretch_bit = blink[self.blink_log2 - 4]
        stretch_prev = Signal()
        m.d.sync += stretch_prev.eq(stretch_bit)
        tick = stretch_bit & ~stretch_prev
        activity, error = Signal(), Signal()
        for led, event in ((activity, bridge.active), (error, bridge.error)):
            with m.If(event):
                m.d.sync += led.eq(1)
            with m.Elif(tick):
                m.d.sync += led.eq(0)

        # busy/done: the STATUS register as the host last read it (the core exports neither)
        busy, done = Signal(), Signal()
        bus = bridge.bus
        seen = data.View(StatusReg, bus.dat_r)
        with m.If(bus.cyc & bus.stb & bus.ack & ~bus.we & (bus.adr == Reg.STATUS >> 2)):
            m.d.sync += [busy.eq(seen.busy), done.eq(seen.done)]
        m.d.comb += [
            leds.heartbeat.eq(blink[-1]),
            leds.activity.eq(activity),
            leds.error.eq(error),
            leds.busy.eq(busy),
            leds.done.eq(done),
            leds.irq.eq(core.irq),
        ]
        return m


class BoardTop(Elaboratable):
    """:class:`UartHsm` on the pins of an ``amaranth-boards`` platform.

    Parameters
    ----------
    contexts : int
        Task contexts of the HSM core.
    baud : int
        UART rate; the divisor comes from the platform's default clock (rounding error <= 2 %).
    leds : dict of str to (str, int)
        LED role (see :data:`LED_ROLES`) to the platform resource ``(name, number)`` showing
        it; roles left out are not shown.  :mod:`mchsm.boards.platforms` has one per board.
    """

    def __init__(
        self,
        contexts: int = DEFAULT_CONTEXTS,
        *,
        baud: int = LINK_DEFAULT_BAUD,
        leds: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        unknown = set(leds or {}) - set(LED_ROLES)
        if unknown:
            raise ArgumentError(f"LED roles must be among {LED_ROLES}, not {sorted(unknown)!r}")
        self.contexts = contexts
        self.baud = baud
        self.leds = dict(leds or {})

    @staticmethod
    def timing(clk_hz: float, baud: int) -> tuple[int, int, int]:
        """(divisor, timeout_log2, blink_log2) for a board clock: the timeout is at least
        ``LINK_IDLE_TIMEOUT_S`` and the heartbeat blinks with a period of about 0.7 s."""
        divisor = divisor_for(clk_hz, baud)
        timeout_log2 = max(6, math.ceil(math.log2(clk_hz * LINK_IDLE_TIMEOUT_S)))
        blink_log2 = max(4, round(math.log2(clk_hz * 0.7)))
        return divisor, timeout_log2, blink_log2

    def elaborate(self, platform: object) -> Module:
        if platform is None or getattr(platform, "default_clk_frequency", None) is None:
            raise ArgumentTypeError(
                "BoardTop needs an amaranth-boards platform with a default clock; "
                "simulate UartHsm instead"
            )
        board: Any = platform  # an amaranth-boards platform (checked above; typed object here)
        m = Module()
        divisor, timeout_log2, blink_log2 = self.timing(board.default_clk_frequency, self.baud)
        m.submodules.hsm = hsm = UartHsm(
            self.contexts, divisor=divisor, timeout_log2=timeout_log2, blink_log2=blink_log2
        )
        uart = board.request("uart", 0, dir="-")
        m.submodules.uart_rx_buf = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buf = tx = io.Buffer("o", uart.tx)
        m.d.comb += [hsm.rx.eq(rx.i), tx.o.eq(hsm.tx)]
        for role, (name, number) in self.leds.items():
            pin = board.request(name, number, dir="-")
            m.submodules[f"led_{role}"] = led = io.Buffer("o", pin)
            m.d.comb += led.o.eq(getattr(hsm.leds, role))
        return m
