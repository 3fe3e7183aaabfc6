"""The registry as an attacker or an accident would treat it: keys at rest, KEK handling, file
permissions, damaged, foreign and newer stores, hostile arguments, bounded costs.

Tests taking ``registry`` or ``v`` run on both stores (``verifier_support``).
"""

# ruff: noqa: F811  (the store fixtures are imported from verifier_support and then used)
from __future__ import annotations

import functools
import json
import os
import sqlite3
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from verifier_support import (  # noqa: F401  (fixtures)
    Registry,
    attest,
    pg_server,
    provisioned,
    registry,
    v,
)

from mchsm.constants import NONCE_SIZE
from mchsm.sw import protocol
from mchsm.sw.errors import (
    AttestationError,
    InvalidArgumentError,
    KekError,
    MchsmError,
    StoreError,
    UnknownDeviceError,
    UpdateError,
    VerifierError,
)
from mchsm.sw.protocol import Evidence, UpdateAck
from mchsm.sw.verifier import RECOVERY_LIMIT, SCHEMA_VERSION, AttestationReport, Verifier
from mchsm.sw.verifier import check as check_module
from mchsm.sw.verifier.keys import ENV_KEK, ENV_KEK_FILE, default_kek_path

# ---------------------------------------------------------------------------------------------
# Keys at rest
# ---------------------------------------------------------------------------------------------


def _store_bytes(registry: Registry, pg_dir: Path | None) -> bytes:
    """Every byte the store keeps on disk: the SQLite file with its WAL, or (after a checkpoint)
    every file of the PostgreSQL server's data directory."""
    if registry.kind == "sqlite":
        paths = [Path(registry.db + suffix) for suffix in ("", "-wal")]
    else:
        registry.sql("CHECKPOINT")
        assert pg_dir is not None
        paths = [p for p in pg_dir.rglob("*") if p.is_file()]
    out = []
    for p in paths:
        try:
            out.append(p.read_bytes())
        except (FileNotFoundError, IsADirectoryError):  # the server renames and drops files
            pass
    return b"".join(out)


def test_no_root_key_is_readable_in_the_store(registry: Registry, request: Any) -> None:
    with registry.open() as v:
        devices = [provisioned(v) for _ in range(3)]
        attest(v, devices[0])
    keys = [d.record.root_key for d in devices]
    pg_dir = request.getfixturevalue("pg_server").data if registry.kind == "postgresql" else None
    stored = _store_bytes(registry, pg_dir)
    assert len(stored) > 10_000
    for key in keys:
        assert key not in stored and key.hex().encode() not in stored
    # the planted bug is caught: a key written in the clear is found by the same scan
    registry.sql("INSERT INTO meta (key, value) VALUES ('leak', ?)", (keys[0],))
    assert keys[0] in _store_bytes(registry, pg_dir)
    # and the KEK is not in the store either
    if registry.kek is not None:
        assert registry.kek not in _store_bytes(registry, pg_dir)


def test_wrapped_keys_are_bound_to_their_device(v: Verifier, registry: Registry) -> None:
    a, b = provisioned(v), provisioned(v)
    (wrapped_b,) = registry.sql(
        "SELECT root_wrapped FROM devices WHERE dev_id = ?", (b.record.dev_id,)
    )[0]
    registry.sql(
        "UPDATE devices SET root_wrapped = ? WHERE dev_id = ?", (wrapped_b, a.record.dev_id)
    )
    with registry.open() as fresh:  # a new verifier: nothing cached
        with pytest.raises(StoreError, match="altered or copied from another device"):
            fresh.device(a.record.dev_id)
        assert fresh.device(b.record.dev_id).root_key == b.record.root_key
        # its attestations are rejected, one by one, with the same typed error
        challenge = fresh.challenge(a.record.dev_id)
        with pytest.raises(StoreError):
            fresh.verify(a.record.dev_id, challenge.nonce, a.attest(challenge))
        assert attest(fresh, b).all_trusted


def test_wrong_kek_is_refused_with_a_clear_message(registry: Registry) -> None:
    registry.open().close()
    with pytest.raises(KekError, match="wrapped under another key-encryption key"):
        Verifier(registry.db, kek=os.urandom(32))


