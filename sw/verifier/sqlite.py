"""The embedded store: one SQLite file in WAL mode, fsynced at every commit.

The file holds wrapped root keys only, but also the whole fleet's state, so it is created
owner-only and an existing one (or its ``-wal``/``-shm``) that group or others could read, or a
symlink at any of those paths, is refused with the command that fixes it.

Durability: ``synchronous = FULL`` makes every commit (one per :meth:`Verifier.verify_many`
batch) wait until the WAL is on disk, so a power loss or OS crash loses no committed batch: a
consumed nonce stays consumed, an audit row stays written.  A batch whose commit had not
returned is rolled back as a whole when the file is next opened; its caller never got its
results.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mchsm.sw.errors import StoreError

from .keys import check_private_file
from .store import Store, placeholders

__all__ = ["SqliteStore", "create_private"]

#: SQLite page cache per connection, in KiB: keeps the B-tree interior pages of a large fleet hot
CACHE_KIB = 256 * 1024
#: bytes of the file mapped into memory: reads of a big registry come from the OS page cache
#: without a copy into SQLite's own
MMAP_BYTES = 4 << 30
#: WAL pages between automatic checkpoints: a checkpoint writes a hot page (the audit tail, a
#: counter page) once for many commits, and costs an fsync.  (50,000 measured no better at 1M
#: devices: a longer WAL makes every page read search more of the WAL index.)
WAL_AUTOCHECKPOINT = 10_000
#: bytes of WAL kept after a checkpoint (the rest is truncated)
WAL_SIZE_LIMIT = 64 * 1024 * 1024
#: seconds to wait for another process's write lock before giving up
BUSY_SECONDS = 30.0
#: keys per IN (...) list, well under SQLite's limit on bound variables
IN_CHUNK = 500
#: the oldest SQLite with what the statements use (UPSERT, RETURNING)
MIN_SQLITE = (3, 35, 0)


def create_private(path: Path) -> bool:
    """Create ``path`` empty and owner-only if nothing is there; True if it was created."""
    try:
        fd = os.open(
            path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o600
        )
    except FileExistsError:
        return False
    except OSError as exc:
        raise StoreError(f"cannot create the registry {path}: {exc.strerror}") from None
    os.close(fd)
    return True


class SqliteStore(Store):
    """A registry in the SQLite file ``path``."""

    dialect = "sqlite"
    #: UnicodeDecodeError: a TEXT value that is not UTF-8 (a damaged file) fails to fetch
    db_errors = (sqlite3.Error, UnicodeDecodeError)

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreError(
                f"SQLite {sqlite3.sqlite_version} is too old for the registry (it needs "
                f"{'.'.join(map(str, MIN_SQLITE))} or newer)"
            )
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            check_private_file(p, "the registry file", StoreError)
        if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
            raise StoreError(f"the registry {path} is not a regular file")
        if not path.parent.is_dir():
            raise StoreError(f"cannot create the registry {path}: {path.parent} is not a directory")
        create_private(path)
        try:
            # a file: URI with nofollow would be tidier, but the checks above already refuse
            # symlinks and SQLite opens the path as given
            self.conn = sqlite3.connect(
                path, isolation_level=None, timeout=BUSY_SECONDS, check_same_thread=True
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the registry {path}: {exc}") from None
        try:
            self._refuse_foreign()
            self._configure()
        except self.db_errors as exc:
            self.conn.close()
            raise self._translate(exc) from None
        except BaseException:
            self.conn.close()
            raise

    def _refuse_foreign(self) -> None:
        """Before anything writes to the file (WAL journaling is a write): every page must
        read back intact, and a file with tables must be a registry, so that another
        program's database is refused untouched."""
        row = self.conn.execute("PRAGMA quick_check(1)").fetchone()
        if row is None or row[0] != "ok":
            raise StoreError(
                f"the registry {self.path} is damaged ({row[0] if row else 'no answer'}): "
                f"restore it from a backup, or start a new one"
            )
        tables = self.existing_tables()
        if tables and "schema_version" not in tables:
            raise StoreError(
                f"{self.path} holds tables ({', '.join(sorted(tables)[:5])}) but is not an "
                f"mchsm registry: it was left untouched; give the verifier its own file"
            )

    def _configure(self) -> None:
        conn = self.conn
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"the registry {self.path} cannot use WAL journaling (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        # the -wal and -shm files SQLite just made take the database file's mode: check them
        for p in (Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            check_private_file(p, "the registry file", StoreError)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
            self.conn = None

    def _begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        self.conn.execute("COMMIT")

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _after_failure(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _translate(self, exc: BaseException) -> StoreError:
        text = str(exc)
        if isinstance(exc, UnicodeDecodeError):
            why = "it is damaged (a text value that is not UTF-8)"
        elif "file is not a database" in text:
            why = "it is not a SQLite database (a damaged registry, or some other file)"
        elif "malformed" in text or "corrupt" in text:
            why = "the file is damaged (SQLite says: database disk image is malformed)"
        elif "locked" in text or "busy" in text:
            why = f"another process held its write lock for more than {BUSY_SECONDS:.0f} s"
        elif "no such" in text or "has no column" in text:
            why = f"it is damaged or not an mchsm registry ({text})"
        elif "readonly" in text or "read-only" in text:
            why = "it is read-only here: the verifier must be able to write it"
        else:
            why = f"SQLite says: {text}"
        return StoreError(f"the registry {self.path} cannot be used: {why}")

    def existing_tables(self) -> set[str]:
        rows = self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {r[0] for r in rows}

    def existing_columns(self, table: str) -> list[str]:
        return [r[1] for r in self.conn.execute("SELECT * FROM pragma_table_info(?)", (table,))]

    def rows_in(self, statement: str, keys: Iterable[bytes], suffix: str = "") -> list[Any]:
        items = list(keys)
        out: list[Any] = []
        for start in range(0, len(items), IN_CHUNK):
            chunk = items[start : start + IN_CHUNK]
            sql = f"{statement} IN {placeholders(len(chunk))}{suffix}"
            out += self.conn.execute(sql, chunk).fetchall()
        return out

    def execute(self, statement: str, args: Iterable[Any] = ()) -> Any:
        return self.conn.execute(statement, tuple(args))
