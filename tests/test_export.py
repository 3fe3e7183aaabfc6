"""Verilog export, its lint, the C header and the generated register documentation."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mchsm.cli import main
from mchsm.constants import MAGIC, Cmd, Reg, Status
from mchsm.rtl import export

DOCS = Path(__file__).resolve().parents[1] / "docs" / "registers.md"


@pytest.mark.parametrize("contexts", [8, 32])
def test_export_lints_clean(tmp_path: Path, contexts: int) -> None:
    result = CliRunner().invoke(
        main, ["rtl", "export", "--contexts", str(contexts), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "verilator --lint-only -Wall: clean" in result.output
    text = (tmp_path / "mchsm_core.v").read_text()
    assert "module mchsm_core(" in text
    for port in ("bus__adr", "bus__dat_w", "bus__dat_r", "bus__ack", "caller", "irq"):
        assert port in text


def test_lint_still_catches_real_problems(tmp_path: Path) -> None:
    """The waivers cover generated-code noise only: an inferred latch still fails."""
    bad = tmp_path / "mchsm_core.v"
    waivers = "\n".join(f"/* verilator lint_off {w} */" for w in export.GENERATED_CODE_WAIVERS)
    bad.write_text(
        waivers + "\nmodule mchsm_core(input a, input b, output reg y);\n"
        "  always @(*) if (a) y = b;\nendmodule\n"
    )
    result = export.lint(bad)
    assert not result.clean
    assert result.warnings["LATCH"] >= 1


def test_c_header_values() -> None:
    header = export.c_header(8)
    assert f"#define MCHSM_MAGIC 0x{MAGIC:08X}u" in header
    assert f"#define MCHSM_REG_DATA 0x{Reg.DATA.value:02X}u" in header
    assert f"#define MCHSM_CMD_ATTEST 0x{Cmd.ATTEST.value:02X}u" in header
    assert f"#define MCHSM_ERR_ROLLBACK 0x{Status.ERR_ROLLBACK.value:02X}u" in header


def test_register_doc_is_generated_from_constants() -> None:
    assert DOCS.read_text() == export.register_markdown(), (
        "docs/registers.md is stale: run `mchsm rtl regdoc > docs/registers.md`"
    )
