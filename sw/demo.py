"""The main job: the whole protocol story on one device, told as a report.

A device boots with four named tasks, is provisioned and attested; one task's stored image is
tampered with and only that task is reported failed; a signature-free update repairs it; then
a replayed update, a rolled-back update, a forged tag, a reused nonce, a task naming another
context and evidence presented for the wrong device are each rejected; a task that races the
manager's MEASURE at the shared mailbox is refused at every access; a hijacked task is caught
by the manager's anomaly detector, marked ANOMALY and reloaded; and a last attestation shows
that none of them changed anything.  Every step states what must happen and checks it;
the report says whether it did.
"""

from __future__ import annotations

import functools
import hashlib
import random
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from mchsm.constants import MANAGER, Cmd, Ctrl, Reg, Status
from mchsm.sw.anomaly import AnomalyDetector
from mchsm.sw.command import Write
from mchsm.sw.driver import HsmDriver
from mchsm.sw.errors import AttestationError, HsmError, VerifierError
from mchsm.sw.interpose import Interposer
from mchsm.sw.kernel import Microkernel, TaskApi
from mchsm.sw.manager import Manager
from mchsm.sw.profile import Profile, RecordedTrace, derive, embed
from mchsm.sw.protocol import (
    UpdateAuth,
    derive_upd_key,
    reference,
    sha256,
)
from mchsm.sw.traces import NullHsm, exfiltrating, run_sync
from mchsm.sw.verifier import AttestationReport, Verdict
from mchsm.sw.verifier_port import VerifierPort, open_verifier

__all__ = ["TASK_NAMES", "DemoReport", "Step", "make_image", "run_story"]

TASK_NAMES = ("sensor", "control", "comms", "logger")
#: periods the demo's anomaly detector judges before the hijack, to show it quiet on genuine
#: behaviour.  Every period costs comms one TASK_MAC on the HSM, and the demo runs on the RTL
#: too, so they are few: the profiles, not these periods, are the baseline
DEMO_QUIET = 4
#: periods of the rig run the demo tasks' profiles are derived from
DEMO_RIG_PERIODS = 800
#: periods the hijacked task is given before the step counts as failed
DEMO_MAX_DELAY = 5


def make_image(name: str, version: int, size: int = 1536) -> bytes:
    """A deterministic stand-in for a task's code image (different size per task)."""
    head = f"{name} firmware v{version}\n".encode()
    body = bytearray()
    block = hashlib.sha256(head).digest()
    while len(head) + len(body) < size + 37 * len(name):
        body += block
        block = hashlib.sha256(block).digest()
    return (head + bytes(body))[: size + 37 * len(name)]


@functools.cache
def demo_profiles() -> dict[str, Profile]:
    """The behaviour profiles of the demo's tasks, derived the way a vendor would: a rig run
    of the same programs (on the kernel over :class:`~mchsm.sw.traces.NullHsm`, its own seed).
    The demo's images carry them, so their reference values cover them.

    On the device every task gets the same input every period, from which no profile could
    tell how a task's work follows its input.  The rig therefore adds a stimulus task that
    sends each task 0-2 extra messages a period: the profiles learn, for instance, that logger
    writes once per message it is given, whoever gives it.
    """
    rng = random.Random("mchsm-demo-rig")

    async def stimulus(api: TaskApi) -> None:
        for name in TASK_NAMES:
            for _ in range(rng.randrange(3)):
                api.send(name, bytes(16))

    async def rig() -> RecordedTrace:
        kernel = Microkernel(NullHsm(), len(TASK_NAMES) + 1)
        programs = _programs(rng)
        for name in TASK_NAMES:
            kernel.create_task(name, make_image(name, 1), programs[name])
        kernel.create_task("stimulus", b"rig stimulus", stimulus)
        _grant(kernel)
        for name in TASK_NAMES:
            kernel.grant("stimulus", name)
        await kernel.load_all()
        periods = [await kernel.run_period() for _ in range(DEMO_RIG_PERIODS)]
        return RecordedTrace.record({t.tid: t.name for t in kernel.tasks.values()}, periods)

    trace = run_sync(rig())
    return {name: derive(name, trace.series(name)) for name in TASK_NAMES}


def task_image(name: str, version: int) -> bytes:
    """A demo task's image: its code and, inside it, its behaviour profile."""
    return embed(make_image(name, version), demo_profiles()[name])


def _grant(kernel: Microkernel) -> None:
    kernel.grant("sensor", "control")
    kernel.grant("control", "logger")
    kernel.grant("control", "comms")


