"""One error hierarchy: everything mchsm raises on purpose is a ``mchsm.sw.errors.MchsmError``.

Two checks: every exception class defined in the packages derives from it, and no module
raises a bare built-in exception (``ValueError``, ``RuntimeError`` ...) where a typed one
belongs.  ``AssertionError`` (an invariant, "unreachable") and ``NotImplementedError``
(abstract methods) are bugs, not errors a caller handles, and stay; the command line raises
click's own exceptions, which click prints as one line.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil

import pytest
from conftest import REPO

import mchsm
from mchsm.sw.errors import MchsmError

PACKAGES = ("mchsm", "mchsm.sw", "mchsm.sim", "mchsm.boards")
#: built-in exceptions that stay: bugs, not errors to handle
BUG_RAISES = {"AssertionError", "NotImplementedError"}
#: ... and the attribute protocol: getattr() and hasattr() rely on AttributeError, and a fixed
#: attribute refuses to be set with it (as a frozen dataclass does)
BUG_RAISES.add("AttributeError")
#: raises of a bare built-in that stay, by file: what they guard and why
ALLOWED = {
    # the anomaly trace runner refuses a program that awaits a real event loop: a bug in a
    # test program, never an input
    ("sw/traces.py", "RuntimeError"),
}
#: the command line's own: a failure already put in one line for click to print
CLI_ONLY = {"mchsm.cli._Failure"}
_BUILTIN_EXCEPTIONS = {
    name
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, BaseException)
}


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            names.append(info.name)
    return sorted(set(names) - set(PACKAGES))


def test_every_exception_class_is_a_mchsm_error() -> None:
    offenders = []
    for name in _modules():
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            ours = cls.__module__ == name and issubclass(cls, BaseException)
            if ours and not issubclass(cls, MchsmError) and f"{name}.{cls_name}" not in CLI_ONLY:
                offenders.append(f"{name}.{cls_name}")
    assert not offenders, offenders


def bare_raises(rel: str, source: str) -> list[str]:
    """``file:line: Name`` of every ``raise Name(...)`` of a built-in exception."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            func = node.exc.func
            name = func.id if isinstance(func, ast.Name) else None
            bare = name in _BUILTIN_EXCEPTIONS and name not in BUG_RAISES
            if bare and (rel, name) not in ALLOWED:
                out.append(f"{rel}:{node.lineno}: {name}")
    return out


def test_nothing_raises_a_bare_builtin_exception() -> None:
    offenders = []
    for folder in ("mchsm", "sw", "sim", "boards"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            offenders += bare_raises(rel, path.read_text())
    assert not offenders, offenders


def test_the_checks_bite() -> None:
    assert bare_raises("sw/x.py", "def f():\n    raise ValueError('no')\n") == [
        "sw/x.py:2: ValueError"
    ]
    assert not bare_raises("sw/x.py", "raise AssertionError('unreachable')\n")
    assert mchsm.__name__ == "mchsm"


@pytest.mark.parametrize(
    ("name", "also"),
    [
        ("ArgumentError", ValueError),
        ("ArgumentTypeError", TypeError),
        ("FrameError", ValueError),
        ("ConcurrencyError", RuntimeError),
    ],
)
def test_typed_errors_are_still_what_callers_caught_before(name: str, also: type) -> None:
    """A caller that caught ValueError (or TypeError ...) before the typed errors still does."""
    from mchsm.sw import errors

    cls = getattr(errors, name)
    assert issubclass(cls, MchsmError) and issubclass(cls, also)
