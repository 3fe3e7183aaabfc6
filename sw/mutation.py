"""Mutation testing of the ProVerif models: a proof only counts if a planted bug breaks it.

``proverif/mutants.json`` lists single-point changes of the models (a field dropped from a MAC,
a check of the HSM or of the verifier removed, a key derivation or label changed, a restriction
removed), each with its class:

- ``must-catch``: the change is a real bug, so ProVerif must answer some query of the model
  differently from ``expected.json`` (a property lost, or an honest run gone);
- ``equivalent``: the change is harmless given the rest of the design (for instance a label
  when the key already separates the messages), so every answer must stay as expected.

A must-catch mutant that no query notices is either a hole in the queries or a limit of what
ProVerif can express; the latter carry an ``argued`` reason (repeated in ``docs/proofs.md``) and
do not fail the run.  :func:`run_mutants` applies every mutant to a copy of its model, runs
ProVerif on a pool of workers and compares each answer with ``expected.json``;
``mchsm prove --mutants`` prints :func:`render_mutants` and exits non-zero when
:func:`failures` is not empty.  :func:`load_mutants` with :func:`apply_mutant` is what the
always-on test uses to keep the list from going stale: every search text must occur exactly
once in the current model.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from enum import StrEnum
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from mchsm.sw.prove import (
    MODEL_PACKAGE,
    ProverifError,
    Verdict,
    _find,
    _load_expected,
    _run_model,
)

__all__ = [
    "MUTANTS_FILE",
    "Mutant",
    "MutantClass",
    "MutantError",
    "MutantResult",
    "apply_mutant",
    "failures",
    "load_mutants",
    "render_mutants",
    "run_mutants",
]

MUTANTS_FILE = "mutants.json"  #: beside the models, in the package mchsm.proverif


class MutantClass(StrEnum):
    """What a mutant must do to the proofs."""

    MUST_CATCH = "must-catch"  #: some answer must differ from expected.json
    EQUIVALENT = "equivalent"  #: every answer must stay as expected


class MutantError(ProverifError):
    """The mutant list is malformed, or a mutant no longer applies to its model."""


@dataclass(frozen=True)
class Mutant:
    """One single-point change of one model (see ``proverif/mutants.json``)."""

    id: str
    model: str  #: file name of the model it changes, e.g. ``update.pv``
    search: str  #: text that occurs exactly once in the model
    replace: str  #: what it becomes
    kind: MutantClass
    rationale: str  #: why it is a bug (must-catch) or harmless (equivalent), in one line
    covers: tuple[str, ...] = ()  #: what it changes, e.g. ``att_msg.nonce``
    argued: str = ""  #: must-catch only: why the model cannot tell, if it cannot


@dataclass(frozen=True)
class MutantResult:
    """What ProVerif said about one mutant."""

    mutant: Mutant
    #: (query index from 1, expected, actual) of every answer that differs from expected.json
    changed: tuple[tuple[int, Verdict, Verdict | None], ...]
    seconds: float
    error: str = ""  #: ProVerif failed or timed out (the mutant did not parse, for instance)

    @property
    def caught(self) -> bool:
        """Some answer differs from what the unmutated model gives."""
        return bool(self.changed) or bool(self.error)

    @property
    def ok(self) -> bool:
        """The result is what the mutant's class asks for (or an argued miss)."""
        if self.mutant.kind is MutantClass.EQUIVALENT:
            return not self.caught
        return self.caught or bool(self.mutant.argued)

    @property
    def status(self) -> str:
        """One word for the table: caught, missed, argued, equivalent, or BROKEN."""
        if self.mutant.kind is MutantClass.EQUIVALENT:
            return "equivalent" if not self.caught else "NOT-EQUIVALENT"
        if self.caught:
            return "caught"
        return "argued" if self.mutant.argued else "MISSED"


def _field(entry: dict[str, object], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str):
        raise MutantError(f"{MUTANTS_FILE}: {where} has no string {key!r}")
    return value


