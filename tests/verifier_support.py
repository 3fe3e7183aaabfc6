"""What the verifier tests share: golden-model devices, a fake clock, and the two stores.

Every verifier test that takes the ``registry`` (or ``v``) fixture runs twice: on a SQLite file
and on a PostgreSQL database.  The PostgreSQL server is real (the ``pgserver`` wheel's build,
started by :class:`~mchsm.sw.verifier.localpg.LocalPostgres`): one per test session and xdist
worker, started on first use, with a fresh database per test, and stopped when the session
ends.  Import the fixtures into a test module to use them.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mchsm.constants import MANAGER
from mchsm.sw.driver import HsmDriver, ModelTransport
from mchsm.sw.mailbox import ModelMailbox
from mchsm.sw.model import HsmModel
from mchsm.sw.protocol import Evidence, UpdateAck
from mchsm.sw.verifier import (
    AttestationReport,
    Challenge,
    DeviceRecord,
    UpdatePackage,
    Verifier,
)
from mchsm.sw.verifier.localpg import LocalPostgres

T = TypeVar("T")
STORES = ("sqlite", "postgresql")

IMAGES = {
    1: ("sensor", b"sensor task image v1" * 7),
    2: ("control", b"control loop image v1" * 11),
    3: ("telemetry", b"telemetry image v1" * 5),
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Device:
    """A golden-model HSM behind the mailbox and the real driver, driven like the kernel would."""

    def __init__(self, record: DeviceRecord) -> None:
        self.record = record
        self.model = HsmModel(record.contexts)
        self.driver = HsmDriver(ModelTransport(ModelMailbox(self.model)))
        self.port = self.driver.port(MANAGER)
        run(self.port.provision(record.dev_id, record.root_key))

    def update(self, package: UpdatePackage) -> UpdateAck:
        return run(self.port.update(package.auth))

    def load(self, ctx: int, image: bytes) -> None:
        """What the kernel does after an update (and at every reload): RESET, then MEASURE."""
        run(self.port.reset(ctx))
        run(self.port.measure(ctx, image))

    def attest(self, challenge: Challenge, sel: int | None = None) -> Evidence:
        return run(self.port.attest(challenge.nonce, challenge.sel if sel is None else sel))

    def task_mac(self, ctx: int, data: bytes) -> bytes:
        return run(self.driver.port(ctx).task_mac(data))


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def install(v: Verifier, dev: Device, ctx: int, name: str, image: bytes) -> None:
    """register_task -> UPDATE -> confirm -> RESET + MEASURE."""
    package = v.register_task(dev.record.dev_id, ctx, name, image)
    v.confirm(dev.record.dev_id, dev.update(package))
    dev.load(ctx, package.image)


def provisioned(
    v: Verifier, contexts: int = 8, tasks: dict[int, tuple[str, bytes]] = IMAGES, name: str = ""
) -> Device:
    dev = Device(v.register_device(contexts, name=name))
    for ctx, (task_name, image) in tasks.items():
        install(v, dev, ctx, task_name, image)
    return dev


def attest(v: Verifier, dev: Device, sel: int | None = None) -> AttestationReport:
    challenge = v.challenge(dev.record.dev_id, sel)
    return v.verify(dev.record.dev_id, challenge.nonce, dev.attest(challenge))


@dataclass
class Registry:
    """One store under test: where it is, its KEK, and raw SQL for what the API does not show.

    SQLite registries use the default KEK file beside them (what `make demo` does); PostgreSQL
    ones get an explicit KEK, as a fleet would from its environment.
    """

    kind: str
    db: str
    kek: bytes | None

    def open(self, **kwargs: Any) -> Verifier:
        if self.kek is not None:
            kwargs.setdefault("kek", self.kek)
        return Verifier(self.db, **kwargs)

    def sql(self, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``query`` (``?`` placeholders) straight on the store; rows as tuples."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.db, isolation_level=None)
            try:
                return [tuple(r) for r in conn.execute(query, args).fetchall()]
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.db, autocommit=True) as pg:
            pg.execute("SET search_path TO mchsm")
            cur = pg.execute(query.replace("?", "%s"), args)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []


_server: LocalPostgres | None = None
_databases: dict[str, str] = {}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalPostgres]:
    """One PostgreSQL server for this session (this xdist worker), stopped at its end.

    Each test module that imports this fixture gets its own fixture instance, so the server
    itself is kept here, started by the first and stopped by the first teardown."""
    global _server
    if _server is None or not _server.running:
        _server = LocalPostgres(durable=False).start()
        _databases.clear()
    try:
        yield _server
    finally:
        if _server is not None:
            _server.stop()
        _server = None
        _databases.clear()


def new_registry(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Registry:
    """A fresh, empty registry of ``kind``.  For PostgreSQL: this worker's database with the
    registry's namespace dropped (a new database per test would cost 0.3 s each)."""
    if kind == "sqlite":
        return Registry("sqlite", str(tmp_path / "registry.db"), None)
    server: LocalPostgres = request.getfixturevalue("pg_server")
    name = f"w{os.getpid()}"
    url = _databases.get(name)
    if url is None:
        url = _databases[name] = server.create_database(name)
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS mchsm CASCADE")
    return Registry("postgresql", url, os.urandom(32))


@pytest.fixture(params=STORES)
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    return new_registry(request.param, tmp_path, request)


@pytest.fixture
def v(registry: Registry) -> Iterator[Verifier]:
    with registry.open() as verifier:
        yield verifier


def pending(registry: Registry, dev_id: bytes) -> list[tuple[int, int, int]]:
    """Pending updates straight from the store."""
    return registry.sql(
        "SELECT ctx, old, new FROM pending_updates WHERE dev_id = ? ORDER BY ctx, new", (dev_id,)
    )


def nonces(registry: Registry) -> set[bytes]:
    return {bytes(r[0]) for r in registry.sql("SELECT nonce FROM nonces")}