def test_rotate_kek_rewraps_every_key_in_one_transaction(registry: Registry) -> None:
    with registry.open() as v:
        devices = [provisioned(v) for _ in range(3)]
        before = registry.sql("SELECT dev_id, root_wrapped FROM devices ORDER BY dev_id")
        new = os.urandom(32)
        assert v.rotate_kek(new) == 3
        after = registry.sql("SELECT dev_id, root_wrapped FROM devices ORDER BY dev_id")
        assert [d for d, _ in before] == [d for d, _ in after]
        assert all(x != y for (_, x), (_, y) in zip(before, after, strict=True))
        assert attest(v, devices[0]).all_trusted  # the open verifier goes on
    with pytest.raises(KekError):
        registry.open()  # the old KEK is no good any more
    with Verifier(registry.db, kek=new) as v:
        assert {d.root_key for d in v.devices()} == {d.record.root_key for d in devices}
        assert [e.detail for e in v.audit() if e.kind == "kek.rotate"] == [{"devices": 3}]


def test_rotate_kek_fails_whole_on_a_damaged_key(registry: Registry) -> None:
    with registry.open() as v:
        a, b = provisioned(v), provisioned(v)
        registry.sql(
            "UPDATE devices SET root_wrapped = ? WHERE dev_id = ?", (bytes(60), b.record.dev_id)
        )
        before = registry.sql("SELECT dev_id, root_wrapped FROM devices ORDER BY dev_id")
        with pytest.raises(StoreError):
            v.rotate_kek(os.urandom(32))
        assert registry.sql("SELECT dev_id, root_wrapped FROM devices ORDER BY dev_id") == before
    with registry.open() as v:  # the old KEK still opens it
        assert v.device(a.record.dev_id).root_key == a.record.root_key


