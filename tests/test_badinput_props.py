"""Arbitrary bytes where the command line reads a file: success or the one typed line, never
a traceback, never an internal error.

Two readers are fuzzed through the CLI itself: the verifier's registry (``mchsm demo --db``)
and a waveform (``mchsm waves``).  Each gets arbitrary bytes and a real file with bytes
overwritten or cut off, which gets further into the reader than noise does.  (No command reads
evidence from a file: evidence arrives from the HSM, and the verifier's own checks of it are
``tests/test_verifier.py``'s.)
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mchsm.cli import main

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _one_line_or_success(result: Result, *, codes: set[int], says: str) -> None:
    assert "Traceback" not in result.output and "internal error" not in result.output
    if result.exit_code == 0:
        return
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in codes, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert says in lines[0], lines[0]


@st.composite
def damaged(draw: st.DrawFn, good: bytes) -> bytes:
    """``good`` with some bytes overwritten, and perhaps cut short."""
    data = bytearray(good)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@functools.cache
def registry() -> bytes:
    """A registry file an earlier demo wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "v.sqlite"
        result = CliRunner().invoke(main, ["demo", "--backend", "model", "--db", str(db)])
        assert result.exit_code == 0, result.output
        return db.read_bytes()


def _registry_case(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "v.sqlite"
        db.write_bytes(content)
        result = CliRunner().invoke(main, ["demo", "--backend", "model", "--db", str(db)])
        # success is the whole story, every step as the protocol says
        if result.exit_code == 0:
            assert "every step went as the protocol says" in result.stdout
        _one_line_or_success(result, codes={2}, says="--db")


@SETTINGS
@given(content=st.binary(max_size=8192))
def test_arbitrary_bytes_as_registry(content: bytes) -> None:
    _registry_case(content)


@SETTINGS
@given(data=st.data())
def test_damaged_registry(data: st.DataObject) -> None:
    _registry_case(data.draw(damaged(registry())))


VCD = b"""$timescale 1ps $end
$scope module top $end
$var wire 1 ! clk $end
$scope module mailbox $end
$var wire 1 " cmd__start $end
$var wire 8 # r_code [7:0] $end
$var wire 1 $ r_done $end
$var string 1 % r_status $end
$var wire 6 & holder $end
$upscope $end
$upscope $end
$enddefinitions $end
#0
$dumpvars
0!
0"
b0 #
0$
sOK %
b10 &
$end
#5
1!
#10
0!
1"
b1000000 #
#15
1!
#20
0!
0"
#25
1!
#30
0!
1$
#35
1!
r2.5 #
#40
0!
"""


def _waves_case(content: bytes, *args: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        vcd = Path(tmp) / "run.vcd"
        vcd.write_bytes(content)
        result = CliRunner().invoke(main, ["waves", str(vcd), *args])
        _one_line_or_success(result, codes={1}, says="VCD")


def test_the_waves_seed_is_good() -> None:
    """The VCD the damage starts from is read whole (else the fuzzing below proves little)."""
    with tempfile.TemporaryDirectory() as tmp:
        vcd = Path(tmp) / "run.vcd"
        vcd.write_bytes(VCD)
        result = CliRunner().invoke(main, ["waves", str(vcd), "--list"])
        assert result.exit_code == 0 and "HASH" in result.stdout, result.output


def test_a_vcd_cut_after_its_header_names_the_file() -> None:
    """Hypothesis found it: declarations but no value change; the line must say which VCD."""
    _waves_case(VCD[: VCD.index(b"$enddefinitions")] + b"$enddefinitions $end\n", "--list")


@SETTINGS
@given(content=st.binary(max_size=2048), signals=st.booleans())
def test_arbitrary_bytes_as_vcd(content: bytes, signals: bool) -> None:
    _waves_case(content, "--signals" if signals else "--list")


@SETTINGS
@given(data=st.data(), signals=st.booleans())
def test_damaged_vcd(data: st.DataObject, signals: bool) -> None:
    _waves_case(data.draw(damaged(VCD)), "--signals" if signals else "--list")