@dataclass
class Step:
    """One step of the story: what was expected, whether it happened, what it cost."""

    title: str
    passed: bool
    detail: str
    cycles: int = 0
    commands: int = 0


#: why a UART backend reports so many more HSM cycles (docs/cosim.md)
UART_CYCLES_NOTE = (
    "(HSM cycles come from the CYCLES register, from the CMD write to done; over a UART a "
    "command's data crosses the serial line while the command waits for it, so commands with "
    "data count many more cycles than on the other backends, those without the same)"
)


@dataclass
class DemoReport:
    backend: str
    contexts: int
    steps: list[Step] = field(default_factory=list)
    #: where the verifier ran: in this process, or a service at a URL
    verifier: str = "in-process"

    @property
    def passed(self) -> bool:
        return bool(self.steps) and all(step.passed for step in self.steps)

    def render(self) -> str:
        lines = [
            f"mchsm demo - backend: {self.backend}, {self.contexts} contexts, "
            f"verifier: {self.verifier}",
            "",
            f"{'#':>2}  {'result':6}  {'HSM cmds':>8}  {'cycles':>9}  step",
        ]
        for i, step in enumerate(self.steps, 1):
            mark = "PASS" if step.passed else "FAIL"
            lines.append(f"{i:>2}  {mark:6}  {step.commands:>8}  {step.cycles:>9}  {step.title}")
            for row in step.detail.splitlines():
                lines.append(f"{'':>33}{row}")
        total = sum(s.cycles for s in self.steps)
        verdict = "every step went as the protocol says" if self.passed else "SOME STEPS FAILED"
        lines += ["", f"{len(self.steps)} steps, {total} HSM cycles in all: {verdict}"]
        if self.backend == "uart-sim" or self.backend.startswith("board"):
            lines.append(UART_CYCLES_NOTE)
        return "\n".join(lines)


def _programs(rng: random.Random) -> dict[str, Callable[[TaskApi], Awaitable[None]]]:
    """Small, noisy-but-regular behaviours for the demo tasks."""

    async def sensor(api: TaskApi) -> None:
        api.compute(40 + rng.randrange(10))
        reading = api.read(0, 16)
        api.send("control", reading)

    async def control(api: TaskApi) -> None:
        api.compute(60 + rng.randrange(20))
        while (msg := api.receive()) is not None:
            api.send("logger", msg[1][:8])
        api.send("comms", b"setpoint")

    async def comms(api: TaskApi) -> None:
        api.compute(20 + rng.randrange(5))
        while api.receive() is not None:
            pass
        try:  # authenticate telemetry with the task key: only works while the task is OK
            await api.hsm.task_mac(b"telemetry")
        except HsmError:
            pass

    log_offset = [0]

    async def logger(api: TaskApi) -> None:
        api.compute(10 + rng.randrange(5))
        while (msg := api.receive()) is not None:
            api.write(api.data_base + log_offset[0], msg[1][:8])
            log_offset[0] = (log_offset[0] + 8) % 4000

    return {"sensor": sensor, "control": control, "comms": comms, "logger": logger}


