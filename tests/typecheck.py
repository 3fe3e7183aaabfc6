"""``make typecheck``: mypy over the whole project as it is imported, ``mchsm.sw`` and all.

Why a runner and not a bare ``mypy`` call: the package maps ``mchsm.sw`` to ``sw/``,
``mchsm.sim`` to ``sim/`` and so on (``[tool.setuptools.package-dir]``), and the editable
install resolves that with an import hook that mypy cannot follow.  Left alone, mypy sees every
``from mchsm.sw ...`` as a missing module, types it ``Any`` and checks almost nothing across
modules.  So this script lays out the installed package as a tree of symbolic links under
``.mypy_cache/tree/mchsm`` (``sw`` -> ``../../../sw`` ...), checks that tree together with
``bench/`` and ``tests/``, and prints every path back as the file in the repository.

The settings are ``[tool.mypy]`` in ``pyproject.toml`` (where ``rtl/``'s errors are switched
off while it is being restructured).

Run: ``.venv/bin/python tests/typecheck.py [extra mypy arguments]``.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".mypy_cache" / "tree"


def package_dirs() -> dict[str, Path]:
    """``mchsm.<sub>`` -> its folder, as ``[tool.setuptools.package-dir]`` says."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items() if name.count(".") == 1}


def build_tree() -> Path:
    """``.mypy_cache/tree/mchsm``: mchsm/'s own files, and one link per mapped subpackage."""
    top = TREE / "mchsm"
    top.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, Path] = {p.name: p for p in (ROOT / "mchsm").iterdir()}
    wanted.pop("__pycache__", None)
    for name, folder in package_dirs().items():
        wanted[name.split(".", 1)[1]] = folder
    for entry in top.iterdir():
        if entry.name not in wanted or os.readlink(entry) != os.path.relpath(
            wanted[entry.name], top
        ):
            entry.unlink()
    for name, target in wanted.items():
        link = top / name
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(target, top))
    return top


def real_paths(text: str) -> str:
    """mypy's report with every ``.mypy_cache/tree/...`` path turned into the repository's."""
    tree = os.path.relpath(TREE, Path.cwd())

    def fix(match: re.Match[str]) -> str:
        return os.path.relpath(os.path.realpath(match.group(0)), Path.cwd())

    return re.sub(re.escape(tree) + r"/[\w./-]+\.py", fix, text)


def main(argv: list[str]) -> int:
    from mypy import api

    top = build_tree()
    os.environ["MYPYPATH"] = str(TREE)
    sources = [os.path.relpath(top), "bench", "tests"]
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), *argv, *sources])
    sys.stdout.write(real_paths(out))
    sys.stderr.write(real_paths(err))
    return status


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main(sys.argv[1:]))
