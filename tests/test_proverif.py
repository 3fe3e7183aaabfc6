"""The ProVerif models agree with mchsm.constants, and ProVerif says what we expect of them.

Three groups:

- always run: the labels, key derivations and field order written in ``proverif/*.pv`` are
  those of :mod:`mchsm.constants` (via the field lists in :mod:`mchsm.sw.prove`), the models
  share one system description, and ``expected.json`` is complete and non-vacuous;
- run ProVerif when it is on PATH, skip otherwise;
- the parser and the comparison of :mod:`mchsm.sw.prove`, on captured ProVerif output and a
  stand-in executable.
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

from mchsm import constants
from mchsm.sw import prove
from mchsm.sw.prove import ProverifNotFoundError, Verdict

BASE_MODELS = ("attestation.pv", "update.pv")
#: broken variant -> (the model it breaks, how the SYSTEM lines it changes start, the MAC
#: input field it removes or None)
BROKEN_MODELS: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "attestation_no_nonce.pv": ("attestation.pv", ("letfun att_msg(",), "nonce"),
    "update_no_old_version.pv": ("update.pv", ("letfun upd_msg(",), "v"),
    "update_no_version_check.pv": (
        "update.pv",
        ("restriction d: bitstring, i: nat, v: nat,", "  event(HsmLeavesVersion("),
        None,
    ),
    "attestation_board_link.pv": (
        "attestation.pv",
        ("  (* PROVISION(dev_id, K_root) took place where the attacker could not see it",),
        None,
    ),
}
ALL_MODELS = (*BASE_MODELS, *BROKEN_MODELS)
MESSAGES = {
    "att_msg": constants.ATT_FIELDS,
    "upd_msg": constants.UPD_FIELDS,
    "ack_msg": constants.ACK_FIELDS,
}

SKIP_NO_PROVERIF = pytest.mark.skipif(
    shutil.which("proverif") is None, reason="ProVerif not installed (opam install proverif)"
)


def model_text(name: str) -> str:
    return resources.files(prove.MODEL_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def section(text: str, name: str) -> str:
    match = re.search(
        rf"\(\* ==== BEGIN {name} ==== \*\)\n(.*?)\(\* ==== END {name} ==== \*\)", text, re.S
    )
    assert match, f"no {name} section"
    return match.group(1)


def code(text: str) -> str:
    """The text without its comments (the models have no nested comments)."""
    return re.sub(r"\(\*.*?\*\)", " ", text, flags=re.S)


def letfuns(text: str) -> dict[str, tuple[list[str], str]]:
    """letfun name -> (parameter names, body) for the one-line letfuns of a model."""
    found: dict[str, tuple[list[str], str]] = {}
    for match in re.finditer(r"^letfun (\w+)\((.*?)\) = (.*)\.$", text, re.M):
        params = [p.split(":")[0].strip() for p in match.group(2).split(",")]
        found[match.group(1)] = (params, match.group(3))
    return found


def tuple_fields(body: str) -> list[str]:
    assert body.startswith("(") and body.endswith(")"), body
    return [f.strip() for f in body[1:-1].split(",")]


def names(fields: tuple[constants.Field, ...]) -> list[str]:
    return [name for name, _ in fields]


# ---------------------------------------------------------------------------------------------
# (a) always: the models against mchsm.constants
# ---------------------------------------------------------------------------------------------


def test_field_lists_match_constant_sizes() -> None:
    """The field lists add up to the message sizes of mchsm.constants, word by word."""
    assert sum(size for _, size in constants.ATT_FIELDS) == constants.ATT_MESSAGE_SIZE
    assert sum(size for _, size in constants.UPD_FIELDS) == constants.UPD_MESSAGE_SIZE
    assert sum(size for _, size in constants.ACK_FIELDS) == constants.UPD_MESSAGE_SIZE
    assert sum(size for _, size in constants.EVIDENCE_FIELDS) == constants.EVIDENCE_SIZE
    task = sum(size for _, size in constants.TASK_KDF_FIELDS)
    assert task == len(constants.KDF_TASK) + 4 + constants.DIGEST_SIZE
    for fields in (*MESSAGES.values(), constants.TASK_KDF_FIELDS, constants.EVIDENCE_FIELDS):
        assert all(size % 4 == 0 for _, size in fields), "every field starts on a word"
    for fields in (*MESSAGES.values(), constants.TASK_KDF_FIELDS):
        label, size = fields[0]
        assert size == len(getattr(constants, label)), label
    # the evidence carries sel, ok, ctr in the order of the attestation MAC input
    att = names(constants.ATT_FIELDS)
    carried = names(constants.EVIDENCE_FIELDS)[:-1]
    assert [att.index(f) for f in carried] == sorted(att.index(f) for f in carried)
    # UPD1 and ACK1 differ in the label only, and have the same length (spec, section 6)
    assert constants.UPD_FIELDS[1:] == constants.ACK_FIELDS[1:]


def test_label_table_is_constants() -> None:
    for name, value in constants.LABELS.items():
        assert getattr(constants, name) == value
    assert len(set(constants.LABELS.values())) == len(constants.LABELS), "labels are distinct"


@pytest.mark.parametrize("model", ALL_MODELS)
def test_model_labels_match_constants(model: str) -> None:
    """Each label constant of the model carries the bytes of mchsm.constants."""
    text = model_text(model)
    found = dict(
        (m.group(1), m.group(3))
        for m in re.finditer(
            r'^const (\w+): bitstring\.\s+\(\* @label (\w+) = "([^"]*)" \*\)$', text, re.M
        )
        if m.group(1) == m.group(2)
    )
    assert found == {name: value.decode() for name, value in constants.LABELS.items()}
    system = code(section(text, "SYSTEM"))
    for name in constants.LABELS:
        # declared once and used in exactly one definition
        assert len(re.findall(rf"\b{name}\b", system)) == 2, name


@pytest.mark.parametrize("model", ALL_MODELS)
def test_model_key_derivations(model: str) -> None:
    defs = letfuns(model_text(model))
    assert defs["k_att"] == (["K_root"], "mac(K_root, KDF_ATT)")
    assert defs["k_upd"] == (["K_root"], "mac(K_root, KDF_UPD)")
    params, body = defs["k_task"]
    assert params == ["K_root", "i", "R"]
    match = re.fullmatch(r"mac\(K_root, (\(.*\))\)", body)
    assert match and tuple_fields(match.group(1)) == names(constants.TASK_KDF_FIELDS)
    assert defs["ref"] == (["C"], "H((zero, H(C)))"), "ref(C) = H(0^32 || H(C))"


@pytest.mark.parametrize("model", ALL_MODELS)
def test_model_field_order(model: str) -> None:
    """The MAC inputs have the spec's fields in the spec's order (less one, when broken)."""
    defs = letfuns(model_text(model))
    _, changed, removed = BROKEN_MODELS.get(model, (model, (), None))
    for msg, fields in MESSAGES.items():
        params, body = defs[msg]
        assert params == names(fields)[1:], msg
        want = names(fields)
        if removed is not None and changed[0] == f"letfun {msg}(":
            want.remove(removed)
        assert tuple_fields(body) == want, msg


@pytest.mark.parametrize("model", ALL_MODELS)
def test_model_macs_only_on_defined_messages(model: str) -> None:
    """Every MAC in the system is a key derivation or one of the three defined messages."""
    system = code(section(model_text(model), "SYSTEM"))
    allowed = (
        "mac(bitstring, bitstring)",
        "mac(K_root, KDF_ATT)",
        "mac(K_root, KDF_UPD)",
        "mac(K_root, (KDF_TASK, i, R))",
        "mac(K_att, att_msg(",
        "mac(K_upd, upd_msg(",
        "mac(K_upd, ack_msg(",
        "mac(k_task(K_root, i, R), data)",
    )
    for match in re.finditer(r"\bmac\(", system):
        rest = system[match.start() :]
        assert rest.startswith(allowed), rest.splitlines()[0]
    # HSM and verifier each compute each message once
    for use in allowed[4:]:
        assert system.count(use) == 2, use


def test_models_share_one_system() -> None:
    """Base models differ only in their queries; a broken one only in its changed message."""
    base = {name: model_text(name) for name in BASE_MODELS}
    assert section(base["attestation.pv"], "SYSTEM") == section(base["update.pv"], "SYSTEM")
    for name in ALL_MODELS:
        assert section(model_text(name), "MAIN") == section(base["attestation.pv"], "MAIN")
    for name, (of, changed, _) in BROKEN_MODELS.items():
        text = model_text(name)
        assert section(text, "QUERIES") == section(base[of], "QUERIES"), name
        mine = section(text, "SYSTEM").splitlines()
        theirs = section(base[of], "SYSTEM").splitlines()
        assert len(mine) == len(theirs)
        diff = [b for a, b in zip(mine, theirs, strict=True) if a != b]
        assert len(diff) == len(changed), diff
        assert all(b.startswith(c) for b, c in zip(diff, changed, strict=True)), diff


def test_expected_json_is_complete() -> None:
    """expected.json lists exactly the packaged models, each with sensible expectations."""
    root = resources.files(prove.MODEL_PACKAGE)
    on_disk = {entry.name for entry in root.iterdir() if entry.name.endswith(".pv")}
    data = json.loads(root.joinpath("expected.json").read_text(encoding="utf-8"))
    models = data["models"]
    assert set(models) == on_disk == set(ALL_MODELS)
    for name, queries in models.items():
        assert len(queries) == model_text(name).count("\nquery "), name
        for q in queries:
            Verdict(q["expected"])
            assert q["property"], q
    for name in BASE_MODELS:
        # a base model proves every property, and each reachability query ("not event ...")
        # comes out false: honest runs exist, so nothing is proven vacuously
        reach = [q["query"].startswith(("not event", "not (event")) for q in models[name]]
        assert any(reach), name
        for q, is_reach in zip(models[name], reach, strict=True):
            assert q["expected"] == ("false" if is_reach else "true"), q
    for name, (of, _, _) in BROKEN_MODELS.items():
        # the broken variant loses a property the base model proves: ProVerif finds an attack
        lost = [
            (b["query"], b["expected"])
            for a, b in zip(models[of], models[name], strict=True)
            if a["expected"] == "true" and b["expected"] == "false"
        ]
        assert lost, name
        assert [q["query"] for q in models[of]] == [q["query"] for q in models[name]]


def test_missing_proverif_raises_with_install_hint() -> None:
    with pytest.raises(ProverifNotFoundError, match=r"opam install proverif"):
        prove.run_proofs(proverif="no-such-proverif-executable")


# ---------------------------------------------------------------------------------------------
# (b) ProVerif itself, when installed
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proof_results() -> list[prove.ProofResult]:
    return prove.run_proofs()


@SKIP_NO_PROVERIF
def test_proverif_answers_as_expected(proof_results: list[prove.ProofResult]) -> None:
    assert not prove.surprises(proof_results), "\n" + prove.render_table(proof_results)
    assert {r.model for r in proof_results} == set(ALL_MODELS)


@SKIP_NO_PROVERIF
@pytest.mark.parametrize("model", list(BROKEN_MODELS))
def test_proverif_attacks_broken_variants(
    proof_results: list[prove.ProofResult], model: str
) -> None:
    attacked = [
        r
        for r in proof_results
        if r.model == model and r.actual is Verdict.FALSE and not r.query.startswith("not ")
    ]
    assert attacked, prove.render_table([r for r in proof_results if r.model == model])


# ---------------------------------------------------------------------------------------------
# (c) the parser and the comparison, without ProVerif
# ---------------------------------------------------------------------------------------------

CAPTURED = """\
Completing...
Starting query not attacker(mac(kroot_A[],KDF_UPD))
RESULT not attacker(mac(kroot_A[],KDF_UPD)) is true.
goal reachable: v'_6 ≥ v_12 + 1 && attacker(v_12) -> inj-event(HsmInstalls(devA,2,v_13,v'_6,R))
RESULT inj-event(HsmInstalls(devA,i_14,v_12,v'_6,R'_6)) ==> inj-event(VerifierIssues(devA,i_14,v_12,v'_6,R'_6)) cannot be proved.
RESULT (even event(HsmInstalls(devA,i_14,v_12,v'_6,R'_6)) ==> event(VerifierIssues(devA,i_14,v_12,v'_6,R'_6)) cannot be proved.)
A trace has been found.
RESULT inj-event(HsmInstalls(devA,i_14,1,v'_6,R'_6)) ==> inj-event(VerifierIssues(devA,i_14,1,v'_6,R'_6)) is false.
RESULT (even event(HsmInstalls(devA,i_14,1,v'_6,R'_6)) ==> event(VerifierIssues(devA,i_14,1,v'_6,R'_6)) is false.)
RESULT event(HsmInstalls(devA,i_14,v_12,v'_6,R'_6)) ==> v'_6 ≥ v_12 + 1 is true.
RESULT not (event(VerifierRecords(devA,2,v_12,v'_6,R'_6)) && v_12 ≥ 1) is false.
--------------------------------------------------------------
Verification summary:

