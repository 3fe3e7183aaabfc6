"""The fleet store: a PostgreSQL database shared by any number of verifier processes.

Tables live in their own namespace (``mchsm``), so the database may hold other things.  Each
change is one READ COMMITTED transaction that locks the rows it judges, nonces first and then
devices, each in key order: a nonce is consumed by exactly one transaction, a device's counter
is read and advanced by one at a time, and two batches cannot deadlock on each other (a
deadlock that an attacker arranges, such as a nonce presented for another device, is detected
by PostgreSQL and the batch is rerun; see :data:`~mchsm.sw.verifier.store.WRITE_RETRIES`).

Durability is the server's: with its defaults (``fsync = on``, ``synchronous_commit = on``) a
commit returns once its WAL is flushed, so nothing committed is lost to a crash or power loss.
A verifier process that dies mid-batch leaves an open transaction that the server rolls back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from mchsm.sw.errors import StoreError

from .store import Store

__all__ = ["NAMESPACE", "PostgresStore", "is_url", "redact"]

#: the PostgreSQL schema (namespace) that holds the registry's tables
NAMESPACE = "mchsm"
#: arbitrary key of the advisory lock that serialises creating and migrating the schema
_SCHEMA_LOCK = 0x6D6368736D
CONNECT_TIMEOUT = 10


def is_url(db: object) -> bool:
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    return re.sub(r"(//[^:/@]*):[^@]*@", r"\1:***@", url)


class PostgresStore(Store):
    """A registry in the PostgreSQL database at ``url`` (psycopg 3)."""

    dialect = "postgresql"
    lock_device = " FOR UPDATE OF d"
    lock_counter = " FOR UPDATE OF c"

    def __init__(self, url: str) -> None:
        super().__init__(redact(url))
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                "a PostgreSQL registry needs psycopg: pip install 'mchsm[postgres]'"
            ) from None
        self._psycopg = psycopg
        self.db_errors = (psycopg.Error,)
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
            self.conn.execute(f"SET search_path TO {NAMESPACE}")
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self.location}: {exc}") from None

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except self._psycopg.Error:
                pass
            self.conn = None

    def _begin(self) -> None:
        self.conn.execute("BEGIN")

    def _commit(self) -> None:
        self.conn.execute("COMMIT")

    def _rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    def _after_failure(self) -> None:
        try:
            if not self.conn.closed:
                self.conn.execute("ROLLBACK")
        except self._psycopg.Error:
            pass

    def _retryable(self, exc: BaseException) -> bool:
        errors = self._psycopg.errors
        return isinstance(exc, errors.DeadlockDetected | errors.SerializationFailure)

    def _translate(self, exc: BaseException) -> StoreError:
        errors = self._psycopg.errors
        if isinstance(exc, self._psycopg.OperationalError):
            why = f"the server is unreachable or went away ({str(exc).strip()})"
        elif isinstance(exc, errors.UndefinedTable | errors.UndefinedColumn):
            why = f"it is damaged or not an mchsm registry ({str(exc).strip()})"
        elif isinstance(exc, self._psycopg.DataError | self._psycopg.IntegrityError):
            why = f"it holds values the verifier never writes ({str(exc).strip()})"
        else:
            why = f"PostgreSQL says: {str(exc).strip()}"
        return StoreError(f"the registry {self.location} cannot be used: {why}")

    def lock_schema(self) -> None:
        """Serialise opening (creating, migrating) the registry between processes."""
        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))

    def existing_tables(self) -> set[str]:
        rows = self.conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (NAMESPACE,),
        )
        return {r[0] for r in rows}

    def _prepare_schema(self) -> None:
        self.conn.execute(f"CREATE SCHEMA IF NOT EXISTS {NAMESPACE}")

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    def execute(self, statement: str, args: Iterable[Any] = ()) -> Any:
        return self.conn.execute(statement.replace("?", "%s"), tuple(args))

    def executemany(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(statement.replace("?", "%s"), rows)

    # The hot statements pass their arrays and fetch their rows in binary (%b, binary=True):
    # in text format psycopg escapes every array element with a regular expression and hex-
    # decodes every bytea, which cost more CPU than the rest of a verification.

    def rows_in(self, statement: str, keys: Iterable[bytes], suffix: str = "") -> list[Any]:
        cur = self.conn.execute(f"{statement} = ANY(%b){suffix}", (list(keys),), binary=True)
        return list(cur.fetchall())

    def consume_rows(self, keys: set[bytes]) -> list[tuple[Any, ...]]:
        # lock in key order first (no deadlock between batches), then flip; a row another
        # transaction flipped meanwhile fails `used = 0` when re-checked after its lock
        cur = self.conn.execute(
            "UPDATE nonces SET used = 1 WHERE nonce IN (SELECT nonce FROM nonces "
            "WHERE nonce = ANY(%b) AND used = 0 ORDER BY nonce FOR UPDATE) "
            "RETURNING nonce, dev_id, sel, expires, used",
            (list(keys),),
            binary=True,
        )
        return list(cur.fetchall())

    def set_counters(self, pairs: list[tuple[int, bytes]]) -> None:
        if not pairs:
            return
        counters, ids = zip(*pairs, strict=True)
        self.conn.execute(
            "UPDATE counters AS k SET last_ctr = v.c FROM unnest(%b::bigint[], %b::bytea[]) "
            "AS v(c, id) WHERE k.dev_id = v.id",
            (list(counters), list(ids)),
        )

    def append_audit(self, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        cols = [list(c) for c in zip(*rows, strict=True)]
        self.conn.execute(
            "INSERT INTO audit (time, dev_id, kind, ctx, outcome, detail) "
            "SELECT * FROM unnest(%b::float8[], %b::bytea[], %b::text[], %b::bigint[], "
            "%b::text[], %b::text[])",
            cols,
        )
