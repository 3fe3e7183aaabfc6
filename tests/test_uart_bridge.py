"""UART PHY, UART-to-Wishbone bridge and the host frame codec.

The RTL runs in Amaranth's simulator, bit by bit on the line at 4 clocks per bit: the PHY in
loopback; the bridge in front of a Wishbone target modelled in Python (which logs every bus
cycle, so "nothing was executed" is checked directly); and the real HSM core behind the
bridge, to show that a mangled frame leaves its registers alone.  The codec is checked against
frames built by hand with an independent CRC (``binascii.crc_hqx``), and the transports'
retry rules against scripted links and a Python model of the bridge.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from mchsm.boards.top import UartHsm
from mchsm.constants import (
    LINK_MAX_BURST,
    LINK_REPLY_SYNC,
    LINK_SYNC,
    MAGIC,
    MANAGER,
    Ctrl,
    LinkOp,
    LinkStatus,
    Reg,
    Status,
    StatusReg,
    unpack_reg,
)
from mchsm.rtl.bridge import Crc16, UartBridge
from mchsm.rtl.uart import UARTRx, UARTTx, divisor_for
from mchsm.sw.driver import HsmDriver
from mchsm.sw.errors import TransportError
from mchsm.sw.mailbox import ModelMailbox
from mchsm.sw.model import HsmModel
from mchsm.sw.uart_link import (
    CorruptReply,
    FramedTransport,
    LinkReply,
    ReplyDecoder,
    Request,
    SerialTransport,
    bridge_model_reply,
    crc16,
    encode_reply,
)

DIV = 4
TIMEOUT_LOG2 = 8
CLOCK = 1 / 12e6


# ---------------------------------------------------------------------------------------------
# Line-level helpers for Amaranth testbenches
# ---------------------------------------------------------------------------------------------


def line_bits(data: bytes) -> list[int]:
    """8N1 bits of ``data``, LSB first, one start and one stop bit per byte."""
    return [bit for byte in data for bit in (0, *((byte >> i) & 1 for i in range(8)), 1)]


async def uart_send(ctx: Any, pin: Any, data: bytes | list[int], *, bits: bool = False) -> None:
    for bit in data if bits else line_bits(bytes(data)):
        ctx.set(pin, bit)
        await ctx.tick().repeat(DIV)


async def wait_for(ctx: Any, cond: Any) -> None:
    """Tick until ``cond`` holds.  Background testbenches use this rather than
    ``ctx.tick().until()``, whose async generator complains when the simulation ends in it."""
    await ctx.tick()
    while not ctx.get(cond):
        await ctx.tick()


async def uart_monitor(ctx: Any, pin: Any, out: bytearray) -> None:
    """Decode the DUT's tx line into ``out`` (a background testbench)."""
    while True:
        await wait_for(ctx, pin == 0)
        await ctx.tick().repeat(DIV // 2)
        assert ctx.get(pin) == 0, "start bit too short"
        byte = 0
        for i in range(8):
            await ctx.tick().repeat(DIV)
            byte |= ctx.get(pin) << i
        await ctx.tick().repeat(DIV)
        assert ctx.get(pin) == 1, "stop bit missing"
        out.append(byte)


class LineHost:
    """The host end of the line inside a testbench: send frames, collect replies."""

    def __init__(self, ctx: Any, rx_pin: Any, received: bytearray) -> None:
        self.ctx = ctx
        self.rx_pin = rx_pin
        self.received = received
        self.decoder = ReplyDecoder()
        self.seen = 0

    async def send(self, data: bytes) -> None:
        await uart_send(self.ctx, self.rx_pin, data)

    async def reply(self, max_cycles: int = 20_000) -> LinkReply | CorruptReply:
        for _ in range(max_cycles // 8):
            new = bytes(self.received[self.seen :])
            self.seen = len(self.received)
            replies = self.decoder.feed(new)
            if replies:
                assert len(replies) == 1 and not self.decoder.pending, replies
                return replies[0]
            await self.ctx.tick().repeat(8)
        raise AssertionError(f"no reply within {max_cycles} cycles")

    async def call(self, frame: bytes) -> LinkReply:
        await self.send(frame)
        reply = await self.reply()
        assert isinstance(reply, LinkReply), reply
        return reply

    async def quiet(self, cycles: int) -> bool:
        """Wait ``cycles``; True if the DUT sent nothing meanwhile."""
        before = len(self.received)
        await self.ctx.tick().repeat(cycles)
        return len(self.received) == before


def run_sim(
    dut: Any,
    *benches: Callable[[Any], Awaitable[None]],
    background: Sequence[Callable[[Any], Awaitable[None]]] = (),
) -> None:
    sim = Simulator(dut)
    sim.add_clock(CLOCK)
    for bench in background:
        sim.add_testbench(bench, background=True)
    for bench in benches:
        sim.add_testbench(bench)
    sim.run()


# ---------------------------------------------------------------------------------------------
# PHY
# ---------------------------------------------------------------------------------------------


def test_divisor_for_board_clocks() -> None:
    assert divisor_for(12e6, 115_200) == 104
    assert divisor_for(25e6, 115_200) == 217
    assert divisor_for(12e6, 1_000_000) == 12
    with pytest.raises(ValueError, match="off by"):
        divisor_for(12e6, 1_850_000)  # 6.49 cycles per bit: 8 % off
    with pytest.raises(ValueError, match="too fast"):
        divisor_for(12e6, 6_000_000)


def test_phy_loopback_glitch_and_framing_error() -> None:
    """Bytes go out of UARTTx and come back through UARTRx; a one-cycle glitch and a byte
    with a low stop bit are not bytes."""

    utx, urx, urx2 = UARTTx(DIV), UARTRx(DIV), UARTRx(DIV)  # urx2: driven by the testbench
    dut = Module()
    dut.submodules += [utx, urx, urx2]
    dut.d.comb += urx.rx.eq(utx.tx)
    sent = bytes([0x00, 0xFF, 0x55, 0xAA, LINK_SYNC, 0x01, 0x80])
    got: list[int] = []
    got2: list[int] = []

    async def collect(ctx: Any) -> None:
        while True:
            await ctx.tick()
            if ctx.get(urx.source.valid):
                got.append(ctx.get(urx.source.payload))
            if ctx.get(urx2.source.valid):
                got2.append(ctx.get(urx2.source.payload))

    async def feed(ctx: Any) -> None:
        for byte in sent:
            ctx.set(utx.sink.valid, 1)
            ctx.set(utx.sink.payload, byte)
            await ctx.tick().until(utx.sink.ready)
        ctx.set(utx.sink.valid, 0)
        await ctx.tick().repeat(12 * DIV)

    async def line(ctx: Any) -> None:
        ctx.set(urx2.rx, 1)
        await ctx.tick().repeat(10)
        ctx.set(urx2.rx, 0)  # glitch: low for one cycle
        await ctx.tick()
        ctx.set(urx2.rx, 1)
        await ctx.tick().repeat(4 * DIV)
        bad = line_bits(b"\x3c")
        bad[-1] = 0  # framing error
        await uart_send(ctx, urx2.rx, [*bad, 1, 1], bits=True)
        await uart_send(ctx, urx2.rx, b"\xc3")

    sim = Simulator(dut)
    sim.add_clock(CLOCK)
    sim.add_testbench(collect, background=True)
    sim.add_testbench(feed)
    sim.add_testbench(line)
    sim.run()
    assert bytes(got) == sent
    assert got2 == [0xC3]


def test_crc_unit_matches_the_host_crc() -> None:
    """The bridge's byte-parallel CRC (an XOR matrix derived from LINK_CRC_POLY) against the
    host's table-driven one, byte by byte, and clear in the middle."""
    data = bytes([0x00, 0xFF, 0xA5, 0x5A, *range(1, 200, 7)])
    dut = Crc16()
    seen: list[int] = []

    async def bench(ctx: Any) -> None:
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        for byte in data:
            ctx.set(dut.start, 1)
            ctx.set(dut.data, byte)
            await ctx.tick()
            seen.append(ctx.get(dut.crc))
        ctx.set(dut.start, 0)

    run_sim(dut, bench)
    assert seen == [crc16(data[: i + 1]) for i in range(len(data))]


# ---------------------------------------------------------------------------------------------
# Bridge against a Python Wishbone target
# ---------------------------------------------------------------------------------------------


class BridgeBench(wiring.Component):
    """UART PHY + bridge with the Wishbone initiator and caller brought out."""

    def __init__(self) -> None:
        self.bridge = UartBridge(timeout_log2=TIMEOUT_LOG2)
        super().__init__(
            {
                "rx": wiring.In(1, init=1),
                "tx": wiring.Out(1, init=1),
                "bus": wiring.Out(self.bridge.bus.signature),
                "caller": wiring.Out(6),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.bridge = bridge = self.bridge
        m.submodules.urx = urx = UARTRx(DIV)
        m.submodules.utx = utx = UARTTx(DIV)
        wiring.connect(m, urx.source, bridge.rx)
        wiring.connect(m, bridge.tx, utx.sink)
        wiring.connect(m, bridge.bus, wiring.flipped(self.bus))
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx), self.caller.eq(bridge.caller)]
        return m


def wishbone_target(
    dut: BridgeBench, mem: dict[int, int], log: list[tuple[Any, ...]], wait_states: int = 2
) -> Callable[[Any], Awaitable[None]]:
    """A register file that logs (we, adr, data, caller) of every cycle it acknowledges."""
    bus = dut.bus

    async def target(ctx: Any) -> None:
        while True:
            await wait_for(ctx, bus.cyc & bus.stb)
            if wait_states:
                await ctx.tick().repeat(wait_states)
            adr, caller = ctx.get(bus.adr), ctx.get(dut.caller)
            if ctx.get(bus.we):
                mem[adr] = ctx.get(bus.dat_w)
                log.append(("w", adr, mem[adr], caller))
            else:
                ctx.set(bus.dat_r, mem.get(adr, 0))
                log.append(("r", adr, mem.get(adr, 0), caller))
            ctx.set(bus.ack, 1)
            await ctx.tick()
            ctx.set(bus.ack, 0)

    return target


def run_bridge(
    script: Callable[[LineHost], Awaitable[None]], mem: dict[int, int], log: list[tuple[Any, ...]]
) -> None:
    dut = BridgeBench()
    received = bytearray()

    async def bench(ctx: Any) -> None:
        await script(LineHost(ctx, dut.rx, received))

    async def monitor(ctx: Any) -> None:
        await uart_monitor(ctx, dut.tx, received)

    run_sim(dut, bench, background=[monitor, wishbone_target(dut, mem, log)])


def test_bridge_reads_writes_and_bursts() -> None:
    mem = {0x20 + i: 0x1111_1111 * (i + 1) for i in range(8)}
    log: list[tuple[Any, ...]] = []
    replies: dict[str, LinkReply] = {}

    async def script(host: LineHost) -> None:
        replies["write"] = await host.call(
            Request(LinkOp.WRITE, 5, 0x02, 1, (0xDEAD_BEEF,)).encode()
        )
        replies["read"] = await host.call(Request(LinkOp.READ, 9, 0x02).encode())
        replies["wburst"] = await host.call(
            Request(LinkOp.WRITE_BURST, 1, 0x04, 5, (1, 2, 3, 0xFFFF_FFFF, 5)).encode()
        )
        replies["rburst"] = await host.call(Request(LinkOp.READ_BURST, 63, 0x20, 8).encode())

    run_bridge(script, mem, log)
    assert replies["write"] == LinkReply(LinkStatus.OK)
    assert replies["read"] == LinkReply(LinkStatus.OK, (0xDEAD_BEEF,))
    assert replies["wburst"] == LinkReply(LinkStatus.OK)
    assert replies["rburst"] == LinkReply(
        LinkStatus.OK, tuple(0x1111_1111 * (i + 1) for i in range(8))
    )
    assert log[:2] == [("w", 0x02, 0xDEAD_BEEF, 5), ("r", 0x02, 0xDEAD_BEEF, 9)]
    # the DATA-port burst: every word to the same address, in order
    assert log[2:7] == [("w", 0x04, v, 1) for v in (1, 2, 3, 0xFFFF_FFFF, 5)]
    # the result-window burst: consecutive addresses
    assert [(op, adr, c) for op, adr, _, c in log[7:]] == [("r", 0x20 + i, 63) for i in range(8)]


def test_bridge_full_burst_both_ways() -> None:
    mem: dict[int, int] = {}
    log: list[tuple[Any, ...]] = []
    words = tuple((0x0102_0304 * i) & 0xFFFF_FFFF for i in range(LINK_MAX_BURST))
    out: dict[str, LinkReply] = {}

    async def script(host: LineHost) -> None:
        out["w"] = await host.call(Request(LinkOp.WRITE_BURST, 0, 0x10, 64, words).encode())
        out["r"] = await host.call(Request(LinkOp.READ_BURST, 0, 0x00, 64).encode())

    run_bridge(script, mem, log)
    assert out["w"] == LinkReply(LinkStatus.OK)
    assert [v for op, adr, v, _ in log if op == "w" and adr == 0x10] == list(words)
    assert out["r"].words == tuple(mem.get(i, 0) for i in range(64))


def _bad_crc(frame: bytes) -> bytes:
    return frame[:-1] + bytes([frame[-1] ^ 0x40])


def _raw(body: bytes) -> bytes:
    """A frame with a correct CRC around any body (to reach the header checks)."""
    return bytes([LINK_SYNC]) + body + crc16(body).to_bytes(2, "big")


GOOD_WRITE = Request(LinkOp.WRITE, 2, 0x03, 1, (0x1234_5678,)).encode()
BAD_FRAMES: list[tuple[str, bytes, LinkStatus]] = [
    ("crc", _bad_crc(GOOD_WRITE), LinkStatus.ERR_CRC),
    (
        "data bit flip",
        GOOD_WRITE[:7] + bytes([GOOD_WRITE[7] ^ 1]) + GOOD_WRITE[8:],
        LinkStatus.ERR_CRC,
    ),
    ("lost byte", GOOD_WRITE[:6] + GOOD_WRITE[7:], LinkStatus.ERR_TIMEOUT),
    ("truncated header", GOOD_WRITE[:3], LinkStatus.ERR_TIMEOUT),
    ("unknown op", _raw(bytes([0x58, 2, 3, 1]) + bytes(4)), LinkStatus.ERR_OP),
    ("count 0", _raw(bytes([LinkOp.WRITE_BURST, 2, 3, 0])), LinkStatus.ERR_LENGTH),
    ("count 65", _raw(bytes([LinkOp.READ_BURST, 2, 3, 65])), LinkStatus.ERR_LENGTH),
    ("single op, count 2", _raw(bytes([LinkOp.WRITE, 2, 3, 2]) + bytes(8)), LinkStatus.ERR_LENGTH),
    ("caller 64", _raw(bytes([LinkOp.READ, 64, 3, 1])), LinkStatus.ERR_FIELD),
    ("address 64", _raw(bytes([LinkOp.READ, 2, 64, 1])), LinkStatus.ERR_FIELD),
    ("extra bytes", GOOD_WRITE[:5] + bytes(6) + GOOD_WRITE[5:], LinkStatus.ERR_CRC),
]


@pytest.mark.parametrize("name, frame, status", BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
def test_bridge_rejects_bad_frame_before_any_bus_cycle(
    name: str, frame: bytes, status: LinkStatus
) -> None:
    """A bad frame gets its error reply, no bus cycle happens, and the next good frame runs."""
    mem = {0x03: 0xAAAA_AAAA}
    log: list[tuple[Any, ...]] = []
    out: dict[str, Any] = {}

    async def script(host: LineHost) -> None:
        out["bad"] = await host.call(frame)
        out["log_after_bad"] = list(log)
        out["mem_after_bad"] = dict(mem)
        out["good"] = await host.call(GOOD_WRITE)

    run_bridge(script, mem, log)
    assert out["bad"] == LinkReply(status)
    assert out["log_after_bad"] == [] and out["mem_after_bad"] == {0x03: 0xAAAA_AAAA}
    assert out["good"] == LinkReply(LinkStatus.OK)
    assert log == [("w", 0x03, 0x1234_5678, 2)]


def test_bridge_ignores_garbage_between_frames() -> None:
    """Bytes outside a frame get no reply; a sync byte inside garbage costs one error reply."""
    mem = {0x07: 77}
    log: list[tuple[Any, ...]] = []
    out: dict[str, Any] = {}

    async def script(host: LineHost) -> None:
        await host.send(bytes([0x00, 0xFF, 0x5A, 0x13, 0x37]))
        out["quiet"] = await host.quiet(4 << TIMEOUT_LOG2)
        out["read"] = await host.call(Request(LinkOp.READ, 1, 0x07).encode())
        # garbage holding a sync byte starts a bogus frame, rejected whole after the line idles
        await host.send(bytes([0x11, LINK_SYNC, 0x22]))
        out["bogus"] = await host.reply()
        out["read2"] = await host.call(Request(LinkOp.READ, 1, 0x07).encode())

    run_bridge(script, mem, log)
    assert out["quiet"]
    assert out["read"] == LinkReply(LinkStatus.OK, (77,))
    assert out["bogus"] == LinkReply(LinkStatus.ERR_OP)
    assert out["read2"] == LinkReply(LinkStatus.OK, (77,))
    assert [entry[0] for entry in log] == ["r", "r"]


# ---------------------------------------------------------------------------------------------
# Bridge in front of the real HSM core
# ---------------------------------------------------------------------------------------------


def test_bad_frames_leave_the_hsm_alone() -> None:
    """Over the real core: a write that lost a byte and one with a bad CRC change no
    register; good frames read ID and write/read LEN and run a STATUS command."""
    dut = UartHsm(1, divisor=DIV, timeout_log2=TIMEOUT_LOG2, blink_log2=16)
    received = bytearray()
    out: dict[str, Any] = {}
    len_word = Reg.LEN >> 2

    async def bench(ctx: Any) -> None:
        host = LineHost(ctx, dut.rx, received)
        out["id"] = await host.call(Request(LinkOp.READ, MANAGER, Reg.ID >> 2).encode())
        claim = (Reg.CTRL >> 2, 1, (int(Ctrl.CLAIM),))
        await host.call(Request(LinkOp.WRITE, MANAGER, *claim).encode())
        await host.call(Request(LinkOp.WRITE, MANAGER, len_word, 1, (0x1234,)).encode())
        good = Request(LinkOp.WRITE, MANAGER, len_word, 1, (0x9999,)).encode()
        out["lost"] = await host.call(good[:5] + good[6:])
        out["crc"] = await host.call(_bad_crc(good))
        out["len"] = await host.call(Request(LinkOp.READ, MANAGER, len_word).encode())
        out["len3"] = await host.call(Request(LinkOp.READ, 3, len_word).encode())
        out["claim3"] = await host.call(Request(LinkOp.WRITE, 3, *claim).encode())
        out["leds_error"] = ctx.get(dut.leds.error)
        # STATUS command as caller 0: LEN 0, CMD, then STATUS and the first result words
        await host.call(Request(LinkOp.WRITE, MANAGER, len_word, 1, (0,)).encode())
        await host.call(Request(LinkOp.WRITE, MANAGER, Reg.CMD >> 2, 1, (0x02,)).encode())
        out["status"] = await host.call(Request(LinkOp.READ, MANAGER, Reg.STATUS >> 2).encode())
        out["result"] = await host.call(
            Request(LinkOp.READ_BURST, MANAGER, Reg.RESULT >> 2, 2).encode()
        )
        out["leds_done"] = ctx.get(dut.leds.done)

    async def monitor(ctx: Any) -> None:
        await uart_monitor(ctx, dut.tx, received)

    run_sim(dut, bench, background=[monitor])
    assert out["id"].words == (MAGIC,)
    assert out["lost"] == LinkReply(LinkStatus.ERR_TIMEOUT)
    assert out["crc"] == LinkReply(LinkStatus.ERR_CRC)
    assert out["len"].words == (0x1234,)
    # the mailbox is the manager's: another caller's accesses end the frame with ERR_REFUSED
    assert out["len3"] == out["claim3"] == LinkReply(LinkStatus.ERR_REFUSED)
    assert out["leds_error"] == 1
    status = unpack_reg(StatusReg, out["status"].words[0])
    assert status.status == Status.OK and status.done and status.mine, status
    assert out["result"].words[0] >> 8 & 0xFF == 1  # STATUS result: one context
    assert out["leds_done"] == 1


# ---------------------------------------------------------------------------------------------
# The codec against frames built by hand
# ---------------------------------------------------------------------------------------------


def test_crc_is_ccitt_false() -> None:
    assert crc16(b"123456789") == 0x29B1  # the catalogue's check value
    for data in (b"", b"\x00", b"\xa5\x57\x01\x02", bytes(range(256))):
        assert crc16(data) == binascii.crc_hqx(data, 0xFFFF)
        whole = data + crc16(data).to_bytes(2, "big")
        assert crc16(whole) == 0  # what the bridge checks


def test_request_frames_byte_by_byte() -> None:
    body = bytes([0x57, 0x03, 0x04, 0x01, 0xDE, 0xAD, 0xBE, 0xEF])
    expected = b"\xa5" + body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "big")
    assert Request(LinkOp.WRITE, 3, 4, 1, (0xDEAD_BEEF,)).encode() == expected
    body = bytes([0x72, 0x00, 0x20, 0x09])
    expected = b"\xa5" + body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "big")
    assert Request(LinkOp.READ_BURST, 0, 0x20, 9).encode() == expected
    assert Request.decode(expected) == Request(LinkOp.READ_BURST, 0, 0x20, 9)
    for bad, why in [(expected[:-1], "ERR_TIMEOUT"), (_bad_crc(expected), "ERR_CRC")]:
        with pytest.raises(ValueError, match=why):
            Request.decode(bad)
    with pytest.raises(ValueError, match="one word"):
        Request(LinkOp.READ, 0, 0, 2)
    with pytest.raises(ValueError, match="caller"):
        Request(LinkOp.READ, 64, 0)
    with pytest.raises(ValueError, match="data words"):
        Request(LinkOp.WRITE_BURST, 0, 4, 2, (1,))


def test_reply_decoder_incremental_garbage_and_corruption() -> None:
    body = bytes([0x00, 0x02, 0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFE])
    good = b"\x5a" + body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "big")
    assert encode_reply(LinkStatus.OK, (1, 0xFFFF_FFFE)) == good
    err = encode_reply(LinkStatus.ERR_CRC)
    assert err == b"\x5a\x01\x00" + binascii.crc_hqx(b"\x01\x00", 0xFFFF).to_bytes(2, "big")

    decoder = ReplyDecoder()
    events: list[Any] = []
    stream = b"\x00\x13" + good + err
    for byte in stream:  # one byte at a time, as a serial port may deliver them
        events += decoder.feed(bytes([byte]))
    assert events == [LinkReply(LinkStatus.OK, (1, 0xFFFF_FFFE)), LinkReply(LinkStatus.ERR_CRC)]
    assert decoder.skipped == 2 and not decoder.pending

    corrupt = good[:4] + bytes([good[4] ^ 0x10]) + good[5:]
    events = ReplyDecoder().feed(corrupt + good)
    assert isinstance(events[0], CorruptReply) and "CRC" in events[0].reason
    assert events[-1] == LinkReply(LinkStatus.OK, (1, 0xFFFF_FFFE))
    events = ReplyDecoder().feed(bytes([LINK_REPLY_SYNC, 0, 200]) + err)
    assert isinstance(events[0], CorruptReply) and events[-1] == LinkReply(LinkStatus.ERR_CRC)


