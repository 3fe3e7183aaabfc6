"""The root of mchsm's error hierarchy, below the constants module so that it can raise them too.

Import these from :mod:`mchsm.sw.errors`, which re-exports them beside every other typed error;
they live here only because ``mchsm.sw.errors`` itself needs the constants (status names).
"""

from __future__ import annotations

__all__ = ["ArgumentError", "ArgumentTypeError", "MchsmError"]


class MchsmError(Exception):
    """Base of every error the mchsm host software raises on purpose."""


class ArgumentError(MchsmError, ValueError):
    """A host API call was given a value it cannot send: out of its range or wider than its
    register field.  Raised before anything reaches the HSM (a ``ValueError`` too, for callers
    that catch that)."""


class ArgumentTypeError(ArgumentError, TypeError):
    """A host API call was given an argument of the wrong type (``str`` where bytes are
    expected, a float for a context...).  Raised before anything reaches the HSM."""
