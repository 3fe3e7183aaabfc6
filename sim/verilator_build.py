"""Cached Verilator builds of a design for cocotb: verilate, compile, keep by design hash.

* **Builds are slow, designs change rarely.**  A build is cached under its *design hash* (the
  Verilog text, toplevel, waves, Verilator/cocotb/compiler versions and every build argument) in
  ``$MCHSM_CACHE/verilator/<hash>/`` (default ``.cache/mchsm`` in the source checkout, or
  ``~/.cache/mchsm`` for an installed wheel).  An unchanged design costs a stat and a JSON
  read.  Amaranth's ``(* src = "file:line" *)`` attributes are stripped before hashing, so
  editing a comment in the Python RTL does not force a rebuild.
* **The Verilator runtime is the slow part of a cold build.**  ``verilated.cpp``,
  ``verilated_vpi.cpp`` & co. take ~40 s of CPU on every cold build although they do not depend
  on the design.  They are compiled once per (Verilator, compiler, flags, trace mode) into
  ``$MCHSM_CACHE/verilator/runtime/<key>/`` and linked into later designs; a changed design
  then rebuilds in a few seconds.
* **pytest-xdist.**  Workers that want the same build serialise on an ``fcntl.flock`` per hash
  (and per runtime key); the loser waits and then takes the cache hit.  Entries become visible
  by an atomic rename of their ``build.json``, so readers never see half a build.
* **Our own commands.**  The Verilator command line is the one cocotb's Makefile flow uses
  (``--vpi``, cocotb's ``verilator.cpp`` main, its VPI library), built here from the paths
  ``cocotb-config`` reports (:mod:`cocotb_tools.config`), and make runs with the
  :func:`~mchsm.sim.verilator_env.make_variables` repairs.  Nothing of cocotb's runner is
  patched.  FST tracing in Verilator 5.048 needs ``lz4.h``/``liblz4``, which a plain Debian has
  no headers for, so waves default to VCD (GTKWave and Surfer read both).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mchsm.sim.verilator_env import (
    VerilatorSetupError,
    build_jobs,
    compiler,
    has_lz4,
    make_variables,
    progress,
    setup_environment,
    tail,
    verilator_root,
    verilator_version,
)
from mchsm.sw.errors import ArgumentError, MchsmError

__all__ = [
    "DEFAULT_VERILATOR_ARGS",
    "BuildInfo",
    "VerilatorBuildError",
    "build",
    "cache_root",
    "design_hash",
    "normalise_verilog",
]

#: Verilator arguments every build gets (after cocotb's own: ``--vpi`` and its main program).
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

_ENV_CACHE = "MCHSM_CACHE"
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


class VerilatorBuildError(MchsmError, RuntimeError):
    """Verilator or the C++ build failed; the message names the log and quotes its tail."""


# ---------------------------------------------------------------------------------------------
# Cache keys
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


def _waves_format(waves: bool | str | None) -> str | None:
    if waves is False or waves is None or waves == "":
        return None
    if waves is True or waves == "vcd":
        return "vcd"
    if waves == "fst":
        if not has_lz4():
            raise VerilatorSetupError(
                "FST waves need lz4 and zlib headers for Verilator's FST writer (Debian: "
                "apt-get install liblz4-dev zlib1g-dev); use waves=True for VCD instead"
            )
        return "fst"
    raise ArgumentError(f"waves must be a bool, 'vcd' or 'fst', not {waves!r}")


def _verilator_args(waves: str | None, extra_args: Sequence[str]) -> list[str]:
    args = list(DEFAULT_VERILATOR_ARGS)
    if waves == "vcd":
        args.append("--trace")
    elif waves == "fst":
        args.append("--trace-fst")
    return [*args, *extra_args]


def _cocotb_paths() -> tuple[Path, Path]:
    """cocotb's Verilator main program and its libraries directory, as ``cocotb-config
    --share`` and ``--lib-dir`` report them."""
    import cocotb_tools.config

    main = Path(cocotb_tools.config.share_dir) / "lib" / "verilator" / "verilator.cpp"
    return main, Path(cocotb_tools.config.libs_dir)


def _hash_material(
    text: str, toplevel: str, waves: str | None, extra_args: Sequence[str], public: str
) -> dict[str, Any]:
    cxx, cxx_version, _ = compiler()
    main, libs = _cocotb_paths()
    return {
        "verilog_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "toplevel": toplevel,
        "waves": waves,
        "verilator": verilator_version(),
        "verilator_root": str(verilator_root()),
        "cocotb": importlib.metadata.version("cocotb"),
        # the simulator is linked against cocotb's libs by rpath
        "cocotb_libs": str(libs),
        "cocotb_main": str(main),
        "cxx": [cxx, cxx_version],
        "args": _verilator_args(waves, extra_args),
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
def flock(path: Path, what: str) -> Iterator[float]:
    """Exclusive ``flock`` on ``path``; yields the seconds spent waiting for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(path, "a+") as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another process that is building {what} ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - start
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BuildInfo:
    """A Verilator build in the cache, ready for :func:`~mchsm.sim.verilator.run`.

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
    toplevel module's, ``"all"`` every signal of every module (``--public-flat-rw``, as cocotb's
    own flows do), which keeps Verilator from optimising submodules and makes builds and runs
    slower.  Waves show every signal either way.  Prints one line to stderr when a cold build
    starts and one when it ends.
    """
    if public not in ("top", "all"):
        raise ArgumentError(f"public must be 'top' or 'all', not {public!r}")
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
    with flock(root / f"{key}.lock", f"{toplevel} ({key[:12]})"):
        hit = _load_entry(entry, cached=True, seconds=0.0)  # built while we waited
        if hit is not None:
            return dataclasses.replace(hit, seconds=time.perf_counter() - t0)
        runtime_cached = _cold_build(entry, key, text, toplevel, material)
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


