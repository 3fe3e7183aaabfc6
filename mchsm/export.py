"""What an integrator takes away: the core as Verilog, a C header, a C driver, a FuseSoC core
file, and the register documentation.

All of it is generated from :mod:`mchsm.constants`, so the Verilog someone drops into their SoC,
the header their firmware includes, the core file their build tool reads and
``docs/registers.md`` cannot disagree with the RTL.  The C header is written by walking the
constants module rather than from a list kept here: every register of ``Reg``, every field of
the register layouts ``REG_LAYOUTS`` (the ``lib.data`` layouts the RTL uses: ``STATUS_MINE_MASK``,
``CMD_CTX_SHIFT``), every command, status code, CTRL action and flag of the module's integer
enums, and every other integer constant (sizes, limits), so a register or field added to the
constants appears in the header without touching this file.

The Verilog comes from Amaranth's backend (Yosys ``write_verilog``).  Machine-written Verilog
mixes operand widths on purpose and leaves intermediate wires unused; Verilator ``-Wall`` flags
each of those.  The exported file therefore starts with ``lint_off`` for exactly those
categories (:data:`GENERATED_CODE_WAIVERS`) and nothing else, so ``verilator --lint-only -Wall``
accepts it and any other class of warning (multiple drivers, latches, combinational loops,
blocking/non-blocking mixes ...) still fails the lint.

This module lives outside ``rtl/`` because it uses every layer: the RTL, the simulator's
Verilator (for the lint) and the host's error texts (for the documentation).
"""

from __future__ import annotations

import enum as py_enum
import re
from importlib import resources
from pathlib import Path
from types import ModuleType

from amaranth.lib import data

from mchsm import __version__
from mchsm import constants as default_constants
from mchsm.constants import (
    BUS_ADDR_WIDTH,
    CALLER_BITS,
    DEFAULT_CONTEXTS,
    MONITOR_BUDGET,
    MONITOR_FAIL_LIMIT,
    REFUSED_DOC,
    REG_DOC,
    RESULT_SIZE,
    STATUS_TEXT,
    Cmd,
    Ctrl,
    Reg,
    Status,
    check_build,
    command_spec,
)
from mchsm.sw.errors import ArgumentError

__all__ = [
    "C_DRIVER_FILES",
    "GENERATED_CODE_WAIVERS",
    "HEADER_NAME",
    "TOP_NAME",
    "c_driver_sources",
    "c_header",
    "export",
    "fusesoc_core",
    "header_macros",
    "message_fields",
    "register_fields",
    "register_markdown",
    "verilog_text",
]

TOP_NAME = "mchsm_core"
HEADER_NAME = "mchsm_regs.h"
#: the C driver, written beside the header (its header first)
C_DRIVER_FILES = ("mchsm_hsm.h", "mchsm_hsm.c")
#: the FuseSoC VLNV's vendor and library: ``mchsm:hsm:<name>:<version>``
FUSESOC_VENDOR_LIBRARY = "mchsm:hsm"

#: Verilator warnings that are properties of machine-generated Verilog, not of the design
GENERATED_CODE_WAIVERS = (
    "WIDTHEXPAND",
    "WIDTHTRUNC",
    "UNUSEDSIGNAL",
    "CASEINCOMPLETE",
    "PROCASSINIT",
    "UNSIGNED",
    "DECLFILENAME",
)

_VERILOG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_name(name: str) -> None:
    if not _VERILOG_NAME.match(name):
        raise ArgumentError(
            f"module name {name!r} must be a Verilog identifier: a letter or _, then letters, "
            f"digits or _"
        )


