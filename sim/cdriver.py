"""The C driver against the RTL, and the same scenario through the Python driver.

``mchsm/c/mchsm_hsm.c`` is the driver a firmware author starts from (``mchsm rtl export`` writes
it beside ``mchsm_regs.h``).  It is only worth starting from if it speaks the mailbox protocol
the way the hardware and the Python driver do, so the test suite runs one scenario both ways
and compares the results line by line:

* in C: ``sim/cdriver_tb.cpp`` links the driver with the exported Verilog under Verilator (no
  cocotb; :mod:`mchsm.sim.cdriver_build` builds and caches it) and prints one line per result;
* in Python: :func:`scenario_job` runs the same steps through :class:`~mchsm.sw.driver.HsmDriver`
  on any backend (:func:`mchsm.sim.backends.run_on_backend`) and returns the same lines.

The scenario: probe, provision, updates from version 0 authorised by the verifier (and a forged
one), resets, images measured (one in memory, one streamed in odd-sized chunks, a wrong one, an
empty one), contexts read, attestation with the verifier's nonce, task MACs, hashes, HMAC keys
and HMACs, accesses of a caller that does not hold the mailbox (refused with ``err``), a caller
that gives up waiting for it, and the manager preempting a task before its data is in (aborted;
the driver issues it again when it may) and after it ran (the result is lost, the command is
not repeated).  Nothing in the testbench is cryptography: :func:`make_inputs` prepares the
verifier's authorisations and every other input in Python and hands them over as a file.

    python -m mchsm.sim.cdriver [--backend amaranth] [--show]   # build (cached), run, compare
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any

from mchsm.constants import (
    DEVICE_ID_SIZE,
    MANAGER,
    NONCE_SIZE,
    ROOT_KEY_SIZE,
    Cmd,
    Ctrl,
    Reg,
    ctx_bit,
)
from mchsm.sim.cdriver_build import C_ONLY, CONTEXTS, build_testbench, run_testbench
from mchsm.sw.command import REFUSED, Outcome, Read, Write
from mchsm.sw.driver import CtxInfo, HsmDriver, Reply, StatusInfo, Transport
from mchsm.sw.errors import (
    ArgumentError,
    HsmError,
    MailboxBusyError,
    MailboxLostError,
    TransportError,
)
from mchsm.sw.interpose import perform
from mchsm.sw.protocol import UpdateAuth, attest_data, derive_upd_key, reference

__all__ = ["Inputs", "Preempter", "inputs_text", "make_inputs", "parse_inputs", "scenario_job"]

# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

Inputs = dict[str, list[str]]


def _chunks(total: int, rng: random.Random) -> list[int]:
    """Odd chunk sizes adding up to ``total``: the streamed image crosses words at every
    offset."""
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(min(rng.choice((1, 2, 3, 5, 7, 11, 13, 64, 127)), total - sum(sizes)))
    return sizes


def make_inputs(contexts: int = CONTEXTS, seed: int = 21) -> Inputs:
    """Everything the scenario needs, as ``name -> words`` (hex bytes or decimal numbers).

    Contexts 1-3 get an update from version 0 authorised by the verifier (the tags are computed
    here, with the root key the manager provisions); context 4 gets a forged one.  Context 3 is
    then measured with an image other than the authorised one, context 4 with an empty image.
    """
    if contexts < 4:
        raise ArgumentError(f"the scenario needs at least 4 contexts, not {contexts}")
    rng = random.Random(seed)
    dev_id, root = rng.randbytes(DEVICE_ID_SIZE), rng.randbytes(ROOT_KEY_SIZE)
    images = {1: rng.randbytes(300), 2: rng.randbytes(1000), 3: rng.randbytes(200)}
    k_upd = derive_upd_key(root)
    out: Inputs = {
        "contexts": [str(contexts)],
        "dev_id": [dev_id.hex()],
        "root_key": [root.hex()],
        "nonce": [rng.randbytes(NONCE_SIZE).hex()],
        "sel": [str(sum(ctx_bit(i) for i in range(1, 5)))],
        "chunks.2": [str(n) for n in _chunks(len(images[2]), rng)],
        "wrong.3": [rng.randbytes(200).hex()],
        "message": [rng.randbytes(100).hex()],
        "hash_data": [rng.randbytes(200).hex()],
        "hmac_key": [rng.randbytes(40).hex()],
        "hmac_data": [rng.randbytes(150).hex()],
        "block": [rng.randbytes(64).hex()],
    }
    for ctx, image in images.items():
        out[f"image.{ctx}"] = [image.hex()]
        auth = UpdateAuth.issue(k_upd, dev_id, ctx, 0, 1, reference(image))
        out[f"update.{ctx}"] = [str(ctx), "0", "1", auth.ref.hex(), auth.tag.hex()]
    forged = UpdateAuth.issue(k_upd, dev_id, 4, 0, 1, reference(b""))
    tag = bytes([forged.tag[0] ^ 1]) + forged.tag[1:]
    out["update.4.forged"] = ["4", "0", "1", forged.ref.hex(), tag.hex()]
    return out


def inputs_text(inputs: Inputs) -> str:
    """The testbench's input file: one ``name words...`` line each (``-`` for no bytes)."""
    return "".join(
        f"{name} {' '.join(w or '-' for w in words)}\n" for name, words in inputs.items()
    )


