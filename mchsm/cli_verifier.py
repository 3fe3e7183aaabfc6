"""``mchsm verifier serve|enrol|update|confirm|cancel|audit|sessions``: the verifier service and
the operator's calls to a running one (docs/verifier.md).

Kept apart from mchsm/cli.py, which registers these on its ``verifier`` group with one call.
Expected failures are typed :class:`~mchsm.sw.errors.MchsmError`\\ s, printed as one line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from mchsm.sw.service.client import ServiceClient

T = TypeVar("T")

__all__ = ["add_commands"]

#: a click command function, as its option decorators take and return it
_Command = TypeVar("_Command", bound=Callable[..., Any])


def _url_option(fn: _Command) -> _Command:
    return click.option(
        "--url",
        envvar="MCHSM_VERIFIER_URL",
        required=True,
        help="The verifier service, e.g. http://127.0.0.1:8470 [env: MCHSM_VERIFIER_URL].",
    )(fn)


def _token_option(fn: _Command) -> _Command:
    return click.option(
        "--token-file",
        envvar="MCHSM_VERIFIER_TOKEN_FILE",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="The service's admin token file [env: MCHSM_VERIFIER_TOKEN_FILE].",
    )(fn)


def _device(value: str) -> bytes:
    try:
        dev = bytes.fromhex(value)
    except ValueError:
        dev = b""
    if len(dev) != 16:
        raise click.BadParameter("a device id is 32 hex digits", param_hint="--device")
    return dev


def _client(url: str, token_file: Path | None) -> ServiceClient:
    from mchsm.sw.service.client import ServiceClient

    return ServiceClient(url, token_file=token_file)


def _run(fn: Callable[[], T]) -> T:
    """Call ``fn()``; an expected failure becomes one line and exit status 1."""
    from mchsm.sw.errors import MchsmError

    try:
        return fn()
    except MchsmError as exc:
        raise click.ClickException(str(exc)) from None


def _emit(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


@click.command("serve")
@click.option("--db", required=True, help="The registry: a SQLite file or a postgresql:// URL.")
@click.option(
    "--listen",
    default="127.0.0.1:8470",
    show_default=True,
    help="HOST:PORT to listen on (port 0: any free port, printed at start).",
)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Admin token file, created owner-only if missing [default: "
    "$MCHSM_VERIFIER_TOKEN_FILE, or (SQLite) <db>.admin-token].",
)
@click.option(
    "--ear-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="EAR signing key (EC P-256 PEM), created owner-only if missing [default: "
    "$MCHSM_EAR_KEY, $MCHSM_EAR_KEY_FILE, or (SQLite) <db>.ear-key.pem].",
)
@click.option(
    "--kek-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The registry's KEK file [default: as for every verifier command].",
)
@click.option("--issuer", default=None, help="The verifier's identity in EARs (iss).")
@click.option("--nonce-ttl", type=click.FloatRange(1, 86400), default=300.0, show_default=True)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING"]),
    default="INFO",
    show_default=True,
    help="DEBUG logs every attestation.",
)
def serve(
    db: str,
    listen: str,
    workers: int,
    token_file: Path | None,
    ear_key_file: Path | None,
    kek_file: Path | None,
    issuer: str | None,
    nonce_ttl: float,
    log_level: str,
) -> None:
    """Run the verifier as an HTTP service (stops cleanly on SIGTERM or Ctrl-C)."""
    from mchsm.sw.service.server import ServeOptions
    from mchsm.sw.service.server import serve as run

    opts = ServeOptions(
        db=db,
        listen=listen,
        workers=workers,
        token_file=token_file,
        ear_key_file=ear_key_file,
        kek_file=kek_file,
        issuer=issuer,
        nonce_ttl=nonce_ttl,
        log_level=log_level,
    )
    _run(lambda: run(opts, announce=lambda line: click.echo(line)))


@click.command("enrol")
@_url_option
@_token_option
@click.option("--contexts", type=click.IntRange(1, 32), default=8, show_default=True)
@click.option("--name", default="", help="The device's name.")
@click.option(
    "--task",
    "tasks",
    multiple=True,
    metavar="CTX:NAME:IMAGE",
    help="Also install a task from the image file (repeatable).",
)
def enrol(
    url: str, token_file: Path | None, contexts: int, name: str, tasks: tuple[str, ...]
) -> None:
    """Enrol a device; prints its id, the root key for PROVISION and each task's UPDATE data."""
    wanted = []
    for spec in tasks:
        ctx, sep, rest = spec.partition(":")
        tname, sep2, image = rest.partition(":")
        if not (sep and sep2 and ctx.isdigit() and tname and image):
            raise click.BadParameter(f"{spec!r}: give CTX:NAME:IMAGE", param_hint="--task")
        path = Path(image)
        if not path.is_file():
            raise click.BadParameter(f"{image}: no such file", param_hint="--task")
        wanted.append((int(ctx), tname, path))

    def call() -> dict[str, Any]:
        with _client(url, token_file) as c:
            record = c.register_device(contexts=contexts, name=name)
            out: dict[str, Any] = {
                "device": record.dev_id.hex(),
                "root_key": record.root_key.hex(),
                "contexts": record.contexts,
                "name": record.name,
                "tasks": [],
            }
            for ctx, tname, path in wanted:
                package = c.register_task(record.dev_id, ctx, tname, path.read_bytes())
                out["tasks"].append(
                    {"ctx": ctx, "name": tname, "authorisation": package.auth.pack().hex()}
                )
            return out

    _emit(_run(call))
    click.echo("(the root key is shown once: PROVISION the device with it, keep no copy)", err=True)


