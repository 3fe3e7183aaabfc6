"""``mchsm verifier serve``: the service on uvicorn, with one or more worker processes.

The parent process checks everything a worker would trip over first (the registry opens with
its KEK and is migrated, the EAR key and the admin token exist and are owner-only), binds the
listening socket itself (so ``--listen 127.0.0.1:0`` works and the port is known), and hands the
socket to uvicorn's supervisor, which starts the workers and restarts one that dies.

Shutdown (SIGTERM or SIGINT): each worker stops accepting connections, answers every request it
has accepted (their batches commit first), closes its idle connections and its registry
connection, then exits; the parent waits for them.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mchsm.sw.errors import InvalidArgumentError, ServiceError

from .app import ENV_CONFIG, ServiceConfig
from .keyfiles import ear_key, read_token, token_file

__all__ = ["ServeOptions", "parse_listen", "prepare", "serve"]

log = logging.getLogger("mchsm.service")

#: seconds a worker waits for the requests it accepted before it gives up at shutdown
GRACEFUL_SECONDS = 30
#: an idle kept-alive connection is closed after this long (uvicorn's default, named here: the
#: client reconnects when it finds one closed, and a test waits it out)
KEEP_ALIVE_SECONDS = 5
#: connections a worker serves at once; more wait in the listen backlog
CONCURRENCY = 1024


@dataclass(frozen=True)
class ServeOptions:
    db: str
    listen: str = "127.0.0.1:8470"
    workers: int = 1
    token_file: Path | None = None
    ear_key_file: Path | None = None
    kek_file: Path | None = None
    issuer: str | None = None
    nonce_ttl: float = 300.0
    log_level: str = "INFO"


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6); InvalidArgumentError otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgumentError(f"--listen must be HOST:PORT, not {listen!r:.60}")
    return host.strip("[]"), int(port)


def prepare(opts: ServeOptions) -> tuple[ServiceConfig, str]:
    """Check the registry and make the secrets a worker needs; the workers' config and where
    the EAR key came from."""
    from mchsm.sw.verifier import Verifier

    if not 1 <= opts.workers <= 64:
        raise InvalidArgumentError("--workers must be 1..64")
    with Verifier(opts.db, kek=opts.kek_file, nonce_ttl=opts.nonce_ttl):
        pass  # creates or migrates the registry, and checks the KEK, once, before any worker
    _, key_source = ear_key(opts.db, opts.ear_key_file)
    tokens = token_file(opts.db, opts.token_file)
    read_token(tokens)
    key_path = opts.ear_key_file
    if key_path is None and not os.environ.get("MCHSM_EAR_KEY"):
        env_file = os.environ.get("MCHSM_EAR_KEY_FILE")
        key_path = Path(env_file) if env_file else Path(f"{opts.db}.ear-key.pem")
    config = ServiceConfig(
        db=opts.db,
        token_file=str(tokens.resolve()),
        ear_key_file=str(key_path.resolve()) if key_path is not None else None,
        kek_file=str(opts.kek_file.resolve()) if opts.kek_file is not None else None,
        issuer=opts.issuer or f"mchsm-verifier@{socket.gethostname()}",
        nonce_ttl=opts.nonce_ttl,
        log_level=opts.log_level,
    )
    return config, key_source


def serve(opts: ServeOptions, *, announce: Callable[[str], object] = print) -> None:
    """Run the service until SIGTERM/SIGINT."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .logs import configure, log_config

    configure(opts.log_level)
    host, port = parse_listen(opts.listen)
    config, key_source = prepare(opts)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServiceError(f"cannot listen on {opts.listen}: {exc.strerror}") from None
    sock.listen(4096)
    sock.set_inheritable(True)
    bound = sock.getsockname()[1]
    # every worker's metrics go to files here, summed by /metrics (see .metrics)
    metrics_dir = tempfile.mkdtemp(prefix="mchsm-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ[ENV_CONFIG] = config.to_env()
    log.info(
        "verifier service starting",
        extra={
            "event": "service.start",
            "url": f"http://{host}:{bound}",
            "workers": opts.workers,
            "ear_key": key_source,
            "token_file": config.token_file,
            "issuer": config.issuer,
        },
    )
    announce(f"listening on http://{host if family == socket.AF_INET else f'[{host}]'}:{bound}")
    sys.stdout.flush()
    uv = uvicorn.Config(
        "mchsm.sw.service.app:create_app",
        factory=True,
        fd=sock.fileno(),
        workers=opts.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=log_config(opts.log_level),
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        limit_concurrency=CONCURRENCY,
        server_header=False,
        proxy_headers=False,
    )
    try:
        Multiprocess(uv, sockets=[sock]).run()
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        log.info("verifier service stopped", extra={"event": "service.stop"})
