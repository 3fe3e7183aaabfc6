"""The registry store: every SQL statement of the verifier, over SQLite or PostgreSQL.

A :class:`Store` is one connection, used by one thread.  Changes happen in
:meth:`Store.write`, which runs a function inside one transaction and commits it (retrying it
whole when PostgreSQL reports a deadlock or a serialization failure, so the function must not
change anything outside the store); reads happen in :meth:`Store.read`.  Methods take and return
plain values and validate every value they read back, so a damaged or tampered registry raises
:class:`~mchsm.sw.errors.StoreError` instead of a ``TypeError`` deep in the verifier.

The statements are written once, with ``?`` placeholders; the PostgreSQL store rewrites those
to ``%s`` and replaces the few constructs the two dialects spell differently (``IN`` lists,
row locks).  Concurrency: SQLite takes the database's write lock at ``BEGIN IMMEDIATE``, so a
transaction sees and changes a quiet registry; PostgreSQL runs READ COMMITTED and takes row
locks (``FOR UPDATE``, always in key order, so two batches cannot deadlock) on the nonces and
devices a transaction is about to judge.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from mchsm.constants import DEVICE_ID_SIZE
from mchsm.sw.errors import MchsmError, StoreError

from .records import PendingUpdate
from .schema import SCHEMA_VERSION, TABLE_NAMES, TABLES, create_statements

__all__ = ["DeviceRow", "NonceRow", "Store"]

T = TypeVar("T")
#: attempts to run a transaction that lost a race (a deadlock or serialization failure that
#: PostgreSQL reported, or a counter another process moved meanwhile)
WRITE_RETRIES = 8


class Conflict(MchsmError):
    """Another transaction changed what this one read; it is rolled back and run again."""


@dataclass(slots=True)
class DeviceRow:
    """A device as stored; ``root_wrapped`` needs the KEK (:mod:`.keys`) to be of any use."""

    dev_id: bytes
    root_wrapped: bytes
    contexts: int
    name: str
    last_ctr: int
    task_set: bytes | None


@dataclass(slots=True)
class NonceRow:
    """A nonce as found, and whether it had been used before this transaction saw it."""

    dev_id: bytes
    sel: int
    expires: float
    used: bool


def _bad(what: str) -> StoreError:
    return StoreError(f"the registry is damaged: {what}")


def device_row(row: tuple[Any, ...]) -> DeviceRow:
    """A devices row, checked field by field."""
    dev_id, wrapped, contexts, name, last_ctr, task_set = row
    if not (isinstance(dev_id, bytes) and len(dev_id) == DEVICE_ID_SIZE):
        raise _bad("a device id is not 16 bytes")
    if not isinstance(wrapped, bytes):
        raise _bad(f"the wrapped root key of device {dev_id.hex()} is not bytes")
    if type(contexts) is not int or type(last_ctr) is not int or not isinstance(name, str):
        raise _bad(f"a field of device {dev_id.hex()} has the wrong type")
    if task_set is not None and not isinstance(task_set, bytes):
        raise _bad(f"the task set of device {dev_id.hex()} is not bytes")
    return DeviceRow(dev_id, wrapped, contexts, name, last_ctr, task_set)


def nonce_row(row: tuple[Any, ...], used: bool) -> NonceRow:
    _, dev_id, sel, expires, _ = row
    if not isinstance(dev_id, bytes) or type(sel) is not int or type(expires) not in (float, int):
        raise _bad("a nonce row has the wrong types")
    return NonceRow(dev_id, sel, float(expires), used)


def pending_row(row: tuple[Any, ...]) -> PendingUpdate:
    ctx, old, new, ref, name = row
    if not (
        type(ctx) is int
        and type(old) is int
        and type(new) is int
        and isinstance(ref, bytes)
        and len(ref) == 32
        and isinstance(name, str)
    ):
        raise _bad("a pending update row has the wrong types")
    return PendingUpdate(ctx, old, new, ref, name)


class Store:
    """What both stores share; subclasses connect and speak their dialect."""

    #: ``sqlite`` or ``postgresql``
    dialect = ""
    #: the database errors of the driver (translated to StoreError)
    db_errors: tuple[type[Exception], ...] = ()

    def __init__(self, location: str) -> None:
        #: where the registry is, for messages (a URL without its password)
        self.location = location
        self.conn: Any = None

    # -- subclass hooks -----------------------------------------------------------------------

    def close(self) -> None:
        raise NotImplementedError

    def _begin(self) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _rollback(self) -> None:
        raise NotImplementedError

    def _retryable(self, exc: BaseException) -> bool:
        return False

    def _translate(self, exc: BaseException) -> StoreError:
        return StoreError(f"the registry {self.location} cannot be used: {exc}")

    def existing_tables(self) -> set[str]:
        raise NotImplementedError

    def existing_columns(self, table: str) -> list[str]:
        """The column names of ``table`` as the database has them, in order."""
        raise NotImplementedError

    def _prepare_schema(self) -> None:
        """Anything the dialect needs before the tables are created (a namespace)."""

    def sql(self, statement: str) -> str:
        """``statement`` in this dialect (it is written with ``?`` placeholders)."""
        return statement

    def execute(self, statement: str, args: Iterable[Any] = ()) -> Any:
        return self.conn.execute(self.sql(statement), tuple(args))

    def executemany(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self.conn.executemany(self.sql(statement), rows)

    def rows_in(self, statement: str, keys: Iterable[bytes], suffix: str = "") -> list[Any]:
        """``statement`` ending in ``WHERE col`` with an ``IN`` the keys, plus ``suffix``."""
        raise NotImplementedError

    # -- transactions -------------------------------------------------------------------------

    def write(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(self)`` in one transaction and commit; anything raised rolls it back.

        Database errors come out as :class:`StoreError`; a deadlock or serialization failure
        (PostgreSQL) reruns ``fn`` from the start, at most :data:`WRITE_RETRIES` times.
        """
        retry_on: tuple[type[Exception], ...] = (*self.db_errors, Conflict)
        for attempt in range(WRITE_RETRIES):
            try:
                self._begin()
                try:
                    result = fn(self)
                except BaseException:
                    self._rollback()
                    raise
                self._commit()
                return result
            except retry_on as exc:
                if (isinstance(exc, Conflict) or self._retryable(exc)) and (
                    attempt + 1 < WRITE_RETRIES
                ):
                    self._after_failure()
                    continue
                self._after_failure()
                if isinstance(exc, Conflict):
                    raise StoreError(
                        f"the registry {self.location} is too busy: a batch lost "
                        f"{WRITE_RETRIES} races in a row to other verifiers"
                    ) from None
                raise self._translate(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _after_failure(self) -> None:
        """Leave the connection usable after a failed transaction."""

    def read(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(self)`` outside an explicit transaction (each statement sees committed
        data); database errors come out as :class:`StoreError`."""
        try:
            return fn(self)
        except self.db_errors as exc:
            self._after_failure()
            raise self._translate(exc) from None

    # -- schema and meta ----------------------------------------------------------------------

    def schema_version(self) -> int | None:
        """The registry's schema version; None for an empty database.  Refuses a foreign one."""
        tables = self.existing_tables()
        if not tables:
            return None
        if "schema_version" not in tables:
            raise StoreError(
                f"{self.location} holds tables but is not an mchsm registry "
                f"(no schema_version table): give the verifier its own database or file"
            )
        rows = self.execute("SELECT version FROM schema_version").fetchall()
        if len(rows) != 1 or type(rows[0][0]) is not int:
            raise _bad(f"its schema_version table holds {rows[:2]!r} instead of one version")
        version = rows[0][0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the registry {self.location} has schema version {version}, newer than this "
                f"verifier's {SCHEMA_VERSION}: upgrade mchsm, do not downgrade the registry"
            )
        if version < 1:
            raise _bad(f"schema version {version}")
        if version == SCHEMA_VERSION and not tables >= TABLE_NAMES:
            missing = ", ".join(sorted(TABLE_NAMES - tables))
            raise _bad(f"tables missing: {missing}")
        if version == SCHEMA_VERSION:
            self.check_columns()
        return version

    def check_columns(self) -> None:
        """Every table has the columns the schema declares, no more, no fewer: a renamed or
        lost column would otherwise fail half-way through some later transaction."""
        for table in TABLES:
            have = self.existing_columns(table.name)
            want = [name for name, _, _ in table.columns]
            if have != want:
                raise _bad(f"table {table.name} has columns {have} instead of {want}")

    def create_schema(self) -> None:
        self._prepare_schema()
        for statement in create_statements(self.dialect):
            self.execute(statement)
        self.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    def set_version(self, version: int) -> None:
        self.execute("UPDATE schema_version SET version = ?", (version,))

    def get_meta(self, key: str) -> bytes | None:
        row = self.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        if not isinstance(row[0], bytes):
            raise _bad(f"meta {key!r} is not bytes")
        return bytes(row[0])

    def set_meta(self, key: str, value: bytes) -> None:
        self.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- devices ------------------------------------------------------------------------------

    _DEVICE = (
        "SELECT d.dev_id, d.root_wrapped, d.contexts, d.name, c.last_ctr, d.task_set "
        "FROM devices AS d LEFT JOIN counters AS c ON c.dev_id = d.dev_id"
    )
    #: appended to a SELECT to lock the device rows it reads (PostgreSQL); SQLite's database-wide
    #: write lock covers them
    lock_device = ""

    def insert_device(self, row: DeviceRow, created: float) -> bool:
        """Add a device; False if its id is taken."""
        cur = self.execute(
            "INSERT INTO devices (dev_id, root_wrapped, contexts, name, task_set, created) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (dev_id) DO NOTHING",
            (row.dev_id, row.root_wrapped, row.contexts, row.name, row.task_set, created),
        )
        if cur.rowcount != 1:
            return False
        self.execute(
            "INSERT INTO counters (dev_id, last_ctr) VALUES (?, ?)", (row.dev_id, row.last_ctr)
        )
        return True

    def device(self, dev_id: bytes, *, lock: bool = False) -> DeviceRow | None:
        """One device; with ``lock``, its row stays locked until the transaction ends."""
        suffix = self.lock_device if lock else ""
        row = self.execute(f"{self._DEVICE} WHERE d.dev_id = ?{suffix}", (dev_id,)).fetchone()
        return None if row is None else device_row(row)

    def devices(self, *, lock: bool = False) -> list[DeviceRow]:
        suffix = self.lock_device if lock else ""
        rows = self.execute(f"{self._DEVICE} ORDER BY d.dev_id{suffix}").fetchall()
        return [device_row(r) for r in rows]

    def devices_for_verify(self, keys: Iterable[bytes]) -> dict[bytes, tuple[Any, ...]]:
        """dev_id -> (root_wrapped, last_ctr, task_set) of the registered ones of ``keys``; the
        caller checks the types (this is the hot path).  :meth:`set_counters` is told the
        counters as read here, and refuses to write over one that moved since."""
        rows = self.rows_in(
            "SELECT d.dev_id, d.root_wrapped, c.last_ctr, d.task_set FROM devices AS d "
            "JOIN counters AS c ON c.dev_id = d.dev_id WHERE d.dev_id",
            keys,
        )
        return {r[0]: r[1:] for r in rows}

    def devices_for_challenge(self, keys: Iterable[bytes]) -> dict[bytes, tuple[Any, ...]]:
        """dev_id -> (contexts, task_set) of the registered ones of ``keys`` (one statement for
        a batch of challenges; the caller checks the types)."""
        rows = self.rows_in("SELECT dev_id, contexts, task_set FROM devices WHERE dev_id", keys)
        return {r[0]: r[1:] for r in rows}

    def pending_contexts(self, keys: Iterable[bytes]) -> dict[bytes, set[int]]:
        """dev_id -> contexts with an outstanding update authorisation, of ``keys``."""
        out: dict[bytes, set[int]] = {}
        rows = self.rows_in("SELECT dev_id, ctx FROM pending_updates WHERE dev_id", keys)
        for dev_id, ctx in rows:
            if type(ctx) is not int:
                raise _bad("a pending update row has the wrong types")
            out.setdefault(dev_id, set()).add(ctx)
        return out

    def set_counters(self, rows: list[tuple[int, bytes, int]]) -> None:
        """(new last_ctr, dev_id, last_ctr as read) rows.  SQLite's write lock was held since
        the read; a store without one raises :class:`Conflict` if a counter moved meanwhile."""
        self.executemany("UPDATE counters SET last_ctr = ? WHERE dev_id = ?", [r[:2] for r in rows])

    def set_task_set(self, dev_id: bytes, set_id: bytes | None) -> None:
        self.execute("UPDATE devices SET task_set = ? WHERE dev_id = ?", (set_id, dev_id))

    def rewrap(self, pairs: list[tuple[bytes, bytes]]) -> None:
        """(root_wrapped, dev_id) pairs."""
        self.executemany("UPDATE devices SET root_wrapped = ? WHERE dev_id = ?", pairs)

    # -- task sets ----------------------------------------------------------------------------

    def task_set(self, set_id: bytes) -> str | None:
        row = self.execute("SELECT body FROM task_sets WHERE id = ?", (set_id,)).fetchone()
        if row is None:
            return None
        if not isinstance(row[0], str):
            raise _bad("a task set body is not text")
        return str(row[0])

    def put_task_set(self, set_id: bytes, body: str) -> None:
        self.execute(
            "INSERT INTO task_sets (id, body) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
            (set_id, body),
        )

    # -- pending updates ----------------------------------------------------------------------

    def pending(self, dev_id: bytes) -> list[PendingUpdate]:
        rows = self.execute(
            "SELECT ctx, old, new, reference, name FROM pending_updates WHERE dev_id = ? "
            "ORDER BY ctx",
            (dev_id,),
        ).fetchall()
        return [pending_row(r) for r in rows]

    def insert_pending(self, dev_id: bytes, p: PendingUpdate, created: float) -> None:
        self.execute(
            "INSERT INTO pending_updates (dev_id, ctx, old, new, reference, name, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (dev_id, p.ctx, p.old, p.new, p.reference, p.name, created),
        )

    def delete_pending(self, dev_id: bytes, ctx: int) -> None:
        self.execute("DELETE FROM pending_updates WHERE dev_id = ? AND ctx = ?", (dev_id, ctx))

    # -- nonces -------------------------------------------------------------------------------

    def insert_nonce(self, nonce: bytes, dev_id: bytes, sel: int, expires: float) -> None:
        self.execute(
            "INSERT INTO nonces (nonce, dev_id, sel, expires, used) VALUES (?, ?, ?, ?, 0)",
            (nonce, dev_id, sel, expires),
        )

    def insert_nonces(self, rows: list[tuple[bytes, bytes, int, float]]) -> None:
        """(nonce, dev_id, sel, expires) rows, in one statement."""
        self.executemany(
            "INSERT INTO nonces (nonce, dev_id, sel, expires, used) VALUES (?, ?, ?, ?, 0)", rows
        )

    def nonce(self, nonce: bytes) -> NonceRow | None:
        """The nonce as stored (``used`` as stored), or None."""
        row = self.execute(
            "SELECT nonce, dev_id, sel, expires, used FROM nonces WHERE nonce = ?", (nonce,)
        ).fetchone()
        return None if row is None else nonce_row(row, bool(row[4]))

    def nonces(self, dev_id: bytes | None, limit: int) -> list[tuple[bytes, NonceRow]]:
        """The newest ``limit`` nonces (of ``dev_id``), newest first: a nonce begins with its
        issue time, so key order is issue order."""
        args: list[bytes | int] = [dev_id] if dev_id is not None else []
        where = "WHERE dev_id = ? " if dev_id is not None else ""
        rows = self.execute(
            f"SELECT nonce, dev_id, sel, expires, used FROM nonces {where}"
            "ORDER BY nonce DESC LIMIT ?",
            [*args, limit],
        ).fetchall()
        return [(bytes(r[0]), nonce_row(r, bool(r[4]))) for r in rows]

    def put_results(self, rows: list[tuple[bytes, float, str]]) -> None:
        """(nonce, expires, body) rows: the outcomes of the attempts that consumed them."""
        self.executemany("INSERT INTO results (nonce, expires, body) VALUES (?, ?, ?)", rows)

    def result(self, nonce: bytes) -> str | None:
        row = self.execute("SELECT body FROM results WHERE nonce = ?", (nonce,)).fetchone()
        if row is None:
            return None
        if not isinstance(row[0], str):
            raise _bad("a session result is not text")
        return str(row[0])

    def consume_nonces(self, keys: set[bytes]) -> dict[bytes, NonceRow]:
        """Mark every existing nonce of ``keys`` used; each comes back with ``used`` telling
        whether it already was.  Of any number of transactions consuming one nonce, exactly
        one sees it unused (SQLite: one writer at a time; PostgreSQL: the row lock, then the
        ``used = 0`` condition re-checked on the committed row)."""
        out: dict[bytes, NonceRow] = {}
        if not keys:
            return out
        for row in self.consume_rows(keys):
            out[row[0]] = nonce_row(row, False)
        missing = keys - out.keys()
        if missing:
            for row in self.rows_in(
                "SELECT nonce, dev_id, sel, expires, used FROM nonces WHERE nonce", missing
            ):
                out[row[0]] = nonce_row(row, True)
        return out

    def consume_rows(self, keys: set[bytes]) -> list[tuple[Any, ...]]:
        """The rows of the unused ones of ``keys``, now marked used."""
        return self.rows_in(
            "UPDATE nonces SET used = 1 WHERE used = 0 AND nonce",
            keys,
            " RETURNING nonce, dev_id, sel, expires, used",
        )

    def purge_nonces(self, now: float, limit: int | None) -> int:
        """Delete expired nonces and session results (at most ``limit`` of each); returns how
        many nonces went."""
        count = 0
        for table, key in (("results", "nonce"), ("nonces", "nonce")):
            if limit is None:
                cur = self.execute(f"DELETE FROM {table} WHERE expires <= ?", (now,))
            else:
                cur = self.execute(
                    f"DELETE FROM {table} WHERE {key} IN "
                    f"(SELECT {key} FROM {table} WHERE expires <= ? LIMIT ?)",
                    (now, limit),
                )
            count = int(cur.rowcount)
        return count

    # -- audit --------------------------------------------------------------------------------

    _AUDIT_INSERT = (
        "INSERT INTO audit (time, dev_id, kind, ctx, outcome, detail) VALUES (?, ?, ?, ?, ?, ?)"
    )

    def append_audit(self, rows: list[tuple[Any, ...]]) -> None:
        """(time, dev_id, kind, ctx, outcome, detail) rows, in order."""
        if len(rows) == 1:
            self.execute(self._AUDIT_INSERT, rows[0])
        else:
            self.executemany(self._AUDIT_INSERT, rows)

    def audit(self, dev_id: bytes | None, limit: int | None) -> list[tuple[Any, ...]]:
        """Audit rows, newest first."""
        args: list[bytes | int] = [dev_id] if dev_id is not None else []
        where = "WHERE dev_id = ? " if dev_id is not None else ""
        sql = f"SELECT id, time, dev_id, kind, ctx, outcome, detail FROM audit {where}"
        sql += "ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return list(self.execute(sql, args).fetchall())


@functools.lru_cache(maxsize=64)
def placeholders(count: int) -> str:
    return f"({','.join('?' * count)})"


__all__ += ["placeholders"]
