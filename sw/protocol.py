"""Byte-exact message builders and the primitives of the mchsm protocol.

Model, driver, verifier and tests build every MAC input here, from the constants module, so a
field order exists in exactly one place.  Primitives come from ``cryptography``; nothing is
hand-rolled.  ``docs/protocol.md`` sections 2, 5 and 6 describe the layouts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import constant_time, hashes
from cryptography.hazmat.primitives import hmac as _hmac

from mchsm.constants import (
    ACK_FIELDS,
    ATT_FIELDS,
    DIGEST_SIZE,
    EVIDENCE_FIELDS,
    EVIDENCE_SIZE,
    KDF_ATT,
    KDF_UPD,
    LABELS,
    MAX_CONTEXTS,
    MESSAGE_LAYOUTS,
    TASK_KDF_FIELDS,
    U32_SIZE,
    UPD_FIELDS,
    CtxFlag,
    Field,
    StatusInfoWord,
    pack_reg,
    u32,
    unpack_reg,
)
from mchsm.sw.errors import ArgumentError

__all__ = [
    "UPDATE_ACK_SIZE",
    "UPDATE_AUTH_SIZE",
    "ZERO_DIGEST",
    "CtxInfo",
    "Evidence",
    "StatusInfo",
    "UpdateAck",
    "UpdateAuth",
    "ack_message",
    "ack_tag",
    "att_message",
    "attest_data",
    "attest_tag",
    "derive_att_key",
    "derive_task_key",
    "derive_upd_key",
    "hmac_sha256",
    "pack",
    "provision_data",
    "reference",
    "select_digest",
    "sha256",
    "tags_equal",
    "unpack",
    "unpack_evidence",
    "upd_message",
    "update_tag",
]

ZERO_DIGEST = bytes(DIGEST_SIZE)


def sha256(data: bytes) -> bytes:
    """SHA-256 of ``data``."""
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104; keys longer than a block are hashed first)."""
    h = _hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def tags_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two tags."""
    return constant_time.bytes_eq(a, b)


def derive_att_key(root: bytes) -> bytes:
    """K_att = MAC(K_root, "mchsm/v1/att")."""
    return hmac_sha256(root, KDF_ATT)


def derive_upd_key(root: bytes) -> bytes:
    """K_upd = MAC(K_root, "mchsm/v1/upd")."""
    return hmac_sha256(root, KDF_UPD)


def derive_task_key(root: bytes, ctx: int, ref: bytes) -> bytes:
    """K_task[i] = MAC(K_root, "mchsm/v1/tsk" || u32(i) || R[i]): changes with every update."""
    return hmac_sha256(root, pack(TASK_KDF_FIELDS, {"i": ctx, "R": ref}))


def reference(image: bytes) -> bytes:
    """ref(C) = H(0^32 || H(C)): the measurement after RESET then MEASURE(C)."""
    return sha256(ZERO_DIGEST + sha256(image))


def select_digest(refs: dict[int, bytes], sel: int) -> bytes:
    """D = H(R[i] for i in sel, ascending).  ``refs`` maps context -> reference."""
    parts = []
    for ctx in range(1, MAX_CONTEXTS + 1):
        if sel >> (ctx - 1) & 1:
            parts.append(refs[ctx])
    return sha256(b"".join(parts))


def pack(fields: tuple[Field, ...], values: dict[str, bytes | int]) -> bytes:
    """Concatenate the fields of a message in the order the constants module gives.

    Label fields take their bytes from :data:`~mchsm.constants.LABELS`; integers are u32.
    """
    out = bytearray()
    for name, size in fields:
        if name in LABELS:
            part = LABELS[name]
        else:
            value = values[name]
            part = u32(value) if isinstance(value, int) else value
        _check_len(name, part, size)
        out += part
    return bytes(out)


def unpack(fields: tuple[Field, ...], data: bytes) -> dict[str, bytes | int]:
    """The fields of a message, by name: the inverse of :func:`pack` (u32 fields as ints)."""
    _check_len("message", data, sum(size for _, size in fields))
    out: dict[str, bytes | int] = {}
    offset = 0
    for name, size in fields:
        part = data[offset : offset + size]
        out[name] = int.from_bytes(part, "big") if size == U32_SIZE else bytes(part)
        offset += size
    return out


def _att_layout() -> tuple[struct.Struct, bytes, tuple[int, ...]]:
    """ATT_FIELDS as one struct: the verifier builds this message for every attestation it
    checks, and :func:`pack`'s field loop would be a good part of that check's cost."""
    names = [name for name, _ in ATT_FIELDS]
    if names != ["ATT_LABEL", "dev_id", "nonce", "sel", "ok", "ctr", "D"]:
        raise AssertionError("ATT_FIELDS changed: update protocol._att_layout")
    sizes = dict(ATT_FIELDS)
    layout = struct.Struct(
        f">{sizes['ATT_LABEL']}s{sizes['dev_id']}s{sizes['nonce']}sIII{sizes['D']}s"
    )
    return layout, LABELS["ATT_LABEL"], (sizes["dev_id"], sizes["nonce"], sizes["D"])


_ATT, _ATT_LABEL, _ATT_SIZES = _att_layout()


def att_message(dev_id: bytes, nonce: bytes, sel: int, ok: int, ctr: int, digest: bytes) -> bytes:
    """ "ATT1" || dev_id || nonce || u32 sel || u32 ok || u32 ctr || D (MAC'd under K_att)."""
    if (len(dev_id), len(nonce), len(digest)) != _ATT_SIZES:  # struct would pad or cut
        return pack(
            ATT_FIELDS,
            {"dev_id": dev_id, "nonce": nonce, "sel": sel, "ok": ok, "ctr": ctr, "D": digest},
        )
    try:
        return _ATT.pack(_ATT_LABEL, dev_id, nonce, sel, ok, ctr, digest)
    except struct.error as exc:
        raise ArgumentError(f"attestation message: {exc}") from None


def attest_tag(
    k_att: bytes, dev_id: bytes, nonce: bytes, sel: int, ok: int, ctr: int, digest: bytes
) -> bytes:
    """tag = MAC(K_att, "ATT1" || dev_id || nonce || u32 sel || u32 ok || u32 ctr || D): what
    the HSM returns and the verifier recomputes (section 5 of the spec)."""
    return hmac_sha256(k_att, att_message(dev_id, nonce, sel, ok, ctr, digest))


def upd_message(dev_id: bytes, ctx: int, old: int, new: int, ref: bytes) -> bytes:
    """ "UPD1" || dev_id || u32 i || u32 v || u32 v' || R' (MAC'd under K_upd)."""
    return pack(UPD_FIELDS, {"dev_id": dev_id, "i": ctx, "v": old, "v'": new, "R'": ref})


def update_tag(k_upd: bytes, dev_id: bytes, ctx: int, old: int, new: int, ref: bytes) -> bytes:
    """tag_u = MAC(K_upd, "UPD1" || dev_id || u32 i || u32 v || u32 v' || R'): what the verifier
    issues and the HSM recomputes (section 6 of the spec)."""
    return hmac_sha256(k_upd, upd_message(dev_id, ctx, old, new, ref))


def ack_message(dev_id: bytes, ctx: int, old: int, new: int, ref: bytes) -> bytes:
    """ "ACK1" || dev_id || u32 i || u32 v || u32 v' || R' (MAC'd under K_upd)."""
    return pack(ACK_FIELDS, {"dev_id": dev_id, "i": ctx, "v": old, "v'": new, "R'": ref})


def ack_tag(k_upd: bytes, dev_id: bytes, ctx: int, old: int, new: int, ref: bytes) -> bytes:
    """ack = MAC(K_upd, "ACK1" || dev_id || u32 i || u32 v || u32 v' || R'): the HSM's proof
    that it installed the update, which the verifier checks (section 6 of the spec)."""
    return hmac_sha256(k_upd, ack_message(dev_id, ctx, old, new, ref))


def _check_len(what: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ArgumentError(f"{what} must be {size} bytes, not {len(value)}")


# ---------------------------------------------------------------------------------------------
# Wire formats between device and verifier
# ---------------------------------------------------------------------------------------------


def provision_data(dev_id: bytes, root_key: bytes) -> bytes:
    """The data of the PROVISION command: dev_id || K_root."""
    return pack(MESSAGE_LAYOUTS["PROVISION_DATA"], {"dev_id": dev_id, "root_key": root_key})


def attest_data(sel: int, nonce: bytes) -> bytes:
    """The data of the ATTEST command: u32 sel || nonce."""
    return pack(MESSAGE_LAYOUTS["ATTEST_DATA"], {"sel": sel, "nonce": nonce})


@dataclass(frozen=True)
class StatusInfo:
    """The result of STATUS: what the HSM is and the public part of its state.

    The model builds it with :meth:`pack` and the driver reads it with :meth:`parse`, both from
    ``MESSAGE_LAYOUTS["STATUS_RESULT"]`` and the ``StatusInfoWord`` layout of its first word.
    """

    provisioned: bool
    contexts: int
    protocol_version: int
    counter: int
    ok: int
    loaded: int
    anomaly: int
    dev_id: bytes

    def pack(self) -> bytes:
        info = pack_reg(
            StatusInfoWord,
            provisioned=self.provisioned,
            contexts=self.contexts,
            version=self.protocol_version,
        )
        values: dict[str, bytes | int] = {
            "info": info,
            "counter": self.counter,
            "ok": self.ok,
            "loaded": self.loaded,
            "anomaly": self.anomaly,
            "dev_id": self.dev_id,
        }
        return pack(MESSAGE_LAYOUTS["STATUS_RESULT"], values)

    @classmethod
    def parse(cls, data: bytes) -> StatusInfo:
        fields = unpack(MESSAGE_LAYOUTS["STATUS_RESULT"], data)
        info = unpack_reg(StatusInfoWord, int(fields["info"]))
        return cls(
            provisioned=bool(info.provisioned),
            contexts=info.contexts,
            protocol_version=info.version,
            counter=int(fields["counter"]),
            ok=int(fields["ok"]),
            loaded=int(fields["loaded"]),
            anomaly=int(fields["anomaly"]),
            dev_id=bytes(fields["dev_id"]),
        )


@dataclass(frozen=True)
class CtxInfo:
    """The result of READ_CTX: one context's flags, version, measurement and reference
    (``MESSAGE_LAYOUTS["READ_CTX_RESULT"]``; the model packs it, the driver parses it)."""

    flags: CtxFlag
    version: int
    measurement: bytes
    reference: bytes

    @property
    def ok(self) -> bool:
        return bool(self.flags & CtxFlag.OK)

    def pack(self) -> bytes:
        values: dict[str, bytes | int] = {
            "flags": int(self.flags),
            "version": self.version,
            "measurement": self.measurement,
            "reference": self.reference,
        }
        return pack(MESSAGE_LAYOUTS["READ_CTX_RESULT"], values)

    @classmethod
    def parse(cls, data: bytes) -> CtxInfo:
        fields = unpack(MESSAGE_LAYOUTS["READ_CTX_RESULT"], data)
        return cls(
            flags=CtxFlag(int(fields["flags"])),
            version=int(fields["version"]),
            measurement=bytes(fields["measurement"]),
            reference=bytes(fields["reference"]),
        )


def _evidence_layout() -> struct.Struct:
    """EVIDENCE_FIELDS as one struct (the verifier unpacks evidence for every attestation)."""
    if [name for name, _ in EVIDENCE_FIELDS] != ["sel", "ok", "ctr", "tag"]:
        raise AssertionError("EVIDENCE_FIELDS changed: update protocol._evidence_layout")
    if sum(size for _, size in EVIDENCE_FIELDS) != EVIDENCE_SIZE:
        raise AssertionError("EVIDENCE_FIELDS and EVIDENCE_SIZE disagree")
    return struct.Struct(f">III{dict(EVIDENCE_FIELDS)['tag']}s")


_EVIDENCE = _evidence_layout()


@dataclass(frozen=True)
class Evidence:
    """What the device returns for one attestation: 44 bytes, whatever the number of tasks."""

    sel: int
    ok: int
    ctr: int
    tag: bytes

    @classmethod
    def issue(
        cls,
        k_att: bytes,
        dev_id: bytes,
        nonce: bytes,
        sel: int,
        ok: int,
        ctr: int,
        refs: dict[int, bytes],
    ) -> Evidence:
        """The HSM's side of section 5: D over the selected references, tagged under K_att.
        ``refs`` maps context -> reference (at least every selected one)."""
        digest = select_digest(refs, sel)
        return cls(sel, ok, ctr, attest_tag(k_att, dev_id, nonce, sel, ok, ctr, digest))

    def pack(self) -> bytes:
        _check_len("evidence tag", self.tag, DIGEST_SIZE)
        try:
            return _EVIDENCE.pack(self.sel, self.ok, self.ctr, self.tag)
        except struct.error as exc:
            raise ArgumentError(f"evidence: {exc}") from None

    @classmethod
    def unpack(cls, data: bytes) -> Evidence:
        sel, ok, ctr, tag = unpack_evidence(data)
        return cls(sel=sel, ok=ok, ctr=ctr, tag=tag)


def unpack_evidence(data: bytes) -> tuple[int, int, int, bytes]:
    """(sel, ok, ctr, tag) of the 44 wire bytes of an :class:`Evidence`, without building one
    (the verifier does this for every attestation it checks)."""
    _check_len("evidence", data, EVIDENCE_SIZE)
    return _EVIDENCE.unpack(data)


@dataclass(frozen=True)
class UpdateAuth:
    """The verifier's authorisation to move context ``ctx`` from ``old`` to ``new``/``ref``."""

    ctx: int
    old: int
    new: int
    ref: bytes
    tag: bytes

    @classmethod
    def issue(
        cls, k_upd: bytes, dev_id: bytes, ctx: int, old: int, new: int, ref: bytes
    ) -> UpdateAuth:
        """The verifier's side: authorise ``ctx`` from ``old`` to ``new``/``ref`` under K_upd."""
        return cls(ctx, old, new, ref, update_tag(k_upd, dev_id, ctx, old, new, ref))

    def pack(self) -> bytes:
        """On the wire: u32 i || u32 v || u32 v' || R' || tag_u (76 bytes)."""
        return u32(self.ctx) + self.command_data()

    def command_data(self) -> bytes:
        """The data of the UPDATE command (``MESSAGE_LAYOUTS["UPDATE_DATA"]``):
        u32 v || u32 v' || R' || tag_u."""
        values: dict[str, bytes | int] = {
            "old": self.old,
            "new": self.new,
            "reference": self.ref,
            "tag": self.tag,
        }
        return pack(MESSAGE_LAYOUTS["UPDATE_DATA"], values)

    @classmethod
    def from_command(cls, ctx: int, data: bytes) -> UpdateAuth:
        """The HSM's side: the authorisation in the data of an UPDATE of context ``ctx``."""
        fields = unpack(MESSAGE_LAYOUTS["UPDATE_DATA"], data)
        return cls(
            ctx=ctx,
            old=int(fields["old"]),
            new=int(fields["new"]),
            ref=bytes(fields["reference"]),
            tag=bytes(fields["tag"]),
        )

    @classmethod
    def unpack(cls, data: bytes) -> UpdateAuth:
        _check_len("update authorisation", data, UPDATE_AUTH_SIZE)
        return cls.from_command(int.from_bytes(data[:U32_SIZE], "big"), data[U32_SIZE:])


@dataclass(frozen=True)
class UpdateAck:
    """The device's proof that it installed an update: u32 i || u32 v' || ack (40 bytes)."""

    ctx: int
    new: int
    ack: bytes

    @classmethod
    def issue(
        cls, k_upd: bytes, dev_id: bytes, ctx: int, old: int, new: int, ref: bytes
    ) -> UpdateAck:
        """The HSM's side of section 6, step 3: acknowledge ``ctx`` moved to ``new``/``ref``."""
        return cls(ctx, new, ack_tag(k_upd, dev_id, ctx, old, new, ref))

    def result(self) -> bytes:
        """The result of UPDATE (``MESSAGE_LAYOUTS["UPDATE_RESULT"]``): u32 v' || ack."""
        return pack(MESSAGE_LAYOUTS["UPDATE_RESULT"], {"new": self.new, "ack": self.ack})

    @classmethod
    def from_result(cls, ctx: int, data: bytes) -> UpdateAck:
        """The host's side: the acknowledgement in the result of an UPDATE of context ``ctx``."""
        fields = unpack(MESSAGE_LAYOUTS["UPDATE_RESULT"], data)
        return cls(ctx=ctx, new=int(fields["new"]), ack=bytes(fields["ack"]))

    def pack(self) -> bytes:
        return u32(self.ctx) + self.result()

    @classmethod
    def unpack(cls, data: bytes) -> UpdateAck:
        _check_len("update acknowledgement", data, UPDATE_ACK_SIZE)
        return cls.from_result(int.from_bytes(data[:U32_SIZE], "big"), data[U32_SIZE:])


UPDATE_AUTH_SIZE = 3 * 4 + 2 * DIGEST_SIZE
UPDATE_ACK_SIZE = 2 * 4 + DIGEST_SIZE
