"""The files ``mchsm hash`` and ``mchsm hmac`` digest: read to the end before the HSM hears of
them, so that the length it is told is the length of what it gets.

A command's length goes to the HSM first (``LEN``), its data after.  ``st_size`` is not that
length for many files people hash: ``/proc`` files say 0, sysfs files say 4096 whatever they
hold, pipes and standard input have no size at all, and a file that grows while it is read
says something else again.  So every input is read once, to its end, into a spool (memory up
to :data:`SPOOL_MEMORY`, an anonymous temporary file beyond), and the HSM is given the spool's
length and then the spool: the digest is the digest of the bytes that were read, as with
``sha256sum``.

What is read is bounded by the backend's limit (:data:`mchsm.sim.backends.INPUT_LIMITS`): the
model takes anything its 32-bit ``LEN`` can say, the simulators take what they hash in minutes.
Directories, devices and sockets are refused: a device such as ``/dev/zero`` never ends.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import click

from mchsm.failures import os_error
from mchsm.sw.errors import InputError

__all__ = ["CHUNK", "SPOOL_MEMORY", "Input", "read_input", "size_text"]

CHUNK = 1 << 16
#: an input up to this size is held in memory; a larger one goes to an anonymous temporary
#: file (unlinked at once, so nothing of it stays behind).  Every input of a command is read
#: before the first is hashed, so that a bad one fails before any work: this bounds the memory
#: that takes
SPOOL_MEMORY = 1 << 20


@dataclass
class Input:
    """One input, read to its end: its name as given, its bytes and their number."""

    name: str
    spool: IO[bytes]  #: positioned at 0
    length: int

    def read_all(self) -> bytes:
        """All of it in memory (for a backend in another process; bounded by its limit)."""
        self.spool.seek(0)
        data = self.spool.read()
        self.spool.seek(0)
        return data

    def close(self) -> None:
        self.spool.close()


def size_text(n: int) -> str:
    """``n`` bytes for people: 4 GiB - 1 B, 256 KiB, 1,000 bytes."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            whole, rest = divmod(n, 1 << shift)
            if rest == 0:
                return f"{whole} {unit}"
            if rest == (1 << shift) - 1:
                return f"{whole + 1} {unit} - 1 B"
    return f"{n:,} bytes"


def _kind(mode: int) -> str | None:
    """What a file is when it is not something to hash, or None when it is."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None  # a regular file (/proc and sysfs ones included) or a pipe


def _too_large(name: str, limit: int, backend: str, used: int, more: str = "") -> InputError:
    if backend == "model":
        advice = "its 32-bit LEN register cannot say more; hash a part of it"
    else:
        advice = "use --backend model, or hash a part of it"
    what = f"{name}: larger than" if not used else f"{name}, with the files before it, is over"
    return InputError(f"{what} the {size_text(limit)} the {backend} backend takes{more}; {advice}")


def read_input(name: str, limit: int, backend: str, stdin: BinaryIO, used: int = 0) -> Input:
    """Read ``name`` (``-``: ``stdin``) to its end, at most ``limit - used`` bytes (``used``:
    what the inputs before it took, where the limit is for all of them together).

    Raises :class:`InputError` with one line that names the file, says what is wrong and what
    to do: missing, unreadable, a directory, device or socket, or more than the limit.
    """
    shown = "standard input" if name == "-" else name
    room = limit - used
    source: BinaryIO
    if name == "-":
        source = stdin
    else:
        try:
            info = os.stat(name)
        except OSError as exc:
            raise InputError(os_error(exc, name)) from None
        kind = _kind(info.st_mode)
        if kind is not None:
            hint = (
                "give a file"
                if kind == "a directory"
                else f"to hash bytes from it, pipe them in: head -c N {name} | mchsm hash -"
            )
            raise InputError(f"{name}: is {kind}, not a file: {hint}")
        if stat.S_ISREG(info.st_mode) and info.st_size > room:
            # a regular file's size is a bound worth trusting here: /proc and sysfs files
            # claim 0 or 4096, never more than they hold
            raise _too_large(name, limit, backend, used, f" (it has {size_text(info.st_size)})")
        try:
            source = open(name, "rb")  # noqa: SIM115 - closed below, whatever happens
        except OSError as exc:
            raise InputError(os_error(exc, name)) from None
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 - returned
    total = 0
    try:
        while chunk := source.read(min(CHUNK, room + 1 - total)):
            total += len(chunk)
            if total > room:
                raise _too_large(shown, limit, backend, used)
            spool.write(chunk)
    except OSError as exc:
        spool.close()
        raise InputError(os_error(exc, shown)) from None
    except BaseException:
        spool.close()
        raise
    finally:
        if source is not stdin:
            source.close()
    spool.seek(0)
    return Input(name=name, spool=spool, length=total)


# ---- outputs ----------------------------------------------------------------------------


def writable_dir(path: Path, option: str) -> Path:
    """Create the output directory ``path`` now and check that a file can be written there, so
    an output that cannot be written is a usage error before any work, not a traceback after."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        # named by the directory the user gave, not by the probe's temporary name
        line = os_error(OSError(exc.errno, exc.strerror), str(path))
        raise click.BadParameter(f"cannot write there: {line}", param_hint=option) from None
    return path


def writable_file(path: Path, option: str) -> Path:
    """The output file ``path``: not a directory, and its directory writable (see above)."""
    if path.is_dir():
        raise click.BadParameter(f"{path}: is a directory: give a file name", param_hint=option)
    writable_dir(path.parent, option)
    return path
