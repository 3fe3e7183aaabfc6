"""The update authority: the devices of the registry, their tasks, and the authorisation and
confirmation of code updates (``docs/protocol.md`` section 6), and the task keys.

Every call checks its arguments (:mod:`.args`) before any work and runs in one transaction of
the store, with its audit row in the same transaction.
"""

from __future__ import annotations

import secrets
from typing import Any

from mchsm.constants import DEFAULT_CONTEXTS, DEVICE_ID_SIZE, MAX_CONTEXTS, ROOT_KEY_SIZE
from mchsm.sw import protocol
from mchsm.sw.errors import UpdateError, VerifierError
from mchsm.sw.protocol import UpdateAck, UpdateAuth

from . import args
from .audit import (
    KIND_REGISTER,
    KIND_UPDATE_CANCEL,
    KIND_UPDATE_CONFIRM,
    KIND_UPDATE_PREPARE,
    MAX_AUDIT_ERROR,
    OUTCOME_OK,
    OUTCOME_REISSUED,
    OUTCOME_REJECTED,
)
from .check import TaskSet
from .core import RegistryCore
from .records import DeviceRecord, PendingUpdate, TaskRecord, UpdatePackage
from .store import DeviceRow, Store

__all__ = ["MAX_IMAGE", "MAX_TASK_DATA", "UpdateAuthority"]

#: bytes of an image to authorise (hashed in full before anything is written)
MAX_IMAGE = 256 << 20
#: bytes a task may have MAC'd for check_task_mac
MAX_TASK_DATA = 16 << 20
_U32_MAX = 0xFFFF_FFFF


