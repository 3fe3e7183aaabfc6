"""The C driver's testbench: a plain Verilator build of the exported core, cached, and its run.

:func:`build_testbench` verilates the core exactly as ``mchsm rtl export`` writes it, with a
plain ``--cc --exe`` build (no cocotb, no VPI), and links ``sim/cdriver_tb.cpp`` - whose
``main`` clocks the model and implements the driver's two access functions as Wishbone cycles -
and the C driver, compiled on its own as strict C99 with every warning an error.  Like
:func:`mchsm.sim.verilator.build` it is cached by a hash of everything that goes into it (the
Verilog, the sources, the header, Verilator, the compilers and their flags), under the same
cache root (``$MCHSM_CACHE/cdriver/<hash>/``), and pytest workers that want the same build
serialise on the same kind of ``flock``.  The precompiled headers (180 MB) are deleted once the
build is done; the objects stay, so :func:`relink` can link another driver in a second.
:func:`run_testbench` runs it and splits its output.  :mod:`mchsm.sim.cdriver` has the scenario.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from mchsm.constants import DEFAULT_CONTEXTS
from mchsm.export import TOP_NAME, c_driver_sources, c_header, verilog_text
from mchsm.sim.verilator_build import (
    DEFAULT_VERILATOR_ARGS,
    VerilatorBuildError,
    _parse_mk,
    cache_root,
    flock,
    normalise_verilog,
)
from mchsm.sim.verilator_env import (
    build_jobs,
    compiler,
    make_variables,
    progress,
    setup_environment,
    tail,
    verilator_root,
    verilator_version,
)
from mchsm.sim.verilator_run import SimulationError

__all__ = [
    "CONTEXTS",
    "C_FLAGS",
    "C_ONLY",
    "BenchBuild",
    "BenchRun",
    "build_testbench",
    "c_compiler",
    "relink",
    "run_testbench",
]

#: contexts of the core the scenario runs on: the demo's, like every other Verilator build
CONTEXTS = DEFAULT_CONTEXTS
TESTBENCH_SOURCE = "cdriver_tb.cpp"
#: the Verilated model's class prefix, as the testbench includes it
PREFIX = "Vhsm"
EXECUTABLE = "cdriver_tb"
#: the driver is compiled on its own as what it claims to be: strict C99, no warnings
C_FLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror", "-Wconversion")
#: what a line of the testbench's own checks of the C-only calls starts with
C_ONLY = "c-only "


def _testbench_text() -> str:
    return (resources.files("mchsm.sim") / TESTBENCH_SOURCE).read_text()


@dataclasses.dataclass(frozen=True)
class BenchBuild:
    """The testbench in the cache: the Verilated core and ``main`` (``directory``, by design
    hash), linked with the C driver (``executable``, by driver hash)."""

    hash: str
    directory: Path  #: the cache entry of the Verilated core and the testbench's objects
    executable: Path  #: linked with the package's mchsm_hsm.c
    cached: bool  #: nothing had to be compiled or linked by this call
    seconds: float  #: what this call took
    cold_seconds: float  #: what the Verilator build took when it was made


def c_compiler() -> str:
    """``$CC``, else cc, gcc or clang."""
    for name in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        path = shutil.which(name) if name else None
        if path:
            return path
    raise VerilatorBuildError("the C driver needs a C compiler (cc, gcc or clang); install one")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _material(verilog: str, header: str, contexts: int) -> dict[str, Any]:
    """What the Verilated core and the testbench's objects depend on: not the driver's .c,
    which is linked in afterwards (editing the driver costs a link, not a Verilator build)."""
    sources = {
        TESTBENCH_SOURCE: _testbench_text(),
        "mchsm_hsm.h": c_driver_sources()["mchsm_hsm.h"],
        "mchsm_regs.h": header,
    }
    return {
        "verilog_sha256": _sha(verilog),
        "sources": {name: _sha(text) for name, text in sorted(sources.items())},
        "contexts": contexts,
        "verilator": verilator_version(),
        "verilator_root": str(verilator_root()),
        "cxx": list(compiler()[:2]),
        "args": list(DEFAULT_VERILATOR_ARGS),
        "make": [v for v in make_variables() if not v.startswith(("PYTHON3=", "PERL=", "AR="))],
        "env": {k: os.environ.get(k, "") for k in ("CXXFLAGS", "CPPFLAGS", "LDFLAGS")},
    }


def _run_logged(cmd: Sequence[str], log: Path, what: str, cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env, check=False
        )
    if done.returncode != 0:
        raise VerilatorBuildError(f"{what} (exit {done.returncode})\nlog: {log}\n{tail(log)}")


def _verilate(entry: Path, verilog: str, header: str) -> None:
    """The Verilated core, the testbench's main and the Verilator runtime, as objects."""
    entry.mkdir(parents=True)
    (entry / "design.v").write_text(verilog)
    (entry / "mchsm_regs.h").write_text(header)
    (entry / "mchsm_hsm.h").write_text(c_driver_sources()["mchsm_hsm.h"])
    (entry / TESTBENCH_SOURCE).write_text(_testbench_text())
    log = entry / "build.log"
    progress(f"cold Verilator build of the C driver testbench; log: {log}")
    verilate = [
        str(verilator_root() / "bin" / "verilator"),
        "--cc",
        "--exe",
        "-Mdir",
        "obj",
        "--top-module",
        TOP_NAME,
        "--prefix",
        PREFIX,
        "-o",
        EXECUTABLE,
        "-CFLAGS",
        f"-I{entry}",
        *DEFAULT_VERILATOR_ARGS,
        "--verilate-jobs",
        str(build_jobs()),
        "design.v",
        TESTBENCH_SOURCE,
    ]
    _run_logged(verilate, log, "Verilator failed on the exported core", entry)
    targets = [f"{PREFIX}__ALL.a", *(f"{name}.o" for name in _objects(entry))]
    make = ["make", "-j", str(build_jobs()), "-C", "obj", "-f", f"{PREFIX}.mk"]
    _run_logged(
        [*make, *make_variables(), *targets], log, "the C++ build of the testbench failed", entry
    )
    for pch in (entry / "obj").glob("*.gch"):
        pch.unlink()  # 180 MB of precompiled headers that nothing reads again