def verilate_command(
    build_dir: Path,
    toplevel: str,
    sources: Sequence[Path],
    args: Sequence[str],
    *,
    public_all: bool,
) -> list[str]:
    """The ``verilator`` command of cocotb's Makefile flow for ``toplevel``.

    ``public_all`` makes every signal reachable from cocotb (``--public-flat-rw``); otherwise
    only the toplevel's ports are, through a Verilator control file among ``sources``.
    """
    main, libs = _cocotb_paths()
    return [
        str(verilator_root() / "bin" / "verilator"),
        "-cc",
        "--exe",
        "-Mdir",
        str(build_dir),
        "--top-module",
        toplevel,
        "--vpi",
        *(["--public-flat-rw"] if public_all else []),
        "--prefix",
        "Vtop",
        "-o",
        toplevel,
        "-LDFLAGS",
        f"-Wl,-rpath,{libs} -L{libs} -lcocotbvpi_verilator",
        *args,
        str(main),
        *map(str, sources),
    ]


def _run_logged(cmd: list[str], log: Path, what: str, cwd: Path | None = None) -> None:
    env = dict(os.environ)
    env.pop("MAKEFLAGS", None)  # a parent make's jobserver fds are not inherited
    env.pop("MFLAGS", None)
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, check=False
        )
    if done.returncode != 0:
        raise VerilatorBuildError(f"{what} (exit {done.returncode}); log: {log}\n{tail(log)}")


def _cold_build(
    entry: Path, key: str, text: str, toplevel: str, material: Mapping[str, Any]
) -> bool:
    """Verilate, then compile with make, linking a cached runtime if there is one; returns
    whether there was."""
    t0 = time.perf_counter()
    build_dir = entry / "sim_build"
    if build_dir.exists():
        shutil.rmtree(build_dir)  # a crashed earlier attempt
    build_dir.mkdir(parents=True)
    source = entry / "design.v"
    source.write_text(text)
    log = entry / "build.log"
    log.unlink(missing_ok=True)
    progress(
        f"cold Verilator build of {toplevel} ({len(text.splitlines())} lines of "
        f"Verilog, hash {key[:12]}, {build_jobs()} jobs); log: {log}"
    )
    sources = [source]
    if material["public"] == "top":
        # cocotb only needs the toplevel's ports; --public-flat-rw on every signal of every
        # module bloats the VPI symbol table and blocks optimisation of submodules
        vlt = entry / "public.vlt"
        vlt.write_text(f'`verilator_config\npublic_flat_rw -module "{toplevel}" -var "*"\n')
        sources.insert(0, vlt)
    verilate = verilate_command(
        build_dir,
        toplevel,
        sources,
        # verilation threads do not change the output, so they are not in the hash
        [*material["args"], "--verilate-jobs", str(build_jobs())],
        public_all=material["public"] == "all",
    )
    _run_logged(verilate, log, f"Verilator failed on {toplevel}", cwd=entry)
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
    failed = f"the C++ build of {toplevel} failed"

    def make_and_keep_runtime() -> None:
        # under the runtime lock: whoever waits for it links the objects we keep here
        _run_logged(make, log, failed)
        tmp = Path(tempfile.mkdtemp(prefix=f".{runtime_key[:12]}.", dir=runtime.parent))
        for name in globals_:
            shutil.copy2(build_dir / f"{name}.o", tmp / f"{name}.o")
        _write_json_atomic(tmp / "runtime.json", {"globals": globals_, "key": runtime_key})
        if runtime.exists():
            shutil.rmtree(runtime)
        os.replace(tmp, runtime)

    with flock(lock, "the Verilator runtime"):
        runtime_cached = (runtime / "runtime.json").is_file() and all(o.is_file() for o in objects)
        if not runtime_cached:
            make_and_keep_runtime()
    if runtime_cached:
        try:
            _run_logged(
                [
                    *make,
                    "VM_GLOBAL_FAST=",
                    "VM_GLOBAL_SLOW=",
                    "LIBS=" + " ".join(map(str, objects)),
                ],
                log,
                failed,
            )
        except VerilatorBuildError:
            # damaged or mismatched runtime objects; a design that does not compile fails
            # again below with the same message
            progress("building with the cached Verilator runtime failed; rebuilding it")
            with flock(lock, "the Verilator runtime"):
                make_and_keep_runtime()
            runtime_cached = False
    elapsed = time.perf_counter() - t0
    progress(
        f"built {toplevel} in {elapsed:.1f} s (verilate {t_verilate:.1f} s, "
        f"{'cached' if runtime_cached else 'fresh'} Verilator runtime)"
    )
    return runtime_cached


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