def verilog_text(
    contexts: int = DEFAULT_CONTEXTS,
    *,
    name: str = TOP_NAME,
    budget: int = MONITOR_BUDGET,
    fail_limit: int = MONITOR_FAIL_LIMIT,
) -> str:
    """The core as one Verilog file with top module ``name``.

    ``budget`` and ``fail_limit`` are the monitor's limits (``docs/protocol.md`` section 8):
    commands a task may issue per period, failed commands that flag it; 0 disables either.
    """
    from amaranth.back import verilog

    from mchsm.rtl.core import MchsmCore

    _check_name(name)
    check_build(contexts, budget, fail_limit)
    core = MchsmCore(contexts, budget=budget, fail_limit=fail_limit)
    body = verilog.convert(core, name=name, emit_src=False)
    waivers = "\n".join(f"/* verilator lint_off {w} */" for w in GENERATED_CODE_WAIVERS)
    header = (
        f"// mchsm {__version__}: multi-context HSM core, {contexts} contexts, monitor budget "
        f"{budget}, failure limit {fail_limit}.\n"
        "// Generated from the Amaranth sources by `mchsm rtl export`; do not edit.\n"
        "// Ports: clk, rst (synchronous, active high); a Wishbone B4 classic target:\n"
        f"//        bus__adr[{BUS_ADDR_WIDTH - 1}:0] (word address), bus__dat_w[31:0], "
        "bus__dat_r[31:0],\n"
        "//        bus__sel[0:0] (one bit, ignored: every register is a whole 32-bit word),\n"
        "//        bus__cyc, bus__stb, bus__we, bus__ack, bus__err (the access was refused);\n"
        f"//        caller[{CALLER_BITS - 1}:0] (caller id, from the trusted kernel side); irq.\n"
        "// Waivers for warnings inherent in generated code only (see mchsm/export.py):\n"
    )
    return f"{header}{waivers}\n{body}"


# ---------------------------------------------------------------------------------------------
# The C header, by walking the constants module
# ---------------------------------------------------------------------------------------------

#: register fields that are widths or positions, not bit patterns: written in decimal
_DECIMAL_SUFFIXES = ("_SHIFT", "_WIDTH", "_BITS", "_SHAPE", "_SIZE", "_WORDS", "_OFFSET")
#: other constants that are bit patterns: written in hex (the rest is counted in decimal)
_HEX_SUFFIXES = ("_MASK", "MAGIC", "_SYNC", "_POLY", "_INIT")


def _int_constants(source: ModuleType) -> dict[str, int]:
    """Every public integer constant of the module (not enums, not bools), by name."""
    return {
        name: value
        for name, value in vars(source).items()
        if name.isupper()
        and not name.startswith("_")
        and type(value) is int  # excludes bool and IntEnum members
    }


def _int_enums(source: ModuleType) -> list[type[py_enum.Enum]]:
    """The module's own integer enums (IntEnum/IntFlag), in the order they are defined."""
    return [
        value
        for value in vars(source).values()
        if isinstance(value, type)
        and issubclass(value, py_enum.Enum)
        and issubclass(value, int)
        and value.__module__ == source.__name__
    ]


def register_fields(source: ModuleType = default_constants) -> dict[str, dict[str, int]]:
    """Register name -> {constant name: value} of its fields, from the register layouts
    (``REG_LAYOUTS``, the ``lib.data`` layouts the RTL uses as views): for every field
    ``<REGISTER>_<FIELD>_SHIFT`` and ``<REGISTER>_<FIELD>_MASK`` (in place)."""
    out: dict[str, dict[str, int]] = {r.name: {} for r in source.Reg}
    for reg, layout in source.REG_LAYOUTS.items():
        out[reg.name] = _layout_fields(reg.name, layout)
    return out


def _layout_fields(prefix: str, layout: data.Layout) -> dict[str, int]:
    """``<PREFIX>_<FIELD>_SHIFT`` and ``_MASK`` (in place) of every field of a word layout."""
    out: dict[str, int] = {}
    for field_name, field in layout:
        name = f"{prefix}_{field_name.upper()}"
        out[f"{name}_SHIFT"] = field.offset
        out[f"{name}_MASK"] = ((1 << field.width) - 1) << field.offset
    return out


