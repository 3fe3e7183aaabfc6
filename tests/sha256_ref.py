"""Pure-Python SHA-256 compression function, for the RTL tests only.

``hashlib`` does not expose the compression function, and the engine's ``resume`` needs a
midstate (the chaining value after the 64-byte ipad/opad block).  The constants are derived
here from the primes rather than copied from ``rtl.sha256``, so a typo in one is not silently
shared by the other; ``sha256()`` is checked against ``hashlib`` by the tests.
"""

from __future__ import annotations

import struct

__all__ = ["IV", "K", "compress", "midstate", "sha256"]

_M32 = 0xFFFFFFFF


def _primes(n: int) -> list[int]:
    out: list[int] = []
    c = 2
    while len(out) < n:
        if all(c % p for p in out if p * p <= c):
            out.append(c)
        c += 1
    return out


def _iroot(x: int, k: int) -> int:
    """Floor of the k-th root of a non-negative integer (Newton, exact)."""
    r = 1 << ((x.bit_length() + k - 1) // k)
    while True:
        s = ((k - 1) * r + x // r ** (k - 1)) // k
        if s >= r:
            break
        r = s
    while (r + 1) ** k <= x:
        r += 1
    while r**k > x:
        r -= 1
    return r


#: First 32 fractional bits of the square roots of the first 8 primes.
IV = tuple(_iroot(p << 64, 2) & _M32 for p in _primes(8))
#: First 32 fractional bits of the cube roots of the first 64 primes.
K = tuple(_iroot(p << 96, 3) & _M32 for p in _primes(64))


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & _M32


def compress(state: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    """One SHA-256 compression: 8-word chaining value and a 64-byte block to the next value."""
    assert len(block) == 64
    w = list(struct.unpack(">16I", block))
    for t in range(16, 64):
        s0 = _rotr(w[t - 15], 7) ^ _rotr(w[t - 15], 18) ^ (w[t - 15] >> 3)
        s1 = _rotr(w[t - 2], 17) ^ _rotr(w[t - 2], 19) ^ (w[t - 2] >> 10)
        w.append((w[t - 16] + s0 + w[t - 7] + s1) & _M32)
    a, b, c, d, e, f, g, h = state
    for t in range(64):
        t1 = h + (_rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[t] + w[t]
        t2 = (_rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))
        a, b, c, d, e, f, g, h = (t1 + t2) & _M32, a, b, c, (d + t1) & _M32, e, f, g
    return tuple((x + y) & _M32 for x, y in zip(state, (a, b, c, d, e, f, g, h), strict=True))


def midstate(block: bytes) -> tuple[int, ...]:
    """Chaining value after hashing exactly one 64-byte block from the IV."""
    return compress(IV, block)


def sha256(message: bytes) -> bytes:
    """Complete SHA-256 (padding included) built on :func:`compress`."""
    zeros = bytes((55 - len(message)) % 64)
    padded = message + b"\x80" + zeros + struct.pack(">Q", 8 * len(message))
    state = IV
    for i in range(0, len(padded), 64):
        state = compress(state, padded[i : i + 64])
    return struct.pack(">8I", *state)
