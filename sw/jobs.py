"""Module-level jobs of the command line, runnable on every backend (see mchsm.sw.backends)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mchsm.constants import MANAGER
from mchsm.sw.driver import HsmDriver

__all__ = ["digest_files"]

CHUNK = 1 << 16


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            yield chunk


async def digest_files(
    driver: HsmDriver, names: list[str], key: bytes | None = None, stdin: bytes | None = None
) -> list[str]:
    """HASH (or, with ``key``, HMAC) of every file, computed by the HSM; sha256sum-style lines.

    ``-`` names standard input, whose bytes the caller read and passes as ``stdin``.  Files are
    streamed in chunks, so their size is not limited by memory.
    """
    port = driver.port(MANAGER)
    if key is not None:
        await port.hmac_key(key)
    lines = []
    for name in names:
        if name == "-":
            data: bytes | Iterator[bytes] = stdin or b""
            length = len(stdin or b"")
        else:
            path = Path(name)
            data, length = _chunks(path), path.stat().st_size
        if key is not None:
            digest = await port.hmac(data, length)
        else:
            digest = await port.hash(data, length)
        lines.append(f"{digest.hex()}  {name}")
    return lines