def message_fields(source: ModuleType = default_constants) -> dict[str, dict[str, int]]:
    """Command data and result layouts (``MESSAGE_LAYOUTS``) as ``<MESSAGE>_<FIELD>_OFFSET`` and
    ``_SIZE`` in bytes, and the packed words inside them (``WORD_LAYOUTS``) as ``_SHIFT`` and
    ``_MASK``, by section title.  Modules without these tables give none."""
    out: dict[str, dict[str, int]] = {}
    for message, fields in getattr(source, "MESSAGE_LAYOUTS", {}).items():
        rows: dict[str, int] = {}
        offset = 0
        for field_name, size in fields:
            rows[f"{message}_{field_name.upper()}_OFFSET"] = offset
            rows[f"{message}_{field_name.upper()}_SIZE"] = size
            offset += size
        out[f"{message}: byte offsets and sizes of its fields"] = rows
    for prefix, layout in getattr(source, "WORD_LAYOUTS", {}).items():
        out[f"{prefix} word: fields (masks in place, shifts in bits)"] = _layout_fields(
            prefix, layout
        )
    return out


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def _enum_prefix(cls: type[py_enum.Enum]) -> str:
    # status codes keep their own names (MCHSM_OK, MCHSM_ERR_AUTH): they carry their ERR_ prefix
    return "" if cls.__name__ == "Status" else f"{_snake(cls.__name__)}_"


def _literal(value: int, *, hex_width: int | None = None) -> str:
    return f"{value}u" if hex_width is None else f"0x{value:0{hex_width}X}u"


def _field_literal(name: str, value: int) -> str:
    return _literal(value, hex_width=None if name.endswith(_DECIMAL_SUFFIXES) else 1)


def _constant_literal(name: str, value: int) -> str:
    return _literal(value, hex_width=1 if name.endswith(_HEX_SUFFIXES) else None)


def _member_note(member: py_enum.Enum) -> str:
    return STATUS_TEXT[member] if isinstance(member, Status) else ""


def header_macros(
    contexts: int = DEFAULT_CONTEXTS,
    *,
    budget: int = MONITOR_BUDGET,
    fail_limit: int = MONITOR_FAIL_LIMIT,
    source: ModuleType = default_constants,
) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """The header's sections: (title, [(macro name, C literal, comment)]).

    Raises ValueError if two constants would get the same macro name.
    """
    check_build(contexts, budget, fail_limit)
    fields = register_fields(source)
    field_names = {n for f in fields.values() for n in f}
    build = {"CONTEXTS": contexts, "MONITOR_BUDGET": budget, "MONITOR_FAIL_LIMIT": fail_limit}
    sections: list[tuple[str, list[tuple[str, str, str]]]] = [
        (
            "This core's build parameters",
            [
                ("CONTEXTS", f"{contexts}u", "task contexts N; tasks are callers 1..N"),
                ("MONITOR_BUDGET", f"{budget}u", "commands per task and period (0: no limit)"),
                (
                    "MONITOR_FAIL_LIMIT",
                    f"{fail_limit}u",
                    "failed commands that flag a task (0: no limit)",
                ),
            ],
        ),
        (
            "Registers: byte offsets (word address = offset / 4)",
            [
                (f"REG_{r.name}", _literal(r.value, hex_width=2), ": ".join(source.REG_DOC[r]))
                for r in source.Reg
            ],
        ),
    ]
    for reg in source.Reg:
        if fields[reg.name]:
            sections.append(
                (
                    f"{reg.name} register: fields (masks in place, shifts in bits) and sizes",
                    [(n, _field_literal(n, v), "") for n, v in fields[reg.name].items()],
                )
            )
    for title, rows in message_fields(source).items():
        sections.append((title, [(n, _field_literal(n, v), "") for n, v in rows.items()]))
    for cls in _int_enums(source):
        if cls is source.Reg:
            continue
        prefix = _enum_prefix(cls)
        members = [
            (f"{prefix}{m.name}", _literal(m.value, hex_width=2), _member_note(m)) for m in cls
        ]
        if cls is source.Cmd:
            for cmd in cls:
                spec = source.command_spec(cmd)
                if spec.length is not None:
                    members.append(
                        (f"CMD_{cmd.name}_DATA_SIZE", f"{spec.length}u", "data bytes (exact)")
                    )
                members.append(
                    (f"CMD_{cmd.name}_RESULT_SIZE", f"{source.RESULT_SIZE[cmd]}u", "result bytes")
                )
        doc = (cls.__doc__ or cls.__name__).strip().splitlines()[0].replace("``", "")
        sections.append((f"{cls.__name__}: {doc}", members))
    others = [
        (n, _constant_literal(n, v), "")
        for n, v in _int_constants(source).items()
        if n not in field_names and n not in build
    ]
    sections.append(("Sizes (bytes), limits and other constants", others))

    seen: dict[str, str] = {}
    for title, section in sections:
        for macro, _, _ in section:
            if macro in seen:
                raise ArgumentError(
                    f"two constants would both be MCHSM_{macro} in the C header "
                    f"({seen[macro]!r} and {title!r}); rename one in mchsm/constants.py"
                )
            seen[macro] = title
    return sections


