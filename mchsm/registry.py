"""Is this file a verifier registry the demo can use?  Asked before the story starts.

``mchsm demo --db FILE`` tells its story against the registry in ``FILE``.  A file that is not
one, or a damaged one, should be one line before anything runs, and a file of some other
program should not be touched.  The verifier (:mod:`mchsm.sw.verifier`) checks only the schema
version when it opens a file, and it switches the file to WAL journaling before that; so the
command line checks more, from outside, without knowing the verifier's tables: it compares
the file with a fresh registry the same verifier writes in a temporary directory.

- every page is read (``PRAGMA integrity_check``): a damaged page or index is found now, not
  half-way through the story;
- a file with tables, none of them a registry's, is another program's: refused untouched;
- after the verifier has opened it (and run its migrations), its tables must have exactly the
  columns of a fresh registry's: a renamed or lost column would fail half-way too.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from mchsm.failures import first_line, os_error
from mchsm.sw.errors import InputError, MchsmError

__all__ = ["check_registry"]

_ADVICE = "choose a new file name, or a registry an earlier `mchsm demo --db` wrote"


def _connect(db: Path) -> sqlite3.Connection:
    """A connection that only reads (``mode=rw``: never creates the file).  Not ``mode=ro``:
    a read-only connection to a WAL file leaves its ``-wal`` and ``-shm`` files behind."""
    return sqlite3.connect(f"{db.as_uri()}?mode=rw", uri=True)


def _columns(db: Path) -> set[tuple[str, str, str]]:
    """(table, column, declared type) of every table of the SQLite file ``db``."""
    conn = _connect(db)
    try:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            (table, column, kind.upper())
            for table in tables
            for _, column, kind, *_ in conn.execute("SELECT * FROM pragma_table_info(?)", (table,))
        }
    finally:
        conn.close()


def _intact(db: Path) -> None:
    conn = _connect(db)
    conn.text_factory = bytes  # its report may quote damaged text
    try:
        row = conn.execute("PRAGMA integrity_check(1)").fetchone()
    finally:
        conn.close()
    if row is None or row[0] != b"ok":
        raise sqlite3.DatabaseError("database disk image is malformed")


def check_registry(db: Path) -> None:
    """Raise :class:`InputError` (one line: the file, what is wrong, what to do) unless ``db``
    is a usable registry or a new file in an existing directory, which this creates."""
    from mchsm.sw.verifier import Verifier

    if not db.parent.is_dir():
        raise InputError(
            f"{db}: the directory {db.parent} does not exist (or is not a directory): create "
            f"it, or choose another place for the registry"
        )
    try:
        with tempfile.TemporaryDirectory(prefix="mchsm-registry-") as tmp:
            fresh = Path(tmp) / "fresh.sqlite"
            with Verifier(fresh):
                pass
            expected = _columns(fresh)
        if db.exists():
            _intact(db)
            tables = {table for table, _, _ in _columns(db)}
            if tables and not tables & {table for table, _, _ in expected}:
                raise InputError(
                    f"{db}: an SQLite file of another program (tables {', '.join(sorted(tables))}"
                    f"), left untouched: {_ADVICE}"
                )
        with Verifier(db):
            pass
        if _columns(db) != expected:
            raise sqlite3.DatabaseError(
                "its tables do not have the columns of this verifier's registry"
            )
    except InputError:
        raise
    except OSError as exc:
        raise InputError(os_error(exc, str(db))) from None
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise InputError(
            f"{db}: not a usable verifier registry ({first_line(str(exc))}): {_ADVICE}"
        ) from None
    except MchsmError as exc:  # the verifier's: a newer schema, no migration...
        what = first_line(str(exc))
        raise InputError(f"{what if str(db) in what else f'{db}: {what}'}: {_ADVICE}") from None