def _objects(entry: Path) -> list[str]:
    """The testbench's own object and the Verilator runtime's (names without ``.o``)."""
    classes = _parse_mk((entry / "obj" / f"{PREFIX}_classes.mk").read_text())
    return [
        Path(TESTBENCH_SOURCE).stem,
        *classes.get("VM_GLOBAL_FAST", []),
        *classes.get("VM_GLOBAL_SLOW", []),
    ]


def _link(entry: Path, driver_c: str, out_dir: Path) -> Path:
    """Compile ``driver_c`` as strict C99 and link it with the objects of ``entry``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "mchsm_hsm.c").write_text(driver_c)
    log = out_dir / "build.log"
    compile_c = [c_compiler(), *C_FLAGS, f"-I{entry}", "-c", "mchsm_hsm.c", "-o", "mchsm_hsm.o"]
    _run_logged(compile_c, log, "the C driver does not compile as strict C99", out_dir)
    obj = entry / "obj"
    exe = out_dir / EXECUTABLE
    link = [
        compiler()[0],
        *(str(obj / f"{name}.o") for name in _objects(entry)),
        str(obj / f"{PREFIX}__ALL.a"),
        str(out_dir / "mchsm_hsm.o"),
        "-pthread",
        "-o",
        str(exe),
    ]
    _run_logged(link, log, "linking the C driver testbench failed", out_dir)
    return exe


def build_testbench(contexts: int = CONTEXTS, *, cache_dir: Path | None = None) -> BenchBuild:
    """The testbench for the core with ``contexts`` contexts, from the cache if it is there.

    The Verilated core and the testbench's objects are cached by design hash in
    ``$MCHSM_CACHE/cdriver/<hash>/`` (beside the cocotb builds), the executable linked with the
    package's C driver in ``driver-<hash of the driver>/`` under it.
    """
    began = time.perf_counter()
    setup_environment()
    verilog = normalise_verilog(verilog_text(contexts))
    header = c_header(contexts)
    material = _material(verilog, header, contexts)
    key = _sha(json.dumps(material, sort_keys=True))
    root = (cache_dir.resolve() if cache_dir is not None else cache_root()) / "cdriver"
    entry = root / key
    driver_c = c_driver_sources()["mchsm_hsm.c"]
    cc = c_compiler()
    cc_version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
    link_key = _sha(json.dumps([driver_c, cc, cc_version.stdout, C_FLAGS, material["cxx"]]))
    exe = entry / f"driver-{link_key[:16]}" / EXECUTABLE
    done = entry / "build.json"
    if done.is_file() and os.access(exe, os.X_OK):
        meta = json.loads(done.read_text())
        return BenchBuild(key, entry, exe, True, time.perf_counter() - began, meta["cold_seconds"])
    with flock(root / f"{key}.lock", f"the C driver testbench ({key[:12]})"):
        if not done.is_file():
            if entry.exists():
                shutil.rmtree(entry)  # a crashed earlier attempt
            _verilate(entry, verilog, header)
            cold = round(time.perf_counter() - began, 3)
            tmp = entry / ".build.json.tmp"
            tmp.write_text(json.dumps({"hash": key, "cold_seconds": cold, "material": material}))
            os.replace(tmp, done)
            progress(f"built the C driver testbench's core in {cold:.1f} s")
        if not os.access(exe, os.X_OK):
            linked = Path(tempfile.mkdtemp(prefix=".driver-", dir=entry))
            _link(entry, driver_c, linked)
            shutil.rmtree(exe.parent, ignore_errors=True)
            os.replace(linked, exe.parent)
    meta = json.loads(done.read_text())
    return BenchBuild(key, entry, exe, False, time.perf_counter() - began, meta["cold_seconds"])


def relink(build: BenchBuild, driver_c: str, out_dir: Path) -> Path:
    """The cached testbench linked with another ``mchsm_hsm.c`` in ``out_dir`` (a mutant: the
    test suite shows that the comparison catches a planted bug); about a second."""
    return _link(build.directory, driver_c, out_dir)


@dataclasses.dataclass(frozen=True)
class BenchRun:
    """What the testbench printed, split, and what it cost."""

    lines: list[str]  #: the scenario's lines (what the Python driver must print too)
    c_only: list[str]  #: checks of the C driver's own calls, without the "c-only " prefix
    stats: dict[str, float]  #: cycles, reads, writes, refused, seconds (the simulation's)
    seconds: float  #: wall time of the process


def run_testbench(
    build: BenchBuild, inputs: str, *, timeout: float = 600, executable: Path | None = None
) -> BenchRun:
    """Run the testbench (or ``executable``, a :func:`relink` of it) on the input file text
    ``inputs`` (:func:`mchsm.sim.cdriver.inputs_text`)."""
    with tempfile.TemporaryDirectory(prefix="mchsm-cdriver-") as tmp:
        path = Path(tmp) / "inputs.txt"
        path.write_text(inputs)
        began = time.perf_counter()
        done = subprocess.run(
            [str(executable or build.executable), str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SimulationError(
            f"the C driver testbench failed (exit {done.returncode}):\n{done.stderr[-2000:]}"
        )
    lines, c_only = [], []
    for line in done.stdout.splitlines():
        if line.startswith(C_ONLY):
            c_only.append(line.removeprefix(C_ONLY))
        else:
            lines.append(line)
    words = done.stderr.split()
    stats = {words[i]: float(words[i + 1]) for i in range(0, len(words) - 1, 2)}
    return BenchRun(lines, c_only, stats, seconds)
