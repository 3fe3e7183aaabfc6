"""The mutant list of the ProVerif models stays current and covers what matters; the harness
classifies mutants correctly.

- always run: every mutant of ``proverif/mutants.json`` applies to the current model (its
  search text occurs exactly once), the list covers every field of every MAC, every label and
  key derivation, every restriction and every check of the HSM and the verifier, and every
  argued mutant is argued in ``docs/proofs.md``;
- the harness on a stand-in ProVerif: caught, missed, argued, equivalent and broken mutants;
- with ProVerif on PATH, two real mutants (the full run is ``make mutants``, about a minute).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import textwrap
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO

from mchsm import constants
from mchsm.cli import main
from mchsm.sw import mutation, prove
from mchsm.sw.mutation import Mutant, MutantClass, MutantError

BASE_MODELS = ("attestation.pv", "update.pv")
MESSAGES = {
    "att_msg": constants.ATT_FIELDS,
    "upd_msg": constants.UPD_FIELDS,
    "ack_msg": constants.ACK_FIELDS,
}
#: the checks of the HSM and of the verifier, by the name mutants give them in "covers"
CHECKS = (
    "hsm.update.tag",
    "hsm.update.v'>v",
    "hsm.update.v==v[i]",
    "hsm.attest.MATCH",
    "hsm.attest.LOADED",
    "hsm.attest.v>0",
    "hsm.attest.sel!=0",
    "hsm.attest.ok=sel&OK",
    "hsm.attest.ANOMALY",
    "hsm.attest.D",
    "hsm.taskmac.MATCH",
    "hsm.taskmac.v>0",
    "hsm.taskmac.ANOMALY",
    "verifier.attest.fresh-nonce",
    "verifier.attest.nonce-once",
    "verifier.attest.sel",
    "verifier.attest.sel!=0",
    "verifier.attest.tag",
    "verifier.attest.verdict-sel",
    "verifier.recovery.sel",
    "verifier.recovery.tag",
    "verifier.update.ack",
    "verifier.update.v'-once",
    "verifier.task.mac",
    "verifier.task.v>0",
)
SKIP_NO_PROVERIF = pytest.mark.skipif(
    shutil.which("proverif") is None, reason="ProVerif not installed (opam install proverif)"
)


def model_text(name: str) -> str:
    return resources.files(prove.MODEL_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def system_code(name: str) -> str:
    text = model_text(name)
    system = text[text.index("==== BEGIN SYSTEM") : text.index("==== END SYSTEM")]
    return re.sub(r"\(\*.*?\*\)", " ", system, flags=re.S)


@pytest.fixture(scope="module")
def mutants() -> list[Mutant]:
    return mutation.load_mutants()


# ---------------------------------------------------------------------------------------------
# always: the list against the current models
# ---------------------------------------------------------------------------------------------


def test_every_mutant_applies_to_the_current_model(mutants: list[Mutant]) -> None:
    assert len(mutants) >= 30
    for m in mutants:
        assert m.model in BASE_MODELS, m.id
        assert m.rationale.strip(), m.id
        assert m.covers, m.id
        mutated = mutation.apply_mutant(m, model_text(m.model))
        assert mutated != model_text(m.model)
    kinds = {m.kind for m in mutants}
    assert kinds == set(MutantClass), "both classes are exercised"


def test_mutants_cover_every_mac_field_label_and_kdf(mutants: list[Mutant]) -> None:
    covered = {c for m in mutants for c in m.covers}
    for msg, fields in MESSAGES.items():
        for name, _ in fields:
            assert f"{msg}.{name}" in covered, f"no mutant drops {name} from {msg}"
    for label in ("ATT_LABEL", "UPD_LABEL", "ACK_LABEL"):
        assert f"label.{label}" in covered, label
    for kdf in ("KDF_ATT", "KDF_UPD", "KDF_TASK"):
        assert f"kdf.{kdf}" in covered, kdf
    for name, _ in constants.TASK_KDF_FIELDS[1:]:
        assert f"kdf.KDF_TASK.{name}" in covered, name
    missing = [check for check in CHECKS if check not in covered]
    assert not missing, missing


def test_mutants_remove_every_restriction(mutants: list[Mutant]) -> None:
    code = system_code("attestation.pv")
    restrictions = re.findall(r"^restriction .*?\.$", code, re.M | re.S)
    assert len(restrictions) == 2
    for restriction in restrictions:
        assert any(restriction in m.search and restriction not in m.replace for m in mutants), (
            restriction
        )


def test_mutants_cover_every_check_line(mutants: list[Mutant]) -> None:
    """Every test of a process (a MAC, a version, a mask, a flag) is changed by some mutant."""
    code = system_code("attestation.pv")
    checks = [
        line
        for line in code.splitlines()
        if re.match(r"\s*\(?if ", line)
        and re.search(r" = |>|\|\||not\(", line)
        and not line.lstrip().startswith("if s1 then (if s2")  # D's layout, not a check
    ]
    assert len(checks) >= 12
    for line in checks:
        assert any(line in m.search for m in mutants), f"no mutant changes: {line.strip()}"


def test_argued_mutants_are_argued_in_the_docs(mutants: list[Mutant]) -> None:
    argued = [m for m in mutants if m.argued]
    assert all(m.kind is MutantClass.MUST_CATCH for m in argued)
    docs = (REPO / "docs" / "proofs.md").read_text(encoding="utf-8")
    for m in argued:
        assert f"`{m.id}`" in docs, f"{m.id} is argued but docs/proofs.md does not say why"


def _mutant(search: str, kind: str = "must-catch", **extra: str) -> dict[str, object]:
    return {
        "id": "m",
        "model": "a.pv",
        "class": kind,
        "covers": ["x"],
        "search": search,
        "replace": "changed",
        "rationale": "why",
        **extra,
    }


def test_stale_or_malformed_mutants_are_refused(tmp_path: Path) -> None:
    m = Mutant("m", "a.pv", "needle", "pin", MutantClass.MUST_CATCH, "why")
    assert mutation.apply_mutant(m, "hay needle hay") == "hay pin hay"
    with pytest.raises(MutantError, match="occurs 0 times"):
        mutation.apply_mutant(m, "hay")
    with pytest.raises(MutantError, match="occurs 2 times"):
        mutation.apply_mutant(m, "needle needle")
    with pytest.raises(MutantError, match=r"no mutants\.json"):
        mutation.load_mutants(tmp_path)
    bad = [
        {"mutants": [_mutant("x", kind="maybe")]},
        {"mutants": [_mutant("x", kind="equivalent", argued="no")]},
        {"mutants": [_mutant("x"), _mutant("y")]},
        {"mutants": [{"id": "m"}]},
    ]
    for data in bad:
        (tmp_path / "mutants.json").write_text(json.dumps(data))
        with pytest.raises(MutantError):
            mutation.load_mutants(tmp_path)


# ---------------------------------------------------------------------------------------------
# the harness on a stand-in ProVerif
# ---------------------------------------------------------------------------------------------

#: the stand-in answers like the real model unless the model text says BUG (query 1 false) or
#: SLOW (it never answers)
FAKE = """\
text = open(sys.argv[1]).read()
if "SLOW" in text:
    time.sleep(30)
