"""Golden model of the multi-context HSM: what the RTL must do, bit for bit.

The model works at the command level (code, context argument, declared length, streamed data)
and follows ``docs/protocol.md`` literally, including the order in which errors are checked, so
that the RTL can be compared with it result by result and state by state.  It never raises for
bad command input: every command ends in a :class:`~mchsm.constants.Status`.  The register-level
front end that puts this behind the mailbox lives in :mod:`mchsm.sw.mailbox`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac

from mchsm.constants import (
    DEFAULT_CONTEXTS,
    DEVICE_ID_SIZE,
    MANAGER,
    MESSAGE_LAYOUTS,
    MONITOR_BUDGET,
    MONITOR_FAIL_LIMIT,
    PROTOCOL_VERSION,
    SHA_BLOCK_SIZE,
    Access,
    Cmd,
    CtxFlag,
    Status,
    check_build,
    command_spec,
)
from mchsm.sw.errors import ArgumentTypeError, MchsmError
from mchsm.sw.protocol import (
    ZERO_DIGEST,
    CtxInfo,
    Evidence,
    StatusInfo,
    UpdateAck,
    UpdateAuth,
    derive_att_key,
    derive_task_key,
    derive_upd_key,
    sha256,
    tags_equal,
    unpack,
    update_tag,
)

__all__ = ["ContextState", "HsmBusyError", "HsmModel", "HsmState", "Response"]

U32_MAX = 0xFFFF_FFFF


class HsmBusyError(MchsmError, RuntimeError):
    """A command was started while another one runs; the mailbox ignores such writes."""


@dataclass(frozen=True)
class Response:
    """Outcome of one command: a status and, when it is OK, the result bytes."""

    status: Status
    result: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@dataclass(frozen=True)
class ContextState:
    """Public state of one context (everything READ_CTX shows)."""

    measurement: bytes = ZERO_DIGEST
    reference: bytes = ZERO_DIGEST
    version: int = 0
    loaded: bool = False
    anomaly: bool = False

    @property
    def match(self) -> bool:
        return self.version > 0 and self.measurement == self.reference

    @property
    def ok(self) -> bool:
        return self.loaded and self.match and not self.anomaly

    @property
    def flags(self) -> CtxFlag:
        flags = CtxFlag(0)
        if self.loaded:
            flags |= CtxFlag.LOADED
        if self.anomaly:
            flags |= CtxFlag.ANOMALY
        if self.match:
            flags |= CtxFlag.MATCH
        if self.ok:
            flags |= CtxFlag.OK
        return flags


@dataclass(frozen=True)
class HsmState:
    """Everything about the HSM that is not a key: what differential tests compare."""

    contexts: tuple[ContextState, ...]
    provisioned: bool = False
    dev_id: bytes = bytes(DEVICE_ID_SIZE)
    counter: int = 0
    #: callers that have imported an HMAC key into their own slot
    hmac_keys: frozenset[int] = frozenset()

    def mask(self, predicate: str) -> int:
        """Bit i-1 set for every context i whose ``predicate`` property is true."""
        out = 0
        for index, ctx in enumerate(self.contexts):
            if getattr(ctx, predicate):
                out |= 1 << index
        return out


@dataclass
class _Keys:
    root: bytes
    att: bytes
    upd: bytes


@dataclass
class _Running:
    """The command currently taking its data."""

    caller: int
    cmd: Cmd
    ctx: int
    remaining: int
    buffer: bytearray = field(default_factory=bytearray)
    stream: hashes.Hash | _hmac.HMAC | None = None  #: incremental hash/HMAC of streamed data
    key_hash: hashes.Hash | None = None  #: HMAC_KEY: hash of a key longer than a block

    def digest(self) -> bytes:
        """The streamed command's hash or MAC of all its data."""
        assert self.stream is not None, "only streamed commands have a digest"
        return self.stream.finalize()


