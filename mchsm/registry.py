"""Is this file a verifier registry the demo can use?  Asked before the story starts.

``mchsm demo --db FILE`` tells its story against the registry in ``FILE``, maybe in a
simulator's process.  A file that is not one, or a damaged one, should be one line before
anything runs; so the command line opens it once with the verifier first.  The verifier's store
does the checking (:mod:`mchsm.sw.verifier.sqlite`): every page read back before anything is
written, another program's database refused untouched, the schema version and every table's
columns as the schema declares them.
"""

from __future__ import annotations

from pathlib import Path

from mchsm.failures import first_line, os_error
from mchsm.sw.errors import InputError, MchsmError

__all__ = ["check_registry"]

_ADVICE = "choose a new file name, or a registry an earlier `mchsm demo --db` wrote"


def check_registry(where: str) -> None:
    """Raise :class:`InputError` (one line: the file, what is wrong, what to do) unless
    ``where`` is a usable registry - a file, or a ``postgresql://`` URL - or a new file in an
    existing directory, which this creates."""
    from mchsm.sw.verifier import Verifier

    db = Path(where)
    if "://" not in where and not db.parent.is_dir():
        raise InputError(
            f"{db}: the directory {db.parent} does not exist (or is not a directory): create "
            f"it, or choose another place for the registry"
        )
    try:
        with Verifier(where):
            pass
    except OSError as exc:
        raise InputError(os_error(exc, where)) from None
    except MchsmError as exc:  # StoreError, KekError, ...: what is wrong, in the verifier's words
        what = first_line(str(exc))
        raise InputError(f"{what if where in what else f'{where}: {what}'}: {_ADVICE}") from None