def test_default_kek_file_beside_a_sqlite_registry(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv(ENV_KEK, raising=False)
    monkeypatch.delenv(ENV_KEK_FILE, raising=False)
    db = tmp_path / "registry.db"
    kek_file = default_kek_path(db)
    with Verifier(db) as v:
        dev = provisioned(v)
        assert v.kek_source == f"the KEK file {kek_file}"
    assert stat.S_IMODE(kek_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    old_text = kek_file.read_text()
    with Verifier(db) as v:  # rotation replaces the file once the new wrapping committed
        assert v.rotate_kek() == 1
    assert kek_file.read_text() != old_text and not Path(f"{kek_file}.new").exists()
    with Verifier(db) as v:
        assert v.device(dev.record.dev_id).root_key == dev.record.root_key
    # without its KEK file the registry's keys are out of reach, and it says so
    kek_file.rename(tmp_path / "elsewhere")
    with pytest.raises(KekError, match="does not exist"):
        Verifier(db)
    # the environment wins over the default file, and may point anywhere
    monkeypatch.setenv(ENV_KEK_FILE, str(tmp_path / "elsewhere"))
    with Verifier(db) as v:
        assert v.device(dev.record.dev_id).root_key == dev.record.root_key
    monkeypatch.delenv(ENV_KEK_FILE)
    monkeypatch.setenv(ENV_KEK, (tmp_path / "elsewhere").read_text().strip())
    Verifier(db).close()


def test_a_rotation_interrupted_before_its_rename_is_finished_at_open(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.delenv(ENV_KEK, raising=False)
    monkeypatch.delenv(ENV_KEK_FILE, raising=False)
    db = tmp_path / "registry.db"
    with Verifier(db) as v:
        dev = provisioned(v)

    def crash(*args: Any) -> None:
        raise KeyboardInterrupt("power cut")

    with Verifier(db) as v:
        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(KeyboardInterrupt):
            v.rotate_kek()
        monkeypatch.undo()
    staged = Path(f"{default_kek_path(db)}.new")
    assert staged.exists()  # committed under the new KEK, the old file still in place
    with Verifier(db) as v:
        assert v.device(dev.record.dev_id).root_key == dev.record.root_key
    assert not staged.exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_unsafe_kek_files_are_refused(tmp_path: Path) -> None:
    kek = tmp_path / "kek"
    kek.write_text(os.urandom(32).hex())
    kek.chmod(0o644)
    with pytest.raises(KekError, match=f"chmod 600 {kek}"):
        Verifier(tmp_path / "r.db", kek=kek)
    kek.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(kek)
    with pytest.raises(KekError, match="symlink"):
        Verifier(tmp_path / "r.db", kek=link)
    kek.write_text("not hex at all")
    with pytest.raises(KekError, match="64 hex digits"):
        Verifier(tmp_path / "r.db", kek=kek)
    Path(tmp_path / "short").write_text("00" * 16)
    (tmp_path / "short").chmod(0o600)
    with pytest.raises(KekError, match="64 hex digits"):
        Verifier(tmp_path / "r.db", kek=tmp_path / "short")


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("which", ["", "-wal", "-shm"])
def test_registry_files_readable_by_others_are_refused(tmp_path: Path, which: str) -> None:
    db = tmp_path / "registry.db"
    with Verifier(db) as v:
        provisioned(v)
        target = Path(f"{db}{which}")
        assert target.exists()
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        target.chmod(0o644)
        with pytest.raises(StoreError, match=f"chmod 600 {target}"):
            Verifier(db)


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_a_symlink_at_the_registry_path_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.db"
    Verifier(real).close()
    link = tmp_path / "link.db"
    link.symlink_to(real)
    with pytest.raises(StoreError, match="symlink"):
        Verifier(link)
    dangling = tmp_path / "dangling.db"
    dangling.symlink_to(tmp_path / "nowhere" / "x.db")
    with pytest.raises(StoreError, match="symlink"):
        Verifier(dangling)
    assert not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------------------------------------
# Damaged, foreign and newer stores: one typed error, a message a person understands
# ---------------------------------------------------------------------------------------------


def _exercise(db: str, kek: bytes | None, dev_id: bytes | None = None) -> None:
    """Open the registry and use every reading and writing path once."""
    with Verifier(db, kek=kek) as v:
        v.devices()
        v.audit(limit=5)
        ids = [dev_id] if dev_id else [d.dev_id for d in v.devices()[:1]]
        for d in ids:
            v.device(d)
            v.tasks(d)
            v.pending_updates(d)
            c = v.challenge(d)
            v.verify_many([(d, c.nonce, bytes(44))])
        v.register_device(4)


DAMAGE = {
    "version text": "UPDATE schema_version SET version = 'abc'",
    "version negative": "UPDATE schema_version SET version = -1",
    "two versions": "INSERT INTO schema_version (version) VALUES (2)",
    "no version": "DELETE FROM schema_version",
    "no devices table": "DROP TABLE devices",
    "no kek check": "DELETE FROM meta WHERE key = 'kek_check'",
    "kek check garbage": "UPDATE meta SET value = ? WHERE key = 'kek_check'",
    "counter text": "UPDATE counters SET last_ctr = 'x'",
    "counter missing": "DELETE FROM counters",
    "name blob": "UPDATE devices SET name = ?",
    "wrapped key short": "UPDATE devices SET root_wrapped = ?",
    "task set body": 'UPDATE task_sets SET body = \'[[1,1,"x","00"]]\'',
    "task set missing": "DELETE FROM task_sets",
    "task set json": "UPDATE task_sets SET body = '{'",
    "audit detail": "UPDATE audit SET detail = 'not json'",
    "pending ref": "UPDATE pending_updates SET reference = ?",
}
_SQLITE_ONLY = {"counter text", "name blob", "version text"}  # PostgreSQL's types refuse these


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_every_damaged_store_gives_one_typed_error(registry: Registry, damage: str) -> None:
    if registry.kind == "postgresql" and damage in _SQLITE_ONLY:
        pytest.skip("PostgreSQL's column types refuse this damage")
    with registry.open() as v:
        dev = provisioned(v)
        v.prepare_update(dev.record.dev_id, 2, b"pending")
        v.challenge(dev.record.dev_id)
    statement = DAMAGE[damage]
    args = (b"\x01\x02",) if "?" in statement else ()
    registry.sql(statement, args)
    with pytest.raises(VerifierError) as info:
        _exercise(registry.db, registry.kek, dev.record.dev_id)
    assert isinstance(info.value, StoreError | KekError | AttestationError), info.value
    assert "Traceback" not in str(info.value) and len(str(info.value)) < 600


def test_newer_and_foreign_stores_are_refused(registry: Registry) -> None:
    registry.open().close()
    registry.sql("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="upgrade mchsm"):
        registry.open()
    registry.sql("DROP TABLE schema_version")
    with pytest.raises(StoreError, match="not an mchsm registry"):
        registry.open()


def test_foreign_and_garbage_sqlite_files_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    foreign.chmod(0o600)
    with pytest.raises(StoreError, match="not an mchsm registry"):
        Verifier(foreign)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    garbage.chmod(0o600)
    with pytest.raises(StoreError, match="not a SQLite database"):
        Verifier(garbage)
    directory = tmp_path / "dir.db"
    directory.mkdir()
    with pytest.raises(StoreError):
        Verifier(directory)
    with pytest.raises(StoreError, match="not a directory"):
        Verifier(tmp_path / "missing" / "x.db")


def test_an_unreachable_postgresql_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL"):
        Verifier(f"postgresql://nobody:secret@/x?host={tmp_path}", kek=os.urandom(32))
    try:
        Verifier(f"postgresql://nobody:secret@/x?host={tmp_path}", kek=os.urandom(32))
    except StoreError as exc:
        assert "secret" not in str(exc)  # the password never lands in a message


class Pristine(tuple[bytes, bytes]):
    """A registry's bytes and KEK, with a short repr (hypothesis prints its arguments)."""

    def __repr__(self) -> str:
        return f"<registry of {len(self[0])} bytes>"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A small SQLite registry's bytes (checkpointed into one file) and its KEK."""
    db = tmp_path_factory.mktemp("pristine") / "registry.db"
    kek = os.urandom(32)
    with Verifier(db, kek=kek) as v:
        dev = provisioned(v)
        attest(v, dev)
        v.prepare_update(dev.record.dev_id, 2, b"pending")
        v.store.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return Pristine((db.read_bytes(), kek))


def _open_bytes(path: Path, data: bytes, kek: bytes) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)
    try:
        _exercise(str(path), kek)
    except VerifierError:
        pass  # the one acceptable failure: typed, with a message


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=4096))
@example(data=b"")
@example(data=b"SQLite format 3\x00" + bytes(200))
def test_arbitrary_bytes_as_a_registry_file(tmp_path: Path, data: bytes) -> None:
    """Whatever the file holds, the verifier either works or raises a VerifierError."""
    _open_bytes(tmp_path / "fuzz.db", data, os.urandom(32))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cuts=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=8),
    truncate=st.one_of(st.none(), st.integers(0, 1 << 20)),
)
def test_a_damaged_registry_file(
    tmp_path: Path, pristine: tuple[bytes, bytes], cuts: list[tuple[int, int]], truncate: int | None
) -> None:
    """A real registry with bytes overwritten or its tail cut off: works or a VerifierError."""
    data, kek = pristine
    damaged = bytearray(data)
    for offset, value in cuts:
        damaged[offset % len(damaged)] = value
    if truncate is not None:
        damaged = damaged[: truncate % (len(damaged) + 1)]
    _open_bytes(tmp_path / "damaged.db", bytes(damaged), kek)