class UpdateAuthority(RegistryCore):
    """Devices, tasks and code updates of the registry: what the operator of a fleet calls."""

    # -- devices ------------------------------------------------------------------------------

    def register_device(
        self, contexts: int = DEFAULT_CONTEXTS, dev_id: bytes | None = None, name: str = ""
    ) -> DeviceRecord:
        """Add a device and make its root key; the caller hands both to ``PROVISION`` once."""
        contexts = args.integer(contexts, "contexts", 1, MAX_CONTEXTS)
        dev_id = secrets.token_bytes(DEVICE_ID_SIZE) if dev_id is None else args.dev_id(dev_id)
        name = args.name(name, "the device name")
        root = secrets.token_bytes(ROOT_KEY_SIZE)
        row = DeviceRow(dev_id, self._kek.wrap(dev_id, root), contexts, name, 0, None)
        now = self._clock()

        def insert(s: Store) -> None:
            if not s.insert_device(row, now):
                raise VerifierError(f"device {dev_id.hex()} is already registered")
            detail = {"contexts": contexts, "name": name}
            self._log(s, dev_id, KIND_REGISTER, None, OUTCOME_OK, detail, now)

        self.store.write(insert)
        return DeviceRecord(dev_id, root, contexts, name)

    def device(self, dev_id: bytes) -> DeviceRecord:
        """The registered device ``dev_id``; :class:`UnknownDeviceError` if there is none."""
        dev_id = args.dev_id(dev_id)
        row = self.store.read(lambda s: self._row(s, dev_id))
        return DeviceRecord(
            row.dev_id, self._kek.unwrap(row.dev_id, row.root_wrapped), row.contexts, row.name
        )

    def devices(self) -> list[DeviceRecord]:
        """Every registered device, ordered by id."""
        rows = self.store.read(lambda s: s.devices())
        return [
            DeviceRecord(r.dev_id, self._kek.unwrap(r.dev_id, r.root_wrapped), r.contexts, r.name)
            for r in rows
        ]

    def tasks(self, dev_id: bytes) -> list[TaskRecord]:
        """The installed tasks of a device, by context.  Pending updates are not tasks yet."""
        dev_id = args.dev_id(dev_id)
        return self.store.read(
            lambda s: list(self._task_set(s, self._row(s, dev_id).task_set).tasks)
        )

    def pending_updates(self, dev_id: bytes) -> list[PendingUpdate]:
        """The authorised, unconfirmed updates of a device, by context (at most one each)."""
        dev_id = args.dev_id(dev_id)

        def read(s: Store) -> list[PendingUpdate]:
            self._row(s, dev_id)
            return s.pending(dev_id)

        return self.store.read(read)

    # -- updates ------------------------------------------------------------------------------

    def register_task(self, dev_id: bytes, ctx: int, name: str, image: bytes) -> UpdatePackage:
        """Install a task: the protocol has no separate "set reference", only an update from
        version 0, so this is :meth:`prepare_update` with a name."""
        return self.prepare_update(dev_id, ctx, image, name=args.name(name, "the task name"))

    def prepare_update(
        self, dev_id: bytes, ctx: int, image: bytes, *, name: str | None = None
    ) -> UpdatePackage:
        """Authorise moving context ``ctx`` to ``image`` and remember the update as pending.

        The old version is the confirmed one and the new one the next.  **At most one
        authorisation per context is outstanding**: while one is, asking again for the same
        image (and name) hands out the same authorisation again (a lost message can be
        resent), and asking for anything else is refused with :class:`UpdateError` - confirm
        the outstanding one, or :meth:`cancel_update` it if it never reached the device.  Two
        live authorisations would let the network choose which one lands, and the HSM cannot
        be told that one was revoked.  ``name`` defaults to the task's current name.
        """
        dev_id = args.dev_id(dev_id)
        ctx = args.integer(ctx, "the context", -(1 << 63), 1 << 63)
        image = args.byte_string(image, "the image", limit=MAX_IMAGE)
        if name is not None:
            name = args.name(name, "the task name")
        ref = protocol.reference(image)
        now = self._clock()

        def prepare(s: Store) -> tuple[PendingUpdate, bytes]:
            row = self._row(s, dev_id, lock=True)
            if not 1 <= ctx <= row.contexts:
                raise UpdateError(
                    f"context {ctx} does not exist on device {dev_id.hex()} "
                    f"(it has contexts 1..{row.contexts})"
                )
            root = self._kek.unwrap(dev_id, row.root_wrapped)
            k_upd = protocol.derive_upd_key(root)
            outstanding = [p for p in s.pending(dev_id) if p.ctx == ctx]
            if outstanding:
                p = outstanding[0]
                if p.reference != ref or (name is not None and name != p.name):
                    raise UpdateError(
                        f"context {ctx} of device {dev_id.hex()} already has an outstanding "
                        f"update to version {p.new} (reference {p.reference.hex()[:16]}...): "
                        f"confirm it, or cancel_update() it if it never reached the device"
                    )
                outcome = OUTCOME_REISSUED
            else:
                tasks = self._task_set(s, row.task_set)
                old = tasks.versions.get(ctx, 0)
                if old >= _U32_MAX:
                    raise UpdateError(f"context {ctx} has run out of versions")
                current = tasks.names.get(ctx, f"task{ctx}")
                p = PendingUpdate(ctx, old, old + 1, ref, current if name is None else name)
                s.insert_pending(dev_id, p, now)
                outcome = OUTCOME_OK
            detail = {"old": p.old, "new": p.new, "reference": ref.hex(), "name": p.name}
            self._log(s, dev_id, KIND_UPDATE_PREPARE, ctx, outcome, detail, now)
            tag = protocol.update_tag(k_upd, dev_id, ctx, p.old, p.new, ref)
            return p, tag

        p, tag = self.store.write(prepare)
        auth = UpdateAuth(ctx=ctx, old=p.old, new=p.new, ref=ref, tag=tag)
        return UpdatePackage(dev_id=dev_id, name=p.name, auth=auth, image=image)

    def cancel_update(self, dev_id: bytes, ctx: int) -> PendingUpdate:
        """Withdraw the outstanding authorisation of ``ctx`` so another can be prepared.

        Only for one that never reached the device: the HSM would still accept it (it cannot be
        told), and if it does, its ack is refused and the context attests as failed.
        """
        dev_id = args.dev_id(dev_id)
        ctx = args.integer(ctx, "the context", 1, MAX_CONTEXTS)
        now = self._clock()

        def cancel(s: Store) -> PendingUpdate:
            self._row(s, dev_id, lock=True)
            found = [p for p in s.pending(dev_id) if p.ctx == ctx]
            if not found:
                raise UpdateError(f"context {ctx} of device {dev_id.hex()} has no pending update")
            s.delete_pending(dev_id, ctx)
            p = found[0]
            detail = {"old": p.old, "new": p.new, "reference": p.reference.hex()}
            self._log(s, dev_id, KIND_UPDATE_CANCEL, ctx, OUTCOME_OK, detail, now)
            return p

        return self.store.write(cancel)

    def confirm(self, dev_id: bytes, ack: UpdateAck | bytes) -> TaskRecord:
        """Record a pending update as installed once the device's ack proves it.

        A failed ack leaves the pending update alone: a forgery from the network must not be
        able to cancel a genuine update.  Either way the attempt is audit-logged.
        """
        dev_id = args.dev_id(dev_id)
        if type(ack) is not UpdateAck and isinstance(ack, bytearray | memoryview):
            ack = bytes(ack)
        now = self._clock()

        def confirm(s: Store) -> TaskRecord | VerifierError:
            detail: dict[str, Any] = {}
            ctx: int | None = None
            try:
                parsed = args.ack(ack)
                ctx = parsed.ctx
                detail["new"] = parsed.new
                record = self._confirm(s, dev_id, parsed, detail, now)
            except VerifierError as exc:
                detail["error"] = str(exc)[:MAX_AUDIT_ERROR]
                self._log(s, dev_id, KIND_UPDATE_CONFIRM, ctx, OUTCOME_REJECTED, detail, now)
                return exc
            self._log(s, dev_id, KIND_UPDATE_CONFIRM, ctx, OUTCOME_OK, detail, now)
            return record

        result = self.store.write(confirm)
        if isinstance(result, VerifierError):
            raise result
        return result

    def _confirm(
        self, s: Store, dev_id: bytes, ack: UpdateAck, detail: dict[str, Any], now: float
    ) -> TaskRecord:
        row = self._row(s, dev_id, lock=True)
        tasks = self._task_set(s, row.task_set)
        found = [p for p in s.pending(dev_id) if p.ctx == ack.ctx and p.new == ack.new]
        if not found:
            hint = " (it is already confirmed)" if tasks.versions.get(ack.ctx) == ack.new else ""
            raise UpdateError(
                f"no pending update of context {ack.ctx} to version {ack.new} for device "
                f"{dev_id.hex()}{hint}"
            )
        p = found[0]
        detail.update(old=p.old, reference=p.reference.hex(), name=p.name)
        root = self._kek.unwrap(dev_id, row.root_wrapped)
        expected = protocol.ack_tag(
            protocol.derive_upd_key(root), dev_id, ack.ctx, p.old, ack.new, p.reference
        )
        if not protocol.tags_equal(expected, ack.ack):
            raise UpdateError(
                f"acknowledgement of context {ack.ctx} version {ack.new} does not verify: "
                "forged, or from another device"
            )
        self._install(s, dev_id, tasks, (p,))
        return TaskRecord(ack.ctx, p.name, ack.new, p.reference)

    # -- task keys ----------------------------------------------------------------------------

    def task_key(self, dev_id: bytes, ctx: int) -> bytes:
        """K_task of the installed task of ``ctx``: what the device's ``TASK_MAC`` uses while the
        task is in its reference state, so a relying party can check what the task sends."""
        dev_id = args.dev_id(dev_id)
        ctx = args.integer(ctx, "the context", -(1 << 63), 1 << 63)

        def read(s: Store) -> tuple[DeviceRow, TaskSet]:
            row = self._row(s, dev_id)
            return row, self._task_set(s, row.task_set)

        row, tasks = self.store.read(read)
        if ctx not in tasks.refs:
            raise VerifierError(
                f"context {ctx} of device {dev_id.hex()} has no installed task, so no task key"
            )
        root = self._kek.unwrap(dev_id, row.root_wrapped)
        return protocol.derive_task_key(root, ctx, tasks.refs[ctx])

    def check_task_mac(self, dev_id: bytes, ctx: int, data: bytes, mac: bytes) -> bool:
        """Whether ``mac`` is the installed task's ``TASK_MAC`` of ``data`` (constant time)."""
        data = args.byte_string(data, "the data", limit=MAX_TASK_DATA)
        mac = args.byte_string(mac, "the MAC", limit=1024)
        expected = protocol.hmac_sha256(self.task_key(dev_id, ctx), data)
        return len(mac) == len(expected) and protocol.tags_equal(expected, mac)
