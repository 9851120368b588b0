"""Changes against the baseline carry paired intervals: noise reads as no measurable change, an effect as one, and gates can ask for it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from attacks.privacy_metrics import evaluate_membership, paired_replicates
from audit.gates import evaluate_gates, validate_gates_config
from audit.params import Location
from audit.results import make_table, rate_row
from audit.stats import paired_difference
from reports.comparison import CLEAN, DELTA, DELTA_HIGH, DELTA_LOW, comparison_table, delta_text, robust_column
from reports.i18n import translator
from tests.conftest import write

# --- the interval ---------------------------------------------------------------------------------


def test_the_paired_interval_covers_the_true_difference_95_times_in_100():
    """Correlated outcomes, as two variants of one model give them: 2,000 simulated audits of 200 samples."""
    rng = np.random.default_rng(0)
    cells = np.array([0.70, 0.06, 0.03, 0.21])  # both right, only the first, only the second, neither
    truth = cells[1] - cells[2]
    covered, widths = 0, []
    for _ in range(2000):
        outcome = rng.choice(4, size=200, p=cells)
        first, second = np.isin(outcome, (0, 1)), np.isin(outcome, (0, 2))
        _, low, high = paired_difference(first, second)
        covered += low <= truth <= high
        widths.append(high - low)
    assert 0.94 <= covered / 2000 <= 0.98  # continuity-corrected: at least nominal, not much more
    independent = 2 * 1.96 * math.sqrt(0.76 * 0.24 / 200 + 0.73 * 0.27 / 200)  # what two unpaired intervals would claim
    assert np.mean(widths) < 0.6 * independent


def test_identical_outcomes_give_zero_inside_an_interval_that_does_not_collapse():
    """No disagreement among 150 samples cannot rule out a change of a point or two (rule of three: up to 2%)."""
    same = np.r_[np.ones(30, bool), np.zeros(120, bool)]
    value, low, high = paired_difference(same, same)
    assert value == 0 and -0.03 < low < -0.015 and 0.015 < high < 0.03
    assert all(math.isnan(v) for v in paired_difference(np.zeros(0, bool), np.zeros(0, bool)))


def test_paired_membership_replicates_agree_with_the_attacks_own_evaluation():
    rng = np.random.default_rng(1)
    is_member = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    scores = rng.normal(is_member * 0.5, 1.0)
    (auc_row, *_), _ = evaluate_membership(scores, is_member, [0.01], 0, seed=0)
    replicates = paired_replicates({"a": scores, "b": scores.copy()}, is_member, [0.01], 200, seed=3)
    assert replicates["a"]["auc"][0] == pytest.approx(auc_row["value"]) and len(replicates["a"]["auc"]) == 201
    np.testing.assert_array_equal(replicates["a"]["auc"], replicates["b"]["auc"])  # the same resamples for both


# --- in a run -------------------------------------------------------------------------------------

AUDIT = """
seed = 1
[data]
source = "digits"
[[models]]
name = "cnn"
epochs = 4
[evaluation]
samples = 150
[[defenses]]
name = "rounded"
decimals = 10
[[defenses]]
name = "feature_squeezing"
bit_depth = 1
[[attacks]]
name = "fgsm"
eps = [0.1]
[[attacks]]
name = "mia_loss"
bootstrap = 50
[[gates]]
id = "rounding-gains-robustness"
metric = "robust_accuracy_delta"
defense = "rounded"
at = 0.1
op = ">="
threshold = 0.05
confidence = true
[[gates]]
id = "squeezing-keeps-accuracy"
metric = "accuracy_delta"
subset = "split=test"
defense = "feature_squeezing"
op = ">="
threshold = -0.02
confidence = true
"""


@pytest.fixture(scope="module")
def defended(tmp_path_factory):
    from audit import run_audit

    folder = tmp_path_factory.mktemp("deltas")
    return run_audit(write(folder / "audit.toml", AUDIT), out_dir=folder / "out", history=False)


def change(table: pd.DataFrame, defense: str, metric: str, attack: str = "") -> pd.Series:
    rows = table[(table["defense"] == defense) & (table["metric"] == metric) & (table["attack"] == attack)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def value(table: pd.DataFrame, defense: str, metric: str, **where: object) -> float:
    rows = table[(table["defense"] == defense) & (table["metric"] == metric) & (table["status"] == "ok")]
    for column, wanted in where.items():
        rows = rows[rows[column] == wanted]
    return float(rows["value"].iloc[0])


def test_a_no_op_defense_shows_no_measurable_change(defended):
    table, t = defended.table, translator("en")
    for metric, attack in (("accuracy_delta", ""), ("robust_accuracy_delta", "fgsm"), ("robust_accuracy_delta", "ensemble"),
                           ("auc_delta", "mia_loss"), ("auc_delta", "membership-strongest")):
        row = change(table, "rounded", metric, attack)
        assert row["value"] == 0 and row["ci_low"] <= 0 <= row["ci_high"] and row["category"] == "comparison", (metric, attack)
    assert change(table, "rounded", "accuracy_delta")["message"].endswith("0 gained, 0 lost")
    comparison = comparison_table(table)
    rounded = comparison[comparison["defense"] == "rounded"].iloc[0]
    for column in (CLEAN, robust_column("ensemble", 0.1)):
        assert delta_text(rounded, column, t).startswith("no measurable change: ±0.0 pts ["), column


def test_a_harmful_defense_shows_a_change_whose_interval_excludes_zero(defended):
    table = defended.table
    row = change(table, "feature_squeezing", "accuracy_delta")
    clean = value(table, "feature_squeezing", "accuracy", subset="split=test") - value(table, "none", "accuracy", subset="split=test")
    assert row["value"] == pytest.approx(clean) and row["ci_high"] < 0 and row["n"] == defended.metadata.data.split_sizes["test"]
    comparison = comparison_table(table)
    squeezed = comparison[comparison["defense"] == "feature_squeezing"].iloc[0]
    assert squeezed[CLEAN + DELTA] == pytest.approx(row["value"]) and squeezed[CLEAN + DELTA_HIGH] == row["ci_high"]
    assert not delta_text(squeezed, CLEAN, translator("en")).startswith("no measurable change")


def test_gates_ask_a_defense_to_gain_with_confidence(defended):
    verdicts = dict(zip(defended.gates["gate"], defended.gates["verdict"]))
    assert verdicts == {"rounding-gains-robustness": "fail", "squeezing-keeps-accuracy": "fail"}


def test_a_change_that_is_not_the_columns_own_gets_no_interval(defended):
    """A stale or foreign change row (here shifted by a point) must not lend its interval to another difference."""
    table = defended.table.copy()
    rows = (table["metric"] == "accuracy_delta") & (table["defense"] == "feature_squeezing")
    table.loc[rows, "value"] += 0.01
    comparison = comparison_table(table)
    squeezed = comparison[comparison["defense"] == "feature_squeezing"].iloc[0]
    assert math.isnan(squeezed[CLEAN + DELTA_LOW]) and delta_text(squeezed, CLEAN, translator("en")).endswith("(no paired interval)")


def test_a_sanity_flag_on_the_baseline_makes_a_robustness_change_inconclusive():
    rows = [{**rate_row("robust_accuracy_delta", 30, 100, model="m", defense="adv", attack="ensemble", param="eps", param_value=0.1),
             "category": "comparison", "value": 0.3, "ci_low": 0.2, "ci_high": 0.4},
            {"model": "m", "defense": "none", "category": "sanity", "metric": "vanishing_gradients", "value": 1.0, "message": "zero gradients"}]
    gates = validate_gates_config([{"metric": "robust_accuracy_delta", "op": ">=", "threshold": 0.1, "confidence": True}], Location("t", "gates"))
    (verdict,) = evaluate_gates(gates, make_table(rows)).itertuples()
    assert verdict.verdict == "inconclusive" and "flagged on m " in verdict.reason and verdict.attack == "ensemble"