class HsmModel:
    """The multi-context HSM as a Python object.

    Parameters
    ----------
    contexts : int
        Number of task contexts N (1..32).
    budget : int
        Monitor: commands a task may issue per monitoring period (0: no limit).
    fail_limit : int
        Monitor: failed commands of a task, since its last RESET, that flag it (0: no limit).
    """

    def __init__(
        self,
        contexts: int = DEFAULT_CONTEXTS,
        *,
        budget: int = MONITOR_BUDGET,
        fail_limit: int = MONITOR_FAIL_LIMIT,
    ) -> None:
        check_build(contexts, budget, fail_limit)
        self.contexts = contexts
        self.budget = budget
        self.fail_limit = fail_limit
        self._commands = [0] * contexts  #: monitor: commands of each task this period
        self._failures = [0] * contexts  #: monitor: failed commands of each task since RESET
        self._state = HsmState(contexts=(ContextState(),) * contexts)
        self._keys: _Keys | None = None
        self._hmac_keys: dict[int, bytes] = {}  #: each caller's own HMAC key slot
        self._running: _Running | None = None

    # -- inspection -------------------------------------------------------------------------

    @property
    def state(self) -> HsmState:
        """A snapshot of the public state (immutable)."""
        return self._state

    @property
    def busy(self) -> bool:
        return self._running is not None

    @property
    def remaining(self) -> int:
        """Bytes the running command still expects (0 when idle)."""
        return self._running.remaining if self._running is not None else 0

    def context(self, ctx: int) -> ContextState:
        return self._state.contexts[ctx - 1]

    # -- command interface --------------------------------------------------------------------

    def execute(
        self,
        caller: int,
        cmd: int,
        ctx: int,
        data: bytes | Iterable[bytes] = b"",
        length: int | None = None,
    ) -> Response:
        """Run one whole command.  ``data`` may be bytes or an iterable of chunks (streamed);
        ``length`` defaults to the length of ``data`` (then ``data`` must be bytes)."""
        if length is None:
            if not isinstance(data, bytes | bytearray):
                raise ArgumentTypeError("length is required when data is streamed as chunks")
            length = len(data)
        response = self.start(caller, cmd, ctx, length)
        if response is not None:
            return response
        chunks = [data] if isinstance(data, bytes | bytearray) else data
        for chunk in chunks:
            response = self.feed(bytes(chunk))
            if response is not None:
                return response
        return self.abort()

    def start(self, caller: int, cmd: int, ctx: int, length: int) -> Response | None:
        """Issue a command: run checks 1-6 of the spec.

        Returns the response when the command is already finished (an early error, or a
        command without data), otherwise ``None``: the command then waits for ``length``
        bytes through :meth:`feed`.
        """
        if self._running is not None:
            raise HsmBusyError("a command is already running")
        self._count_command(caller)
        status = self._precheck(caller, cmd, ctx, length)
        if status is not Status.OK:
            return self._end(caller, Response(status))
        code = Cmd(cmd)
        running = _Running(caller=caller, cmd=code, ctx=ctx, remaining=length)
        if code in (Cmd.MEASURE, Cmd.HASH):
            running.stream = hashes.Hash(hashes.SHA256())
        elif code is Cmd.HMAC:
            running.stream = _hmac.HMAC(self._hmac_keys[caller], hashes.SHA256())
        elif code is Cmd.TASK_MAC:
            assert self._keys is not None
            key = derive_task_key(self._keys.root, caller, self.context(caller).reference)
            running.stream = _hmac.HMAC(key, hashes.SHA256())
        self._running = running
        if length == 0:
            return self._complete()
        return None

    def feed(self, data: bytes) -> Response | None:
        """Give the running command more data; bytes beyond its declared length are ignored.

        Returns the response once the last byte has arrived, else ``None``.
        """
        running = self._running
        if running is None:
            return None
        data = data[: running.remaining]
        running.remaining -= len(data)
        if running.stream is not None:
            running.stream.update(data)
        elif running.cmd is Cmd.HMAC_KEY and running.key_hash is not None:
            running.key_hash.update(data)
        else:
            running.buffer += data
            if running.cmd is Cmd.HMAC_KEY and len(running.buffer) > SHA_BLOCK_SIZE:
                running.key_hash = hashes.Hash(hashes.SHA256())
                running.key_hash.update(bytes(running.buffer))
                running.buffer.clear()
        if running.remaining == 0:
            return self._complete()
        return None

    def abort(self) -> Response:
        """End the running command without any effect (but for the monitor's count)."""
        caller = self._running.caller if self._running is not None else MANAGER
        self._running = None
        return self._end(caller, Response(Status.ERR_ABORTED))

    # -- the monitor ----------------------------------------------------------------------------

    def _count_command(self, caller: int) -> None:
        """Count a task's command as it is issued; over the budget flags the task."""
        if 1 <= caller <= self.contexts:
            self._commands[caller - 1] = min(self._commands[caller - 1] + 1, 255)
            if self.budget and self._commands[caller - 1] > self.budget:
                self._set_context(caller, anomaly=True)

    def _end(self, caller: int, response: Response) -> Response:
        """Count a task's failed command; reaching the limit flags the task.

        An aborted command is not counted: it checked nothing beyond checks 1-6 (which a
        failing command would have failed at once), and the manager's preemptions abort
        honest tasks' commands.
        """
        if response.status not in (Status.OK, Status.ERR_ABORTED) and 1 <= caller <= self.contexts:
            self._failures[caller - 1] = min(self._failures[caller - 1] + 1, 255)
            if self.fail_limit and self._failures[caller - 1] >= self.fail_limit:
                self._set_context(caller, anomaly=True)
        return response

    # -- checks -------------------------------------------------------------------------------

    def _precheck(self, caller: int, cmd: int, ctx: int, length: int) -> Status:
        try:
            code = Cmd(cmd)
        except ValueError:
            return Status.ERR_UNKNOWN_CMD
        spec = command_spec(code)
        if not 0 <= caller <= self.contexts:
            return Status.ERR_DENIED
        is_manager = caller == MANAGER
        if spec.access is Access.MANAGER and not is_manager:
            return Status.ERR_DENIED
        if spec.access is Access.TASK and is_manager:
            return Status.ERR_DENIED
        if spec.access is Access.MANAGER_OR_OWN and not is_manager and ctx != caller:
            return Status.ERR_DENIED
        if spec.provisioned is True and not self._state.provisioned:
            return Status.ERR_NOT_PROVISIONED
        if spec.provisioned is False and self._state.provisioned:
            return Status.ERR_PROVISIONED
        if spec.context:
            if not 1 <= ctx <= self.contexts:
                return Status.ERR_CONTEXT
        elif ctx != 0:
            return Status.ERR_CONTEXT
        if spec.length is not None and length != spec.length:
            return Status.ERR_LENGTH
        if not 0 <= length <= U32_MAX:
            return Status.ERR_LENGTH
        if code is Cmd.TASK_MAC and not self.context(caller).ok:
            return Status.ERR_NOT_TRUSTED
        if code is Cmd.HMAC and caller not in self._hmac_keys:
            return Status.ERR_NO_KEY
        return Status.OK

    # -- command bodies -----------------------------------------------------------------------

    def _complete(self) -> Response:
        running = self._running
        assert running is not None and running.remaining == 0
        self._running = None
        handler = getattr(self, f"_do_{running.cmd.name.lower()}")
        return self._end(running.caller, handler(running))

    def _set_context(self, ctx: int, **changes: Any) -> None:
        contexts = list(self._state.contexts)
        contexts[ctx - 1] = replace(contexts[ctx - 1], **changes)
        self._state = replace(self._state, contexts=tuple(contexts))

    def _do_provision(self, run: _Running) -> Response:
        fields = unpack(MESSAGE_LAYOUTS["PROVISION_DATA"], bytes(run.buffer))
        dev_id, root = bytes(fields["dev_id"]), bytes(fields["root_key"])
        self._keys = _Keys(root=root, att=derive_att_key(root), upd=derive_upd_key(root))
        self._state = replace(self._state, provisioned=True, dev_id=dev_id)
        return Response(Status.OK)

    def _do_status(self, run: _Running) -> Response:
        state = self._state
        visible = U32_MAX if run.caller == MANAGER else 1 << (run.caller - 1)
        result = StatusInfo(
            provisioned=state.provisioned,
            contexts=self.contexts,
            protocol_version=PROTOCOL_VERSION,
            counter=state.counter,
            ok=state.mask("ok") & visible,
            loaded=state.mask("loaded") & visible,
            anomaly=state.mask("anomaly") & visible,
            dev_id=state.dev_id,
        )
        return Response(Status.OK, result.pack())

    def _do_read_ctx(self, run: _Running) -> Response:
        c = self.context(run.ctx)
        result = CtxInfo(
            flags=c.flags, version=c.version, measurement=c.measurement, reference=c.reference
        )
        return Response(Status.OK, result.pack())

    def _do_reset(self, run: _Running) -> Response:
        self._set_context(run.ctx, measurement=ZERO_DIGEST, loaded=False, anomaly=False)
        self._failures[run.ctx - 1] = 0
        return Response(Status.OK)

    def _do_new_period(self, run: _Running) -> Response:
        self._commands = [0] * self.contexts
        return Response(Status.OK)

    def _do_extend(self, run: _Running) -> Response:
        new = sha256(self.context(run.ctx).measurement + bytes(run.buffer))
        self._set_context(run.ctx, measurement=new)
        return Response(Status.OK, new)

    def _do_measure(self, run: _Running) -> Response:
        digest = run.digest()
        new = sha256(self.context(run.ctx).measurement + digest)
        self._set_context(run.ctx, measurement=new, loaded=True)
        return Response(Status.OK, digest)

    def _do_set_anomaly(self, run: _Running) -> Response:
        self._set_context(run.ctx, anomaly=True)
        return Response(Status.OK)

    def _do_attest(self, run: _Running) -> Response:
        assert self._keys is not None
        fields = unpack(MESSAGE_LAYOUTS["ATTEST_DATA"], bytes(run.buffer))
        sel, nonce = int(fields["sel"]), bytes(fields["nonce"])
        if sel == 0 or sel >> self.contexts:
            return Response(Status.ERR_SELECT)
        if self._state.counter == U32_MAX:
            return Response(Status.ERR_COUNTER)
        ok = sel & self._state.mask("ok")
        ctr = self._state.counter + 1
        refs = {i: c.reference for i, c in enumerate(self._state.contexts, 1)}
        evidence = Evidence.issue(self._keys.att, self._state.dev_id, nonce, sel, ok, ctr, refs)
        self._state = replace(self._state, counter=ctr)
        return Response(Status.OK, evidence.pack())

    def _do_update(self, run: _Running) -> Response:
        assert self._keys is not None
        auth = UpdateAuth.from_command(run.ctx, bytes(run.buffer))
        old, new, ref, tag = auth.old, auth.new, auth.ref, auth.tag
        dev_id = self._state.dev_id
        expected = update_tag(self._keys.upd, dev_id, run.ctx, old, new, ref)
        if not tags_equal(expected, tag):
            return Response(Status.ERR_AUTH)
        if old != self.context(run.ctx).version:
            return Response(Status.ERR_VERSION)
        if new <= old:
            return Response(Status.ERR_ROLLBACK)
        # one step: reference, version and LOADED change together
        self._set_context(run.ctx, reference=ref, version=new, loaded=False)
        ack = UpdateAck.issue(self._keys.upd, dev_id, run.ctx, old, new, ref)
        return Response(Status.OK, ack.result())

    def _do_task_mac(self, run: _Running) -> Response:
        return Response(Status.OK, run.digest())

    def _do_hash(self, run: _Running) -> Response:
        return Response(Status.OK, run.digest())

    def _do_hmac(self, run: _Running) -> Response:
        return Response(Status.OK, run.digest())

    def _do_hmac_key(self, run: _Running) -> Response:
        hashed = run.key_hash
        key = hashed.finalize() if hashed is not None else bytes(run.buffer)
        self._hmac_keys[run.caller] = key
        self._state = replace(self._state, hmac_keys=self._state.hmac_keys | {run.caller})
        return Response(Status.OK)
