"""Membership inference: metrics and reference-model scores checked by hand, the protocol's disjointness, and
attacks that find the leakage of an overfit model and less of a regularised one."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from attacks.base import AttackContext
from attacks.membership import (
    RMIA,
    BlackBox,
    ConfidenceThreshold,
    LabelOnly,
    LiRA,
    LossThreshold,
    RuleBased,
    Shadow,
    clear_reference_cache,
    draw_protocol,
    lira_scores,
    logit_confidence,
    rmia_scores,
    target_view,
    true_class_log_prob,
)
from attacks.privacy_metrics import MIN_FALSE_POSITIVES, evaluate_membership, roc_curve
from audit.data import Splits
from audit.errors import KansaError
from tests.conftest import run_metadata
from tests.privacy_fixtures import overfit_digits, regularised_digits, row

# ----------------------------------------------------------------------------- metrics by hand


def test_roc_auc_advantage_and_tpr_on_a_hand_computed_case():
    # members score 3 and 1, non-members 2 and 0: 3 of the 4 member/non-member pairs are ordered right
    scores, members = np.array([3.0, 2.0, 1.0, 0.0]), np.array([True, False, True, False])
    rows, artifacts = evaluate_membership(scores, members, [0.25, 0.5], bootstrap=0, seed=0)
    assert row(rows, "auc")["value"] == pytest.approx(0.75)
    assert row(rows, "advantage")["value"] == pytest.approx(0.5)
    assert row(rows, "balanced_accuracy")["value"] == pytest.approx(0.75)
    assert row(rows, "tpr_at_fpr", param_value=0.25)["value"] == pytest.approx(0.5)
    assert row(rows, "tpr_at_fpr", param_value=0.5)["value"] == pytest.approx(1.0)
    assert np.allclose(artifacts["roc_fpr"], [0, 0, 0.5, 0.5, 1]) and np.allclose(artifacts["roc_tpr"], [0, 0.5, 0.5, 1, 1])
    assert math.isnan(row(rows, "auc")["ci_low"])


def test_ties_count_one_half_and_auc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    assert evaluate_membership(np.ones(6), np.arange(6) < 3, [0.1], 0, 0)[0][0]["value"] == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    members = rng.random(500) < 0.5
    scores = np.round(rng.normal(size=500) + 0.5 * members, 1)  # rounding makes many ties
    rows, _ = evaluate_membership(scores, members, [0.01], bootstrap=0, seed=0)
    assert row(rows, "auc")["value"] == pytest.approx(roc_auc_score(members, scores))
    roc = roc_curve(scores, members)
    assert row(rows, "advantage")["value"] == pytest.approx(np.max(roc.tpr - roc.fpr))


def test_bootstrap_intervals_bracket_the_estimate_and_shrink_with_more_samples():
    rng = np.random.default_rng(1)

    def width(n: int) -> tuple[float, dict]:
        members = np.arange(2 * n) < n
        scores = rng.normal(size=2 * n) + members
        rows, _ = evaluate_membership(scores, members, [0.01], bootstrap=300, seed=0)
        auc = row(rows, "auc")
        assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]
        return auc["ci_high"] - auc["ci_low"], auc

    assert width(2000)[0] < width(100)[0] / 2


def test_decisions_give_balanced_accuracy_and_learned_attacks_report_leakage_when_inverted():
    members = np.array([True, True, True, True, False, False, False, False])
    decisions = np.array([True, True, True, False, True, False, False, False])  # TPR 3/4, TNR 3/4
    rows, _ = evaluate_membership(-np.arange(8.0), members, [0.5], 0, 0, decisions=decisions)
    assert row(rows, "balanced_accuracy")["value"] == pytest.approx(0.75)
    assert not [r for r in rows if r["metric"] == "leakage"]
    inverted, _ = evaluate_membership(np.arange(8.0), members, [0.5], 200, 0, invertible=True)
    assert row(inverted, "auc")["value"] == pytest.approx(0.0)
    assert row(inverted, "leakage")["value"] == pytest.approx(0.5)


def test_too_few_non_members_for_the_fpr_asked_is_a_warning():
    n = 300
    members = np.arange(2 * n) < n
    rows, _ = evaluate_membership(np.random.default_rng(0).normal(size=2 * n), members, [0.001, 0.01, 0.05], 0, 0)
    assert "TPR at FPR 0" in row(rows, "tpr_at_fpr", param_value=0.001)["message"]  # 0.3 expected false positives
    assert "3 false positive" in row(rows, "tpr_at_fpr", param_value=0.01)["message"]
    assert 0.05 * n >= MIN_FALSE_POSITIVES and row(rows, "tpr_at_fpr", param_value=0.05)["message"] == ""


def test_non_finite_scores_are_refused():
    with pytest.raises(ValueError, match="NaN or infinite"):
        evaluate_membership(np.array([0.0, np.inf, 1.0, 2.0]), np.array([1, 1, 0, 0], bool), [0.1], 0, 0)


# ----------------------------------------------------------------------------- reference-model scores by hand


def test_rmia_offline_matches_the_paper_formula_on_numbers_worked_by_hand():
    # one reference model that never trained on x: p_out = 0.5; a = 0.5 -> p(x) = (1.5 * 0.5 + 0.5) / 2 = 0.625
    target_x = np.log([0.9, 0.5])
    ref_x = np.log([[0.5, 0.8]])
    # population: target 0.5 / 0.6 / 0.7, reference 0.5 everywhere -> LR(z) = 0.8, 0.96, 1.12
    target_z, ref_z = np.log([0.5, 0.6, 0.7]), np.log([[0.5, 0.5, 0.5]])
    log_lr, dominated = rmia_scores(target_x, ref_x, np.zeros((1, 2), bool), target_z, ref_z, a=0.5)
    # x0: 0.9 / 0.625 = 1.44; x1: p(x) = (1.5 * 0.8 + 0.5) / 2 = 0.85 -> 0.5 / 0.85
    assert np.exp(log_lr) == pytest.approx([1.44, 0.5 / 0.85])
    assert dominated == pytest.approx([1.0, 0.0])  # 1.44 beats all three LR(z); 0.588 beats none


def test_rmia_online_averages_in_and_out_reference_models():
    # x is in model 0 (p 0.9) and out of model 1 (p 0.3): p(x) = 0.6, target 0.9 -> LR 1.5
    log_lr, _ = rmia_scores(np.log([0.9]), np.log([[0.9], [0.3]]), np.array([[True], [False]]), np.log([0.5]), np.log([[0.5], [0.5]]), 0.3)
    assert np.exp(log_lr) == pytest.approx([1.5])
    # with a = 1 the offline approximation p_in = p_out makes p(x) = p_out
    log_lr, _ = rmia_scores(np.log([0.9]), np.log([[0.3]]), np.zeros((1, 1), bool), np.log([0.5]), np.log([[0.5]]), 1.0)
    assert np.exp(log_lr) == pytest.approx([3.0])


def test_lira_offline_and_online_on_numbers_worked_by_hand():
    # population residuals phi_target(z) - mean_ref(z) = 0, 1, 2 -> sigma = 1
    target_z, ref_z = np.array([0.0, 1.0, 2.0]), np.zeros((2, 3))
    offline = lira_scores(np.array([3.0]), np.array([[1.0], [2.0]]), np.zeros((2, 1), bool), target_z, ref_z, online=False)
    assert offline == pytest.approx([1.5])  # (3 - 1.5) / 1
    # mu_in = 4, mu_out = 1: ((3 - 1)^2 - (3 - 4)^2) / 2 = 1.5; a sample far below both scores negative
    online = lira_scores(np.array([3.0, -5.0]), np.array([[4.0, 4.0], [1.0, 1.0]]), np.array([[True, True], [False, False]]), target_z, ref_z, online=True)
    assert online == pytest.approx([1.5, ((-6.0) ** 2 - 81.0) / 2])


def test_statistics_are_float64_from_logits_where_float32_losses_tie_at_zero():
    logits = np.array([[30.0, 0.0, 0.0], [25.0, 0.0, 0.0]], dtype=np.float32)
    y = np.array([0, 0])
    float32_loss = -np.log(np.exp(logits[:, 0]) / np.exp(logits).sum(axis=1))
    assert (float32_loss == 0).all()  # the tie ART's float32 losses produce
    assert true_class_log_prob(logits, y)[0] > true_class_log_prob(logits, y)[1]
    assert logit_confidence(logits, y) == pytest.approx([30.0 - np.log(2), 25.0 - np.log(2)])


# ----------------------------------------------------------------------------- protocol


@pytest.fixture(scope="module")
def overfit():
    return overfit_digits()


def test_protocol_sets_are_disjoint_drawn_from_the_right_splits_and_reproducible(overfit):
    context = overfit.context()
    p = draw_protocol(context, 150)
    splits = overfit.splits
    assert len(p.members) == len(p.non_members) == 150
    assert set(p.members) <= set(splits.train) and set(p.non_members) <= set(splits.holdout)
    assert set(p.known_members) == set(splits.train) - set(p.members)
    assert set(p.population) == (set(splits.holdout) - set(p.non_members)) | set(splits.test)
    evaluation = set(p.members) | set(p.non_members)
    assert not evaluation & (set(p.population) | set(p.known_members))
    again = draw_protocol(overfit.context(seed=99), 150)  # every attack cell of an audit judges the same samples
    assert np.array_equal(again.members, p.members) and np.array_equal(again.population, p.population)
    with pytest.raises(KansaError, match="exceeds the training split"):
        draw_protocol(context, len(splits.train) + 1)
    small_holdout = AttackContext(0, [], overfit.dataset, Splits(splits.test, splits.train[:10], splits.holdout))
    with pytest.raises(KansaError, match="hold-out split has 10 samples"):
        draw_protocol(small_holdout, 11)


def _recording(trainer, seen: list[np.ndarray]):
    def train_like_target(x, y, seed):
        seen.append(x.copy())
        return trainer.train(x, y, seed)

    return dataclasses.replace(trainer, train=train_like_target)


def _rows_of(dataset, indices) -> set[bytes]:
    return {dataset.x[i].tobytes() for i in indices}


def test_reference_and_shadow_models_never_train_on_the_evaluation_sets_offline(overfit):
    from audit.session import trainer_for

    clear_reference_cache()
    seen: list[np.ndarray] = []
    context = overfit.context(trainer=_recording(trainer_for(overfit.model_cfg, overfit.dataset), seen))
    protocol = draw_protocol(context, 100)
    evaluation = _rows_of(overfit.dataset, protocol.candidates)
    RMIA(members=100, references=2, bootstrap=0).run(overfit.target, None, None, context)
    Shadow(members=100, shadows=2, bootstrap=0).run(overfit.target, None, None, context)
    assert len(seen) == 4
    for x in seen:
        assert not {row.tobytes() for row in x} & evaluation
    # online: each candidate is in the training set of exactly one of two reference models
    seen.clear()
    LiRA(members=100, references=2, mode="online", bootstrap=0).run(overfit.target, None, None, context)
    counts = np.zeros(len(protocol.candidates), int)
    for x in seen:
        rows = {row.tobytes() for row in x}
        counts += [overfit.dataset.x[i].tobytes() in rows for i in protocol.candidates]
    assert (counts == 1).all()


def test_attacks_that_retrain_explain_when_the_model_has_no_recipe(overfit):
    context = overfit.context(trainer=None)
    for attack in (RMIA(members=50), LiRA(members=50), Shadow(members=50)):
        with pytest.raises(KansaError, match="no training recipe"):
            attack.run(overfit.target, None, None, context)
    with pytest.raises(KansaError, match='mode = "online" needs at least 2'):
        RMIA(members=50, mode="online", references=1).run(overfit.target, None, None, overfit.context())


def test_membership_views_give_probabilities_or_labels_only(overfit):
    x = overfit.dataset.x[:5]
    probabilities = target_view(overfit.target).predict(x.astype(np.float64))
    assert probabilities.sum(axis=1) == pytest.approx(np.ones(5))
    labels = target_view(overfit.target, "labels").predict(x)
    assert set(np.unique(labels)) <= {0.0, 1.0} and (labels.sum(axis=1) == 1).all()
    assert (labels.argmax(axis=1) == overfit.target.predict(x)).all()


# ----------------------------------------------------------------------------- attacks on real targets

MEMBERS = 200
ONLINE = {"references": 8, "mode": "online"}


@pytest.fixture(scope="module")
def overfit_outputs(overfit):
    """Every score-based attack once on the overfit target (reference models shared through the cache)."""
    assert overfit.accuracy("train") == 1.0 and overfit.accuracy("holdout") < 0.97
    clear_reference_cache()
    context = overfit.context()
    attacks = {
        "loss": LossThreshold(members=MEMBERS),
        "confidence": ConfidenceThreshold(members=MEMBERS),
        "rmia_online": RMIA(members=MEMBERS, **ONLINE),
        "lira_online": LiRA(members=MEMBERS, **ONLINE),
        "rmia_offline": RMIA(members=MEMBERS, references=2),
        "black_box_loss": BlackBox(members=MEMBERS, input="loss"),
        "rule_based": RuleBased(members=MEMBERS),
    }
    return {name: attack.run(overfit.target, None, None, context) for name, attack in attacks.items()}


def _value(output, metric: str, **where) -> float:
    return row(output.rows, metric, **where)["value"]


def test_overfit_target_leaks_and_the_reference_attack_wins_at_low_fpr(overfit_outputs):
    aucs = {name: _value(out, "auc") for name, out in overfit_outputs.items()}
    assert max(aucs.values()) >= 0.65, aucs
    tpr = {name: _value(out, "tpr_at_fpr", param_value=0.01) for name, out in overfit_outputs.items()}
    assert tpr["rmia_online"] > tpr["loss"], tpr
    assert max(tpr["rmia_online"], tpr["lira_online"]) > tpr["black_box_loss"], tpr
    for out in overfit_outputs.values():
        for r in out.rows:
            if r["metric"] in ("auc", "advantage", "tpr_at_fpr", "balanced_accuracy"):
                assert 0.0 <= r["value"] <= 1.0 and 0.0 <= r["ci_low"] <= r["ci_high"] <= 1.0


def test_results_state_the_protocol_sizes_and_keep_plotting_and_exposure_data(overfit_outputs, overfit):
    out = overfit_outputs["rmia_online"]
    assert _value(out, "members") == _value(out, "non_members") == MEMBERS
    assert _value(out, "reference_models") == 8
    assert _value(out, "attacker_samples") == len(overfit.splits.holdout) - MEMBERS + len(overfit.splits.test)
    assert row(out.rows, "reference_training_seconds")["category"] == "cost"
    is_member, scores = out.per_sample["is_member"], out.per_sample["score"]
    assert is_member.sum() == MEMBERS and len(scores) == 2 * MEMBERS
    assert out.artifacts["roc_fpr"][0] == 0 and out.artifacts["roc_tpr"][-1] == 1
    exposed = out.artifacts["exposed_index"]
    assert set(exposed) <= set(overfit.splits.train)
    assert out.artifacts["exposed_score"].min() >= np.sort(scores[is_member])[-len(exposed)]
    assert 0 <= out.per_sample["population_dominated"].min() <= out.per_sample["population_dominated"].max() <= 1


def test_same_seed_same_numbers_even_when_reference_models_are_retrained(overfit, overfit_outputs):
    clear_reference_cache()
    again = RMIA(members=MEMBERS, **ONLINE).run(overfit.target, None, None, overfit.context())
    assert np.array_equal(again.per_sample["score"], overfit_outputs["rmia_online"].per_sample["score"])
    assert _value(again, "auc") == _value(overfit_outputs["rmia_online"], "auc")


def test_regularised_target_leaks_less(overfit_outputs):
    regular = regularised_digits()
    assert regular.accuracy("holdout") > 0.9
    context = regular.context()
    clear_reference_cache()
    for name, attack in (("loss", LossThreshold()), ("rmia_online", RMIA(references=2, mode="online"))):
        leak = _value(attack.run(regular.target, None, None, context), "auc")
        assert leak < _value(overfit_outputs[name], "auc"), name


@pytest.mark.slow
def test_art_label_only_and_shadow_attacks_run_on_the_protocol(overfit):
    context = overfit.context()
    label_only = LabelOnly(members=15, calibration=10, max_iter=2, max_eval=50, init_eval=10, bootstrap=100)
    out = label_only.run(overfit.target, None, None, context)
    assert _value(out, "members") == 15 and _value(out, "known_members") == 10
    assert _value(out, "distance_threshold") > 0
    assert len(out.per_sample["decision"]) == 30
    shadow = Shadow(members=MEMBERS, shadows=2).run(overfit.target, None, None, context)
    assert _value(shadow, "leakage") == pytest.approx(abs(_value(shadow, "auc") - 0.5))
    assert _value(shadow, "shadow_train_size") == len(overfit.splits.train)


# ----------------------------------------------------------------------------- through the runner and into the report

AUDIT = """
title = "privacy audit"
seed = 4
[data]
source = "digits"
split = [0.3, 0.3, 0.4]
[[models]]
name = "mlp"
architecture = "mlp"
epochs = 60
[evaluation]
samples = 50
[[attacks]]
name = "mia_loss"
bootstrap = 200
[[attacks]]
name = "rmia"
references = 1
bootstrap = 200
[[attacks]]
name = "lira"
references = 1
bootstrap = 200
[[attacks]]
name = "mi_face"
max_iter = 20
"""


def test_an_audit_reports_the_confidentiality_section_from_its_table_and_artifacts(tmp_path):
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from audit import run_audit
    from reports.confidentiality import build_confidentiality
    from reports.i18n import translator
    from reports.templating import TEMPLATES
    from tests.conftest import write

    result = run_audit(write(tmp_path / "audit.toml", AUDIT))
    assert result.errors.empty, result.errors["message"].tolist()
    aucs = result.metric("auc")
    assert set(aucs["attack"]) == {"mia_loss", "rmia", "lira"} and (aucs["category"] == "confidentiality").all()
    # rmia and lira with the same settings share their reference model within the audit
    reused = result.metric("reference_models_reused")
    assert reused.set_index("attack").loc["lira", "value"] == 1
    assert all(cell.artifact.endswith(".npz") for cell in result.metadata.cells)
    context = build_confidentiality(result)
    (model,) = context["models"]
    assert [line["attack"] for line in model["membership"]["lines"]] == ["mia_loss", "rmia", "lira"]
    assert model["membership"]["roc"].startswith("data:image/png;base64,")
    assert model["inversion"][0]["image"].startswith("data:image/png;base64,")
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined)
    html = env.get_template("sections/confidentiality.html.j2").render(ctx=context, t=translator("en"))
    assert "TPR @ 0.01 FPR" in html and "Model inversion" in html and "most exposed" in html
    assert "http://" not in html and "https://" not in html
    japanese = env.get_template("sections/confidentiality.html.j2").render(ctx=context, t=translator("ja"))
    assert "FPR 0.01 での TPR" in japanese and "モデル反転" in japanese and "Model inversion" not in japanese


def test_no_confidentiality_section_without_confidentiality_attacks():
    from audit.results import AuditResult, count_row, make_table, rate_row
    from reports.confidentiality import build_confidentiality

    table = make_table([count_row("samples", 10, category="data_quality"), rate_row("robust_accuracy", 5, 10, category="integrity")])
    assert build_confidentiality(AuditResult(table, run_metadata())) is None
