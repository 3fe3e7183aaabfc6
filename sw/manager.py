"""The manager task (caller id 0): the device's side of provisioning, attestation and update.

It is the only task with the privileged HSM port.  It answers the verifier's challenges with
one ATTEST, and applies an update by handing the authorisation to the HSM first and only then
installing and reloading the image, so an image is never installed for an update the HSM
refused.
"""

from __future__ import annotations

from mchsm.sw.driver import HsmPort
from mchsm.sw.kernel import Microkernel
from mchsm.sw.protocol import Evidence, UpdateAck, UpdateAuth

__all__ = ["Manager"]


class Manager:
    """Context 0 of a :class:`Microkernel`."""

    def __init__(self, kernel: Microkernel) -> None:
        self.kernel = kernel
        self.port: HsmPort = kernel.manager_port

    async def provision(self, dev_id: bytes, root_key: bytes) -> None:
        """Give the HSM its root key (once per power cycle; factory step)."""
        await self.port.provision(dev_id, root_key)

    async def attest(self, nonce: bytes, sel: int) -> Evidence:
        """Answer a challenge: one HMAC over the state of every selected task."""
        return await self.port.attest(nonce, sel)

    async def apply_update(self, auth: UpdateAuth, image: bytes) -> UpdateAck:
        """Install an authorised update: HSM first (raises if refused), then image and reload."""
        ack = await self.port.update(auth)
        self.kernel.install(auth.ctx, image)
        await self.kernel.load(auth.ctx)
        return ack

    async def flag_anomaly(self, ctx: int) -> None:
        """Mark a task as misbehaving: it drops out of `ok` until it is reloaded."""
        await self.port.set_anomaly(ctx)
