"""Waveform pictures: read a VCD of the HSM, find its commands, draw a timing diagram as PNG.

A VCD is what a simulator leaves behind, but opening it needs GTKWave or Surfer and knowing
which of ~750 signals matter.  This module answers the two questions people ask of a run
without either: *which commands ran, when, and how long did each take* (:func:`commands`,
``mchsm waves --list``), and *what did the bus and the engine do during one of them*
(:func:`plot`, ``mchsm waves --command ATTEST --out attest.png``).

It reads the VCDs of both RTL simulators (Amaranth's, with string-valued FSM states, and
Verilator's, with ``[7:0]`` ranges and signals of several scopes sharing one identifier).
Signals are named by a dotted *suffix* of their full path (``busy``, ``sha.rnd``), and sampled
once per cycle, just before each rising clock edge: the value a synchronous design acts on.
Command boundaries come from the mailbox's own registers and its link to the engine
(``mailbox.cmd__start``, ``mailbox.r_code``, ``mailbox.r_done``, ``mailbox.r_status``,
``mailbox.holder``), decoded with the constants module's ``Cmd`` and ``Status``.
"""

from __future__ import annotations

import bisect
import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mchsm.constants import Cmd, Reg, Status
from mchsm.sw.errors import MchsmError

__all__ = [
    "DEFAULT_SIGNALS",
    "GTKW_GROUPS",
    "CommandSpan",
    "SignalInfo",
    "Trace",
    "Vcd",
    "WaveError",
    "commands",
    "decode",
    "draw",
    "find_command",
    "plot",
    "read_vcd",
    "signals",
    "write_gtkw",
]

#: what a picture of one command shows by default: the Wishbone handshake, who is calling,
#: the engine's state and micro-PC, the SHA-256 core's rounds, and done / the interrupt
DEFAULT_SIGNALS: tuple[str, ...] = (
    "bus__cyc",
    "bus__stb",
    "bus__we",
    "bus__ack",
    "bus__adr",
    "bus__dat_w",
    "caller",
    "engine_state",
    "pc",
    "sha.busy",
    "sha.rnd",
    "mailbox.r_done",
    "irq",
)
#: the core's registers a command list is read from
_COMMAND_SIGNALS = {
    "start": "mailbox.cmd__start",
    "cmd": "mailbox.r_code",
    "done": "mailbox.r_done",
    "status": "mailbox.r_status",
    "owner": "mailbox.holder",
}

Value = int | str | None  # None: x or z


class WaveError(MchsmError, ValueError):
    """A VCD that cannot be read, or a signal or command that is not in it."""


@dataclass
class Trace:
    """One signal's value changes: ``times`` ascending, ``values[k]`` from ``times[k]`` on."""

    name: str  #: full dotted path, e.g. ``bench.top.sha.rnd``
    width: int
    times: list[int] = field(default_factory=list)
    values: list[Value] = field(default_factory=list)

    def before(self, t: int) -> Value:
        """The value just before time ``t``: what a flip-flop clocked at ``t`` samples."""
        k = bisect.bisect_left(self.times, t) - 1
        return self.values[k] if k >= 0 else None


@dataclass
class Vcd:
    """The signals of a VCD that were asked for, by the name they were asked for."""

    traces: dict[str, Trace]
    path: str = "the VCD"  #: where it was read from, for messages


def _resolve(names: Sequence[str], wanted: str) -> str:
    """The full path ``wanted`` (a dotted suffix) names; ambiguity goes to the shallowest
    match declared first, so ``clk`` is the top-level clock."""
    if wanted in names:
        return wanted
    hits = [n for n in names if n.endswith("." + wanted)]
    if not hits:
        leaves: dict[str, str] = {}
        for n in names:
            leaves.setdefault(n.rsplit(".", 1)[-1], n)
        near = [
            leaves[m]
            for m in difflib.get_close_matches(
                wanted.rsplit(".", 1)[-1], list(leaves), n=6, cutoff=0.6
            )
        ]
        hint = f"; similar: {', '.join(near)}" if near else ""
        raise WaveError(
            f"no signal {wanted!r} in this VCD{hint} (`mchsm waves VCD --signals` lists them all)"
        )
    return min(hits, key=lambda n: n.count("."))


