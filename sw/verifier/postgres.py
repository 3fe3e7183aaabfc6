"""The fleet store: a PostgreSQL database shared by any number of verifier processes.

Tables live in their own namespace (``mchsm``), so the database may hold other things.  Each
change is one READ COMMITTED transaction.  A batch consumes its nonces with one ``UPDATE ...
WHERE used = 0``: the row lock and the re-check of ``used = 0`` after waiting for it make each
nonce consumed by exactly one transaction.  It reads its devices' counters without a lock and
writes them back with a compare-and-set (``WHERE last_ctr = <as read>``): if another verifier
moved one meanwhile, the batch is rolled back and run again, so an accepted counter is never
written over a higher one and no lock is held while the batch computes.  Deadlocks an attacker
could arrange (the same nonces in two batches) are detected by PostgreSQL and the batch is rerun
too (:data:`~mchsm.sw.verifier.store.WRITE_RETRIES`).  Updates, confirmations and lost-ack
recoveries lock the device row.

Durability is the server's: with its defaults (``fsync = on``, ``synchronous_commit = on``) a
commit returns once its WAL is flushed, so nothing committed is lost to a crash or power loss.
A verifier process that dies mid-batch leaves an open transaction that the server rolls back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from mchsm.sw.errors import StoreError

from .store import Conflict, Store

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

    def existing_columns(self, table: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = %s ORDER BY ordinal_position",
            (NAMESPACE, table),
        )
        return [r[0] for r in rows]

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
        # the update locks each row it flips; a transaction that waited for another's lock
        # re-checks `used = 0` on the committed row and leaves it alone.  The index scan takes
        # the keys in sorted order, so two batches lock common nonces in the same order.
        cur = self.conn.execute(
            "UPDATE nonces SET used = 1 WHERE nonce = ANY(%b) AND used = 0 "
            "RETURNING nonce, dev_id, sel, expires, used",
            (sorted(keys),),
            binary=True,
        )
        return list(cur.fetchall())

    def set_counters(self, rows: list[tuple[int, bytes, int]]) -> None:
        """Compare and set: a counter another verifier moved since this batch read it is left
        alone and the batch is run again (:class:`Conflict`), so an accepted counter is never
        written over a higher one.  No lock is held on a counter while the batch computes."""
        if not rows:
            return
        rows = sorted(rows, key=lambda r: r[1])  # the same lock order in every batch
        new, ids, old = (list(c) for c in zip(*rows, strict=True))
        cur = self.conn.execute(
            "UPDATE counters AS k SET last_ctr = v.c FROM unnest(%b::bigint[], %b::bytea[], "
            "%b::bigint[]) AS v(c, id, old) WHERE k.dev_id = v.id AND k.last_ctr = v.old",
            (new, ids, old),
        )
        if cur.rowcount != len(rows):
            raise Conflict("a counter moved since this batch read it")

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
