"""Jobs that run the same on every backend: the host side of hardware/software co-testing.

Each job is a module-level ``async def job(driver, ...)`` so that it can be handed to the model,
to Amaranth's simulator or, by name, to a cocotb test under Verilator.  Results are plain data
(lists of tuples, dicts) so that backends can be compared with ``==``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mchsm.constants import (
    DEVICE_ID_SIZE,
    MANAGER,
    MAX_CONTEXTS,
    NONCE_SIZE,
    RESULT_WORDS,
    ROOT_KEY_SIZE,
    Cmd,
    Reg,
    command_spec,
)
from mchsm.sw.driver import HsmDriver
from mchsm.sw.errors import BusRefusedError
from mchsm.sw.protocol import (
    UpdateAuth,
    attest_data,
    derive_upd_key,
    provision_data,
    reference,
    update_tag,
)

__all__ = ["Command", "random_commands", "run_commands", "scan_bus"]


@dataclass(frozen=True)
class Command:
    """One raw command as a caller issues it."""

    caller: int
    cmd: int
    ctx: int
    data: bytes
    length: int | None = None  #: declared length when it differs from len(data)


async def run_commands(driver: HsmDriver, commands: Sequence[Command]) -> list[tuple[int, bytes]]:
    """Issue ``commands`` one after the other; return (status, result) of each."""
    out = []
    for c in commands:
        reply = await driver.run(c.caller, c.cmd, c.ctx, c.data, c.length)
        out.append((int(reply.status), reply.result))
    return out


async def scan_bus(driver: HsmDriver, callers: Sequence[int]) -> list[int | None]:
    """Read every word of the register map as each of ``callers`` (for key-leak checks);
    None for a read the mailbox refused."""
    words: list[int | None] = []
    for caller in callers:
        for addr in range(0, Reg.RESULT + 4 * RESULT_WORDS, 4):
            try:
                words.append(await driver.transport.read(addr, caller))
            except BusRefusedError:
                words.append(None)
    return words


def random_commands(seed: int, contexts: int, count: int) -> list[Command]:
    """A random but meaningful command sequence: provisioning, valid and malformed updates,
    loads, attestations, task MACs and garbage, from random callers.

    The sequence is generated without knowing the HSM's answers, so some commands fail; the
    point is that every backend answers each of them the same way.
    """
    rng = random.Random(seed)
    dev_id = rng.randbytes(DEVICE_ID_SIZE)
    root = rng.randbytes(ROOT_KEY_SIZE)
    images = {i: rng.randbytes(rng.randrange(0, 300)) for i in range(1, contexts + 1)}
    versions = dict.fromkeys(range(1, contexts + 1), 0)
    k_upd = derive_upd_key(root)
    commands: list[Command] = []
    if rng.random() < 0.9:
        commands.append(Command(MANAGER, Cmd.PROVISION, 0, provision_data(dev_id, root)))

    def caller() -> int:
        return rng.choice([MANAGER, MANAGER, rng.randrange(1, contexts + 1), contexts + 1])

    def ctx() -> int:
        return rng.choice([rng.randrange(1, contexts + 1)] * 4 + [0, contexts + 1])

    for _ in range(count):
        kind = rng.randrange(12)
        if kind == 0:  # a well-formed update, sometimes replayed or rolled back
            i = rng.randrange(1, contexts + 1)
            old = versions[i] if rng.random() < 0.8 else rng.randrange(0, 4)
            new = old + rng.choice([1, 1, 2, 0, -1]) if old > 0 else 1
            if rng.random() < 0.5:
                images[i] = rng.randbytes(rng.randrange(0, 300))
            ref = reference(images[i])
            tag = update_tag(k_upd, dev_id, i, old, max(new, 0), ref)
            if rng.random() < 0.1:
                tag = bytes(32)
            auth = UpdateAuth(i, old, max(new, 0), ref, tag)
            commands.append(Command(MANAGER, Cmd.UPDATE, i, auth.command_data()))
            if new > old and old == versions[i]:
                versions[i] = new
        elif kind in (1, 2):  # load a task: RESET then MEASURE its image
            i = rng.randrange(1, contexts + 1)
            commands.append(Command(MANAGER, Cmd.RESET, i, b""))
            image = images[i] if rng.random() < 0.8 else rng.randbytes(rng.randrange(0, 100))
            commands.append(Command(MANAGER, Cmd.MEASURE, i, image))
        elif kind == 3:
            # the last: a context the device does not have (with MAX_CONTEXTS, no such bit
            # fits the u32 mask: the empty one instead, refused as well)
            beyond = 1 << contexts if contexts < MAX_CONTEXTS else 0
            sel = rng.choice([rng.randrange(1, 1 << contexts), (1 << contexts) - 1, 0, beyond])
            who = caller()  # before the nonce: the order the seeds' sequences were drawn in
            commands.append(
                Command(who, Cmd.ATTEST, 0, attest_data(sel, rng.randbytes(NONCE_SIZE)))
            )
        elif kind == 4:
            commands.append(
                Command(
                    rng.randrange(0, contexts + 2),
                    Cmd.TASK_MAC,
                    0,
                    rng.randbytes(rng.randrange(0, 150)),
                )
            )
        elif kind == 5:
            commands.append(Command(caller(), Cmd.READ_CTX, ctx(), b""))
        elif kind == 6:
            commands.append(Command(caller(), Cmd.STATUS, 0, b""))
        elif kind == 7:
            commands.append(Command(caller(), Cmd.EXTEND, ctx(), rng.randbytes(32)))
        elif kind == 8:
            commands.append(Command(caller(), rng.choice([Cmd.SET_ANOMALY, Cmd.RESET]), ctx(), b""))
            if rng.random() < 0.3:
                commands.append(Command(caller(), Cmd.NEW_PERIOD, 0, b""))
        elif kind == 9:
            who = caller()
            commands.append(Command(who, Cmd.HMAC_KEY, 0, rng.randbytes(rng.randrange(0, 100))))
            commands.append(
                Command(
                    rng.choice([who, caller()]), Cmd.HMAC, 0, rng.randbytes(rng.randrange(0, 130))
                )
            )
        elif kind == 10:
            commands.append(Command(caller(), Cmd.HASH, 0, rng.randbytes(rng.randrange(0, 200))))
        else:  # malformed: unknown codes, wrong lengths, wrong contexts
            code = rng.choice([*list(Cmd), 0x00, 0x05, 0x22, 0x7F, 0xFF])
            spec = command_spec(Cmd(code)) if code in Cmd.__members__.values() else None
            length = spec.length if spec is not None and spec.length is not None else 8
            data = rng.randbytes(max(0, length + rng.choice([-1, 1, 0])))
            commands.append(Command(caller(), code, rng.randrange(0, contexts + 3), data))
    return commands
