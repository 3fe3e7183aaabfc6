"""The service's two secrets, kept in owner-only files beside the registry, never in it.

- The **EAR signing key** (EC P-256, PKCS#8 PEM): whoever holds it can issue results any
  relying party believes.  First match wins: ``--ear-key-file``, ``$MCHSM_EAR_KEY`` (the PEM
  itself), ``$MCHSM_EAR_KEY_FILE``, then for a SQLite registry ``<registry>.ear-key.pem``.  A
  named file that does not exist is created (mode 0600) with a new key.
- The **admin token** (32 random bytes, base64url): the bearer credential of the admin calls.
  ``--token-file``, ``$MCHSM_VERIFIER_TOKEN_FILE``, then ``<registry>.admin-token``; created
  the same way.  The service keeps only its SHA-256 and compares in constant time.

A PostgreSQL registry has no "beside": there the files must be named.  Both files are checked
like the KEK file (a regular file, ours, readable by nobody else) before they are read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mchsm.sw.errors import ServiceError
from mchsm.sw.verifier.keys import check_private_file
from mchsm.sw.verifier.postgres import is_url

__all__ = [
    "ENV_EAR_KEY",
    "ENV_EAR_KEY_FILE",
    "ENV_TOKEN_FILE",
    "TokenCheck",
    "default_path",
    "ear_key",
    "read_token",
    "token_file",
]

ENV_EAR_KEY = "MCHSM_EAR_KEY"
ENV_EAR_KEY_FILE = "MCHSM_EAR_KEY_FILE"
ENV_TOKEN_FILE = "MCHSM_VERIFIER_TOKEN_FILE"
#: bytes of the largest key or token file read (a PEM key is ~240 bytes)
_MAX_FILE = 8192


def default_path(db: str, suffix: str) -> Path | None:
    """``<registry><suffix>`` beside a SQLite registry; None for PostgreSQL."""
    if is_url(db):
        return None
    return Path(f"{os.fspath(db)}{suffix}")


def _create_private(path: Path, data: bytes) -> None:
    try:
        fd = os.open(
            path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o600
        )
    except OSError as exc:
        raise ServiceError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read_private(path: Path, what: str) -> bytes:
    check_private_file(path, what, ServiceError)
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE + 1)
    except OSError as exc:
        raise ServiceError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > _MAX_FILE:
        raise ServiceError(f"{what} {path} is larger than {_MAX_FILE} bytes: not a key")
    return data


def _load_pem(data: bytes, source: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ServiceError(f"{source} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ServiceError(f"{source} is not an EC P-256 key, which ES256 needs")
    return key


def ear_key(db: str, path: Path | None = None) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """The EAR signing key and where it came from (never the key in a message)."""
    if path is None:
        pem = os.environ.get(ENV_EAR_KEY)
        if pem:
            return _load_pem(pem.encode(), f"${ENV_EAR_KEY}"), f"${ENV_EAR_KEY}"
        env_file = os.environ.get(ENV_EAR_KEY_FILE)
        path = Path(env_file) if env_file else default_path(db, ".ear-key.pem")
        if path is None:
            raise ServiceError(
                f"a PostgreSQL registry has no place beside it for the EAR signing key: give "
                f"--ear-key-file FILE (created if missing) or set ${ENV_EAR_KEY_FILE}"
            )
    if not os.path.lexists(path):
        key = ec.generate_private_key(ec.SECP256R1())
        new_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _create_private(path, new_pem)
        return key, f"the new key file {path}"
    return _load_pem(_read_private(path, "the EAR key file"), str(path)), f"the key file {path}"


def token_file(db: str, path: Path | None = None, *, create: bool = True) -> Path:
    """The admin token file, created with a new token if it does not exist (and ``create``)."""
    if path is None:
        env_file = os.environ.get(ENV_TOKEN_FILE)
        path = Path(env_file) if env_file else default_path(db, ".admin-token")
        if path is None:
            raise ServiceError(
                f"a PostgreSQL registry has no place beside it for the admin token: give "
                f"--token-file FILE (created if missing) or set ${ENV_TOKEN_FILE}"
            )
    if create and not os.path.lexists(path):
        _create_private(path, (secrets.token_urlsafe(32) + "\n").encode())
    return path


def read_token(path: Path) -> str:
    """The token in an admin token file (checked owner-only first)."""
    text = _read_private(path, "the admin token file").decode("ascii", "replace").strip()
    if not 32 <= len(text) <= 256 or not text.isascii() or not text.isprintable():
        raise ServiceError(f"the admin token file {path} does not hold a token (32-256 chars)")
    return text


class TokenCheck:
    """Compares presented bearer tokens with the admin token, in constant time."""

    def __init__(self, token: str) -> None:
        self._digest = hashlib.sha256(token.encode()).digest()

    def __call__(self, presented: str) -> bool:
        digest = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
        return hmac.compare_digest(digest, self._digest)