Query(ies):
 - Query not attacker(mac(kroot_A[],KDF_UPD)) is true.
 - Query inj-event(HsmInstalls(devA,i_14,1,v'_6,R'_6)) ==> inj-event(VerifierIssues(devA,i_14,1,v'_6,R'_6)) is false.
Associated restriction(s):
 - Restriction event(HsmLeavesVersion(d_3,i_14,v_12,s1_3)) && event(HsmLeavesVersion(d_3,i_14,v_12,s2_3)) ==> s1_3 = s2_3 in process 1.
"""  # noqa: E501


def test_parse_results_on_captured_output() -> None:
    assert prove.parse_results(CAPTURED) == [
        ("not attacker(mac(kroot_A,KDF_UPD))", Verdict.TRUE),
        (
            "inj-event(HsmInstalls(devA,i,v,v',R')) ==> inj-event(VerifierIssues(devA,i,v,v',R'))",
            Verdict.CANNOT,
        ),
        (
            "inj-event(HsmInstalls(devA,i,1,v',R')) ==> inj-event(VerifierIssues(devA,i,1,v',R'))",
            Verdict.FALSE,
        ),
        ("event(HsmInstalls(devA,i,v,v',R')) ==> v' ≥ v + 1", Verdict.TRUE),
        ("not (event(VerifierRecords(devA,2,v,v',R')) && v ≥ 1)", Verdict.FALSE),
    ]


def test_parse_results_ignores_errors_and_noise() -> None:
    error = 'File "x.pv", line 2, characters 16-17:\nError: Variable zz not declared.\n'
    assert prove.parse_results(error) == []
    assert prove.parse_results("RESULT is the word\nRESULT x is maybe.\n") == []


def test_normalize_query() -> None:
    assert prove.normalize_query("not attacker(kroot_A[])") == "not attacker(kroot_A)"
    assert prove.normalize_query("e(nonce_5,C'_4,s1_3)") == "e(nonce,C',s1)"


def _fake_proverif(tmp_path: Path, body: str) -> str:
    """A stand-in executable: a Python script that behaves as ``body`` says."""
    script = tmp_path / "fake-proverif"
    script.write_text(f"#!{sys.executable}\nimport sys, time\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return str(script)


def _model_dir(tmp_path: Path, expected: dict[str, list[dict[str, str]]]) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a.pv", "b.pv"):
        (models / name).write_text("(* stand-in *)\n")
    (models / "expected.json").write_text(json.dumps({"models": expected}))
    return models


OUT_A = "RESULT not attacker(k[]) is true.\nRESULT not event(E(x_1)) is false.\n"


def _q(query: str, expected: str) -> dict[str, str]:
    return {"query": query, "expected": expected, "property": f"says {query}"}


def test_run_proofs_compares_with_expected(tmp_path: Path) -> None:
    fake = _fake_proverif(
        tmp_path,
        f"""\
        if sys.argv[1].endswith("a.pv"):
            print({OUT_A!r})
        else:
            print("RESULT e ==> f is false.")
        """,
    )
    models = _model_dir(
        tmp_path,
        {
            "a.pv": [_q("not attacker(k)", "true"), _q("not event(E(x))", "false")],
            "b.pv": [_q("e ==> f", "true")],
            "gone.pv": [_q("q", "true")],
        },
    )
    results = prove.run_proofs(models, proverif=fake)
    assert [(r.model, r.index, r.actual) for r in results] == [
        ("a.pv", 1, Verdict.TRUE),
        ("a.pv", 2, Verdict.FALSE),
        ("b.pv", 1, Verdict.FALSE),
        ("gone.pv", 0, None),
    ]
    bad = prove.surprises(results)
    assert [(r.model, r.index) for r in bad] == [("b.pv", 1), ("gone.pv", 0)]
    table = prove.render_table(results)
    assert "says not attacker(k)" in table and "SURPRISE" in table
    assert table.splitlines()[-1] == "4 queries in 3 models: 2 surprise(s)"


def test_run_proofs_reports_text_and_count_mismatches(tmp_path: Path) -> None:
    fake = _fake_proverif(tmp_path, f"print({OUT_A!r})\n")
    models = _model_dir(
        tmp_path,
        {"a.pv": [_q("not attacker(other)", "true")], "b.pv": [_q("x", "true"), _q("y", "true")]},
    )
    results = {(r.model, r.index): r for r in prove.run_proofs(models, proverif=fake)}
    assert "query text differs" in results["a.pv", 1].note
    assert "not listed" in results["a.pv", 2].note
    assert results["b.pv", 1].note and results["b.pv", 1].surprise  # wrong query text
    assert all(r.surprise for r in results.values() if r.model == "b.pv")


def test_run_proofs_survives_errors_and_timeouts(tmp_path: Path) -> None:
    fake = _fake_proverif(
        tmp_path,
        """\
        if sys.argv[1].endswith("a.pv"):
            print("Error: Variable zz not declared.")
            sys.exit(2)
        time.sleep(30)
        """,
    )
    models = _model_dir(tmp_path, {"a.pv": [_q("q", "true")], "b.pv": [_q("q", "true")]})
    results = prove.run_proofs(models, proverif=fake, timeout=1)
    assert [r.actual for r in results] == [None, None]
    assert "exited with 2" in results[0].note and "zz not declared" in results[0].note
    assert "timed out" in results[1].note
    assert len(prove.surprises(results)) == 2


def test_run_proofs_needs_expected_json(tmp_path: Path) -> None:
    fake = _fake_proverif(tmp_path, "print('')\n")
    with pytest.raises(prove.ProverifError, match=r"no expected\.json"):
        prove.run_proofs(tmp_path, proverif=fake)
    (tmp_path / "expected.json").write_text('{"models": {"a.pv": [{"query": "q"}]}}')
    with pytest.raises(prove.ProverifError, match=r"a\.pv must be a list"):
        prove.run_proofs(tmp_path, proverif=fake)