# ---------------------------------------------------------------------------------------------
# Retry rules and the serial transport, against scripted links and a bridge model
# ---------------------------------------------------------------------------------------------


class ScriptedLink(FramedTransport):
    """Answers each exchange with the next scripted reply; records the frames."""

    def __init__(self, script: list[Any], retries: int = 3) -> None:
        super().__init__(retries=retries)
        self.script = script
        self.sent: list[bytes] = []

    async def exchange(self, frame: bytes, reply_words: int) -> Any:
        self.sent.append(frame)
        return self.script.pop(0)


def test_retry_rules() -> None:
    ok = LinkReply(LinkStatus.OK)
    # a rejected frame ran nowhere: resent, reads and writes alike
    link = ScriptedLink([LinkReply(LinkStatus.ERR_CRC), LinkReply(LinkStatus.ERR_TIMEOUT), ok])
    asyncio.run(link.write(Reg.LEN, 5, 0))
    assert len(link.sent) == 3 and link.sent[0] == link.sent[2] and link.stats.retries == 2
    # a lost reply to a read: read again
    link = ScriptedLink(
        [None, CorruptReply("CRC does not check", b""), LinkReply(LinkStatus.OK, (7,))]
    )
    assert asyncio.run(link.read(Reg.LEN, 0)) == 7
    # a lost reply to a write: it may have run, so it is not repeated
    link = ScriptedLink([None, ok])
    with pytest.raises(TransportError, match="may or may not have run"):
        asyncio.run(link.write(Reg.DATA, 5, 0))
    assert len(link.sent) == 1
    # ERR_BUS: part of the frame may have run
    link = ScriptedLink([LinkReply(LinkStatus.ERR_BUS), ok])
    with pytest.raises(TransportError, match="ERR_BUS"):
        asyncio.run(link.write_burst(Reg.DATA, [1, 2, 3], 0))
    # retries run out
    link = ScriptedLink([LinkReply(LinkStatus.ERR_CRC)] * 2, retries=1)
    with pytest.raises(TransportError, match="failed 2 times"):
        asyncio.run(link.read(Reg.ID, 0))