def test_the_damage_sweep_bites(
    tmp_path: Path, pristine: tuple[bytes, bytes], monkeypatch: Any
) -> None:
    """Planted bug: an untyped error escaping from the store is caught by the sweep's check."""
    data, kek = pristine
    monkeypatch.setattr(
        "mchsm.sw.verifier.store.device_row", lambda row: (_ for _ in ()).throw(TypeError("raw"))
    )
    with pytest.raises(TypeError):
        _open_bytes(tmp_path / "x.db", data, kek)


# ---------------------------------------------------------------------------------------------
# Hostile arguments: typed errors, checked before any work
# ---------------------------------------------------------------------------------------------

EVIDENCE = st.one_of(
    st.binary(max_size=100),
    st.text(max_size=50),
    st.none(),
    st.floats(),
    st.integers(),
    st.lists(st.integers(0, 255), max_size=50),
    st.builds(
        Evidence,
        sel=st.one_of(st.integers(), st.text(), st.none()),
        ok=st.one_of(st.integers(-1, 1 << 33), st.floats()),
        ctr=st.one_of(st.integers(-1, 1 << 33), st.none()),
        tag=st.one_of(st.binary(max_size=40), st.text(max_size=5), st.none()),
    ),
)


def test_arbitrary_evidence_gets_the_attestation_error(v: Verifier) -> None:
    dev = provisioned(v)
    dev_id = dev.record.dev_id

    @settings(max_examples=80, deadline=None)
    @given(evidence=EVIDENCE)
    @example(evidence="x" * 44)
    @example(evidence=None)
    @example(evidence=44.0)
    def check(evidence: object) -> None:
        challenge = v.challenge(dev_id)
        with pytest.raises(AttestationError):
            v.verify(dev_id, challenge.nonce, evidence)

    check()
    assert attest(v, dev).all_trusted  # and the verifier is none the worse


