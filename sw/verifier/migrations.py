"""Steps that take a registry from one schema version to the next, inside the opening
transaction (so a migration that fails leaves the registry as it was).

Version 1 existed only as a SQLite file (root keys in the clear, a ``tasks`` table, any number
of pending updates per context).  Its migration wraps every root key under the KEK, folds each
device's tasks into a task set, and keeps the newest pending update of each context (the others
could never be confirmed under the one-outstanding-authorisation rule).
"""

from __future__ import annotations

from collections.abc import Callable

from mchsm.sw.errors import StoreError

from .check import TaskSet
from .keys import Kek
from .records import TaskRecord
from .schema import SCHEMA_VERSION, TABLES, create_statements
from .store import Store, device_row

__all__ = ["MIGRATIONS", "migrate"]


def _v1_to_v2(s: Store, kek: Kek) -> None:
    if s.dialect != "sqlite":
        raise StoreError(f"{s.location}: schema version 1 exists only in SQLite registries")
    tables = s.existing_tables()
    if not {"devices", "tasks", "pending_updates", "nonces", "audit"} <= tables:
        raise StoreError(f"the registry {s.location} is damaged: version 1 tables missing")
    tasks: dict[bytes, list[TaskRecord]] = {}
    for dev_id, ctx, name, version, ref in s.execute(
        "SELECT dev_id, ctx, name, version, reference FROM tasks"
    ).fetchall():
        tasks.setdefault(bytes(dev_id), []).append(TaskRecord(ctx, name, version, bytes(ref)))
    devices = s.execute(
        "SELECT dev_id, root_key, contexts, name, last_ctr, created FROM devices"
    ).fetchall()
    pending = s.execute(
        "SELECT dev_id, ctx, old, new, reference, name, created FROM pending_updates p "
        "WHERE new = (SELECT max(new) FROM pending_updates q "
        "WHERE q.dev_id = p.dev_id AND q.ctx = p.ctx)"
    ).fetchall()
    s.execute("DROP INDEX IF EXISTS audit_device")
    for old in ("devices", "tasks", "pending_updates"):
        s.execute(f"DROP TABLE {old}")
    new_tables = tuple(
        t
        for t in TABLES
        if t.name in {"meta", "devices", "counters", "task_sets", "pending_updates"}
    )
    for statement in create_statements(s.dialect, new_tables):
        s.execute(statement)
    for dev_id, root, contexts, name, last_ctr, created in devices:
        dev_id = bytes(dev_id)
        if not isinstance(root, bytes) or len(root) != 32:
            raise StoreError(f"the registry {s.location} is damaged: a version 1 root key")
        task_set = TaskSet(tasks.get(dev_id, []))
        if task_set.id is not None:
            s.put_task_set(task_set.id, task_set.body)
        row = device_row((dev_id, kek.wrap(dev_id, root), contexts, name, last_ctr, task_set.id))
        s.insert_device(row, created)
    s.executemany(
        "INSERT INTO pending_updates (dev_id, ctx, old, new, reference, name, created) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [tuple(r) for r in pending],
    )
    s.set_meta("kek_check", kek.check_value())


def _v2_to_v3(s: Store, kek: Kek) -> None:
    """Add the ``results`` table of the verifier service's sessions."""
    results = tuple(t for t in TABLES if t.name == "results")
    for statement in create_statements(s.dialect, results):
        s.execute(statement)


#: version n -> the step to version n + 1
MIGRATIONS: dict[int, Callable[[Store, Kek], None]] = {1: _v1_to_v2, 2: _v2_to_v3}


def migrate(s: Store, version: int, kek: Kek) -> None:
    """Bring the registry from ``version`` to :data:`SCHEMA_VERSION`, step by step."""
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise StoreError(f"no migration from schema version {version} of {s.location}")
        try:
            step(s, kek)
        except (TypeError, ValueError, KeyError) as exc:
            raise StoreError(f"the registry {s.location} is damaged: {exc}") from None
        version += 1
        s.set_version(version)
