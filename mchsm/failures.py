"""How the command line reports a failure: one line that names the thing and what to do.

Every command of ``mchsm`` ends in one of four ways (``mchsm --help`` says so too):

- exit 0: it did what was asked;
- exit 1: it ran and failed: an HSM or mailbox error, a registry, tool, simulator or board
  build that failed, an I/O error while working; one line ``Error: ...`` on stderr;
- exit 2: the command line cannot be used (click's own checks, and ours on the files and
  directories it names: missing, unreadable, special or too large inputs, outputs that cannot
  be written, a damaged registry); nothing was run; one line ``Error: ...`` on stderr;
- exit 70 (``EX_SOFTWARE``): a bug; one line that says so.  ``--debug`` (or ``MCHSM_DEBUG=1``)
  shows the traceback of any failure instead.

The mapping from exceptions to lines lives here, once, and :class:`mchsm.cli.MchsmGroup`
applies it to every command; a command only raises.
"""

from __future__ import annotations

import errno
import os
import sqlite3

from mchsm.sw.errors import MchsmError

__all__ = [
    "DEBUG_ENV",
    "EXIT_BUG",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "debug_from_env",
    "describe",
    "first_line",
    "os_error",
]

#: the environment variable that turns tracebacks on, like ``--debug``
DEBUG_ENV = "MCHSM_DEBUG"
EXIT_FAILED = 1
EXIT_USAGE = 2  #: what click uses for usage errors
EXIT_BUG = 70  #: sysexits.h EX_SOFTWARE: an internal error

#: what to do about an OSError, by errno (the thing it concerns is named before it)
_ADVICE: dict[int, str] = {
    errno.ENOENT: "no such file or directory: check the path",
    errno.EACCES: "permission denied: check its permissions, or choose another path",
    errno.EPERM: "operation not permitted here: choose another path",
    errno.EISDIR: "is a directory: give a file",
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another path",
    errno.EROFS: "read-only file system: choose a writable place",
    errno.ENOSPC: "no space left on the device: free some, or choose another place",
    errno.EDQUOT: "disk quota exceeded: free some space, or choose another place",
    errno.EEXIST: "already exists and is not a directory: choose another path",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.ELOOP: "too many symbolic links (a loop?): check the path",
    errno.ENXIO: "no such device or address (a socket, or a device that is not there)",
    errno.ENODEV: "no such device",
    errno.EIO: "input/output error: the device or file system failed; try again or check it",
    errno.EINVAL: "the system refused it as invalid (a special file?): give a regular file",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or close some",
    errno.ETXTBSY: "the file is busy (a running program?): try again",
    errno.EFBIG: "the file is too large for this file system",
}


def first_line(text: str) -> str:
    """The first non-empty line of ``text`` (messages put what matters first)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def os_error(exc: OSError, thing: str | None = None) -> str:
    """One line for an OSError: the file it concerns (or ``thing``), what happened, what to do."""
    advice = _ADVICE.get(exc.errno or 0) or (exc.strerror or str(exc) or type(exc).__name__)
    names = [str(os.fsdecode(n)) for n in (exc.filename, exc.filename2) if n not in (None, "", b"")]
    where = thing or " -> ".join(names)
    if thing and names and names[0] != thing:
        where = f"{thing} ({names[0]})"
    return f"{where}: {advice}" if where else advice


def describe(exc: BaseException) -> tuple[str, int]:
    """The one line and the exit status for an exception that reached the command line."""
    if isinstance(exc, MchsmError):
        return first_line(str(exc)) or type(exc).__name__, EXIT_FAILED
    if isinstance(exc, OSError):
        return os_error(exc), EXIT_FAILED
    if isinstance(exc, sqlite3.Error):
        return (
            f"the verifier's registry (SQLite) failed: {first_line(str(exc))}; check the file "
            f"given to --db, or start from a new one",
            EXIT_FAILED,
        )
    if isinstance(exc, MemoryError):
        return "out of memory: give smaller inputs, or free some memory", EXIT_FAILED
    what = first_line(str(exc))
    return (
        f"internal error (a bug in mchsm): {type(exc).__name__}{': ' + what if what else ''}; "
        f"rerun with --debug (or {DEBUG_ENV}=1) for the traceback, and report it",
        EXIT_BUG,
    )


def debug_from_env() -> bool:
    """Whether ``MCHSM_DEBUG`` asks for tracebacks (set, and not empty, 0, no or false)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "no", "false", "off")