def _parse_value(text: str) -> Value:
    if text[0] in "bB":
        bits = text[1:]
        if any(c in bits for c in "xXzZ"):
            return None
        return int(bits, 2)
    if text[0] in "sS":
        return text[1:]
    if text[0] in "rR":
        return int(float(text[1:]))
    return None if text[0] in "xXzZ" else int(text[0])


@dataclass(frozen=True)
class SignalInfo:
    """One signal declared in a VCD."""

    name: str  #: full dotted path, e.g. ``bench.top.sha.rnd``
    width: int
    range: str  #: the declared bit range (``[5:0]``; Verilator writes one, Amaranth does not)
    code: str  #: the VCD identifier code
    #: the VCD variable type: ``string`` for an enum-shaped signal in Amaranth's VCD (its value
    #: changes are the member names, ``sOK``), else ``wire``/``reg``
    kind: str = "wire"

    @property
    def gtkwave_name(self) -> str:
        """How GTKWave names it in a save file: the path, and the range if one was declared."""
        return f"{self.name}{self.range}"


def _read_header(f: Iterable[str], path: str | Path) -> dict[str, SignalInfo]:
    """The declarations of an open VCD, by full name, in declaration order; leaves ``f`` at
    the first value change."""
    header: list[str] = []
    for line in f:
        header.extend(line.split())
        if "$enddefinitions" in line:
            break
    else:
        raise WaveError(f"{path}: not a VCD (no $enddefinitions)")
    try:
        return _declarations(header)
    except (ValueError, IndexError):
        raise WaveError(f"{path}: not a VCD this reader understands (malformed header)") from None


def _declarations(header: list[str]) -> dict[str, SignalInfo]:
    out: dict[str, SignalInfo] = {}
    scope: list[str] = []
    k = 0
    while k < len(header):
        word = header[k]
        if word == "$scope":
            scope.append(header[k + 2])
            k += 3
        elif word == "$upscope":
            scope.pop()
            k += 1
        elif word == "$var":
            end = header.index("$end", k)
            kind, width, code, name = header[k + 1 : k + 5]
            full = ".".join([*scope, name])
            rng = header[k + 5] if k + 5 < end else ""
            out.setdefault(full, SignalInfo(full, int(width), rng, code, kind))
            k = end + 1
        else:
            k += 1
    return out


def signals(path: str | Path) -> list[SignalInfo]:
    """Every signal the VCD at ``path`` declares, in declaration order (``mchsm waves
    --signals``)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return list(_read_header(f, path).values())


def read_vcd(path: str | Path, wanted: Iterable[str]) -> Vcd:
    """Read the signals ``wanted`` (dotted suffixes of full paths) from the VCD at ``path``.

    Only the wanted signals' changes are kept, so a long run's file costs time, not memory.
    Raises :class:`WaveError` for a missing signal (with similar names as a hint).
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        declared = _read_header(f, path)
        names = list(declared)
        ids = {n: d.code for n, d in declared.items()}
        widths = {n: d.width for n, d in declared.items()}
        asked = {w: _resolve(names, w) for w in wanted}
        by_code: dict[str, list[Trace]] = {}
        traces: dict[str, Trace] = {}
        for w, full in asked.items():
            trace = Trace(full, widths[full])
            traces[w] = trace
            by_code.setdefault(ids[full], []).append(trace)
        now = 0
        for line in f:
            if not line or line[0] == "$":
                continue
            try:
                head = line[0]
                if head == "#":
                    now = int(line[1:])
                    continue
                if head in "bBrRsS":
                    value_text, _, code = line.rstrip("\n").partition(" ")
                else:
                    value_text, code = line[0], line[1:].rstrip("\n")
                targets = by_code.get(code)
                if targets:
                    value = _parse_value(value_text)
            except (ValueError, IndexError, OverflowError):
                raise WaveError(
                    f"{path}: not a VCD this reader understands (bad value change "
                    f"{line.strip()[:40]!r})"
                ) from None
            if targets:
                for trace in targets:
                    if trace.times and trace.times[-1] == now:
                        trace.values[-1] = value  # several changes at one time: the last wins
                    else:
                        trace.times.append(now)
                        trace.values.append(value)
    return Vcd(traces, str(path))


def _rising_edges(clock: Trace) -> list[int]:
    return [
        t
        for t, prev, v in zip(clock.times[1:], clock.values, clock.values[1:], strict=False)
        if v == 1 and prev == 0
    ]


