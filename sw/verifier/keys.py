"""Root keys at rest: wrapped under a key-encryption key (KEK) that the registry never holds.

Each root key is stored as ``nonce || AES-256-GCM(KEK, K_root, aad)`` with a fresh 12-byte nonce
and the associated data ``"mchsm/v2/root" || dev_id``: a wrapped key copied onto another
device's row does not unwrap.  The registry also holds a *check value* (a known text sealed
under the KEK) so that a wrong KEK is reported when the registry is opened, not as a tag failure
of the first device.

Where the KEK comes from, first match wins:

1. the ``kek`` argument of :class:`~mchsm.sw.verifier.Verifier` (32 bytes, or a file path);
2. ``MCHSM_VERIFIER_KEK``: 64 hex digits in the environment;
3. ``MCHSM_VERIFIER_KEK_FILE``: a file holding 64 hex digits;
4. for a SQLite registry only, ``<registry>.kek`` beside it, created (mode 0600) with the
   registry.  That default keeps a copied, backed-up or leaked registry file useless on its own,
   but not against whoever can read the directory as its owner; keep the KEK elsewhere (2 or 3)
   for that.

A KEK file must be a regular file (not a symlink) owned by this user and readable by nobody
else.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mchsm.constants import DEVICE_ID_SIZE, ROOT_KEY_SIZE
from mchsm.sw.errors import KekError, StoreError

__all__ = [
    "ENV_KEK",
    "ENV_KEK_FILE",
    "KEK_SIZE",
    "WRAPPED_SIZE",
    "Kek",
    "check_private_file",
    "default_kek_path",
    "find_kek",
    "write_kek_file",
]

ENV_KEK = "MCHSM_VERIFIER_KEK"
ENV_KEK_FILE = "MCHSM_VERIFIER_KEK_FILE"
KEK_SIZE = 32
_NONCE = 12
_TAG = 16
#: bytes of a wrapped root key in the registry: nonce || ciphertext || tag
WRAPPED_SIZE = _NONCE + ROOT_KEY_SIZE + _TAG
_AAD_ROOT = b"mchsm/v2/root"
_AAD_CHECK = b"mchsm/v2/kek-check"
_CHECK_TEXT = b"mchsm verifier key-encryption key"


@dataclass
class Kek:
    """A key-encryption key and where it came from (said in every message about it)."""

    key: bytes = field(repr=False)
    source: str
    #: the file it was read from, if any (``rotate-kek`` replaces that file)
    path: Path | None = None

    def __post_init__(self) -> None:
        if len(self.key) != KEK_SIZE:
            raise KekError(f"a KEK is {KEK_SIZE} bytes; {self.source} gives {len(self.key)}")
        self._aead = AESGCM(self.key)

    def wrap(self, dev_id: bytes, root_key: bytes) -> bytes:
        """``root_key`` sealed for ``dev_id``'s row."""
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, root_key, _AAD_ROOT + dev_id)

    def unwrap(self, dev_id: bytes, wrapped: bytes) -> bytes:
        """The root key of ``dev_id``; :class:`StoreError` if the stored value was altered,
        moved from another row or is not a wrapped key at all."""
        if not isinstance(wrapped, bytes) or len(wrapped) != WRAPPED_SIZE:
            raise StoreError(f"the wrapped root key of device {dev_id.hex()} is damaged")
        try:
            return self._aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _AAD_ROOT + dev_id)
        except InvalidTag:
            raise StoreError(
                f"the wrapped root key of device {dev_id.hex()} does not unwrap under {self.source}"
                ", although the registry's check value does: the row was altered or copied "
                "from another device"
            ) from None

    def check_value(self) -> bytes:
        """What the registry stores to recognise this KEK later."""
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, _CHECK_TEXT, _AAD_CHECK)

    def matches(self, check: bytes) -> bool:
        """Whether ``check`` (from :meth:`check_value`) was made with this KEK."""
        if not isinstance(check, bytes) or len(check) <= _NONCE:
            return False
        try:
            return self._aead.decrypt(check[:_NONCE], check[_NONCE:], _AAD_CHECK) == _CHECK_TEXT
        except InvalidTag:
            return False


def check_private_file(path: Path, what: str, error: type[Exception] = KekError) -> None:
    """Refuse a file that is a symlink, not a regular file, not ours, or readable by others.

    Missing is fine (the caller decides); everything else raises ``error`` with the command
    that fixes it.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise error(f"cannot inspect {what} {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise error(
            f"{what} {path} is a symlink; refusing to follow it (it could point anywhere): "
            f"replace it with the file itself"
        )
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is not a regular file")
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise error(f"{what} {path} belongs to uid {st.st_uid}, not to this user: chown it")
    if st.st_mode & 0o077:
        raise error(
            f"{what} {path} is readable or writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}): run `chmod 600 {path}`"
        )


def _parse(text: str, source: str) -> bytes:
    digits = text.strip()
    if len(digits) != 2 * KEK_SIZE:
        raise KekError(f"{source} must hold {2 * KEK_SIZE} hex digits (a 256-bit key)")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise KekError(f"{source} must hold {2 * KEK_SIZE} hex digits (a 256-bit key)") from None


def read_kek_file(path: Path) -> Kek:
    """The KEK in ``path``, after the ownership and permission checks."""
    source = f"the KEK file {path}"
    check_private_file(path, "the KEK file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(4 * KEK_SIZE + 1)
    except FileNotFoundError:
        raise KekError(f"{source} does not exist") from None
    except OSError as exc:
        raise KekError(f"cannot read {source}: {exc.strerror}") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KekError(f"{source} must hold {2 * KEK_SIZE} hex digits") from None
    return Kek(_parse(text, source), source, path)


def write_kek_file(path: Path) -> Kek:
    """Make a new random KEK in a new owner-only file ``path`` (never overwrites)."""
    key = secrets.token_bytes(KEK_SIZE)
    try:
        fd = os.open(
            path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o600
        )
    except FileExistsError:
        raise KekError(f"{path} already exists; refusing to overwrite a KEK") from None
    except OSError as exc:
        raise KekError(f"cannot create the KEK file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    _sync_dir(path.parent)
    return Kek(key, f"the KEK file {path}", path)


def _sync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def default_kek_path(registry: Path) -> Path:
    """Where a SQLite registry's own KEK lives when none is given: beside it."""
    return registry.with_name(registry.name + ".kek")


def find_kek(explicit: bytes | str | os.PathLike[str] | None) -> Kek | None:
    """The KEK from the argument or the environment (sources 1-3); None if none is set."""
    if explicit is not None:
        if isinstance(explicit, bytes | bytearray):
            return Kek(bytes(explicit), "the kek argument")
        if isinstance(explicit, str | os.PathLike):
            return read_kek_file(Path(explicit))
        raise KekError(
            f"kek must be {KEK_SIZE} bytes or a file path, not {type(explicit).__name__}"
        )
    env = os.environ.get(ENV_KEK)
    if env:
        return Kek(_parse(env, f"${ENV_KEK}"), f"${ENV_KEK}")
    env_file = os.environ.get(ENV_KEK_FILE)
    if env_file:
        return read_kek_file(Path(env_file))
    return None


def valid_dev_id(dev_id: object) -> bool:
    return isinstance(dev_id, bytes) and len(dev_id) == DEVICE_ID_SIZE
