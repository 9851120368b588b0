"""The metric registry is the one contract for metric names: every emitted metric is in it, and docs and gates follow it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from audit import metrics
from audit.errors import KansaError
from audit.metrics import Direction, Metric, all_metrics, metric_info, metrics_markdown, register_metric
from audit.results import make_table, rate_row
from tests.conftest import write
from tests.test_gates import gates, table, verdicts

TABULAR_AUDIT = """
seed = 5

[data]
source = "breast_cancer"

[[models]]
name = "mlp"
epochs = 5

[evaluation]
samples = 40

[[attacks]]
name = "mia_loss"
bootstrap = 20

[[attacks]]
name = "fgsm"
eps = [0.1]
"""


def assert_registered(results: pd.DataFrame) -> None:
    """Every metric of the table is declared, under the category and with the interval its rows carry; `error` is a status, not a metric."""
    rows = results[~results["status"].isin(("error", "not_applicable"))]
    unknown = sorted(set(rows["metric"]) - set(all_metrics()))
    assert not unknown, f"metrics missing from audit/metrics.py: {unknown}"
    misplaced = sorted({(r.metric, r.category) for r in rows.itertuples() if metric_info(r.metric).category != r.category})
    assert not misplaced, f"rows whose category differs from the registry's: {misplaced}"
    has_interval = rows.assign(finite=rows["ci_low"].notna()).groupby("metric")["finite"].any()
    wrong = sorted(name for name, finite in has_interval.items() if finite != metric_info(name).interval)
    assert not wrong, f"metrics whose rows do not match their declared interval: {wrong}"


def test_every_metric_of_an_image_audit_is_registered(small_run):
    assert_registered(small_run.table)


def test_every_metric_of_a_tabular_membership_audit_is_registered(tmp_path):
    from audit import run_audit

    result = run_audit(write(tmp_path / "audit.toml", TABULAR_AUDIT), out_dir=tmp_path / "run")
    assert {"auc", "tpr_at_fpr", "robust_accuracy"} <= set(result.table["metric"])
    assert_registered(result.table)


def test_every_sanity_check_is_declared_as_a_sanity_metric():
    from audit.checks import FLAGS

    assert all(metric_info(check) is not None and metric_info(check).category == "sanity" for check in FLAGS)


def test_results_schema_doc_is_generated_from_the_registry():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "results-schema.md").read_text(encoding="utf-8")
    block = doc.split("<!-- metrics:start -->\n", 1)[1].split("<!-- metrics:end -->", 1)[0]
    assert block == metrics_markdown(), "docs/results-schema.md is stale: regenerate it with `make docs`"


def test_a_name_keeps_one_meaning_and_new_metrics_join():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "_REGISTRY", dict(metrics._REGISTRY))  # registrations vanish with the context
        auc = metric_info("auc")
        assert register_metric(auc) is auc  # importing a module twice is harmless
        with pytest.raises(KansaError, match=r'metric "auc" is already registered as .*lower_is_better.*refusing .*higher_is_better'):
            register_metric(Metric("auc", "area under something else", Direction.HIGHER, "score", ".3f", "S", True, "confidentiality"))
        mine = Metric("queries_used", "queries the attack spent per sample", Direction.LOWER, "count", ",.0f", None, False, "cost")
        assert register_metric(mine) is mine and metric_info("queries_used") == mine and "`queries_used`" in metrics_markdown()
        (gate,) = gates({"kind": "regression", "metric": "queries_used"})
        assert gate["direction"] == "auto"
        with pytest.raises(KansaError, match='format "%d"'):
            register_metric(Metric("badly_formatted", "x", Direction.LOWER, "count", "%d", None, False, "cost"))
        with pytest.raises(KansaError, match='category "privacy" is not one of'):
            Metric("uncategorised", "x", Direction.LOWER, "count", ",.0f", None, False, "privacy")
        with pytest.raises(KansaError, match='panel "leaks" is not one of the report'):  # a panel nobody draws would hide the attack
            Metric("unpanelled", "x", Direction.LOWER, "count", ",.0f", "S", False, "confidentiality", panel="leaks")
    assert metric_info("queries_used") is None and "queries_used" not in metrics_markdown()


def privacy_table(successes: int, n: int = 1000) -> pd.DataFrame:
    return make_table([rate_row("auc", successes, n, model="m", defense="none", attack="mia_loss", category="confidentiality")])


def test_auto_regression_follows_the_registered_direction():
    assert metric_info("auc").direction == Direction.LOWER and metric_info("robust_accuracy").direction == Direction.HIGHER
    leak = {"kind": "regression", "metric": "auc", "tolerance": 0.02}
    assert verdicts(leak, privacy_table(700), privacy_table(600))[0] == ["fail"]
    assert verdicts(leak, privacy_table(500), privacy_table(600))[0] == ["pass"]
    robust = {"kind": "regression", "metric": "robust_accuracy", "attack": "pgd", "tolerance": 0.02}
    assert verdicts(robust, table(500, 1000), table(600, 1000))[0] == ["fail"]
    assert verdicts(robust, table(700, 1000), table(600, 1000))[0] == ["pass"]


def test_a_metric_without_a_better_side_needs_an_explicit_direction():
    assert metric_info("classes").direction == Direction.NEUTRAL
    with pytest.raises(KansaError, match=r'gates\[0\].direction: metric "classes" has no known direction'):
        gates({"kind": "regression", "metric": "classes"})
    (gate,) = gates({"kind": "regression", "metric": "classes", "direction": "higher_is_better"})
    assert gate["direction"] == "higher_is_better"
