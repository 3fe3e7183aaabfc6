"""Run cocotb tests against a cached Verilator build, and read back what happened.

The simulator executable of a :func:`~mchsm.sim.verilator_build.build` is started directly,
with the environment cocotb's own flows give it (the variables of cocotb's Makefile flow:
``COCOTB_TEST_MODULES``, ``COCOTB_TOPLEVEL``, ``GPI_USERS`` ...), so the waveform file, the
wall-clock timeout and the environment are ours to decide without patching cocotb's runner.
Results come from cocotb's JUnit XML.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from xml.etree import ElementTree

from mchsm.sim.verilator_build import BuildInfo
from mchsm.sim.verilator_env import setup_environment, tail
from mchsm.sw.errors import ArgumentError, MchsmError

__all__ = ["SimRun", "SimulationError", "SimulationTimeout", "TestOutcome", "run"]


class SimulationError(MchsmError, RuntimeError):
    """A simulation crashed or one of its cocotb tests failed."""

    def __init__(self, message: str, run: SimRun | None = None) -> None:
        super().__init__(message)
        self.run = run


class SimulationTimeout(SimulationError, TimeoutError):
    """The simulator ran longer than the wall-clock ``timeout`` and was killed."""


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
        raise SimulationError(
            f"no test {name!r} in {self.results}; ran {[t.name for t in self.tests]}"
        )

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


def cocotb_environment(
    toplevel: str, test_module: str, results: Path, testcase: str | None, seed: int | None
) -> dict[str, str]:
    """The variables cocotb's Makefile flow gives a Verilator simulation of ``toplevel``."""
    import cocotb_tools.config
    import find_libpython

    libpython = os.environ.get("LIBPYTHON_LOC") or find_libpython.find_libpython()
    if libpython is None:
        raise SimulationError("cannot find libpython, which cocotb embeds in the simulator")
    env = {
        "PYTHONPATH": os.pathsep.join(sys.path),
        "PYGPI_PYTHON_BIN": sys.executable,
        "GPI_USERS": f"{libpython};{cocotb_tools.config.pygpi_entry_point()}",
        "COCOTB_TOPLEVEL": toplevel,
        "TOPLEVEL_LANG": "verilog",
        "COCOTB_TEST_MODULES": test_module,
        "COCOTB_RESULTS_FILE": str(results),
        "COCOTB_TRUST_INERTIAL_WRITES": "1",
        "COCOTB_ANSI_OUTPUT": "0",
    }
    if testcase is not None:
        names = [n.strip() for n in testcase.split(",") if n.strip()]
        env["COCOTB_TEST_FILTER"] = r"\.(" + "|".join(map(re.escape, names)) + ")$"
    if seed is not None:
        env["COCOTB_RANDOM_SEED"] = str(seed)
    return env


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
    waves_file: Path | str | None = None,
) -> SimRun:
    """Run the cocotb tests of ``test_module`` against a :func:`~mchsm.sim.verilator.build`.

    Results, the simulator log (``sim.log``) and waves (``waves.vcd``, or ``waves_file``) land
    in ``run_dir`` (default: a new ``mchsm-sim-*`` temporary directory that is kept).  ``env`` is
    added to the simulator's environment (and wins over ``os.environ``); ``testcase`` runs only
    the tests of that name (comma-separated); ``timeout`` is wall-clock seconds after which the
    simulator is killed (:class:`SimulationTimeout`).  With ``check`` a failed test or crash raises
    :class:`SimulationError`; without it the :class:`SimRun` says what happened.
    """
    setup_environment()
    if waves and build_info.waves is None:
        raise ArgumentError(
            f"the build of {build_info.toplevel} cannot trace: build it with "
            f"waves=True to record waves"
        )
    rundir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="mchsm-sim-"))
    rundir = rundir.resolve()
    rundir.mkdir(parents=True, exist_ok=True)
    results = rundir / "results.xml"
    results.unlink(missing_ok=True)
    log = rundir / "sim.log"
    wave_file = None
    if waves:
        wave_file = (
            Path(waves_file).resolve()
            if waves_file is not None
            else rundir / f"waves.{build_info.waves}"
        )
        wave_file.parent.mkdir(parents=True, exist_ok=True)
        wave_file.unlink(missing_ok=True)
    cmd = [str(build_info.executable)]
    if wave_file is not None:
        cmd += ["--trace", "--trace-file", str(wave_file)]
    full_env = {
        **os.environ,
        **cocotb_environment(build_info.toplevel, test_module, results, testcase, seed),
        **(env or {}),
    }
    t0 = time.perf_counter()
    timed_out = False
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=rundir, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            returncode = proc.wait()
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
    if timed_out:
        raise SimulationTimeout(
            f"{test_module} on {build_info.toplevel} ran longer than {timeout:g} s and was "
            f"killed; log: {log}\n{tail(log, 15)}",
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
            else f"the simulator exited with code {returncode} and no test results"
        )
        raise SimulationError(
            f"{test_module} on {build_info.toplevel} failed; log: {log}\n{what}\n{tail(log, 25)}",
            sim,
        )
    return sim
