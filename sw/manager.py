"""The manager task (caller id 0): the device's side of provisioning, attestation and update.

It is the only task with the privileged HSM port.  It answers the verifier's challenges with
one ATTEST, and applies an update by handing the authorisation to the HSM first and only then
installing and reloading the image, so an image is never installed for an update the HSM
refused.

It also runs the anomaly detector (:meth:`Manager.watch`): the kernel reports every scheduling
period's behaviour features through a synchronous hook, while SET_ANOMALY is an HSM command and
so asynchronous.  The hook therefore only queues the tasks the detector flags, and
:meth:`Manager.apply_flags` (or :meth:`Manager.run_period`, which runs a period and then applies
them) issues one SET_ANOMALY per newly flagged task.

Every time it loads a task while it watches, the manager reads the behaviour profile the image
carries (:mod:`mchsm.sw.profile`) and asks the HSM (``READ_CTX``) whether the loaded image is
the authorised one.  Only then is the profile believed: the detector judges the task against
it and the kernel enforces its HSM command budgets.  A profile in an image that does not match
its reference (tampered flash) is ignored, and the last verified profile of the context stays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mchsm.sw.driver import HsmPort
from mchsm.sw.errors import ConcurrencyError
from mchsm.sw.kernel import Features, Microkernel, TaskState
from mchsm.sw.profile import Profile, ProfileError, split_image
from mchsm.sw.protocol import Evidence, UpdateAck, UpdateAuth

if TYPE_CHECKING:
    from mchsm.sw.anomaly import AnomalyDetector, Detection

__all__ = ["Manager"]


class Manager:
    """Context 0 of a :class:`Microkernel`."""

    def __init__(self, kernel: Microkernel) -> None:
        self.kernel = kernel
        self.port: HsmPort = kernel.manager_port
        self.detector: AnomalyDetector | None = None
        self.detections: list[Detection] = []  #: everything the detector reported, in order
        self.flagged: set[int] = set()  #: contexts whose ANOMALY this manager set since load
        self._pending: list[int] = []  #: flagged by the detector, SET_ANOMALY not yet issued
        #: the last profile verified for each context (image matched its reference)
        self.profiles: dict[int, Profile] = {}
        #: contexts loaded with an image whose profile was not believed, and why
        self.unverified: dict[int, str] = {}

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
        await self.reload(auth.ctx, relearn=True)  # a new image may behave differently
        return ack

    async def flag_anomaly(self, ctx: int) -> None:
        """Mark a task as misbehaving: it drops out of `ok` until it is reloaded."""
        await self.port.set_anomaly(ctx)

    # -- anomaly detection ----------------------------------------------------------------------

    async def watch(self, detector: AnomalyDetector) -> None:
        """Feed every scheduling period's features of the running tasks to ``detector``, each
        task judged against the verified profile of its loaded image (and its HSM budget set
        in the kernel)."""
        if self.detector is not None:
            raise ConcurrencyError("the manager already watches the kernel with a detector")
        self.detector = detector
        detector.bind({t.tid: t.name for t in self.kernel.tasks.values()})
        for tid, task in sorted(self.kernel.tasks.items()):
            if task.state is TaskState.RUNNING:
                await self._adopt_profile(tid)
        self.kernel.on_period(self._on_period)

    async def _adopt_profile(self, tid: int, *, relearn: bool = True) -> None:
        """Believe the profile of task ``tid``'s loaded image only if the HSM says the image
        is the authorised one; install it in the detector and its budget in the kernel.

        Without a profile the task is learned (weak mode); a reload without ``relearn`` keeps
        what was learned, as the same image behaves the same.
        """
        assert self.detector is not None
        task = self.kernel.tasks[tid]
        self.detector.bind({t.tid: t.name for t in self.kernel.tasks.values()})
        assert task.space is not None
        info = await self.port.read_ctx(tid)
        profile: Profile | None
        if not info.ok:  # not parsed at all: whoever wrote this image is not trusted
            problem = "the loaded image does not match its reference value"
            profile = self.profiles.get(tid)  # the last verified one, if any
        else:
            try:
                _, profile = split_image(task.space.code)
            except ProfileError as exc:
                profile, problem = None, str(exc)
            else:
                problem = "" if profile is not None else "the image carries no profile"
            if profile is not None:
                self.profiles[tid] = profile
        if problem:
            self.unverified[tid] = problem
        else:
            self.unverified.pop(tid, None)
        current = self.detector.profile(tid)
        if profile is None:
            if relearn or current is None or self.detector.state(tid).bound:
                self.detector.set_profile(tid, None, bound=False)
        elif current is None or current.to_json() != profile.to_json():
            self.detector.set_profile(tid, profile)
        self.kernel.set_hsm_budget(tid, profile.budget() if profile is not None else None)

    def _on_period(self, period: int, features: dict[int, Features]) -> None:
        """The kernel's (synchronous) hook: judge the period, queue newly flagged tasks."""
        assert self.detector is not None
        running = {
            tid: f
            for tid, f in features.items()
            if tid in self.kernel.tasks and self.kernel.tasks[tid].state is TaskState.RUNNING
        }
        for detection in self.detector.observe(period, running):
            self.detections.append(detection)
            if detection.tid not in self.flagged and detection.tid not in self._pending:
                self._pending.append(detection.tid)

    @property
    def pending(self) -> tuple[int, ...]:
        """Tasks flagged by the detector whose SET_ANOMALY has not been issued yet."""
        return tuple(self._pending)

    async def apply_flags(self) -> list[int]:
        """Issue SET_ANOMALY for every queued flag; return the contexts flagged now."""
        applied = []
        while self._pending:
            ctx = self._pending.pop(0)
            await self.flag_anomaly(ctx)
            self.flagged.add(ctx)
            applied.append(ctx)
        return applied

    async def run_period(self) -> list[int]:
        """Run one scheduling period, then flag what the detector found in it."""
        await self.kernel.run_period()
        return await self.apply_flags()

    async def reload(self, name_or_id: str | int, *, relearn: bool = False) -> bytes:
        """Reload a task from its stored image (RESET clears ANOMALY, MEASURE counts it again).

        The detector's verdict on the task is cleared and it is judged against the profile of
        the image just loaded, if the HSM says that image is the authorised one.  ``relearn``
        (an update) also drops the detector's online refinement and tells the task's receivers
        that their input from it changed.  Returns the digest of the image the HSM computed.
        """
        tid = self.kernel.task(name_or_id).tid
        digest = await self.kernel.load(tid)
        self.flagged.discard(tid)
        if tid in self._pending:
            self._pending.remove(tid)
        if self.detector is not None:
            self.detector.reset(tid, relearn=relearn)
            await self._adopt_profile(tid, relearn=relearn)
            if relearn:
                self.detector.peer_updated(tid)
        return digest