def load_mutants(model_dir: Path | None = None) -> list[Mutant]:
    """The mutants of ``mutants.json`` (beside the models), checked for form, not applied."""
    root: Traversable = files(MODEL_PACKAGE) if model_dir is None else model_dir
    try:
        data = json.loads((root / MUTANTS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MutantError(f"no {MUTANTS_FILE} beside the models") from exc
    except json.JSONDecodeError as exc:
        raise MutantError(f"{MUTANTS_FILE} is not valid JSON: {exc}") from exc
    entries = data.get("mutants") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise MutantError(f'{MUTANTS_FILE} has no "mutants" list')
    mutants: list[Mutant] = []
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise MutantError(f"{MUTANTS_FILE}: entry {n} is not an object")
        where = f"entry {n}"
        kind = _field(entry, "class", where)
        if kind not in {k.value for k in MutantClass}:
            raise MutantError(f"{MUTANTS_FILE}: {where} has class {kind!r}")
        covers = entry.get("covers", [])
        if not isinstance(covers, list) or not all(isinstance(c, str) for c in covers):
            raise MutantError(f"{MUTANTS_FILE}: {where} has a malformed 'covers'")
        argued = entry.get("argued", "")
        if not isinstance(argued, str) or (argued and kind != MutantClass.MUST_CATCH):
            raise MutantError(f"{MUTANTS_FILE}: {where}: only a must-catch mutant is argued")
        mutants.append(
            Mutant(
                id=_field(entry, "id", where),
                model=_field(entry, "model", where),
                search=_field(entry, "search", where),
                replace=_field(entry, "replace", where),
                kind=MutantClass(kind),
                rationale=_field(entry, "rationale", where),
                covers=tuple(covers),
                argued=argued,
            )
        )
    ids = [m.id for m in mutants]
    if len(set(ids)) != len(ids):
        raise MutantError(f"{MUTANTS_FILE}: duplicate ids")
    return mutants


def apply_mutant(mutant: Mutant, text: str) -> str:
    """``text`` (the model) with the mutant applied; it must apply at exactly one place."""
    count = text.count(mutant.search)
    if count != 1:
        raise MutantError(
            f"mutant {mutant.id}: its search text occurs {count} times in {mutant.model}, "
            "not once: the model changed, update proverif/mutants.json"
        )
    if mutant.search == mutant.replace:
        raise MutantError(f"mutant {mutant.id} changes nothing")
    return text.replace(mutant.search, mutant.replace)


def _run_one(
    exe: str, mutant: Mutant, text: str, expected: list[dict[str, str]], timeout: float
) -> MutantResult:
    with tempfile.TemporaryDirectory(prefix=f"mchsm-mutant-{mutant.id}-") as tmp:
        path = Path(tmp) / mutant.model
        path.write_text(apply_mutant(mutant, text), encoding="utf-8")
        run = _run_model(exe, path, timeout)
    changed: list[tuple[int, Verdict, Verdict | None]] = []
    for n, want in enumerate(expected, 1):
        got = run.answers[n - 1][1] if n <= len(run.answers) else None
        if got is not Verdict(want["expected"]):
            changed.append((n, Verdict(want["expected"]), got))
    error = run.error or ("" if len(run.answers) == len(expected) else "answers missing")
    return MutantResult(mutant, tuple(changed), run.seconds, error)


def run_mutants(
    model_dir: Path | None = None,
    proverif: str = "proverif",
    jobs: int = 2,
    timeout: float = 300,
    only: Sequence[str] = (),
    progress: Callable[[int, int, MutantResult], None] | None = None,
) -> list[MutantResult]:
    """Apply every mutant (or those named in ``only``), run ProVerif, compare with expected.

    ``jobs`` ProVerif processes run at once; ``progress(done, total, result)`` is called as each
    mutant finishes.  Results come back in the order of the mutant list.  A mutant that no
    longer applies raises :class:`MutantError` before anything runs.
    """
    exe = _find(proverif)
    root: Traversable = files(MODEL_PACKAGE) if model_dir is None else model_dir
    expected = _load_expected(root / "expected.json")
    mutants = load_mutants(model_dir)
    if only:
        unknown = sorted(set(only) - {m.id for m in mutants})
        if unknown:
            raise MutantError(f"no mutant named {', '.join(unknown)}")
        mutants = [m for m in mutants if m.id in set(only)]
    texts: dict[str, str] = {}
    for m in mutants:
        if m.model not in expected:
            raise MutantError(f"mutant {m.id}: {m.model} is not in expected.json")
        text = texts.setdefault(m.model, (root / m.model).read_text(encoding="utf-8"))
        apply_mutant(m, text)  # fail early, before any run
    results: dict[str, MutantResult] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [
            pool.submit(_run_one, exe, m, texts[m.model], expected[m.model], timeout)
            for m in mutants
        ]
        for future in as_completed(futures):
            result = future.result()
            results[result.mutant.id] = result
            if progress is not None:
                progress(len(results), len(mutants), result)
    return [results[m.id] for m in mutants]


def failures(results: Sequence[MutantResult]) -> list[MutantResult]:
    """Must-catch mutants missed without an argument, and equivalent ones that broke a proof."""
    return [r for r in results if not r.ok]


def describe(result: MutantResult) -> str:
    """Which queries noticed the mutant, e.g. ``q6 true->false, q7 true->cannot be proved``."""
    if result.error and not result.changed:
        return result.error
    parts = [
        f"q{n} {want.value}->{got.value if got else 'none'}" for n, want, got in result.changed
    ]
    return ", ".join(parts) + (f" ({result.error})" if result.error else "")


def render_mutants(results: Sequence[MutantResult]) -> str:
    """A table, one line per mutant, and the mutation score."""
    head = ("mutant", "model", "class", "status", "time", "noticed by")
    rows = [
        (
            r.mutant.id,
            r.mutant.model,
            r.mutant.kind.value,
            r.status,
            f"{r.seconds:.1f}s",
            describe(r) if r.caught else (r.mutant.argued and "argued: see docs/proofs.md"),
        )
        for r in results
    ]
    widths = [max(len(row[k]) for row in [head, *rows]) for k in range(len(head) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in [head, *rows]
    ]
    lines.insert(1, "-" * min(110, max(len(line) for line in lines)))
    must = [r for r in results if r.mutant.kind is MutantClass.MUST_CATCH]
    caught = sum(r.caught for r in must)
    argued = sum(not r.caught and bool(r.mutant.argued) for r in must)
    equivalent = [r for r in results if r.mutant.kind is MutantClass.EQUIVALENT]
    held = sum(not r.caught for r in equivalent)
    bad = len(failures(results))
    lines.append(
        f"must-catch: {caught}/{len(must)} caught, {argued} argued, "
        f"{len(must) - caught - argued} missed; equivalent: {held}/{len(equivalent)} still prove; "
        + (f"{bad} failure(s)" if bad else "no failures")
    )
    return "\n".join(lines)