class _Story:
    def __init__(
        self,
        driver: HsmDriver,
        verifier: VerifierPort,
        report: DemoReport,
        contexts: int,
        seed: int,
    ) -> None:
        self.driver = driver
        self.verifier = verifier
        self.report = report
        self.kernel = Microkernel(driver, contexts)
        self.manager = Manager(self.kernel)
        self.rng = random.Random(seed)
        self._mark = (0, 0)

    def _start(self) -> None:
        self._mark = (self.driver.cycles, self.driver.commands)

    def step(self, title: str, passed: bool, detail: str) -> bool:
        cycles, commands = self._mark
        self.report.steps.append(
            Step(
                title, passed, detail, self.driver.cycles - cycles, self.driver.commands - commands
            )
        )
        self._start()
        return passed

    async def attest(self) -> AttestationReport:
        challenge = self.verifier.challenge(self.dev_id)
        evidence = await self.manager.attest(challenge.nonce, challenge.sel)
        self.last_evidence = (challenge.nonce, evidence)
        return self.verifier.verify(self.dev_id, challenge.nonce, evidence)

    @staticmethod
    def verdicts(report: AttestationReport) -> str:
        return ", ".join(f"{v.name}={v.verdict.value}" for v in report.verdicts.values())

    async def expect_hsm_refusal(
        self, title: str, status: Status, action: Callable[[], Awaitable[object]]
    ) -> None:
        try:
            await action()
        except HsmError as exc:
            self.step(title, exc.status is status, f"HSM answered {exc.status.name}")
            return
        self.step(title, False, f"accepted, but the HSM must answer {status.name}")

    async def run(self) -> None:
        self._start()
        record = self.verifier.register_device(contexts=self.kernel.contexts, name="demo-device")
        self.dev_id = record.dev_id
        await self.manager.provision(record.dev_id, record.root_key)
        status = await self.manager.port.status()
        self.step(
            "provision the device (root key shared with the verifier)",
            status.provisioned and status.dev_id == record.dev_id,
            f"device {record.dev_id.hex()} provisioned",
        )

        programs = _programs(self.rng)
        for name in TASK_NAMES:
            self.kernel.create_task(name, task_image(name, 1), programs[name])
        _grant(self.kernel)
        for task in self.kernel.tasks.values():
            package = self.verifier.register_task(self.dev_id, task.tid, task.name, task.image)
            ack = await self.manager.apply_update(package.auth, package.image)
            self.verifier.confirm(self.dev_id, ack)
        names = ", ".join(f"{t.name}@{t.tid}" for t in self.kernel.tasks.values())
        self.step(
            "install reference values (update from v0) and load the tasks",
            len(self.verifier.tasks(self.dev_id)) == len(TASK_NAMES),
            names,
        )

        for _ in range(2):
            await self.kernel.run_period()
        report = await self.attest()
        self.step(
            "attest: one MAC over all tasks",
            report.all_trusted,
            self.verdicts(report) + f"\nevidence: {len(self.last_evidence[1].pack())} bytes",
        )

        control = self.kernel.task("control")
        tampered = bytearray(control.image)
        tampered[100] ^= 0x01
        self.kernel.install("control", bytes(tampered))
        await self.kernel.load("control")
        report = await self.attest()
        self.step(
            "tamper with control's stored image and reload it",
            report.failed == [control.tid]
            and all(
                v.verdict is Verdict.TRUSTED for c, v in report.verdicts.items() if c != control.tid
            ),
            self.verdicts(report),
        )

        self.relying_party(control.tid)

        new_image = task_image("control", 2)
        package = self.verifier.prepare_update(self.dev_id, control.tid, new_image)
        self.update_auth = package.auth
        ack = await self.manager.apply_update(package.auth, package.image)
        confirmed = self.verifier.confirm(self.dev_id, ack)
        report = await self.attest()
        self.step(
            "signature-free update of control to v2, reload, attest",
            confirmed.version == 2 and report.all_trusted,
            f"UPDATE {package.auth.old}->{package.auth.new}, ack confirmed\n"
            + self.verdicts(report),
        )

        await self.attacks(control.tid, record.root_key)
        await self.race()
        await self.hijack()

        report = await self.attest()
        self.step(
            "attest again: the attacks changed nothing", report.all_trusted, self.verdicts(report)
        )

    def relying_party(self, failed_ctx: int) -> None:
        """A relying party checks the last EAR with PyJWT (ES256, the verifier's JWKS) and acts
        on it: it takes sensor's readings (affirming) and refuses control's (contraindicated).
        The same EAR with one claim changed must not verify."""
        import base64
        import json

        from mchsm.sw.service.client import verify_ear

        token = self.verifier.last_ear
        try:
            if token is None:
                raise VerifierError("the verifier gave no EAR")
            claims = verify_ear(token, self.verifier.jwks())
            subs = claims["submods"]
            control = subs.get("control", {}).get("ear.status")
            sensor = subs.get("sensor", {}).get("ear.status")
            head, body, sig = token.split(".")
            doc = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            doc["submods"]["control"]["ear.status"] = "affirming"
            forged_body = base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
            try:
                verify_ear(f"{head}.{forged_body}.{sig}", self.verifier.jwks())
                forged = "ACCEPTED"
            except AttestationError:
                forged = "refused"
        except (VerifierError, KeyError, ValueError) as exc:
            self.step("relying party checks the EAR and acts on control's status", False, str(exc))
            return
        self.step(
            "relying party checks the EAR (PyJWT, ES256, verifier's JWKS) and acts on it",
            control == "contraindicated"
            and sensor == "affirming"
            and subs["control"]["ear.mchsm.context"] == failed_ctx
            and forged == "refused",
            f"EAR from {claims['iss']}: control {control} -> its data refused; "
            f"sensor {sensor} -> its readings used\n"
            f"the same EAR with control's status rewritten to affirming: {forged}",
        )

    async def attacks(self, ctx: int, root_key: bytes) -> None:
        port = self.manager.port
        auth = self.update_auth
        await self.expect_hsm_refusal(
            "replay the captured update v1->v2", Status.ERR_VERSION, lambda: port.update(auth)
        )

        old_ref = reference(task_image("control", 1))
        k_upd = derive_upd_key(root_key)  # an insider with K_upd: the version rule still holds
        downgrade = UpdateAuth.issue(k_upd, self.dev_id, ctx, 2, 1, old_ref)
        await self.expect_hsm_refusal(
            "roll control back from v2 to v1 (validly MAC'd)",
            Status.ERR_ROLLBACK,
            lambda: port.update(downgrade),
        )

        evil = make_image("control", 3) + b"backdoor"
        genuine = self.verifier.prepare_update(self.dev_id, ctx, task_image("control", 3))
        forged = UpdateAuth(ctx=ctx, old=2, new=3, ref=reference(evil), tag=genuine.auth.tag)
        await self.expect_hsm_refusal(
            "install an attacker's image with a forged tag",
            Status.ERR_AUTH,
            lambda: port.update(forged),
        )
        # the genuine v3 authorisation whose tag the attacker reused never reached the device
        self.verifier.cancel_update(self.dev_id, ctx)

        nonce, evidence = self.last_evidence
        try:
            self.verifier.verify(self.dev_id, nonce, evidence)
            self.step("present the last evidence again (reused nonce)", False, "accepted")
        except AttestationError as exc:
            self.step("present the last evidence again (reused nonce)", True, f"rejected: {exc}")

        other = self.verifier.register_device(contexts=self.kernel.contexts, name="other")
        challenge = self.verifier.challenge(other.dev_id, sel=evidence.sel)
        fresh = await self.manager.attest(challenge.nonce, challenge.sel)
        try:
            self.verifier.verify(other.dev_id, challenge.nonce, fresh)
            self.step("present this device's evidence as another device's", False, "accepted")
        except AttestationError as exc:
            self.step(
                "present this device's evidence as another device's", True, f"rejected: {exc}"
            )

        sensor = self.kernel.task("sensor")
        sensor_port = self.kernel._hsm_port(sensor)
        reply = await sensor_port.call(Cmd.READ_CTX, ctx)
        reset = await sensor_port.call(Cmd.RESET, ctx)
        self.step(
            "a task names another task's context (READ_CTX, RESET)",
            reply.status is Status.ERR_DENIED and reset.status is Status.ERR_DENIED,
            f"READ_CTX -> {reply.status.name}, RESET -> {reset.status.name}",
        )

    async def race(self) -> None:
        """A hostile task races the manager's MEASURE of control's image, now with a payload
        appended: after every bus access of the manager it writes LEN (the length of the good
        part, which a shared LEN register would have let it impose), a DATA word or a CLAIM.
        The mailbox refuses them all while the manager holds it, so the whole image is measured
        and control attests failed; the good image is then loaded again."""
        control, sensor = self.kernel.task("control"), self.kernel.task("sensor")
        good = control.image
        payload = good + b"\xeb\xfe payload " * 12

        holding = [False]  # the manager holds the mailbox: from its CLAIM to its RELEASE
        moves = [
            ("LEN", Write(Reg.LEN, len(good))),
            ("DATA", Write(Reg.DATA, 0x90909090)),
            ("CLAIM", Write(Reg.CTRL, Ctrl.CLAIM)),
        ]

        async def poke(ip: Interposer) -> None:
            addr, value = ip.last
            if addr == Reg.CTRL and value in (Ctrl.CLAIM, Ctrl.RELEASE):
                holding[0] = value == Ctrl.CLAIM
            if holding[0]:  # between the manager's commands there is nothing to race
                label, op = moves[ip.count % len(moves)]
                await ip.poke(sensor.tid, op, label)

        racing = Interposer(self.driver.transport, MANAGER, dict.fromkeys(range(1, 4000), poke))
        self.kernel.install("control", payload)
        self.driver.transport = racing
        try:
            measured = await self.kernel.load("control")
        finally:
            self.driver.transport = racing.inner
        report = await self.attest()
        steered = [label for label, outcome in racing.seen if outcome != "refused"]
        self.kernel.install("control", good)
        await self.kernel.load("control")
        self.step(
            "a task races the manager's MEASURE (LEN, DATA, CLAIM between its accesses)",
            report.failed == [control.tid]
            and measured == sha256(payload)
            and bool(racing.seen)
            and not steered,
            f"sensor tried {len(racing.seen)} accesses while the manager held the mailbox: "
            f"{len(racing.seen) - len(steered)} refused\n"
            f"the whole {len(payload)}-byte image was measured; " + self.verdicts(report),
        )

    async def hijack(self) -> None:
        """comms is hijacked and exfiltrates over IPC; the manager's detector must catch it.

        Every task is judged from the detector's first period against the behaviour profile
        its image carries (the manager believes it because the HSM says the image is the
        authorised one).  One period runs first, so that the two commands sensor was refused in
        the step before are counted before the detector watches.  DEMO_QUIET periods of genuine
        behaviour must flag nothing.  Then the kernel swaps comms's program for one that does
        its usual work and also sends chunks of its memory to logger, over a capability comms
        holds but never used, as an attacker controlling its data path would.  The step passes
        only if comms (and nothing else) is flagged within DEMO_MAX_DELAY periods, SET_ANOMALY
        makes its next TASK_MAC fail and attestation report exactly comms failed, and reloading
        the genuine program clears ANOMALY and the detector's verdict on comms.
        """
        comms = self.kernel.task("comms")
        genuine = comms.program
        assert genuine is not None
        await self.kernel.run_period()
        detector = AnomalyDetector()
        await self.manager.watch(detector)
        self.kernel.grant("comms", "logger")
        for _ in range(DEMO_QUIET):
            await self.manager.run_period()
        quiet = not self.manager.detections
        bound = all(detector.state(t.tid).bound for t in self.kernel.tasks.values())

        comms.program = exfiltrating(genuine, "logger", self.rng)
        delay = 0
        for period in range(1, DEMO_MAX_DELAY + 1):
            if await self.manager.run_period():
                delay = period
                break
        after = await self.manager.run_period()  # the hijacked comms tries its TASK_MAC again
        last = self.kernel._hsm_port(comms).last
        refused = last is not None and last.status is Status.ERR_NOT_TRUSTED
        report = await self.attest()

        comms.program = genuine
        await self.manager.reload(comms.tid)
        info = await self.manager.port.read_ctx(comms.tid)
        state = detector.state(comms.tid)
        flagged = [d.tid for d in self.manager.detections]
        names = {t.tid: t.name for t in self.kernel.tasks.values()}
        found = (
            f"comms flagged after {delay} period(s): "
            f"{self.manager.detections[0].explain(names=names)}"
            if delay
            else f"comms not flagged within {DEMO_MAX_DELAY} periods"
        )
        self.step(
            "hijack comms to exfiltrate over IPC: detector flags it, reload clears ANOMALY",
            quiet
            and delay > 0
            and flagged == [comms.tid]
            and not after
            and refused
            and report.failed == [comms.tid]
            and all(
                v.verdict is Verdict.TRUSTED for c, v in report.verdicts.items() if c != comms.tid
            )
            and info.ok
            and bound
            and state.trained
            and not state.flagged
            and state.cusum == 0,
            f"tasks judged against the profiles in their images "
            f"({'verified' if bound else 'NOT all verified'}); {DEMO_QUIET} genuine periods: "
            f"{'no task flagged' if quiet else 'a task was flagged'}\n{found}\n"
            f"SET_ANOMALY; comms's next TASK_MAC -> "
            f"{last.status.name if last is not None else 'none'}\n"
            f"{self.verdicts(report)}\n"
            f"reloaded: comms ok={info.ok}; detector re-armed on comms (same profile)",
        )