def _comment(text: str) -> str:
    return text.replace("*/", "* /")


def c_header(
    contexts: int = DEFAULT_CONTEXTS,
    *,
    budget: int = MONITOR_BUDGET,
    fail_limit: int = MONITOR_FAIL_LIMIT,
    source: ModuleType = default_constants,
) -> str:
    """``mchsm_regs.h``: every register, field, command, status code and size, for C firmware.

    Plain C89 macros (unsigned literals), no types and no functions, so it suits any compiler
    and any bus access style.  ``source`` is the constants module (a test passes an extended
    one).
    """
    lines = [
        f"/* mchsm {__version__}: register map, fields, command and status codes and sizes of",
        " * the HSM core. Generated from mchsm/constants.py by `mchsm rtl export`; do not edit.",
        " * Registers are 32-bit words on a Wishbone bus; every access must carry the caller id",
        " * (the kernel's bus fabric drives it, not software). See docs/registers.md and",
        " * docs/integrate.md. */",
        "#ifndef MCHSM_REGS_H",
        "#define MCHSM_REGS_H",
    ]
    for title, rows in header_macros(contexts, budget=budget, fail_limit=fail_limit, source=source):
        lines += ["", f"/* {_comment(title)} */"]
        width = max(len(m) for m, _, _ in rows) + len("MCHSM_") + 1
        for macro, literal, note in rows:
            text = f"#define {f'MCHSM_{macro}':<{width}} {literal}"
            lines.append(f"{text} /* {_comment(note)} */" if note else text)
    lines += ["", "#endif /* MCHSM_REGS_H */", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# FuseSoC
# ---------------------------------------------------------------------------------------------


def fusesoc_core(
    name: str = TOP_NAME,
    contexts: int = DEFAULT_CONTEXTS,
    *,
    budget: int = MONITOR_BUDGET,
    fail_limit: int = MONITOR_FAIL_LIMIT,
) -> str:
    """A FuseSoC CAPI2 core file for the exported Verilog and header, VLNV
    ``mchsm:hsm:<name>:<version>``.

    Targets: ``default`` (the Verilog and the header, for a user's own core to depend on) and
    ``lint`` (Verilator ``--lint-only -Wall``, as ``mchsm rtl export`` runs it).  The core's
    parameters are baked into the Verilog, so they appear in its description, not as
    parameters.
    """
    _check_name(name)
    check_build(contexts, budget, fail_limit)
    description = (
        f"mchsm {__version__} multi-context HSM core: {contexts} contexts, monitor budget "
        f"{budget}, failure limit {fail_limit} (generated by mchsm rtl export)"
    )
    return "\n".join(
        [
            "CAPI=2:",
            f"name: {FUSESOC_VENDOR_LIBRARY}:{name}:{__version__}",
            f'description: "{description}"',
            "",
            "filesets:",
            "  rtl:",
            "    files:",
            f"      - {name}.v",
            "    file_type: verilogSource",
            "  sw:",
            "    files:",
            f"      - {HEADER_NAME}: {{is_include_file: true}}",
            *(
                f"      - {f}: {{is_include_file: true}}" if f.endswith(".h") else f"      - {f}"
                for f in C_DRIVER_FILES
            ),
            "    file_type: cSource",
            "",
            "targets:",
            "  default:",
            "    filesets: [rtl, sw]",
            f"    toplevel: {name}",
            "  lint:",
            "    default_tool: verilator",
            "    filesets: [rtl]",
            f"    toplevel: {name}",
            "    tools:",
            "      verilator:",
            "        mode: lint-only",
            "        verilator_options: [-Wall]",
            "",
        ]
    )


# ---------------------------------------------------------------------------------------------
# docs/registers.md
# ---------------------------------------------------------------------------------------------


def register_markdown() -> str:
    """The text of ``docs/registers.md``."""
    out = [
        "# mchsm register map",
        "",
        "Generated from `mchsm/constants.py` by `mchsm rtl regdoc`; a test fails if this file "
        "and the constants disagree. The HSM is a Wishbone B4 classic target with 32-bit data; "
        "`bus__adr` is the word address (byte offset / 4) and `bus__sel` is one bit wide and "
        "ignored (every register is a whole word). Every access also carries the caller id on "
        f"`caller[{CALLER_BITS - 1}:0]`, driven by the kernel's bus fabric. `mchsm rtl export` "
        "writes the same map as a C header (`mchsm_regs.h`).",
        "",
        "| offset | register | access | meaning |",
        "| --- | --- | --- | --- |",
    ]
    out += [
        f"| 0x{reg.value:02X} | `{reg.name}` | {REG_DOC[reg][0]} | {REG_DOC[reg][1]} |"
        for reg in Reg
    ]
    out += [
        "",
        REFUSED_DOC,
        "",
        "`CTRL` takes one action per write: "
        + ", ".join(f"`{a.name}` = 0x{a.value:X}" for a in Ctrl)
        + " (docs/protocol.md section 9.2).",
        "",
        "## Register fields",
        "",
        "Masks are in place (`(value & MASK) >> SHIFT`); single bits are masks of one bit.",
        "",
        "| register | constant | value |",
        "| --- | --- | --- |",
    ]
    for reg, fields in register_fields().items():
        for name, value in fields.items():
            shown = str(value) if name.endswith(_DECIMAL_SUFFIXES) else f"0x{value:X}"
            out.append(f"| `{reg}` | `{name}` | {shown} |")
    out += [
        "",
        "## Commands",
        "",
        "| code | command | caller | context | data bytes | result bytes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for cmd in Cmd:
        spec = command_spec(cmd)
        length = "any" if spec.length is None else str(spec.length)
        out.append(
            f"| 0x{cmd.value:02X} | `{cmd.name}` | {spec.access.value} | "
            f"{'1..N' if spec.context else '0'} | {length} | {RESULT_SIZE[cmd]} |"
        )
    out += ["", "## Status codes", "", "| code | status | meaning |", "| --- | --- | --- |"]
    out += [f"| 0x{s.value:02X} | `{s.name}` | {STATUS_TEXT[s]} |" for s in Status]
    out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# All of it
# ---------------------------------------------------------------------------------------------


def c_driver_sources() -> dict[str, str]:
    """The C driver (:data:`C_DRIVER_FILES`, name -> text), shipped in the package's ``c/``.

    It is the same for every build of the core: what differs (the number of contexts, the
    monitor's limits) it takes from ``mchsm_regs.h``.  ``docs/integrate.md`` says how to port
    it; the test suite runs it against the RTL (:mod:`mchsm.sim.cdriver`).
    """
    base = resources.files("mchsm") / "c"
    return {name: (base / name).read_text() for name in C_DRIVER_FILES}


def export(
    out_dir: Path,
    contexts: int = DEFAULT_CONTEXTS,
    *,
    name: str = TOP_NAME,
    budget: int = MONITOR_BUDGET,
    fail_limit: int = MONITOR_FAIL_LIMIT,
) -> list[Path]:
    """Write ``<name>.v``, ``mchsm_regs.h``, the C driver (``mchsm_hsm.h``, ``mchsm_hsm.c``)
    and ``<name>.core`` (FuseSoC) into ``out_dir``; return their paths, the Verilog first."""
    text = verilog_text(contexts, name=name, budget=budget, fail_limit=fail_limit)
    out_dir.mkdir(parents=True, exist_ok=True)
    v = out_dir / f"{name}.v"
    v.write_text(text)
    h = out_dir / HEADER_NAME
    h.write_text(c_header(contexts, budget=budget, fail_limit=fail_limit))
    driver = []
    for file_name, source in c_driver_sources().items():
        driver.append(out_dir / file_name)
        driver[-1].write_text(source)
    core = out_dir / f"{name}.core"
    core.write_text(fusesoc_core(name, contexts, budget=budget, fail_limit=fail_limit))
    return [v, h, *driver, core]
