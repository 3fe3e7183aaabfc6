"""A bounded load generator for the verifier service: many devices attesting at once.

Loopback only (it refuses any other address), bounded in count and in time, and it stops by
itself.  Each connection plays its own share of the devices (so no two attempts of one device
race each other's counter) and loops: open a session, compute the device's evidence for it (the
HMAC an HSM would compute, from the device's root key), post it, read the EAR's outcome.  One
complete attestation = the session, the evidence and the result: two HTTP round trips.

HTTP/1.1 with keep-alive on raw asyncio streams: the generator shares the machine with the
service, so it spends as little CPU per request as it can.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import socket
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mchsm.sw import protocol
from mchsm.sw.errors import ArgumentError

from . import api

__all__ = ["LoadDevice", "LoadResult", "run_load"]


@dataclass
class LoadDevice:
    """What the generator needs to play a device: its id, K_att, the references of its tasks
    (context -> reference), and the last counter it used."""

    dev_id: bytes
    k_att: bytes
    refs: dict[int, bytes]
    ctr: int = 0
    _digests: dict[int, bytes] = field(default_factory=dict)

    def evidence(self, nonce: bytes, sel: int) -> bytes:
        digest = self._digests.get(sel)
        if digest is None:
            digest = self._digests[sel] = protocol.select_digest(self.refs, sel)
        self.ctr += 1
        ok = sel  # every selected task is genuine
        tag = protocol.attest_tag(self.k_att, self.dev_id, nonce, sel, ok, self.ctr, digest)
        return protocol.Evidence(sel, ok, self.ctr, tag).pack()


@dataclass
class LoadResult:
    completed: int = 0
    #: outcome -> count (affirming, contraindicated, ...) of the completed attestations
    outcomes: dict[str, int] = field(default_factory=dict)
    #: requests that failed: HTTP status (or "connection") -> count
    errors: dict[str, int] = field(default_factory=dict)
    #: seconds from opening the session to reading the result, per completed attestation
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0
    #: sessions whose evidence was posted but whose answer never came (connection lost)
    unanswered: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.completed / self.wall if self.wall else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(q * len(s)))]


def _loopback(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    try:
        addresses = {ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(host, port)}
    except (OSError, ValueError):
        raise ArgumentError(f"cannot resolve {host!r}") from None
    if not addresses or not all(a.is_loopback for a in addresses):
        raise ArgumentError(f"the load generator only targets loopback addresses, not {host!r}")
    return host, port


class _Conn:
    """One kept-alive HTTP/1.1 connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, ctype: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.writer.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = 0
        for line in raw.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _connection(
    host: str,
    port: int,
    devices: Sequence[LoadDevice],
    claim: Callable[[], bool],
    deadline: float,
    result: LoadResult,
) -> None:
    conn = _Conn(host, port)
    i = 0
    try:
        while time.monotonic() < deadline and claim():
            dev = devices[i % len(devices)]
            i += 1
            began = time.perf_counter()
            session = ""
            try:
                body = b'{"device":"' + dev.dev_id.hex().encode() + b'"}'
                status, answer = await conn.request("POST", api.SESSIONS, api.JSON_TYPE, body)
                if status != 201:
                    result.errors[str(status)] = result.errors.get(str(status), 0) + 1
                    continue
                doc = json.loads(answer)
                session = doc["session"]
                nonce = base64.urlsafe_b64decode(doc["nonce"] + "=")
                evidence = dev.evidence(nonce, doc["selection"])
                status, answer = await conn.request(
                    "POST", f"{api.SESSIONS}/{session}/evidence", api.EVIDENCE_TYPE, evidence
                )
            except (OSError, asyncio.IncompleteReadError, ValueError):
                conn.close()
                result.errors["connection"] = result.errors.get("connection", 0) + 1
                if session:
                    result.unanswered.append(session)
                await asyncio.sleep(0.05)
                continue
            if status != 200:
                result.errors[str(status)] = result.errors.get(str(status), 0) + 1
                continue
            outcome = json.loads(answer)["outcome"]
            result.outcomes[outcome] = result.outcomes.get(outcome, 0) + 1
            result.completed += 1
            result.latencies.append(time.perf_counter() - began)
    finally:
        conn.close()


async def _run(
    url: str, devices: Sequence[LoadDevice], connections: int, count: int, seconds: float
) -> LoadResult:
    host, port = _loopback(url)
    result = LoadResult()
    left = [count]

    def claim() -> bool:
        if left[0] <= 0:
            return False
        left[0] -= 1
        return True

    shares = [devices[i::connections] for i in range(connections)]
    began, cpu = time.perf_counter(), time.process_time()
    deadline = time.monotonic() + seconds
    await asyncio.gather(
        *(_connection(host, port, share, claim, deadline, result) for share in shares if share)
    )
    result.wall = time.perf_counter() - began
    result.cpu = time.process_time() - cpu
    return result


def run_load(
    url: str,
    devices: Sequence[LoadDevice],
    *,
    connections: int = 64,
    count: int = 10_000,
    seconds: float = 30.0,
) -> LoadResult:
    """Attest ``devices`` against the service at ``url`` (loopback only) until ``count``
    attestations were started or ``seconds`` passed, on ``connections`` connections."""
    if not 1 <= connections <= 4096 or count < 0 or not 0 < seconds <= 3600:
        raise ArgumentError("connections 1..4096, count >= 0, seconds in (0, 3600]")
    try:
        import uvloop

        return uvloop.run(_run(url, devices, connections, count, seconds))
    except ImportError:  # pragma: no cover
        return asyncio.run(_run(url, devices, connections, count, seconds))
