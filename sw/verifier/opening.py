"""Opening a registry: the store for a location, and its schema created, migrated or checked
under the key-encryption key found for it (``docs/verifier.md``, keys at rest).

Functions of the store alone, run by :class:`~mchsm.sw.verifier.Verifier` inside the
transaction that opens it; :mod:`.migrations` holds the steps between schema versions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mchsm.sw.errors import InvalidArgumentError, KekError, StoreError

from . import keys as keymod
from .migrations import migrate
from .postgres import PostgresStore, is_url
from .schema import SCHEMA_VERSION
from .sqlite import SqliteStore
from .store import Store

__all__ = ["find_kek", "open_registry", "open_store"]


def open_store(db: str | os.PathLike[str]) -> Store:
    """The store for ``db``: a ``postgresql://`` URL, or the path of a SQLite file."""
    if is_url(db):
        return PostgresStore(str(db))
    if isinstance(db, str | os.PathLike) and os.fspath(db):
        return SqliteStore(Path(db))
    raise InvalidArgumentError(
        f"db must be a file path or a postgresql:// URL, not {type(db).__name__} {db!r:.40}"
    )


def open_registry(s: Store, explicit: Any) -> keymod.Kek:
    """Create, migrate or check the registry, and find the KEK it is wrapped under."""
    if isinstance(s, PostgresStore):
        s.lock_schema()
    version = s.schema_version()
    if version is None:
        kek = find_kek(s, explicit, create=True)
        s.create_schema()
        s.set_meta("kek_check", kek.check_value())
        return kek
    if version < SCHEMA_VERSION:
        kek = find_kek(s, explicit, create=version == 1)
        migrate(s, version, kek)
        return kek
    check = s.get_meta("kek_check")
    if check is None:
        raise StoreError(f"the registry {s.location} is damaged: it has no KEK check value")
    kek = find_kek(s, explicit, create=False)
    if kek.matches(check):
        return kek
    if kek.path is not None:  # a rotation that committed but did not rename its new file
        staged = Path(f"{kek.path}.new")
        if staged.exists():
            new = keymod.read_kek_file(staged)
            if new.matches(check):
                os.replace(staged, kek.path)
                return keymod.Kek(new.key, kek.source, kek.path)
    raise KekError(
        f"the registry {s.location} was wrapped under another key-encryption key than "
        f"{kek.source}: give the right one (kek argument, ${keymod.ENV_KEK} or "
        f"${keymod.ENV_KEK_FILE})"
    )


def find_kek(store: Store, explicit: Any, *, create: bool) -> keymod.Kek:
    """The KEK: given, from the environment, or (SQLite only) the file beside the registry,
    made if ``create`` and it does not exist yet."""
    kek = keymod.find_kek(explicit)
    if kek is not None:
        return kek
    if not isinstance(store, SqliteStore):
        raise KekError(
            f"a PostgreSQL registry needs a key-encryption key: set ${keymod.ENV_KEK_FILE} to "
            f"an owner-only file of 64 hex digits (`mchsm verifier new-kek FILE` makes one) "
            f"or ${keymod.ENV_KEK} to the digits themselves"
        )
    path = keymod.default_kek_path(store.path)
    if os.path.lexists(path) or not create:
        if not os.path.lexists(path):
            raise KekError(
                f"the registry {store.path} is wrapped under a key-encryption key, but "
                f"no KEK was given and its default file {path} does not exist: give the KEK "
                f"(${keymod.ENV_KEK_FILE}, ${keymod.ENV_KEK} or the kek argument)"
            )
        return keymod.read_kek_file(path)
    return keymod.write_kek_file(path)
