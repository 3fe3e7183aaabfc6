"""The registry under the verifier: its store, its KEK, the caches, and the helpers every
part of the verifier uses inside its transactions (the audit row, a device's row, task sets).

:class:`RegistryCore` is the base of :class:`~mchsm.sw.verifier.updates.UpdateAuthority`, which
is the base of :class:`~mchsm.sw.verifier.Verifier`: each layer adds calls, none reaches around
the one below.  Caches hold pure functions of registry values only (K_att by device and wrapped
key, decoded task sets by their content hash), which can be missed but never be stale, so any
number of verifiers may share one store.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from mchsm.sw import protocol
from mchsm.sw.errors import InvalidArgumentError, KekError, StoreError, UnknownDeviceError

from . import keys as keymod
from .audit import KIND_KEK_ROTATE, OUTCOME_OK, to_json
from .check import EMPTY, TaskSet
from .opening import open_registry, open_store
from .records import PendingUpdate
from .store import DeviceRow, Store

__all__ = ["ATT_KEY_CACHE", "TASK_SET_CACHE", "RegistryCore"]

#: K_att kept per verifier, by device: a hit saves unwrapping the root key and deriving K_att
ATT_KEY_CACHE = 1 << 16
#: decoded task sets kept, by content hash (a fleet runs few distinct firmware sets)
TASK_SET_CACHE = 4096


class RegistryCore:
    """One connection to a registry, opened (created, migrated or checked) under its KEK."""

    def __init__(
        self,
        db: str | os.PathLike[str],
        *,
        nonce_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
        kek: bytes | str | os.PathLike[str] | None = None,
    ) -> None:
        if type(nonce_ttl) not in (int, float) or not math.isfinite(nonce_ttl) or not nonce_ttl > 0:
            raise InvalidArgumentError(f"nonce_ttl must be a positive number, not {nonce_ttl!r}")
        if not callable(clock):
            raise InvalidArgumentError("clock must be a function returning seconds")
        self.nonce_ttl = float(nonce_ttl)
        self._clock = clock
        self._challenges = 0
        self.store = open_store(db)
        self.location = self.store.location
        try:
            self._kek = self.store.write(lambda s: open_registry(s, kek))
        except BaseException:
            self.store.close()
            raise
        # dev_id + wrapped root key -> K_att: bytes to bytes, so the garbage collector never
        # walks it (an lru_cache's linked entries made every full collection walk the cache)
        self._att_keys: dict[bytes, bytes] = {}
        self._sets: dict[bytes, TaskSet] = {}

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the store; everything committed is in it."""
        self.store.close()
        self._att_keys.clear()  # derived keys do not outlive the verifier
        self._sets.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the KEK ------------------------------------------------------------------------------

    @property
    def kek_source(self) -> str:
        """Where this verifier's KEK came from (never the KEK itself)."""
        return self._kek.source

    def rotate_kek(self, new: bytes | str | os.PathLike[str] | None = None) -> int:
        """Re-wrap every root key under a new KEK in one transaction; returns how many.

        ``new`` is the new KEK or its file.  Without it, the KEK file in use is replaced by a
        new random one: written beside it as ``<file>.new`` first, then renamed over it once
        the transaction has committed (opening the registry finishes a rename that a crash
        interrupted).  A KEK from the environment has no file to replace: pass ``new``.
        """
        staged: Path | None = None
        if new is None:
            if self._kek.path is None:
                raise KekError(
                    f"the KEK comes from {self._kek.source}, not a file: give the new KEK"
                )
            staged = Path(f"{self._kek.path}.new")
            if os.path.lexists(staged):
                os.unlink(staged)  # left by a rotation that did not commit
            new_kek = keymod.write_kek_file(staged)
        else:
            found = keymod.find_kek(new)
            assert found is not None
            new_kek = found
        old = self._kek
        now = self._clock()

        def rewrap(s: Store) -> int:
            pairs = []
            for row in s.devices(lock=True):
                root = old.unwrap(row.dev_id, row.root_wrapped)
                pairs.append((new_kek.wrap(row.dev_id, root), row.dev_id))
            s.rewrap(pairs)
            s.set_meta("kek_check", new_kek.check_value())
            self._log(s, None, KIND_KEK_ROTATE, None, OUTCOME_OK, {"devices": len(pairs)}, now)
            return len(pairs)

        count = self.store.write(rewrap)
        if staged is not None and old.path is not None:
            os.replace(staged, old.path)
            keymod._sync_dir(old.path.parent)
            new_kek = keymod.Kek(new_kek.key, old.source, old.path)
        self._kek = new_kek
        self._att_keys.clear()
        return count

    # -- helpers ------------------------------------------------------------------------------

    def _att_key(self, dev_id: bytes, wrapped: bytes) -> bytes:
        """K_att of a device, remembered by id and wrapped key (a pure function of them)."""
        if type(wrapped) is not bytes:
            raise StoreError(f"the wrapped root key of device {dev_id.hex()} is damaged")
        key = dev_id + wrapped
        k_att = self._att_keys.get(key)
        if k_att is None:
            k_att = protocol.derive_att_key(self._kek.unwrap(dev_id, wrapped))
            if len(self._att_keys) >= ATT_KEY_CACHE:
                del self._att_keys[next(iter(self._att_keys))]  # the oldest
            self._att_keys[key] = k_att
        return k_att

    def _task_set(self, s: Store, set_id: bytes | None) -> TaskSet:
        if set_id is None:
            return EMPTY
        found = self._sets.get(set_id)
        if found is None:
            if not isinstance(set_id, bytes):
                raise StoreError(f"the registry {s.location} is damaged: a task set id")
            body = s.task_set(set_id)
            if body is None:
                raise StoreError(
                    f"the registry {s.location} is damaged: a device's task set is missing"
                )
            found = TaskSet.decode(set_id, body)
            if len(self._sets) >= TASK_SET_CACHE:
                self._sets.clear()
            self._sets[set_id] = found
        return found

    def _put_task_set(self, s: Store, tasks: TaskSet) -> None:
        if tasks.id is not None:
            s.put_task_set(tasks.id, tasks.body)
            self._sets[tasks.id] = tasks

    def _log(
        self,
        s: Store,
        dev_id: bytes | None,
        kind: str,
        ctx: int | None,
        outcome: str,
        detail: dict[str, Any],
        now: float,
    ) -> None:
        """Append an audit row inside the caller's transaction, so the log and the change it
        records commit together."""
        s.append_audit([(now, dev_id, kind, ctx, outcome, to_json(detail))])

    def _row(self, s: Store, dev_id: bytes, *, lock: bool = False) -> DeviceRow:
        row = s.device(dev_id, lock=lock)
        if row is None:
            raise UnknownDeviceError(f"device {dev_id.hex()} is not registered")
        return row

    def _install(
        self, s: Store, dev_id: bytes, tasks: TaskSet, updates: tuple[PendingUpdate, ...]
    ) -> TaskSet:
        new = tasks.updated(updates)
        self._put_task_set(s, new)
        s.set_task_set(dev_id, new.id)
        for u in updates:
            s.delete_pending(dev_id, u.ctx)
        return new