class BridgeModelPort:
    """A serial port with the bridge and the golden model behind it (pyserial's interface),
    which corrupts chosen request frames on their way in."""

    def __init__(self, corrupt: set[int] = frozenset()) -> None:  # type: ignore[assignment]  # never mutated
        self.mailbox = ModelMailbox(HsmModel(4))
        self.corrupt = set(corrupt)
        self.frames = 0
        self.ops: list[tuple[LinkOp, int]] = []
        self._out = bytearray()

    @property
    def in_waiting(self) -> int:
        return len(self._out)

    def reset_input_buffer(self) -> None:
        self._out.clear()

    def read(self, size: int = 1) -> bytes:
        data = bytes(self._out[:size])
        del self._out[:size]
        return data

    def write(self, frame: bytes) -> int:
        self.frames += 1
        if self.frames in self.corrupt:
            frame = _bad_crc(frame)
        try:
            req = Request.decode(frame)
            self.ops.append((req.op, req.count))
        except ValueError:
            pass
        self._out += bridge_model_reply(self.mailbox, frame)
        return len(frame)


async def _hash_job(driver: HsmDriver, data: bytes) -> bytes:
    await driver.probe()
    return await driver.port(MANAGER).hash(data)


def test_serial_transport_bursts_and_retries_over_a_bridge_model() -> None:
    """The driver over SerialTransport: DATA goes in 64-word bursts, the result comes back in
    one burst, and frames corrupted on the way in are resent."""
    data = bytes(range(256)) * 5  # 320 words: 5 bursts
    port = BridgeModelPort(corrupt={4, 9})
    transport = SerialTransport(port, retries=2)
    digest = asyncio.run(_hash_job(HsmDriver(transport), data))
    assert digest == hashlib.sha256(data).digest()
    bursts = [count for op, count in port.ops if op is LinkOp.WRITE_BURST]
    assert bursts == [64] * 5
    assert (LinkOp.READ_BURST, 8) in port.ops  # the 32-byte digest in one frame
    assert transport.stats.retries == 2 and transport.stats.rejected == {"ERR_CRC": 2}
    reads = [op for op, _ in port.ops if op is LinkOp.READ]
    assert len(reads) <= 6  # ID, INFO, STATUS (twice or so), CYCLES: not one per result word