BAD_BYTES = [None, "text", 3.5, 7, ["x"], bytes(15), bytes(17), True]


def test_every_public_call_checks_its_arguments(v: Verifier) -> None:
    dev = provisioned(v)
    d = dev.record.dev_id
    calls = {
        "register_device(name=None)": lambda: v.register_device(name=None),  # type: ignore[arg-type]  # on purpose
        "register_device(contexts=True)": lambda: v.register_device(True),
        "register_device(contexts='8')": lambda: v.register_device("8"),  # type: ignore[arg-type]  # on purpose
        "register_device(name=long)": lambda: v.register_device(name="n" * 1000),
        "prepare_update(ctx='1')": lambda: v.prepare_update(d, "1", b"x"),  # type: ignore[arg-type]  # on purpose
        "prepare_update(image=str)": lambda: v.prepare_update(d, 1, "image"),  # type: ignore[arg-type]  # on purpose
        "prepare_update(name=3)": lambda: v.prepare_update(d, 1, b"x", name=3),  # type: ignore[arg-type]  # on purpose
        "register_task(name=None)": lambda: v.register_task(d, 4, None, b"x"),  # type: ignore[arg-type]  # on purpose
        "challenge(sel='1')": lambda: v.challenge(d, "1"),  # type: ignore[arg-type]  # on purpose
        "task_key(ctx=None)": lambda: v.task_key(d, None),  # type: ignore[arg-type]  # on purpose
        "check_task_mac(data=str)": lambda: v.check_task_mac(d, 1, "data", bytes(32)),  # type: ignore[arg-type]  # on purpose
        "check_task_mac(mac=None)": lambda: v.check_task_mac(d, 1, b"data", None),  # type: ignore[arg-type]  # on purpose
        "audit(limit='3')": lambda: v.audit(limit="3"),  # type: ignore[arg-type]  # on purpose
        "audit(limit=-1)": lambda: v.audit(limit=-1),
        "purge_expired(limit=1.5)": lambda: v.purge_expired(limit=1.5),  # type: ignore[arg-type]  # on purpose
        "verify_many(None)": lambda: v.verify_many(None),  # type: ignore[arg-type]  # on purpose
        "verify_many(b'x')": lambda: v.verify_many(b"xyz"),  # type: ignore[arg-type]  # on purpose
        "cancel_update(ctx=0)": lambda: v.cancel_update(d, 0),
        "rotate_kek(3)": lambda: v.rotate_kek(3),  # type: ignore[arg-type]  # on purpose
    }
    for bad in BAD_BYTES:
        for name, fn in {
            "device": lambda b=bad: v.device(b),
            "tasks": lambda b=bad: v.tasks(b),
            "pending_updates": lambda b=bad: v.pending_updates(b),
            "challenge": lambda b=bad: v.challenge(b),
            "prepare_update": lambda b=bad: v.prepare_update(b, 1, b"x"),
            "confirm": lambda b=bad: v.confirm(b, bytes(40)),
            "task_key": lambda b=bad: v.task_key(b, 1),
        }.items():
            calls[f"{name}({bad!r:.12})"] = fn
        if bad is not None:  # audit(None) is every device's log, dev_id=None a random id
            # bad on purpose: wrong types are what this test sends
            calls[f"audit({bad!r:.12})"] = functools.partial(v.audit, bad)  # type: ignore[arg-type]  # on purpose
            calls[f"register_device({bad!r:.12})"] = functools.partial(
                v.register_device,
                dev_id=bad,  # type: ignore[arg-type]  # on purpose
            )
    before = v.audit()
    for name, call in calls.items():
        try:
            call()
        except VerifierError as exc:
            info = pytest.ExceptionInfo.from_exception(exc)
        else:
            raise AssertionError(f"{name} did not raise")
        assert not isinstance(info.value, TypeError), name
        assert isinstance(info.value, InvalidArgumentError | KekError | UpdateError), (
            name,
            info.value,
        )
    assert v.audit() == before  # refused before any write
    assert len(v.devices()) == 1  # (the register_device calls above all failed)
    for ack in (None, "ack", 1.0, bytes(39), UpdateAck("1", 2, bytes(32))):  # type: ignore[arg-type]  # on purpose
        with pytest.raises(UpdateError, match="malformed"):
            v.confirm(d, ack)  # type: ignore[arg-type]  # on purpose
    for attempt in (None, (d,), "abc", (d, b"n", b"e", b"x")):
        (result,) = v.verify_many([attempt])  # type: ignore[list-item]  # on purpose
        assert isinstance(result, AttestationError)
    for bad in BAD_BYTES:
        (result,) = v.verify_many([(bad, os.urandom(NONCE_SIZE), bytes(44))])
        assert isinstance(result, AttestationError | UnknownDeviceError), bad
        (result,) = v.verify_many([(d, bad, bytes(44))])
        assert isinstance(result, AttestationError), bad