@dataclass(frozen=True)
class CommandSpan:
    """One command the HSM ran: issued in cycle ``start``, ``done`` set in cycle ``end``."""

    index: int
    start: int
    end: int | None  #: None: still running when the VCD ends
    cmd: str
    caller: int | None
    status: str | None

    @property
    def cycles(self) -> int | None:
        """From the CMD write to done: what the HSM's CYCLES register reports."""
        return None if self.end is None else self.end - self.start


def _name(enum: type[Cmd] | type[Status], value: Value) -> str:
    if isinstance(value, str):  # an enum-shaped signal: Amaranth's VCD has the name already
        return value if value in enum.__members__ else "?"
    try:
        return enum(value).name  # type: ignore[arg-type]  # an int-valued Value, as the enum takes it
    except ValueError:
        return f"0x{value:02x}" if isinstance(value, int) else "?"


def _register(word: Value) -> str:
    """A word address on the HSM's bus as the register it selects (``STATUS``, ``RESULT+3``)."""
    if not isinstance(word, int):
        return "?"
    offset = word * 4
    if offset >= Reg.RESULT:
        return f"RESULT+{(offset - Reg.RESULT) // 4}" if offset > Reg.RESULT else "RESULT"
    try:
        return Reg(offset).name
    except ValueError:
        return f"0x{word:x}"


#: signals whose values are command or status codes, by leaf name
_CODE_KIND = {
    "r_code": "cmd",
    "cmd__code": "cmd",
    "r_status": "status",
    "cmd__status": "status",
    "r_fin": "status",
}
_CODES: dict[str, type[Cmd] | type[Status]] = {"cmd": Cmd, "status": Status}
#: signals whose values are codes of the constants module, by leaf name: drawn as names
_DECODERS = {
    **{
        # the default binds each leaf's codes; mypy cannot type a lambda's default argument
        leaf: (lambda v, codes=_CODES[kind]: _name(codes, v))  # type: ignore[misc]
        for leaf, kind in _CODE_KIND.items()
    },
    "bus__adr": _register,
}


def decode(signal: str, value: Value) -> str | None:
    """``value`` of ``signal`` (a dotted suffix) as a name: commands and status codes as in
    :class:`~mchsm.constants.Cmd` / :class:`~mchsm.constants.Status`, ``bus__adr`` as the
    register; None for signals that carry no code."""
    decoder = _DECODERS.get(signal.rsplit(".", 1)[-1])
    return None if decoder is None or value is None else decoder(value)


def _edges_and_samples(
    vcd: Vcd, clock: str, signals: Sequence[str]
) -> tuple[list[int], dict[str, list[Value]]]:
    edges = _rising_edges(vcd.traces[clock])
    if not edges:
        raise WaveError(
            f"{vcd.path}: the clock {vcd.traces[clock].name} never rises in this VCD "
            "(no clock cycle recorded: a run cut short?)"
        )
    return edges, {s: [vcd.traces[s].before(t) for t in edges] for s in signals}


def commands(path: str | Path, *, clock: str = "clk") -> list[CommandSpan]:
    """Every command in the VCD of an HSM run, in order, with its cycles, caller and status."""
    names = _COMMAND_SIGNALS
    vcd = read_vcd(path, (clock, *names.values()))
    _, samples = _edges_and_samples(vcd, clock, tuple(names.values()))
    s = {key: samples[name] for key, name in names.items()}
    out: list[CommandSpan] = []
    starts = [c for c, v in enumerate(s["start"]) if v == 1]
    for index, start in enumerate(starts):
        end = next(
            (
                c
                for c in range(start + 1, len(s["done"]))
                if s["done"][c] == 1 and s["done"][c - 1] != 1
            ),
            None,
        )
        after = start + 1 if start + 1 < len(s["cmd"]) else start
        out.append(
            CommandSpan(
                index=index,
                start=start,
                end=end,
                cmd=_name(Cmd, s["cmd"][after]),
                caller=owner if isinstance(owner := s["owner"][after], int) else None,
                status=None if end is None else _name(Status, s["status"][end]),
            )
        )
    return out


def find_command(spans: Sequence[CommandSpan], which: str) -> CommandSpan:
    """``which`` is an index from :func:`commands` or a command name (its first occurrence,
    ``NAME#k`` for the k-th, counting from 1)."""
    if which.isdigit():
        k = int(which)
        if k >= len(spans):
            raise WaveError(f"command {k}: the VCD has {len(spans)} commands (0..{len(spans) - 1})")
        return spans[k]
    name, _, nth = which.upper().partition("#")
    matching = [s for s in spans if s.cmd == name]
    n = int(nth) if nth.isdigit() else 1
    if len(matching) < n or n < 1:
        ran = ", ".join(sorted({s.cmd for s in spans})) or "none"
        raise WaveError(f"no {which!r} among the commands of this VCD (it ran: {ran})")
    return matching[n - 1]


