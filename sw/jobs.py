"""Module-level jobs of the command line, runnable on every backend (see mchsm.sim.backends)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import IO

from mchsm.constants import MANAGER
from mchsm.sw.driver import HsmDriver

__all__ = ["digest_files"]

CHUNK = 1 << 16


def _chunks(stream: IO[bytes], length: int) -> Iterator[bytes]:
    """Exactly ``length`` bytes of ``stream`` from where it stands (the driver checks that the
    chunks add up to the length it announced)."""
    left = length
    while left and (chunk := stream.read(min(CHUNK, left))):
        left -= len(chunk)
        yield chunk


async def digest_files(
    driver: HsmDriver,
    names: list[str],
    inputs: list[bytes | IO[bytes]],
    key: bytes | None = None,
) -> list[str]:
    """HASH (or, with ``key``, HMAC) of every input, computed by the HSM; sha256sum-style lines.

    ``inputs`` hold what was read from ``names`` (see :mod:`mchsm.inputs`): bytes, or a stream
    read to its end and rewound (a spool), whose length is its size.  Nothing here looks at
    the files themselves: the length the HSM is told must be that of the bytes it is given,
    which only a reader that went to the end knows.  Streams go through in chunks, so their
    size is not limited by memory.
    """
    port = driver.port(MANAGER)
    if key is not None:
        await port.hmac_key(key)
    lines = []
    for name, given in zip(names, inputs, strict=True):
        if isinstance(given, bytes | bytearray):
            data: bytes | Iterator[bytes] = bytes(given)
            length = len(given)
        else:
            start = given.tell()
            length = given.seek(0, os.SEEK_END) - start
            given.seek(start)
            data = _chunks(given, length)
        if key is not None:
            digest = await port.hmac(data, length)
        else:
            digest = await port.hash(data, length)
        lines.append(f"{digest.hex()}  {name}")
    return lines