def parse_inputs(text: str) -> Inputs:
    out: Inputs = {}
    for line in text.splitlines():
        if line.strip():
            name, *words = line.split()
            out[name] = words
    return out


# ---------------------------------------------------------------------------------------------
# The scenario through the Python driver
# ---------------------------------------------------------------------------------------------


class Preempter(Transport):
    """Wraps a transport: before the ``nth`` access of ``victim`` to a register (read or
    write), the manager claims the mailbox, and gives it back at once if asked.  The testbench's
    ``Hook`` does the same on its bus; both write a ``hook ...`` line for each of the manager's
    accesses."""

    name = "preempter"

    def __init__(self, inner: Transport, lines: list[str]) -> None:
        self.inner = inner
        self.lines = lines
        self._hook: tuple[int, int, bool, int, bool] | None = None
        self._count = 0

    def arm(self, victim: int, offset: int, write: bool, nth: int, release: bool) -> None:
        self._hook = (victim, offset, write, nth, release)
        self._count = 0

    async def _before(self, offset: int, write: bool, caller: int) -> None:
        if self._hook is None:
            return
        victim, at, on_write, nth, release = self._hook
        if (caller, offset, write) != (victim, at, on_write):
            return
        self._count += 1
        if self._count != nth:
            return
        self._hook = None
        ops = [("claim", Ctrl.CLAIM)] + ([("release", Ctrl.RELEASE)] if release else [])
        for name, action in ops:
            outcome = await perform(self.inner, MANAGER, Write(Reg.CTRL, action))
            self.lines.append(f"hook manager.{name} {_outcome(outcome)}")

    async def read(self, addr: int, caller: int) -> int:
        await self._before(addr, False, caller)
        return await self.inner.read(addr, caller)

    async def write(self, addr: int, value: int, caller: int) -> None:
        await self._before(addr, True, caller)
        await self.inner.write(addr, value, caller)


def _outcome(outcome: Outcome) -> str:
    return "refused" if outcome is REFUSED else "ack"


def _hex(data: bytes) -> str:
    return data.hex() or "-"


async def _attempt(awaitable: Any) -> tuple[str, Any, int]:
    """(return code as the C driver names it, value, HSM status) of one driver call."""
    try:
        value = await awaitable
    except HsmError as e:
        return "STATUS", None, int(e.status)
    except MailboxBusyError:
        return "BUSY", None, 0
    except MailboxLostError as e:
        return ("LOST_RAN" if e.ran else "LOST"), None, 0
    except TransportError:
        return "BUS", None, 0
    return "OK", value, 0


async def _checked(reply: Awaitable[Reply]) -> bytes:
    """A raw command's result, or the HsmError its status means."""
    return (await reply).check()


def _line(label: str, rc: str, status: int, fields: str = "") -> str:
    text = f"{label} rc={rc}"
    if rc == "STATUS":
        text += f" status={status:02x}"
    if rc == "OK" and fields:
        text += f" {fields}"
    return text


def _status_fields(s: StatusInfo) -> str:
    return (
        f"provisioned={int(s.provisioned)} contexts={s.contexts} version={s.protocol_version} "
        f"counter={s.counter} ok={s.ok:08x} loaded={s.loaded:08x} anomaly={s.anomaly:08x} "
        f"dev_id={_hex(s.dev_id)}"
    )


def _ctx_fields(c: CtxInfo) -> str:
    return (
        f"flags={int(c.flags):08x} version={c.version} measurement={_hex(c.measurement)} "
        f"reference={_hex(c.reference)}"
    )