def _label(value: Value, width: int) -> str:
    if value is None:
        return "x"
    if isinstance(value, str):
        return value.split("/", 1)[0]  # Amaranth's FSM states read "RUN/3"
    return f"{value:x}" if width > 4 else str(value)


def plot(
    path: str | Path,
    out: str | Path,
    *,
    start: int,
    end: int,
    signals: Sequence[str] = DEFAULT_SIGNALS,
    clock: str = "clk",
    title: str | None = None,
) -> Path:
    """Draw cycles ``start``..``end`` of ``signals`` as a timing diagram, written as PNG.

    Needs matplotlib (the ``bench`` and ``dev`` extras).  Multi-bit values are labelled where
    their run is wide enough to read: commands, status codes and register addresses by name
    (:func:`decode`), the rest in hex; x/z is drawn in red.
    """
    fig = draw(path, start=start, end=end, signals=signals, clock=clock, title=title)
    import matplotlib.pyplot as plt  # draw() has checked that matplotlib is there

    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=fig.dpi)
    plt.close(fig)
    return target


def draw(
    path: str | Path,
    *,
    start: int,
    end: int,
    signals: Sequence[str] = DEFAULT_SIGNALS,
    clock: str = "clk",
    title: str | None = None,
) -> Any:
    """The matplotlib figure :func:`plot` saves."""
    try:
        import matplotlib
    except ImportError:
        raise WaveError("drawing needs matplotlib: pip install 'mchsm[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vcd = read_vcd(path, (clock, *signals))
    edges, samples = _edges_and_samples(vcd, clock, signals)
    start, end = max(0, start), min(end, len(edges) - 1)
    if end <= start:
        raise WaveError(f"empty window: cycles {start}..{end} of {len(edges)}")
    n = end - start
    width_in = min(max(8.0, n * 0.09), 22.0)
    fig, ax = plt.subplots(figsize=(width_in, 0.42 * len(signals) + 1.2))
    px_per_cycle = width_in * fig.dpi * 0.85 / n
    for row, name in enumerate(signals):
        y = len(signals) - 1 - row
        values = samples[name][start:end]
        width = vcd.traces[name].width
        runs: list[tuple[int, int, Value]] = []
        for c, v in enumerate(values):
            if runs and runs[-1][2] == v:
                runs[-1] = (runs[-1][0], c + 1, v)
            else:
                runs.append((c, c + 1, v))
        for a, b, v in runs:
            x0, x1 = start + a, start + b
            if v is None:
                ax.fill_between([x0, x1], y + 0.15, y + 0.85, color="#e57373", step="pre")
            elif width == 1 and not isinstance(v, str):
                level = y + (0.8 if v else 0.2)
                ax.plot([x0, x1], [level, level], color="#1565c0", lw=1.2)
                if a > 0:
                    ax.plot([x0, x0], [y + 0.2, y + 0.8], color="#1565c0", lw=1.2)
            else:
                ax.fill_between(
                    [x0, x1], y + 0.2, y + 0.8, color="#e3f2fd", edgecolor="#1565c0", lw=0.8
                )
                text = decode(name, v) or _label(v, width)
                if (b - a) * px_per_cycle > 7 * len(text) + 4:
                    ax.text((x0 + x1) / 2, y + 0.5, text, ha="center", va="center", fontsize=7)
    ax.set_yticks([len(signals) - 1 - r + 0.5 for r in range(len(signals))])
    ax.set_yticklabels(signals, fontsize=8, family="monospace")
    ax.set_ylim(0, len(signals))
    ax.set_xlim(start, end)
    ax.set_xlabel("clock cycle")
    ax.grid(axis="x", color="#dddddd", lw=0.5)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# GTKWave save file
# ---------------------------------------------------------------------------------------------

#: what the GTKWave save file shows, group by group (dotted suffixes; what a VCD lacks is left
#: out, so one list serves the core, the board design and both simulators)
GTKW_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Wishbone bus",
        (
            "clk",
            "rst",
            "bus__cyc",
            "bus__stb",
            "bus__we",
            "bus__adr",
            "bus__sel",
            "bus__dat_w",
            "bus__dat_r",
            "bus__ack",
            "caller",
            "irq",
        ),
    ),
    (
        "Mailbox",
        (
            "mailbox.held",
            "mailbox.holder",
            "mailbox.cmd__start",
            "mailbox.r_code",
            "mailbox.r_ctx",
            "mailbox.r_len",
            "mailbox.r_inbytes",
            "busy",
            "mailbox.r_done",
            "mailbox.r_status",
            "mailbox.r_reslen",
            "mailbox.r_cycles",
            "mailbox.r_irq_en",
            "mailbox.wipe",
        ),
    ),
    ("Command engine", ("engine_state", "pc", "k", "r_left", "r_fin", "r_sel", "r_ok")),
    ("SHA-256 engine", ("sha.busy", "sha.rnd")),
    ("UART (board design)", ("rx", "tx")),
)

