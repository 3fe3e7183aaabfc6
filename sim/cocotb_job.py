"""A generic cocotb test that runs one host *job* against the DUT.

:func:`mchsm.sim.verilator.simulate_job` starts a simulation with this module as the test module
and names the job in the environment, because a simulator is another process that can only
import code, not receive it:

``MCHSM_JOB``
    ``package.module:function`` (or ``/path/to/script.py:function`` for a script's function): an
    ``async def job(driver: HsmDriver, **args)``.
``MCHSM_JOB_ARGS``
    JSON object of keyword arguments for the job (optional).
``MCHSM_JOB_ARGS_PICKLE``
    Instead of ``MCHSM_JOB_ARGS``: a file with the pickled keyword arguments, for arguments that
    JSON cannot carry unchanged (tuples, bytes, dataclasses).
``MCHSM_RESULT``
    Where to write the pickled outcome: the value with cycle and time counts, or the exception.
``MCHSM_CLOCK_NS``, ``MCHSM_BUS_PREFIX``
    Clock period (default 10) and the Wishbone port prefix (default ``bus``).

:func:`job_spec` and :func:`load_job` are the two ends of that naming and are importable without
a simulator.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import pickle
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cocotb
from cocotb.simtime import get_sim_time

from mchsm.sim.cocotb_transport import CocotbTransport, reset_and_clock
from mchsm.sw.driver import HsmDriver
from mchsm.sw.errors import ArgumentError, ArgumentTypeError

__all__ = ["job_spec", "load_job", "run_job"]

_SCRIPT_MODULE = "mchsm_job_script"


def job_spec(job: Callable[..., Awaitable[Any]]) -> str:
    """``module:qualname`` of a module-level ``async def``; TypeError for anything else.

    Lambdas, closures, bound methods and partials cannot be imported by name in the simulator
    process, so they are refused here with a message that says what to do instead.
    """
    name = getattr(job, "__qualname__", None) or repr(job)
    if not inspect.iscoroutinefunction(job):
        raise ArgumentTypeError(
            f"a job must be an `async def` function taking the driver, not {name} "
            f"({type(job).__name__}); put arguments in job_args, not in a partial"
        )
    if inspect.ismethod(job):
        raise ArgumentTypeError(
            f"a job must be a module-level function, not the bound method {name}"
        )
    if "<lambda>" in name or "<locals>" in name:
        raise ArgumentTypeError(
            f"a job must be a module-level async function, not {name}: the simulator runs in "
            f"another process and imports the job by name, which a lambda or closure does not "
            f"have; move it to module level and pass data through job_args"
        )
    module = job.__module__
    if module == "__main__":
        path = getattr(sys.modules["__main__"], "__file__", None)
        if not path:
            raise ArgumentTypeError(f"job {name} is defined interactively and cannot be imported")
        spec = f"{Path(path).resolve()}:{name}"
    else:
        spec = f"{module}:{name}"
    if load_job(spec, _main=module == "__main__") is not job:
        raise ArgumentTypeError(
            f"job {spec} does not import back as the same function (decorated?)"
        )
    return spec


def load_job(spec: str, *, _main: bool = False) -> Callable[..., Awaitable[Any]]:
    """The function a :func:`job_spec` string names."""
    module_name, sep, qualname = spec.rpartition(":")
    if not sep or not module_name or not qualname:
        raise ArgumentError(f"MCHSM_JOB must look like 'package.module:function', not {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        if _main:
            obj: Any = sys.modules["__main__"]
        elif _SCRIPT_MODULE in sys.modules:
            obj = sys.modules[_SCRIPT_MODULE]
        else:
            file_spec = importlib.util.spec_from_file_location(_SCRIPT_MODULE, module_name)
            if file_spec is None or file_spec.loader is None:
                raise ArgumentError(f"cannot load a job from {module_name}")
            obj = importlib.util.module_from_spec(file_spec)
            sys.modules[_SCRIPT_MODULE] = obj
            file_spec.loader.exec_module(obj)
    else:
        obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]  # whatever the module holds under that name


def _write(path: str, outcome: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(outcome, f)
    os.replace(tmp, path)


def _job_args() -> dict[str, Any]:
    if os.environ.get("MCHSM_JOB_ARGS_PICKLE"):
        with open(os.environ["MCHSM_JOB_ARGS_PICKLE"], "rb") as f:
            args: dict[str, Any] = pickle.load(f)  # the runner pickled a dict
            return args
    args = json.loads(os.environ.get("MCHSM_JOB_ARGS") or "{}")  # the runner wrote an object
    return dict(args)


#: brings the DUT up for the clock period given and returns the transport to drive it with, and
#: a function giving the transport's own figures at the end of the job
Setup = Callable[[float], Awaitable[tuple[Any, Callable[[], dict[str, Any]]]]]


async def record_job(setup: Setup) -> None:
    """Run the job named in the environment through an :class:`HsmDriver` over the transport
    ``setup`` gives, and record its value (or its exception) and costs for the host side."""
    spec = os.environ["MCHSM_JOB"]
    result = os.environ["MCHSM_RESULT"]
    period = float(os.environ.get("MCHSM_CLOCK_NS", "10"))
    try:
        job = load_job(spec)
        args = _job_args()
        transport, figures = await setup(period)
        driver = HsmDriver(transport)
        t_sim = get_sim_time("ns")
        t_wall = time.perf_counter()
        value = await job(driver, **args)
    except Exception as e:
        try:
            exc_bytes: bytes | None = pickle.dumps(e)
        except Exception:
            exc_bytes = None
        _write(
            result,
            {
                "ok": False,
                "error": f"{type(e).__qualname__}: {e}",
                "traceback": traceback.format_exc(),
                "exception": exc_bytes,
            },
        )
        raise
    sim_ns = get_sim_time("ns") - t_sim
    outcome = {
        "ok": True,
        "value": value,
        "cycles": round(sim_ns / period),
        "sim_time_ns": sim_ns,
        "job_wall_seconds": time.perf_counter() - t_wall,
        "hsm_cycles": driver.cycles,
        "commands": driver.commands,
        **figures(),
    }
    try:
        _write(result, outcome)
    except Exception as e:
        _write(
            result,
            {
                "ok": False,
                "error": f"the job's value cannot be pickled: {type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
                "exception": None,
            },
        )
        raise


@cocotb.test()
async def run_job(dut: Any) -> None:
    """Reset the DUT, run the job through an :class:`HsmDriver` on its Wishbone bus."""

    async def setup(period: float) -> tuple[CocotbTransport, Callable[[], dict[str, Any]]]:
        await reset_and_clock(dut, period_ns=period)
        transport = CocotbTransport.for_dut(dut, prefix=os.environ.get("MCHSM_BUS_PREFIX", "bus"))
        return transport, lambda: {
            "bus_reads": transport.bfm.reads,
            "bus_writes": transport.bfm.writes,
        }

    await record_job(setup)