print("RESULT not attacker(k[]) is " + ("false" if "BUG" in text else "true") + ".")
print("RESULT not event(E(x_1)) is false.")
"""


def test_run_mutants_classifies(tmp_path: Path) -> None:
    script = tmp_path / "fake-proverif"
    script.write_text(f"#!{sys.executable}\nimport sys, time\n" + textwrap.dedent(FAKE))
    script.chmod(0o755)
    models = tmp_path / "models"
    models.mkdir()
    (models / "a.pv").write_text("(* model *) alpha beta gamma delta epsilon\n")
    expected = [
        {"query": "not attacker(k)", "expected": "true", "property": "p"},
        {"query": "not event(E(x))", "expected": "false", "property": "r"},
    ]
    (models / "expected.json").write_text(json.dumps({"models": {"a.pv": expected}}))
    entries = [
        dict(_mutant("alpha"), id="caught", replace="BUG"),
        dict(_mutant("beta"), id="missed", replace="fine"),
        dict(_mutant("gamma", argued="ProVerif cannot say"), id="argued", replace="fine"),
        dict(_mutant("delta", kind="equivalent"), id="equivalent", replace="fine"),
        dict(_mutant("epsilon", kind="equivalent"), id="not-equivalent", replace="BUG"),
    ]
    (models / "mutants.json").write_text(json.dumps({"mutants": entries}))
    seen: list[tuple[int, int]] = []
    results = mutation.run_mutants(
        models, proverif=str(script), jobs=2, progress=lambda d, t, r: seen.append((d, t))
    )
    assert [r.status for r in results] == [
        "caught",
        "MISSED",
        "argued",
        "equivalent",
        "NOT-EQUIVALENT",
    ]
    assert results[0].changed == ((1, prove.Verdict.TRUE, prove.Verdict.FALSE),)
    assert sorted(seen) == [(n, 5) for n in range(1, 6)]
    assert [r.mutant.id for r in mutation.failures(results)] == ["missed", "not-equivalent"]
    table = mutation.render_mutants(results)
    assert "q1 true->false" in table
    assert table.splitlines()[-1] == (
        "must-catch: 1/3 caught, 1 argued, 1 missed; equivalent: 1/2 still prove; 2 failure(s)"
    )
    only = mutation.run_mutants(models, proverif=str(script), only=["caught"])
    assert [r.mutant.id for r in only] == ["caught"]
    with pytest.raises(MutantError, match="no mutant named nope"):
        mutation.run_mutants(models, proverif=str(script), only=["nope"])
    # a mutant that makes ProVerif fail or time out is caught, with the reason
    (models / "mutants.json").write_text(
        json.dumps({"mutants": [dict(_mutant("alpha"), id="slow", replace="SLOW")]})
    )
    (slow,) = mutation.run_mutants(models, proverif=str(script), timeout=1)
    assert slow.caught and "timed out" in slow.error
    # the list is checked against the model before anything runs
    (models / "a.pv").write_text("(* the model changed *)\n")
    with pytest.raises(MutantError, match=r"update proverif/mutants\.json"):
        mutation.run_mutants(models, proverif=str(script))


def test_run_mutants_without_proverif_says_how_to_install() -> None:
    with pytest.raises(prove.ProverifNotFoundError, match="opam install proverif"):
        mutation.run_mutants(proverif="no-such-proverif-executable")


# ---------------------------------------------------------------------------------------------
# ProVerif itself, when installed: one must-catch and one equivalent mutant
# ---------------------------------------------------------------------------------------------


@SKIP_NO_PROVERIF
def test_real_mutants_behave_as_classified() -> None:
    results = mutation.run_mutants(only=["verifier-constant-nonce", "att-no-label"])
    by_id = {r.mutant.id: r for r in results}
    constant = by_id["verifier-constant-nonce"]
    assert constant.status == "caught"
    assert 6 in [n for n, _, _ in constant.changed], "the freshness query notices it"
    assert by_id["att-no-label"].status == "equivalent"


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------


def test_cli_prove_mutants_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["prove", "--mutants", "--proverif", "no-such-proverif-exe"])
    assert missing.exit_code == 1
    assert "opam install proverif" in missing.output and "Traceback" not in missing.output
    fake = tmp_path / "fake-proverif"
    fake.write_text(f"#!{sys.executable}\n")
    fake.chmod(0o755)
    unknown = runner.invoke(
        main, ["prove", "--mutants", "--proverif", str(fake), "--only", "no-such-mutant"]
    )
    assert unknown.exit_code == 1
    assert "no mutant named no-such-mutant" in unknown.output
    assert len(unknown.output.strip().splitlines()) == 1