#: GTKWave trace flags (gtkwave's TR_* bits): hex, binary, right-justified names, a
#: translate-file filter, a blank row, the start and end of a group
_HEX, _BIN, _RJUSTIFY, _FTRANSLATED = 0x2, 0x8, 0x20, 0x2000
_BLANK, _GRP_BEGIN, _GRP_END = 0x200, 0x800000, 0x1000000


def _translations(leaf: str, width: int) -> list[str] | None:
    """Lines of a GTKWave translate file for a signal that carries codes, else None."""
    digits = max(1, (width + 3) // 4)
    if leaf in _CODE_KIND:
        pairs = [(int(c), c.name) for c in _CODES[_CODE_KIND[leaf]]]
    elif leaf == "bus__adr":
        pairs = [(word, _register(word)) for word in range(1 << width)]
    else:
        return None
    return [f"{value:0{digits}x} {label}" for value, label in pairs if value < 1 << width]


def write_gtkw(vcd: str | Path, out: str | Path | None = None) -> Path:
    """Write a GTKWave save file for the VCD of an HSM run and return its path.

    ``gtkwave run.gtkw`` then opens the VCD with the useful signals in groups (the Wishbone
    bus, the mailbox registers, the command engine, the SHA-256 engine, the UART pins of the
    board design) and commands, status codes and register addresses shown by name, through
    translate files written beside it (``<stem>.cmd.txt`` & co.).  The save file names the VCD
    and the translate files by absolute path.  Default ``out``: the VCD's name with ``.gtkw``.
    """
    vcd = Path(vcd).resolve()
    target = Path(out) if out is not None else vcd.with_suffix(".gtkw")
    declared = {d.name: d for d in signals(vcd)}
    names = list(declared)
    lines = [
        "[*] mchsm: GTKWave save file written by `mchsm waves --gtkw` or a --waves run",
        f'[dumpfile] "{vcd}"',
        "[timestart] 0",
        "[sst_expanded] 1",
        "[signals_width] 220",
    ]
    filters: dict[str, Path] = {}
    shown = 0
    for group, wanted in GTKW_GROUPS:
        rows: list[str] = []
        for suffix in wanted:
            try:
                full = _resolve(names, suffix)
            except WaveError:
                continue
            info = declared[full]
            leaf = suffix.rsplit(".", 1)[-1]
            flags = (_BIN if info.width == 1 else _HEX) | _RJUSTIFY
            # an enum-shaped signal is a string in Amaranth's VCD: GTKWave shows its names
            table = None if info.kind == "string" else _translations(leaf, info.width)
            if table is not None:
                kind = _CODE_KIND.get(leaf, "reg")
                path = filters.get(kind)
                if path is None:
                    path = target.with_name(f"{target.stem}.{kind}.txt").resolve()
                    path.write_text("\n".join(table) + "\n")
                    filters[kind] = path
                rows += [f"@{flags | _FTRANSLATED:x}", f"^{list(filters).index(kind) + 1} {path}"]
            else:
                rows.append(f"@{flags:x}")
            rows.append(info.gtkwave_name)
            shown += 1
        if rows:
            lines += [f"@{_BLANK | _GRP_BEGIN:x}", f"-{group}", *rows]
            lines += [f"@{_BLANK | _GRP_END:x}", f"-{group}"]
    if not shown:
        raise WaveError(f"{vcd}: none of the HSM's signals are in this VCD")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n")
    return target