def test_register_device_with_a_bad_name_does_not_claim_already_registered(v: Verifier) -> None:
    with pytest.raises(InvalidArgumentError, match="name must be a str"):
        v.register_device(name=None)  # type: ignore[arg-type]  # on purpose
    assert v.devices() == []


def test_huge_attacker_values_cost_nothing_and_stay_out_of_the_audit(v: Verifier) -> None:
    dev = provisioned(v)
    d = dev.record.dev_id
    huge = b"\xaa" * (64 << 20)
    challenge = v.challenge(d)
    began = time.process_time()
    results = v.verify_many(
        [(d, huge, bytes(44)), (huge, challenge.nonce, bytes(44)), (d, challenge.nonce, huge)]
    )
    assert time.process_time() - began < 1.0
    assert all(isinstance(r, AttestationError) for r in results) and len(results) == 3
    rows = v.store.read(lambda s: s.audit(None, 3))
    assert all(len(r[6]) < 600 for r in rows), [len(r[6]) for r in rows]
    assert "64 MiB" not in json.dumps([r[6] for r in rows])


def test_a_forged_evidence_costs_a_bounded_number_of_macs(
    v: Verifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an update pending on every selected context, a forged tag is retried at most
    RECOVERY_LIMIT times, however many updates are pending."""
    tasks = {ctx: (f"t{ctx}", f"image {ctx}".encode()) for ctx in range(1, 9)}
    dev = provisioned(v, tasks=tasks)
    d = dev.record.dev_id
    for ctx in range(1, 9):
        v.prepare_update(d, ctx, f"new {ctx}".encode())
    calls = []
    real = protocol.hmac_sha256

    def counted(*a: Any) -> bytes:
        calls.append(1)
        return real(*a)

    monkeypatch.setattr(check_module.protocol, "hmac_sha256", counted)
    assert attest(v, dev).all_trusted  # K_att derived and cached: not counted below
    challenge = v.challenge(d)
    good = dev.attest(challenge)
    calls.clear()
    with pytest.raises(AttestationError, match="does not verify"):
        v.verify(d, challenge.nonce, replace(good, tag=bytes(32)))
    assert len(calls) == 1 + RECOVERY_LIMIT
    challenge = v.challenge(d)
    evidence = dev.attest(challenge)  # the device's own MAC (protocol's too) is not counted
    calls.clear()
    assert isinstance(v.verify(d, challenge.nonce, evidence), AttestationReport)
    assert len(calls) == 1


def test_verify_many_bounds_the_batch(v: Verifier) -> None:
    from mchsm.sw.verifier import MAX_BATCH

    with pytest.raises(InvalidArgumentError, match=f"at most {MAX_BATCH}"):
        v.verify_many([(b"", b"", b"")] * (MAX_BATCH + 1))
    assert v.audit() == []


def test_errors_are_all_mchsm_errors() -> None:
    for cls in (InvalidArgumentError, StoreError, KekError):
        assert issubclass(cls, VerifierError) and issubclass(cls, MchsmError)
    assert issubclass(InvalidArgumentError, ValueError)


# ---------------------------------------------------------------------------------------------
# Migration from schema version 1 (SQLite only: PostgreSQL support began with version 2)
# ---------------------------------------------------------------------------------------------

_V1 = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE devices (dev_id BLOB PRIMARY KEY, root_key BLOB NOT NULL, contexts INTEGER "
    "NOT NULL, name TEXT NOT NULL, last_ctr INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL)"
    " WITHOUT ROWID",
    "CREATE TABLE tasks (dev_id BLOB NOT NULL, ctx INTEGER NOT NULL, name TEXT NOT NULL, version"
    " INTEGER NOT NULL, reference BLOB NOT NULL, PRIMARY KEY (dev_id, ctx)) WITHOUT ROWID",
    "CREATE TABLE pending_updates (dev_id BLOB NOT NULL, ctx INTEGER NOT NULL, old INTEGER NOT "
    "NULL, new INTEGER NOT NULL, reference BLOB NOT NULL, name TEXT NOT NULL, created REAL NOT "
    "NULL, PRIMARY KEY (dev_id, ctx, new)) WITHOUT ROWID",
    "CREATE TABLE nonces (nonce BLOB PRIMARY KEY, dev_id BLOB NOT NULL, sel INTEGER NOT NULL, "
    "expires REAL NOT NULL, used INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    "CREATE INDEX nonces_expires ON nonces (expires)",
    "CREATE TABLE audit (id INTEGER PRIMARY KEY, time REAL NOT NULL, dev_id BLOB, kind TEXT NOT"
    " NULL, ctx INTEGER, outcome TEXT NOT NULL, detail TEXT NOT NULL)",
    "CREATE INDEX audit_device ON audit (dev_id, id)",
    "INSERT INTO schema_version VALUES (1)",
)


def test_a_version_1_registry_is_migrated_and_its_keys_wrapped(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    root, dev_id = os.urandom(32), os.urandom(16)
    conn = sqlite3.connect(db, isolation_level=None)
    for statement in _V1:
        conn.execute(statement)
    conn.execute("INSERT INTO devices VALUES (?, ?, 8, 'old', 3, 0)", (dev_id, root))
    ref = protocol.reference(b"sensor")
    conn.execute("INSERT INTO tasks VALUES (?, 1, 'sensor', 1, ?)", (dev_id, ref))
    for new in (2, 3):  # two outstanding: the newer one is kept
        conn.execute(
            "INSERT INTO pending_updates VALUES (?, 2, 0, ?, ?, 'x', 0)",
            (dev_id, new, protocol.reference(bytes([new]))),
        )
    conn.close()
    db.chmod(0o600)
    with Verifier(db) as v:
        assert v.device(dev_id).root_key == root
        assert [(t.ctx, t.name, t.version) for t in v.tasks(dev_id)] == [(1, "sensor", 1)]
        assert [(p.ctx, p.new) for p in v.pending_updates(dev_id)] == [(2, 3)]
    raw = sqlite3.connect(db)
    assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    raw.close()
    wal = Path(f"{db}-wal")
    assert root not in db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    raw = sqlite3.connect(db)
    assert raw.execute("SELECT last_ctr FROM counters").fetchall() == [(3,)]  # carried over
    assert raw.execute("SELECT count(*) FROM audit").fetchall() == [(0,)]
    raw.close()
