"""The verifier as a device-side program sees it: one interface, two implementations.

The demo (and anything else that drives a device) talks to a :class:`VerifierPort`:

- :class:`LocalVerifier`: the registry in this process (:class:`~mchsm.sw.verifier.Verifier`),
  with an EAR signing key made for the run, so results read the same as the service's;
- :class:`~mchsm.sw.service.client.ServiceClient`: the verifier service over HTTP.

Both raise the same typed errors for the same refusals, and both leave the EAR of the last
attestation in ``last_ear`` for a relying party to check against ``jwks()``.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from mchsm.sw.protocol import Evidence, UpdateAck
from mchsm.sw.verifier import (
    AttestationReport,
    Challenge,
    DeviceRecord,
    PendingUpdate,
    TaskRecord,
    UpdatePackage,
    Verifier,
)

__all__ = ["LocalVerifier", "VerifierPort", "open_verifier"]


class VerifierPort(Protocol):
    """What the demo asks of a verifier."""

    #: the EAR (a JWT) of the last accepted attestation
    last_ear: str | None
    #: where the verifier is, for the report
    where: str

    def register_device(
        self, contexts: int = ..., dev_id: bytes | None = ..., name: str = ...
    ) -> DeviceRecord: ...
    def register_task(self, dev_id: bytes, ctx: int, name: str, image: bytes) -> UpdatePackage: ...
    def prepare_update(
        self, dev_id: bytes, ctx: int, image: bytes, *, name: str | None = ...
    ) -> UpdatePackage: ...
    def cancel_update(self, dev_id: bytes, ctx: int) -> PendingUpdate: ...
    def confirm(self, dev_id: bytes, ack: UpdateAck | bytes) -> TaskRecord: ...
    def tasks(self, dev_id: bytes) -> list[TaskRecord]: ...
    def challenge(self, dev_id: bytes, sel: int | None = ...) -> Challenge: ...
    def verify(
        self, dev_id: bytes, nonce: bytes, evidence: Evidence | bytes
    ) -> AttestationReport: ...
    def jwks(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class LocalVerifier:
    """The in-process verifier behind the :class:`VerifierPort` interface."""

    def __init__(self, db: str | os.PathLike[str]) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        from mchsm.sw.service.ear import EarSigner

        self.verifier = Verifier(db)
        self.where = f"in-process ({self.verifier.location})"
        self._signer = EarSigner(ec.generate_private_key(ec.SECP256R1()))
        self.last_ear: str | None = None

    def __getattr__(self, name: str) -> Any:  # the registry's calls, as they are
        return getattr(self.verifier, name)

    def verify(self, dev_id: bytes, nonce: bytes, evidence: Evidence | bytes) -> AttestationReport:
        import time

        from mchsm.sw.service import api
        from mchsm.sw.service.ear import ear_claims

        report = self.verifier.verify(dev_id, nonce, evidence)
        claims = ear_claims(
            dev_id=dev_id,
            nonce=nonce,
            sel=report.sel,
            result=report,
            issued=time.time(),
            ttl=300.0,
            issuer="mchsm-verifier (in-process)",
            build="mchsm",
            session=api.encode_session(dev_id, nonce),
        )
        self.last_ear = self._signer.sign(claims)
        return report

    def jwks(self) -> dict[str, Any]:
        return self._signer.jwks()

    def close(self) -> None:
        self.verifier.close()


def open_verifier(
    db: str | os.PathLike[str] | None = None,
    url: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
) -> VerifierPort:
    """The service at ``url`` if given, else the registry ``db`` in this process."""
    if url is not None:
        from mchsm.sw.service.client import ServiceClient

        client = ServiceClient(url, token_file=token_file)
        client.wait_ready(10.0)
        return client
    assert db is not None
    return LocalVerifier(db)
