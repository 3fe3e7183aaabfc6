"""Run the ProVerif models of the mchsm protocols and compare every answer with what we expect.

The models (``proverif/*.pv``, the package ``mchsm.proverif``) are the formal side of
``docs/protocol.md``: two models of the protocols that must prove their properties, and
broken variants of them that must be attacked.  A proof only means something if it is checked every
time the models or the spec change, and if a model that stops being attackable (a broken
variant that suddenly "proves") is noticed as loudly as a proof that fails.  So this module
runs ProVerif on every model, reads each ``RESULT`` line, and compares it, query by query and
in order, with ``proverif/expected.json``.  ``mchsm prove`` prints :func:`render_table` and
exits non-zero when :func:`surprises` is not empty.  That the queries notice real bugs is
checked by mutation testing (:mod:`mchsm.sw.mutation`, ``mchsm prove --mutants``).

ProVerif is an OCaml program that is not on PyPI; it is looked up on ``PATH`` and a missing
one raises :class:`ProverifNotFoundError`, whose message says how to install it.

The field order of every MAC'd message lives in :mod:`mchsm.constants` (``ATT_FIELDS`` ...);
``tests/test_proverif.py`` checks the text of the models against it, and the protocol builders
pack messages from the same lists, so the models cannot drift from what the code computes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from mchsm.sw.errors import MchsmError

__all__ = [
    "INSTALL_HINT",
    "MODEL_PACKAGE",
    "ProofResult",
    "ProverifError",
    "ProverifNotFoundError",
    "Verdict",
    "normalize_query",
    "parse_results",
    "proverif_version",
    "render_table",
    "run_proofs",
    "surprises",
]

# ---------------------------------------------------------------------------------------------
# Running ProVerif
# ---------------------------------------------------------------------------------------------

MODEL_PACKAGE = "mchsm.proverif"  #: the package whose data files are the models
EXPECTED_FILE = "expected.json"  #: model file name -> list of {query, expected, property}
INSTALL_HINT = "ProVerif not installed (opam install proverif)"


class Verdict(StrEnum):
    """What ProVerif says about one query, spelt as in its ``RESULT`` lines."""

    TRUE = "true"  #: proven
    FALSE = "false"  #: refuted, with an attack trace (or, for reachability, a run)
    CANNOT = "cannot be proved"  #: neither: an over-approximation ProVerif could not settle


class ProverifError(MchsmError, RuntimeError):
    """ProVerif could not be run on the models at all (as opposed to a surprising answer)."""


class ProverifNotFoundError(ProverifError):
    """The ``proverif`` executable is not on ``PATH``; the message says how to get it."""

    def __init__(self, proverif: str) -> None:
        super().__init__(
            f"{INSTALL_HINT}: no executable {proverif!r} on PATH.  ProVerif is an OCaml "
            "program, not a Python package: install opam (e.g. `apt-get install opam`, then "
            "`opam init`), run `opam install proverif`, then `eval $(opam env)` so that "
            "`proverif` is on PATH, or pass the path of the executable."
        )
        self.proverif = proverif


@dataclass(frozen=True)
class ProofResult:
    """One query of one model: what was expected, what ProVerif said, and why it may differ.

    ``surprise`` is what the CLI exits on: a different verdict, no verdict at all (ProVerif
    failed or timed out), a query with no expectation, or a query whose text is not the one
    the expectation was written for (the models were edited without updating expected.json).
    """

    model: str  #: file name of the model, e.g. ``attestation.pv``
    index: int  #: position of the query in the model, from 1
    query: str  #: the query as ProVerif prints it, normalised (see :func:`normalize_query`)
    expected: Verdict | None  #: from expected.json; None if it lists no such query
    actual: Verdict | None  #: from ProVerif; None if it gave no answer for this query
    seconds: float  #: ProVerif's wall-clock time for the whole model
    description: str = ""  #: the property in plain words, from expected.json
    note: str = ""  #: why this is a surprise beyond the verdicts, or ""

    @property
    def surprise(self) -> bool:
        """True unless ProVerif gave exactly the expected verdict for the expected query."""
        return self.actual is None or self.actual != self.expected or bool(self.note)


_RESULT_RE = re.compile(r"^RESULT (?P<query>.+) (?P<verdict>is true|is false|cannot be proved)\.$")
_SUFFIX_RE = re.compile(r"(?<=[A-Za-z0-9'])_\d+\b")


def normalize_query(text: str) -> str:
    """ProVerif's text of a query without the parts that change from run to run of the tool.

    ProVerif renames variables (``nonce`` becomes ``nonce_5``) and marks names with ``[]``; the
    suffix depends on the whole model, so expectations compare the query without them.
    """
    text = text.replace("[]", "")
    return _SUFFIX_RE.sub("", text).strip()


def parse_results(output: str) -> list[tuple[str, Verdict]]:
    """The (normalised query, verdict) of every ``RESULT`` line of ProVerif's output, in order.

    Lines ``RESULT (even ...)`` and ``RESULT (but ...)`` are ProVerif's remarks about a weaker
    form of the query just answered, not answers to queries of the model, so they are skipped;
    so is the summary at the end, which repeats the answers without the ``RESULT`` prefix.
    """
    results: list[tuple[str, Verdict]] = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("RESULT ("):
            continue
        match = _RESULT_RE.match(line)
        if match is None:
            continue
        word = match["verdict"]
        verdict = Verdict.CANNOT if word == "cannot be proved" else Verdict(word[3:])
        results.append((normalize_query(match["query"]), verdict))
    return results


def proverif_version(proverif: str = "proverif") -> str:
    """The version ProVerif reports (e.g. ``2.05``), for the table heading and the docs."""
    exe = _find(proverif)
    proc = subprocess.run(
        [exe, "-help"], capture_output=True, text=True, encoding="utf-8", errors="replace"
    )
    match = re.search(r"Proverif (\S+?)\.?\s", proc.stdout + proc.stderr)
    return match.group(1) if match else "unknown"


def _find(proverif: str) -> str:
    exe = shutil.which(proverif)
    if exe is None:
        raise ProverifNotFoundError(proverif)
    return exe


@dataclass(frozen=True)
class _Run:
    answers: list[tuple[str, Verdict]]
    seconds: float
    error: str  #: "" when ProVerif ran to the end


def _run_model(exe: str, path: Path, timeout: float) -> _Run:
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [exe, str(path)],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            cwd=path.parent,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode()
        return _Run(parse_results(out), time.monotonic() - start, f"timed out after {timeout:g} s")
    seconds = time.monotonic() - start
    answers = parse_results(proc.stdout)
    error = ""
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        error = f"proverif exited with {proc.returncode}: " + " / ".join(lines[-2:])
    return _Run(answers, seconds, error)


@contextmanager
def _models(model_dir: Path | None) -> Iterator[tuple[dict[str, Path], Traversable]]:
    """The model files as real paths (ProVerif needs files), and the expected.json entry."""
    root: Traversable = resources.files(MODEL_PACKAGE) if model_dir is None else model_dir
    with ExitStack() as stack:
        paths = {
            entry.name: stack.enter_context(resources.as_file(entry))
            for entry in root.iterdir()
            if entry.name.endswith(".pv") and entry.is_file()
        }
        yield dict(sorted(paths.items())), root / EXPECTED_FILE


def _load_expected(entry: Traversable) -> dict[str, list[dict[str, str]]]:
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ProverifError(f"no {EXPECTED_FILE} beside the models") from exc
    except json.JSONDecodeError as exc:
        raise ProverifError(f"{EXPECTED_FILE} is not valid JSON: {exc}") from exc
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ProverifError(f'{EXPECTED_FILE} has no "models" object')
    verdicts = {v.value for v in Verdict}
    for name, queries in models.items():
        if not isinstance(queries, list) or not all(
            isinstance(q, dict)
            and isinstance(q.get("query"), str)
            and q.get("expected") in verdicts
            for q in queries
        ):
            raise ProverifError(
                f"{EXPECTED_FILE}: {name} must be a list of "
                f'{{"query": ..., "expected": one of {sorted(verdicts)}, "property": ...}}'
            )
    return models


def _compare(model: str, run: _Run, expected: list[dict[str, str]] | None) -> list[ProofResult]:
    results: list[ProofResult] = []
    wanted = expected or []
    for n in range(max(len(wanted), len(run.answers))):
        want = wanted[n] if n < len(wanted) else None
        got = run.answers[n] if n < len(run.answers) else None
        notes: list[str] = []
        if expected is None:
            notes.append(f"{model} is not in {EXPECTED_FILE}")
        elif want is None:
            notes.append(f"query not listed in {EXPECTED_FILE}")
        if got is None:
            notes.append(run.error or "ProVerif printed no result for this query")
        elif want is not None and normalize_query(want["query"]) != got[0]:
            notes.append(f"query text differs from {EXPECTED_FILE}: {want['query']}")
        results.append(
            ProofResult(
                model=model,
                index=n + 1,
                query=got[0] if got else (want or {}).get("query", ""),
                expected=Verdict(want["expected"]) if want else None,
                actual=got[1] if got else None,
                seconds=run.seconds,
                description=(want or {}).get("property", ""),
                note="; ".join(notes),
            )
        )
    if not results:
        results.append(
            ProofResult(model, 0, "", None, None, run.seconds, note=run.error or "no queries")
        )
    return results


def run_proofs(
    model_dir: Path | None = None, proverif: str = "proverif", timeout: float = 600
) -> list[ProofResult]:
    """Run ProVerif on every model and compare each answer with ``expected.json``.

    ``model_dir`` (a directory of ``.pv`` files and their ``expected.json``) defaults to the
    installed package :data:`MODEL_PACKAGE`; ``timeout`` is per model, in seconds.

    Raises :class:`ProverifNotFoundError` when ``proverif`` is not on PATH and
    :class:`ProverifError` when ``expected.json`` is missing or malformed.  A model that
    ProVerif rejects, or that runs out of time, yields results with no verdict (surprises), so
    that the other models are still checked and reported.
    """
    exe = _find(proverif)
    results: list[ProofResult] = []
    with _models(model_dir) as (paths, expected_entry):
        expected = _load_expected(expected_entry)
        for name, path in paths.items():
            results.extend(_compare(name, _run_model(exe, path, timeout), expected.get(name)))
        for name in sorted(set(expected) - set(paths)):
            results.append(
                ProofResult(name, 0, "", None, None, 0.0, note="model listed but not found")
            )
    return results


def surprises(results: Sequence[ProofResult]) -> list[ProofResult]:
    """The results that differ from the expectations: what ``mchsm prove`` fails on."""
    return [r for r in results if r.surprise]


def render_table(results: Sequence[ProofResult]) -> str:
    """A plain-text table, one line per query, and a closing count of the surprises."""
    head = ("model", "#", "expected", "proverif", "time", "status", "property")
    rows = [
        (
            r.model,
            str(r.index),
            r.expected.value if r.expected else "-",
            r.actual.value if r.actual else "-",
            f"{r.seconds:.2f}s",
            "SURPRISE" if r.surprise else "ok",
            (r.description or r.query) + (f"  [{r.note}]" if r.note else ""),
        )
        for r in results
    ]
    widths = [max(len(row[k]) for row in [head, *rows]) for k in range(len(head) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in [head, *rows]
    ]
    lines.insert(1, "-" * min(100, max(len(line) for line in lines)))
    bad = len(surprises(results))
    models = len({r.model for r in results})
    lines.append(
        f"{len(results)} queries in {models} models: "
        + (f"{bad} surprise(s)" if bad else "all as expected")
    )
    return "\n".join(lines)
