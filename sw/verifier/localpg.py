"""A throwaway PostgreSQL server for the tests and the bench, from the ``pgserver`` wheel.

``pip install pgserver`` (in the ``dev`` and ``postgres`` extras) brings a real PostgreSQL build;
this module runs its ``initdb`` and ``pg_ctl`` directly, so the server lives exactly as long as
the :class:`LocalPostgres` that started it: in a directory of its own, listening on a Unix
socket only (no TCP port, nothing reachable from outside), stopped and removed by
:meth:`LocalPostgres.stop` or at interpreter exit.  PostgreSQL refuses to run as root; when this
process is root, the server runs as ``nobody``.

It is a test fixture, not a way to deploy: a verifier fleet points ``--db`` at a PostgreSQL that
is run and backed up like any other.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from mchsm.sw.errors import ArgumentError, StoreError

__all__ = ["LocalPostgres", "PostgresUnavailable", "binaries"]

#: Unix socket paths longer than this do not fit in sockaddr_un
_SOCKET_MAX = 100


class PostgresUnavailable(StoreError, RuntimeError):
    """The pgserver wheel is not installed, or its server would not start."""


def binaries() -> Path:
    """The directory of the PostgreSQL programs that the pgserver wheel ships."""
    spec = importlib.util.find_spec("pgserver")  # found, not imported: its import has effects
    if spec is None or not spec.submodule_search_locations:
        raise PostgresUnavailable("PostgreSQL for tests comes from `pip install pgserver`")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise PostgresUnavailable(f"the pgserver wheel has no server binaries in {bin_dir}")
    return bin_dir


def _reachable(path: Path) -> bool:
    """Whether another user can reach ``path``: every directory above it searchable by all."""
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def _public_copy(bin_dir: Path) -> Path:
    """The server's programs copied where ``nobody`` can run them (a checkout under /root is
    not), once per installed build; the copy is readable by all, like any system install."""
    install = bin_dir.parent  # site-packages/pgserver/pginstall
    site = install.parent.parent
    stamp = f"{install.stat().st_mtime_ns:x}{len(str(install)):x}"
    target = Path(tempfile.gettempdir()) / f"mchsm-pginstall-{stamp}"
    inner = Path("pgserver") / "pginstall"  # the binaries find their libraries by RPATH
    if not (target / inner / "bin" / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="mchsm-pginstall-"))
        for part in ("bin", "lib", "share"):
            shutil.copytree(install / part, staging / inner / part, symlinks=True)
        if (site / "pgserver.libs").is_dir():
            shutil.copytree(site / "pgserver.libs", staging / "pgserver.libs", symlinks=True)
        for root, dirs, files in os.walk(staging):
            for name in dirs:
                os.chmod(Path(root) / name, 0o755)
            for name in files:
                p = Path(root) / name
                if not p.is_symlink():
                    os.chmod(p, 0o755 if os.access(p, os.X_OK) else 0o644)
        staging.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:  # another process made it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    return target / inner / "bin"


class LocalPostgres:
    """One PostgreSQL server in ``directory`` (a new temporary one by default).

    ``durable=False`` turns off fsync and synchronous commit: fine for tests, whose data dies
    with the server; the bench keeps the defaults so its commits cost what they do in service.
    ``settings`` are more ``-c name=value`` server settings.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        durable: bool = True,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bin = binaries()
        self._own_dir = directory is None
        self.root = (
            Path(tempfile.mkdtemp(prefix="mchsm-pg-")) if directory is None else directory.resolve()
        )
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.socket_dir = self.root
        if len(str(self.socket_dir / ".s.PGSQL.5432")) > _SOCKET_MAX:
            self.socket_dir = Path(tempfile.mkdtemp(prefix="mchsm-pgs-"))
        self.settings = {} if durable else {"fsync": "off", "synchronous_commit": "off"}
        self.settings.update(settings or {})
        self._user: dict[str, Any] = {}
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            import pwd

            nobody = pwd.getpwnam("nobody")
            self._user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
            if not _reachable(self.bin):
                self.bin = _public_copy(self.bin)
        self.running = False

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, **self._user
        )
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise PostgresUnavailable(
                f"{args[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}\n{log}"
            )

    def _own(self, path: Path) -> None:
        if self._user:
            os.chown(path, self._user["user"], self._user["group"])

    def start(self) -> LocalPostgres:
        """Initialise the data directory if new, and start the server (a few seconds)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._own(self.root)
        self._own(self.socket_dir)
        try:
            self._start()
        except BaseException:
            if self._own_dir:
                shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.running = True
        atexit.register(self.stop)
        return self

    def _start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self._run(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
        options = f"-k {self.socket_dir} -h ''" + "".join(
            f" -c {k}={v}" for k, v in self.settings.items()
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
            "-t", "60", "start",
        )  # fmt: skip

    def url(self, dbname: str = "postgres") -> str:
        """A ``postgresql://`` URL of database ``dbname`` on this server."""
        return f"postgresql://postgres@/{dbname}?host={self.socket_dir}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (a plain identifier) and return its URL."""
        import psycopg

        if not name.replace("_", "").isalnum():
            raise ArgumentError(f"not a plain database name: {name!r}")
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, *, remove: bool | None = None) -> None:
        """Stop the server (fast shutdown), and remove its directory if it made it."""
        if self.running:
            self.running = False
            atexit.unregister(self.stop)
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)
            except (PostgresUnavailable, subprocess.TimeoutExpired):
                pid = self.postmaster_pid()
                if pid is not None:
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
                    time.sleep(0.5)
        if self._own_dir if remove is None else remove:
            shutil.rmtree(self.root, ignore_errors=True)
        if self.socket_dir != self.root:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
