"""``mchsm verifier serve`` in a subprocess on a loopback port, for the tests and the bench.

:func:`start_service` starts a real service (any free port on 127.0.0.1, its own token and EAR
key files in a private directory) and returns once every worker is ready; nothing is mocked
between a client and it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mchsm.sw.errors import ServiceError

__all__ = ["Service", "start_service"]

from .client import ServiceClient

#: seconds a service may take to start (a loaded 2-core machine imports slowly)
START_SECONDS = 60.0


@dataclass
class Service:
    url: str
    db: str
    token_file: Path
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def client(self, admin: bool = True) -> ServiceClient:
        return ServiceClient(self.url, token_file=self.token_file if admin else None)

    def log_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def worker_pids(self) -> list[int]:
        """Pids of the workers that said they are ready, in order (restarted ones included)."""
        return [
            int(d["pid"])  # type: ignore[call-overload]  # a JSON log field: object to mypy
            for d in self.log_lines()
            if d.get("msg") == "Application startup complete."
        ]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_service(
    tmp: Path,
    db: str,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
    log_level: str = "INFO",
) -> Service:
    """``mchsm verifier serve`` on 127.0.0.1, any free port; waits until every worker is ready."""
    tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(tmp, 0o700)
    token = tmp / "admin-token"
    key = tmp / "ear-key.pem"
    log = tmp / "service.log"
    full_env = {**os.environ, **(env or {})}
    cmd = [
        sys.executable,
        "-c",
        "from mchsm.cli import main; main()",
        "verifier",
        "serve",
        "--db",
        db,
        "--listen",
        "127.0.0.1:0",
        "--workers",
        str(workers),
        "--token-file",
        str(token),
        "--ear-key-file",
        str(key),
        "--log-level",
        log_level,
        *extra,
    ]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=full_env, cwd=tmp)
    assert proc.stdout is not None
    deadline = time.monotonic() + START_SECONDS
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready or proc.poll() is not None:
            proc.kill()
            raise ServiceError(f"the service did not start: {log.read_text()[-2000:]}")
        line += os.read(proc.stdout.fileno(), 1)
    url = line.decode().strip().removeprefix("listening on ")
    service = Service(url, db, token, proc, log, env or {})
    while len(set(service.worker_pids())) < workers:
        if time.monotonic() > deadline or proc.poll() is not None:
            service.stop(signal.SIGKILL)
            raise ServiceError(f"workers did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    service.client().wait_ready(START_SECONDS)
    return service