async def run_story(
    driver: HsmDriver,
    db_path: Path | str | None,
    *,
    backend: str,
    contexts: int,
    seed: int = 1,
    verifier_url: str | None = None,
    token_file: str | None = None,
) -> DemoReport:
    """Tell the whole story on ``driver``.  The verifier runs in this process over the registry
    ``db_path`` (a SQLite file, its KEK beside it unless the environment names one, or a
    postgresql:// URL), or is the service at ``verifier_url`` (admin calls with the token in
    ``token_file``): the same steps, the same outcomes."""
    report = DemoReport(backend=backend, contexts=contexts)
    try:
        verifier = open_verifier(db_path, verifier_url, token_file)
    except VerifierError as exc:
        report.steps.append(Step("reach the verifier", False, str(exc)))
        return report
    report.verifier = verifier.where
    try:
        story = _Story(driver, verifier, report, contexts, seed)
        try:
            await story.run()
        except Exception as exc:  # a step that blew up is a failed step, reported as such
            where = traceback.extract_tb(exc.__traceback__)[-1]
            report.steps.append(
                Step(
                    "unexpected error",
                    False,
                    f"{type(exc).__name__}: {exc}\nat {Path(where.filename).name}:{where.lineno}",
                )
            )
    finally:
        verifier.close()
    return report
