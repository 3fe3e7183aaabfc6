"""Checks of the arguments of the verifier's public calls: types and sizes first, before any
work, with the typed error each kind of caller gets (:class:`InvalidArgumentError` for a
programming mistake, :class:`UpdateError` for an acknowledgement off the network).
"""

from __future__ import annotations

from mchsm.constants import DEVICE_ID_SIZE
from mchsm.sw.errors import InvalidArgumentError, UpdateError
from mchsm.sw.protocol import UPDATE_ACK_SIZE, UpdateAck

__all__ = ["MAX_NAME", "ack", "attempt", "byte_string", "dev_id", "integer", "name"]

#: UTF-8 bytes of a device or task name
MAX_NAME = 128
_U32_MAX = 0xFFFF_FFFF


def byte_string(
    value: object, what: str, size: int | None = None, limit: int | None = None
) -> bytes:
    """``value`` as bytes if it is bytes-like (and ``size`` long, or at most ``limit``)."""
    if not isinstance(value, bytes | bytearray | memoryview) or isinstance(value, bool):
        raise InvalidArgumentError(f"{what} must be bytes, not {type(value).__name__}")
    if isinstance(value, memoryview):
        value = value.cast("B") if value.ndim == 1 else value
        n = value.nbytes
    else:
        n = len(value)
    if size is not None and n != size:
        raise InvalidArgumentError(f"{what} is {size} bytes, not {n}")
    if limit is not None and n > limit:
        raise InvalidArgumentError(f"{what} is at most {limit:,} bytes, not {n:,}")
    return bytes(value)


def dev_id(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview) and len(value) != DEVICE_ID_SIZE:
        raise InvalidArgumentError(f"a device id is {DEVICE_ID_SIZE} bytes, not {len(value)}")
    return byte_string(value, "a device id", DEVICE_ID_SIZE)


def integer(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int:  # bool is an int subclass, and no count of anything
        raise InvalidArgumentError(f"{what} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidArgumentError(f"{what} must be in {low}..{high}, not {value}")
    return value


def name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a str, not {type(value).__name__}")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{what} is not valid Unicode text") from None
    if size > MAX_NAME:
        raise InvalidArgumentError(f"{what} is at most {MAX_NAME} bytes of UTF-8, not {size}")
    return value


def attempt(item: object) -> tuple[object, object, object]:
    """One attempt with bytes-likes made bytes; a malformed one keeps its place (it is judged
    and rejected like any other attempt) but never reaches a lookup as anything but bytes."""
    if not isinstance(item, tuple | list) or len(item) != 3:
        return (None, None, item)
    out = []
    for value in item:
        if type(value) is not bytes and isinstance(value, bytearray | memoryview):
            value = bytes(value)
        out.append(value)
    return out[0], out[1], out[2]


def ack(ack: object) -> UpdateAck:
    if isinstance(ack, bytes):
        if len(ack) != UPDATE_ACK_SIZE:
            raise UpdateError(
                f"malformed update acknowledgement: it is {UPDATE_ACK_SIZE} bytes, not {len(ack)}"
            )
        return UpdateAck.unpack(ack)
    if isinstance(ack, UpdateAck):
        if not (
            type(ack.ctx) is int
            and type(ack.new) is int
            and 0 <= ack.ctx <= _U32_MAX
            and 0 <= ack.new <= _U32_MAX
            and isinstance(ack.ack, bytes)
            and len(ack.ack) == 32
        ):
            raise UpdateError("malformed update acknowledgement: u32 ctx, u32 new, 32-byte MAC")
        return ack
    raise UpdateError(
        f"malformed update acknowledgement: {UPDATE_ACK_SIZE} bytes or an UpdateAck, "
        f"not {type(ack).__name__}"
    )