async def scenario_job(driver: HsmDriver, inputs: str) -> list[str]:
    """The testbench's scenario through the Python driver, on ``driver``'s transport; returns
    the lines the testbench prints (without its ``c-only`` lines).  A backend job:
    ``run_on_backend("model", scenario_job, job_args={"inputs": text})``."""
    given = parse_inputs(inputs)

    def data(name: str) -> bytes:
        return bytes.fromhex(given[name][0].replace("-", ""))

    out: list[str] = []
    pre = Preempter(driver.transport, out)
    drv = HsmDriver(pre)
    mgr = drv.port(MANAGER)
    task = {i: drv.port(i) for i in range(1, int(given["contexts"][0]) + 1)}
    n = int(given["contexts"][0])
    dev_id, root, nonce = data("dev_id"), data("root_key"), data("nonce")
    sel = int(given["sel"][0])

    async def run(label: str, awaitable: Any, fields: Any = None) -> Any:
        rc, value, status = await _attempt(awaitable)
        out.append(_line(label, rc, status, fields(value) if fields and rc == "OK" else ""))
        return value

    async def raw_read(label: str, offset: int, caller: int) -> None:
        got = await perform(pre, caller, Read(offset))
        word = 0 if got is REFUSED else int(got)  # type: ignore[arg-type]  # `is REFUSED` does not narrow
        out.append(f"raw {label} {_outcome(got)} {word:08x}")

    async def raw_write(label: str, offset: int, value: int, caller: int) -> Outcome:
        got = await perform(pre, caller, Write(offset, value))
        out.append(f"raw {label} {_outcome(got)}")
        return got

    def digest(name: str) -> Any:
        return lambda d: f"{name}={_hex(d)}"

    info = await drv.probe()
    out.append(_line("probe", "OK", 0, f"contexts={info.contexts}"))
    await run("status.before", mgr.status(), _status_fields)
    await run("attest.unprovisioned", mgr.attest(nonce, sel))
    await run("provision", mgr.provision(dev_id, root))
    await run("provision.again", mgr.provision(dev_id, root))
    for label in sorted(k for k in given if k.startswith("update.")):
        ctx, old, new, ref, tag = given[label]
        auth = UpdateAuth(int(ctx), int(old), int(new), bytes.fromhex(ref), bytes.fromhex(tag))
        await run(label, mgr.update(auth), lambda a: f"new={a.new} ack={_hex(a.ack)}")
    for i in range(1, n + 1):
        await run(f"reset.{i}", mgr.reset(i))

    await run("measure.1", mgr.measure(1, data("image.1")), digest("digest"))
    image = data("image.2")

    def pieces() -> Iterator[bytes]:
        at = 0
        for size in map(int, given["chunks.2"]):
            yield image[at : at + size]
            at += size

    await run("measure.2.streamed", mgr.measure(2, pieces(), len(image)), digest("digest"))
    await run("measure.3.wrong", mgr.measure(3, data("wrong.3")), digest("digest"))
    await run("measure.4.empty", mgr.measure(4, b""), digest("digest"))
    for i in range(1, n + 1):
        await run(f"read_ctx.{i}", mgr.read_ctx(i), _ctx_fields)
    await run("read_ctx.1.by_task2", task[2].read_ctx(1), _ctx_fields)
    await run("read_ctx.2.by_task2", task[2].read_ctx(2), _ctx_fields)

    await run(
        "attest",
        mgr.attest(nonce, sel),
        lambda e: f"sel={e.sel:08x} ok={e.ok:08x} ctr={e.ctr} tag={_hex(e.tag)}",
    )
    # the Python driver refuses an empty selection before the bus (ArgumentError); the C driver
    # sends it and the HSM answers ERR_SELECT: the raw command does what the C driver does
    await run("attest.empty_sel", _checked(mgr.call(Cmd.ATTEST, data=attest_data(0, nonce))))
    await run("status.manager", mgr.status(), _status_fields)
    await run("status.task1", task[1].status(), _status_fields)

    msg, hashed, key, hdata = (
        data("message"),
        data("hash_data"),
        data("hmac_key"),
        data("hmac_data"),
    )
    await run("task_mac.1", task[1].task_mac(msg), digest("tag"))
    await run("task_mac.3.untrusted", task[3].task_mac(msg), digest("tag"))
    await run("task_mac.manager", mgr.task_mac(msg), digest("tag"))
    await run("hash", task[2].hash(hashed), digest("digest"))
    await run("hash.empty", task[2].hash(b""), digest("digest"))
    await run("hmac.no_key", task[2].hmac(hdata), digest("tag"))
    await run("hmac_key", task[2].hmac_key(key))
    await run("hmac", task[2].hmac(hdata), digest("tag"))
    await run("hmac.other_task", task[3].hmac(hdata), digest("tag"))

    # the C driver's mchsm_claim / mchsm_release, one access each here
    for label in ("claim.task1", "claim.task1.again"):
        got = await perform(pre, 1, Write(Reg.CTRL, Ctrl.CLAIM))
        out.append(_line(label, "OK" if got is None else "BUSY", 0))
    await raw_write("task2.claim", Reg.CTRL, Ctrl.CLAIM, 2)
    await raw_write("task2.len", Reg.LEN, 4, 2)
    await raw_write("task2.release", Reg.CTRL, Ctrl.RELEASE, 2)
    await raw_read("task2.status", Reg.STATUS, 2)
    await raw_read("task2.owner", Reg.OWNER, 2)
    await raw_read("task2.len.read", Reg.LEN, 2)
    await raw_read("task2.result", Reg.RESULT, 2)
    impatient = HsmDriver(pre, claim_limit=3).port(2)
    await run("hash.task2.busy", impatient.hash(hashed), digest("digest"))
    await raw_read("task1.status", Reg.STATUS, 1)
    for label in ("release.task1", "release.task1.again"):
        got = await perform(pre, 1, Write(Reg.CTRL, Ctrl.RELEASE))
        out.append(_line(label, "OK" if got is None else "LOST", 0))

    block = data("block")
    pre.arm(1, Reg.DATA, True, 3, False)
    await run("preempt.data", HsmDriver(pre, retries=0).port(1).hash(block), digest("digest"))
    await raw_read("manager.status", Reg.STATUS, MANAGER)
    await raw_read("manager.owner", Reg.OWNER, MANAGER)
    await raw_read("task1.status.after", Reg.STATUS, 1)
    await raw_write("manager.release", Reg.CTRL, Ctrl.RELEASE, MANAGER)
    pre.arm(1, Reg.DATA, True, 5, True)
    await run("preempt.data.retried", task[1].hash(block), digest("digest"))
    pre.arm(1, Reg.RESULT, False, 1, False)
    await run("preempt.result", task[1].hash(block), digest("digest"))
    await raw_read("manager.status.2", Reg.STATUS, MANAGER)
    await raw_read("manager.result", Reg.RESULT, MANAGER)
    await raw_write("manager.release.2", Reg.CTRL, Ctrl.RELEASE, MANAGER)
    await run("status.end", mgr.status(), _status_fields)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Build the testbench, run the scenario in it and through the Python driver, compare."""
    from mchsm.sim.backends import BACKENDS, run_on_backend

    parser = argparse.ArgumentParser(prog="python -m mchsm.sim.cdriver", description=main.__doc__)
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="model")
    parser.add_argument("--show", action="store_true", help="print the testbench's lines")
    args = parser.parse_args(argv)
    inputs = make_inputs()
    build = build_testbench()
    print(
        f"testbench: {build.executable} ({'cached' if build.cached else 'built'}, "
        f"{build.seconds:.1f} s; cold build took {build.cold_seconds:.1f} s)"
    )
    c = run_testbench(build, inputs_text(inputs))
    py = run_on_backend(
        args.backend, scenario_job, CONTEXTS, job_args={"inputs": inputs_text(inputs)}
    )
    if args.show:
        print("\n".join(c.lines + [C_ONLY + x for x in c.c_only]))
    print(
        f"C driver on Verilator: {len(c.lines)} lines, {int(c.stats.get('cycles', 0))} cycles, "
        f"{c.seconds:.2f} s; Python driver on {args.backend}: {len(py.value)} lines, "
        f"{py.wall_seconds:.2f} s"
    )
    differ = [(a, b) for a, b in zip(c.lines, py.value, strict=False) if a != b]
    if differ or len(c.lines) != len(py.value):
        for a, b in differ[:10]:
            print(f"C:      {a}\nPython: {b}")
        print("the C driver and the Python driver DIFFER")
        return 1
    print("the C driver and the Python driver agree line for line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