@click.command("update")
@_url_option
@_token_option
@click.option("--device", required=True, help="The device id (hex).")
@click.option("--ctx", type=click.IntRange(1, 32), required=True)
@click.option(
    "--image", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True
)
@click.option("--name", default=None, help="A new name for the task [default: unchanged].")
def update(
    url: str, token_file: Path | None, device: str, ctx: int, image: Path, name: str | None
) -> None:
    """Authorise an update of a context to IMAGE; prints the UPDATE data for the device."""
    dev = _device(device)

    def call() -> dict[str, Any]:
        with _client(url, token_file) as c:
            p = c.prepare_update(dev, ctx, image.read_bytes(), name=name)
            return {
                "device": device,
                "ctx": ctx,
                "name": p.name,
                "old": p.auth.old,
                "new": p.auth.new,
                "authorisation": p.auth.pack().hex(),
            }

    _emit(_run(call))


@click.command("confirm")
@_url_option
@_token_option
@click.option("--device", required=True, help="The device id (hex).")
@click.option("--ack", "ack_hex", required=True, help="The device's UPDATE acknowledgement (hex).")
def confirm(url: str, token_file: Path | None, device: str, ack_hex: str) -> None:
    """Confirm an update with the device's acknowledgement."""
    dev = _device(device)
    try:
        ack = bytes.fromhex(ack_hex)
    except ValueError:
        raise click.BadParameter("the ack must be hexadecimal", param_hint="--ack") from None

    def call() -> dict[str, Any]:
        with _client(url, token_file) as c:
            t = c.confirm(dev, ack)
            return {"device": device, "ctx": t.ctx, "name": t.name, "version": t.version}

    _emit(_run(call))


@click.command("cancel")
@_url_option
@_token_option
@click.option("--device", required=True, help="The device id (hex).")
@click.option("--ctx", type=click.IntRange(1, 32), required=True)
def cancel(url: str, token_file: Path | None, device: str, ctx: int) -> None:
    """Withdraw an outstanding update authorisation that never reached the device."""
    dev = _device(device)

    def call() -> dict[str, Any]:
        with _client(url, token_file) as c:
            p = c.cancel_update(dev, ctx)
            return {"device": device, "ctx": ctx, "old": p.old, "new": p.new, "cancelled": True}

    _emit(_run(call))


@click.command("audit")
@_url_option
@_token_option
@click.option("--device", default=None, help="Only this device (hex).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def audit(url: str, token_file: Path | None, device: str | None, limit: int, as_json: bool) -> None:
    """The newest audit entries of the service's registry, oldest first."""
    dev = _device(device) if device is not None else None
    import time

    def call() -> list[Any]:
        with _client(url, token_file) as c:
            return c.audit(dev, limit)

    entries = _run(call)
    if as_json:
        _emit([{**e.__dict__, "dev_id": e.dev_id.hex() if e.dev_id else None} for e in entries])
        return
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))
        dev_hex = e.dev_id.hex()[:12] if e.dev_id else "-"
        ctx = "" if e.ctx is None else f" ctx {e.ctx}"
        detail = json.dumps(e.detail, separators=(",", ":"))
        click.echo(f"{e.id:>7}  {when}  {dev_hex:<12}  {e.kind}{ctx}: {e.outcome}  {detail[:120]}")


@click.command("sessions")
@_url_option
@_token_option
@click.option("--device", default=None, help="Only this device (hex).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def sessions(url: str, token_file: Path | None, device: str | None, limit: int) -> None:
    """The newest attestation sessions, newest first: device, selection, state."""
    dev = _device(device) if device is not None else None
    import time

    def call() -> list[dict[str, Any]]:
        with _client(url, token_file) as c:
            return c.sessions(dev, limit)

    for s in _run(call):
        when = time.strftime("%H:%M:%S", time.localtime(s["issued"]))
        click.echo(
            f"{when}  {s['device']}  sel 0x{s['selection']:x}  {s['status']:<8}  {s['session']}"
        )
    sys.stdout.flush()


def add_commands(group: click.Group) -> None:
    """Register the service commands on ``mchsm verifier``."""
    for command in (serve, enrol, update, confirm, cancel, audit, sessions):
        group.add_command(command)
