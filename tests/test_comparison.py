"""The defense comparison: deltas against the right baseline, the Pareto front, honest gaps, escaping, `kansa compare`."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from audit.cli import main
from audit.results import AuditResult, DefenseRecord, make_table
from reports.comparison import (
    CLEAN,
    DELTA,
    MIA_AUC,
    MIA_AUC_ATTACK,
    MIA_TPR,
    MIA_TPR_ATTACK,
    comparison_table,
    default_robust_column,
    pareto_front,
    robust_column,
    with_front,
)
from reports.html import render_html
from reports.tabular import results_json
from reports.trade_offs import render_comparison_html
from tests.conftest import run_metadata, write
from tests.masked_models import RoundsItsInput

PGD, ENS = robust_column("pgd", 0.1), robust_column("ensemble", 0.1)


def variant(model: str, defense: str, clean: float | None = None, robust: dict[tuple[str, float], float] | None = None,
            auc: dict[str, float] | None = None, tpr: dict[str, float] | None = None, cost: dict[str, float] | None = None,
            notes: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The rows the runner writes for one (model, defense) variant, as the row contract describes them."""
    where = {"model": model, "defense": defense}
    rows = []
    if clean is not None:
        rows.append({**where, "category": "performance", "metric": "accuracy", "subset": "split=test", "value": clean, "n": 200})
    for (attack, eps), value in (robust or {}).items():
        for subset, v in (("all", value), ("class=0", 1.0 - value)):  # a per-class row must not be taken for the overall one
            rows.append({**where, "category": "integrity", "attack": attack, "param": "eps", "param_value": eps, "subset": subset,
                         "metric": "robust_accuracy", "value": v, "n": 200})
    for attack, value in (auc or {}).items():
        rows.append({**where, "category": "confidentiality", "attack": attack, "metric": "auc", "value": value, "n": 400})
    for attack, value in (tpr or {}).items():
        for fpr, v in ((0.01, value), (0.001, value / 10)):
            rows.append({**where, "category": "confidentiality", "attack": attack, "metric": "tpr_at_fpr", "param": "fpr",
                         "param_value": fpr, "value": v, "n": 200})
    for metric, value in (cost or {}).items():
        rows.append({**where, "category": "cost", "metric": metric, "value": value})
    for metric, value in (notes or {}).items():
        rows.append({**where, "category": "defense", "metric": metric, "value": value})
    return rows


COST = {"size_bytes": 40_000.0, "nonzero_parameters": 10_000.0, "training_seconds": 4.0, "inference_ms_per_sample": 0.5}


def two_models() -> pd.DataFrame:
    """cnn and mlp, each as trained ("none") and with two defenses; integrity, membership, cost and defense rows."""
    rows = [{"category": "data_quality", "metric": "samples", "value": 1797.0, "model": ""}]
    rows += variant("cnn", "none", 0.95, {("pgd", 0.1): 0.20, ("ensemble", 0.1): 0.10}, {"mia_loss": 0.70, "rmia": 0.74},
                    {"mia_loss": 0.08, "rmia": 0.05}, COST)
    rows += variant("cnn", "dp", 0.90, {("pgd", 0.1): 0.25, ("ensemble", 0.1): 0.15}, {"mia_loss": 0.55, "rmia": 0.52},
                    {"mia_loss": 0.02, "rmia": 0.03}, {**COST, "training_seconds": 12.0},
                    notes={"dp_epsilon": 3.0, "noise_multiplier": 1.1})
    rows += variant("cnn", "adv", 0.88, {("pgd", 0.1): 0.60, ("ensemble", 0.1): 0.55}, {"mia_loss": 0.72, "rmia": 0.71},
                    {"mia_loss": 0.09, "rmia": 0.06}, {**COST, "training_seconds": 40.0})
    rows += variant("mlp", "none", 0.80, {("pgd", 0.1): 0.30, ("ensemble", 0.1): 0.30}, {"mia_loss": 0.60}, {"mia_loss": 0.04},
                    {**COST, "size_bytes": 8_000.0})
    rows += variant("mlp", "pruned", 0.79, {("pgd", 0.1): 0.31, ("ensemble", 0.1): 0.29}, {"mia_loss": 0.61}, {"mia_loss": 0.04},
                    {**COST, "size_bytes": 2_000.0, "nonzero_parameters": 2_500.0}, notes={"sparsity": 0.75})
    rows += variant("mlp", "quant", 0.78, {("pgd", 0.1): 0.40, ("ensemble", 0.1): 0.35}, {"mia_loss": 0.59}, {"mia_loss": 0.03},
                    {**COST, "size_bytes": 2_500.0})
    rows.append({"model": "mlp", "defense": "quant", "category": "defense", "metric": "gradients_from_float_twin", "value": 1.0,
                 "message": "white-box attacks used the float twin's gradients"})
    # attribute inference is also "confidentiality": its numbers must not pass for a membership AUC
    rows.append({"model": "cnn", "defense": "dp", "category": "confidentiality", "attack": "attribute_inference",
                 "metric": "attribute_accuracy", "subset": "split=train", "value": 0.99, "n": 100})
    rows.append({"model": "cnn", "defense": "dp", "category": "cost", "attack": "pgd", "metric": "attack_seconds", "value": 99.0})
    return make_table(rows)


def line(comparison: pd.DataFrame, model: str, defense: str) -> pd.Series:
    found = comparison[(comparison["model"] == model) & (comparison["defense"] == defense)]
    assert len(found) == 1
    return found.iloc[0]


def test_one_line_per_variant_with_deltas_against_its_own_models_baseline():
    comparison = comparison_table(two_models())
    assert list(zip(comparison["model"], comparison["defense"])) == [
        ("cnn", "none"), ("cnn", "dp"), ("cnn", "adv"), ("mlp", "none"), ("mlp", "pruned"), ("mlp", "quant")]
    paired = ("_delta", "_delta_low", "_delta_high")
    assert list(comparison.columns[:14]) == ["model", "defense", *(c + suffix for c in (CLEAN, PGD, ENS) for suffix in ("", *paired))]
    dp, quant = line(comparison, "cnn", "dp"), line(comparison, "mlp", "quant")
    assert dp[CLEAN + DELTA] == pytest.approx(0.90 - 0.95) and quant[CLEAN + DELTA] == pytest.approx(0.78 - 0.80)
    assert dp[PGD] == 0.25 and dp[PGD + DELTA] == pytest.approx(0.05)
    assert quant[ENS + DELTA] == pytest.approx(0.35 - 0.30)
    assert (dp[MIA_AUC], dp[MIA_AUC_ATTACK]) == (0.55, "mia_loss")  # the highest AUC, not the attribute accuracy
    assert dp[MIA_AUC + DELTA] == pytest.approx(0.55 - 0.74)  # against the baseline's own best attack (rmia)
    assert (dp[MIA_TPR], dp[MIA_TPR_ATTACK]) == (0.03, "rmia")  # the highest TPR may come from another attack
    assert dp["training_seconds"] == 12.0 and dp["training_seconds" + DELTA] == pytest.approx(8.0)  # attack_seconds is not training
    pruned = line(comparison, "mlp", "pruned")
    assert pruned["size_bytes" + DELTA] == -6_000.0 and pruned["nonzero_parameters" + DELTA] == -7_500.0
    assert (line(comparison, "cnn", "none")[[CLEAN + DELTA, PGD + DELTA]] == 0).all()
    assert dp["defense_details"] == "dp_epsilon=3; noise_multiplier=1.1"
    assert quant["defense_details"] == "gradients_from_float_twin=1 (white-box attacks used the float twin's gradients)"
    declared = [DefenseRecord("dp", "DP-SGD", "training", ["cnn"], {"max_grad_norm": 1.0})]
    assert line(comparison_table(two_models(), declared), "cnn", "dp")["defense_details"] == (
        "DP-SGD (training): max_grad_norm=1.0; dp_epsilon=3; noise_multiplier=1.1")


def test_runs_keep_their_own_baselines_when_combined():
    from reports.comparison import combine

    first = comparison_table(two_models(), run="a")
    second_rows = variant("cnn", "none", 0.50, {("pgd", 0.2): 0.05}) + variant("cnn", "dp", 0.45, {("pgd", 0.2): 0.10})
    combined = combine([first, comparison_table(make_table(second_rows), run="b")])
    assert list(combined.columns[:3]) == ["run", "model", "defense"]
    b_dp = combined[(combined["run"] == "b") & (combined["defense"] == "dp")].iloc[0]
    assert b_dp[CLEAN + DELTA] == pytest.approx(-0.05)  # against run b's cnn, not run a's
    assert math.isnan(b_dp[PGD]) and b_dp[robust_column("pgd", 0.2) + DELTA] == pytest.approx(0.05)
    a_dp = combined[(combined["run"] == "a") & (combined["defense"] == "dp")].iloc[0]
    assert a_dp[CLEAN + DELTA] == pytest.approx(-0.05) and math.isnan(a_dp[robust_column("pgd", 0.2)])


def test_missing_numbers_stay_missing():
    rows = variant("cnn", "none", 0.9, {("pgd", 0.1): 0.2}, cost={"parameters": 10.0})
    rows += variant("cnn", "dp", 0.85, {("fgsm", 0.1): 0.3}, {"mia_loss": 0.6}, {"mia_loss": 0.1}, {"size_bytes": 100.0})
    rows.append({"model": "cnn", "defense": "dp", "category": "integrity", "attack": "pgd", "metric": "error", "status": "error",
                 "message": "RuntimeError: boom"})
    rows += variant("orphan", "dp", 0.7, {("pgd", 0.1): 0.5})  # a model audited only defended: no baseline to compare with
    comparison = comparison_table(make_table(rows))
    dp, orphan = line(comparison, "cnn", "dp"), line(comparison, "orphan", "dp")
    assert math.isnan(dp[PGD]) and math.isnan(dp[PGD + DELTA]) and dp["failed"] == "pgd"
    assert math.isnan(line(comparison, "cnn", "none")[robust_column("fgsm", 0.1)]) and math.isnan(dp[robust_column("fgsm", 0.1) + DELTA])
    assert dp[MIA_AUC] == 0.6 and math.isnan(dp[MIA_AUC + DELTA])  # the baseline ran no membership attack
    assert dp["size_bytes"] == 100.0 and math.isnan(dp["size_bytes" + DELTA]) and math.isnan(dp["inference_ms_per_sample"])
    assert orphan[PGD] == 0.5 and math.isnan(orphan[PGD + DELTA]) and math.isnan(orphan[CLEAN + DELTA])
    assert line(comparison, "cnn", "none")[MIA_AUC_ATTACK] == ""


def front_of(points: dict[str, tuple[float, float | None, float | None]], **kwargs: Any) -> dict[str, Any]:
    rows = []
    for defense, (clean, robust, auc) in points.items():
        rows += variant("m", defense, clean, None if robust is None else {("ensemble", 0.1): robust}, None if auc is None else {"mia_loss": auc})
    comparison = comparison_table(make_table(rows))
    front = pareto_front(comparison, **kwargs)
    return {d: (None if s is pd.NA else bool(s)) for d, s in zip(comparison["defense"], front)}


def test_pareto_front_on_a_hand_checked_example():
    points = {
        "none": (0.95, 0.10, None),   # best clean accuracy: on the front
        "a": (0.90, 0.50, None),      # on the front
        "tie": (0.90, 0.50, None),    # identical to a: neither dominates the other
        "b": (0.85, 0.45, None),      # worse than a on both: dominated
        "c": (0.70, 0.70, None),      # best robust accuracy: on the front
        "e": (0.95, 0.05, None),      # as clean as none, less robust: dominated
        "gap": (0.99, None, None),    # no robust accuracy: not judged, and judges nothing
    }
    assert front_of(points) == {"none": True, "a": True, "tie": True, "b": False, "c": True, "e": False, "gap": None}


def test_pareto_front_counts_privacy_only_when_every_variant_has_it():
    points = {"none": (0.95, 0.10, 0.75), "a": (0.90, 0.50, 0.70), "b": (0.85, 0.45, 0.52), "c": (0.85, 0.45, 0.60)}
    assert front_of(points) == {"none": True, "a": True, "b": True, "c": False}  # b leaks less than a; c is b but leakier
    points["d"] = (0.80, 0.40, None)
    assert front_of(points) == {"none": True, "a": True, "b": False, "c": False, "d": False}  # privacy no longer counts
    assert front_of(points, privacy=True) == {"none": True, "a": True, "b": True, "c": False, "d": None}


def test_default_robust_column_is_the_strongest_that_still_separates_the_variants():
    rows = variant("m", "none", 0.9, {("pgd", 0.1): 0.3, ("ensemble", 0.1): 0.2, ("ensemble", 0.3): 0.0, ("ensemble", 0.2): 0.1})
    rows += variant("m", "adv", 0.8, {("pgd", 0.1): 0.5, ("ensemble", 0.1): 0.4, ("ensemble", 0.3): 0.0, ("ensemble", 0.2): 0.3})
    rows += variant("m", "dp", 0.8, {("pgd", 0.1): 0.1, ("ensemble", 0.1): 0.1, ("ensemble", 0.3): 0.0})
    comparison = comparison_table(make_table(rows))
    # ensemble@0.3 is 0 for everyone (ranks nothing); ensemble@0.2 is missing for dp; pgd is not the worst case
    assert default_robust_column(comparison) == robust_column("ensemble", 0.1)
    assert front_of({"none": (0.9, 0.2, None), "adv": (0.8, 0.4, None)}, robust=ENS) == {"none": True, "adv": True}
    from audit.errors import KansaError

    with pytest.raises(KansaError, match=r"no robust-accuracy column 'robust_accuracy\[cw@1\]'"):
        pareto_front(comparison, robust="robust_accuracy[cw@1]")


HOSTILE_MODEL, HOSTILE_DEFENSE = "<script>alert(1)</script>", "<img src=x onerror=alert(2)>"


def hostile_comparison() -> pd.DataFrame:
    table = two_models()
    table["model"] = table["model"].replace("cnn", HOSTILE_MODEL)
    table["defense"] = table["defense"].replace("dp", HOSTILE_DEFENSE)
    return comparison_table(table)


@pytest.mark.parametrize("lang, phrase", [("en", "On the Pareto front"), ("ja", "パレートフロント上")])
def test_comparison_html_escapes_names_and_embeds_the_plot(lang, phrase):
    html = render_comparison_html(hostile_comparison(), [{"label": "<b>run</b>", "title": "t", "run_id": "x", "created": "", "path": "p"}], lang)
    assert "<script" not in html and "<img src=x" not in html and "<b>run" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    sources = re.findall(r'<img [^>]*src="([^"]*)"', html)
    assert len(sources) == 1 and sources[0].startswith("data:image/png;base64,") and len(sources[0]) > 5000
    assert "default-src 'none'" in html and not re.search(r"https?://", html)
    assert phrase in html
    # the signed deltas, as a reader compares them
    assert "−5.0 pts" in html or "−5.0 pt" in html  # cnn dp clean accuracy
    assert "+45.0 pt" in html  # cnn adv ensemble@0.1: 0.10 -> 0.55
    assert "−75.0%" in html  # mlp pruned size 8000 -> 2000


def test_trade_off_plot_takes_dollar_signs_as_text():
    rows = variant("$x$ and $", "none", 0.9, {("pgd", 0.1): 0.2}) + variant("$x$ and $", "d$", 0.8, {("pgd", 0.1): 0.4}, {"mia_loss": 0.6})
    html = render_comparison_html(comparison_table(make_table(rows)), [], "en")
    assert html.count("data:image/png;base64,") == 1


@pytest.fixture(scope="module")
def defended_run(small_run) -> AuditResult:
    """small_run plus a synthetic defended variant of its model (its rows copied with shifted numbers), so the report shows a trade-off."""
    table = small_run.table
    copy = table[table["model"] == "cnn"].copy()
    copy["defense"] = "<b>pruned</b>"
    robust = copy["metric"] == "robust_accuracy"
    copy.loc[robust, "value"] = (copy.loc[robust, "value"] + 0.1).clip(upper=1.0)
    size = copy["metric"] == "size_bytes"
    copy.loc[size, "value"] = copy.loc[size, "value"] / 4
    extra = [] if size.any() else variant("cnn", "none", cost={"size_bytes": 40_000.0}) + variant("cnn", "<b>pruned</b>", cost={"size_bytes": 10_000.0})
    return AuditResult(table=pd.concat([table, copy, make_table(extra)], ignore_index=True), metadata=small_run.metadata, artifacts=small_run.artifacts)


def test_report_shows_the_trade_off_only_when_a_model_was_defended(small_run, defended_run):
    plain = render_html(AuditResult(table=small_run.table, metadata=small_run.metadata, artifacts=small_run.artifacts))
    assert '<section id="defenses">' not in plain
    html = render_html(defended_run, "ja")
    assert '<section id="defenses">' in html and "防御とトレードオフ" in html
    assert "<b>pruned" not in html and "cnn / &lt;b&gt;pruned&lt;/b&gt;" in html
    section = html.split('<section id="defenses">')[1].split("</section>")[0]
    assert len(re.findall(r'src="data:image/png;base64,', section)) == 1
    assert "−75.0%" in section and "+10.0 pt" in section
    # every characteristic section shows the variant on its own, not mixed into the model as trained
    c1 = html.split('<section id="C-1">')[1].split("</section>")[0]
    assert "<h3>cnn</h3>" in c1 and "<h3>cnn / &lt;b&gt;pruned&lt;/b&gt;</h3>" in c1


def test_summary_lists_the_defended_variants(defended_run):
    from reports.markdown import summary_markdown

    summary = summary_markdown(defended_run)
    assert "### Defenses and trade-offs" in summary
    assert "| cnn | &lt;b&gt;pruned&lt;/b&gt; |" in summary and "−75.0%" in summary


def test_a_run_writes_its_comparison(small_run):
    csv = pd.read_csv(small_run.out_dir / "comparison.csv")
    assert list(csv["defense"]) == ["none"] and CLEAN in csv and robust_column("ensemble", 0.2) in csv and "pareto" in csv
    document = json.loads((small_run.out_dir / "comparison.json").read_text())
    assert document["schema"] == "kansa.comparison/1" and document["runs"][0]["run_id"] == small_run.metadata.run_id
    row = document["rows"][0]
    assert row[CLEAN] == pytest.approx(float(csv[CLEAN].iloc[0])) and row[MIA_AUC] is None  # NaN is written as null


def write_run(folder: Path, table: pd.DataFrame, run_id: str, **fields: Any) -> Path:
    metadata = run_metadata(run_id=run_id, title=f"audit {run_id}", **fields)
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(results_json(AuditResult(table=table, metadata=metadata)), encoding="utf-8")
    return folder


def test_kansa_compare_combines_runs(tmp_path, capsys):
    table = two_models()
    first = write_run(tmp_path / "cnn-run", table[table["model"].isin(["cnn", ""])], "r1")
    second = write_run(tmp_path / "mlp-run", table[table["model"] != "cnn"], "r2")
    out = tmp_path / "cmp"
    assert main(["compare", str(first), str(second), "--out", str(out), "--lang", "ja"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "comparison.csv") in printed and str(out / "comparison.html") in printed
    csv = pd.read_csv(out / "comparison.csv", keep_default_na=False, na_values=[""])
    assert list(zip(csv["run"], csv["defense"])) == [("cnn-run", "none"), ("cnn-run", "dp"), ("cnn-run", "adv"),
                                                     ("mlp-run", "none"), ("mlp-run", "pruned"), ("mlp-run", "quant")]
    np.testing.assert_allclose(csv[CLEAN + DELTA], [0, -0.05, -0.07, 0, -0.01, -0.02], atol=1e-12)
    # one front over both runs, on clean accuracy, ensemble@0.1 and membership AUC: only mlp/pruned is beaten on all three (by mlp/none)
    assert dict(zip(csv["run"] + "/" + csv["defense"], csv["pareto"])) == {
        "cnn-run/none": True, "cnn-run/dp": True, "cnn-run/adv": True,
        "mlp-run/none": True, "mlp-run/pruned": False, "mlp-run/quant": True}
    document = json.loads((out / "comparison.json").read_text())
    assert [r["label"] for r in document["runs"]] == ["cnn-run", "mlp-run"]
    assert document["pareto"]["objectives"] == [CLEAN, ENS, MIA_AUC]
    html = (out / "comparison.html").read_text()
    assert '<html lang="ja">' in html and html.count("data:image/png;base64,") == 1 and "cnn-run · cnn" in html


def test_kansa_compare_input_errors_are_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("kansa: error: results file not found:") and error.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    run = write_run(tmp_path / "r", two_models(), "r1")
    assert main(["compare", str(run), "--out", str(tmp_path / "o"), "--robust", "robust_accuracy[cw@9]"]) == 2
    assert "no robust-accuracy column" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()



# --- unreliable numbers never reach the front --------------------------------------------------


def sanity_flag(model: str, defense: str, check: str, status: str = "ok", message: str = "a zero input gradient on 40% of samples") -> dict[str, Any]:
    return {"model": model, "defense": defense, "category": "sanity", "metric": check, "value": 1.0, "status": status, "message": message}


def masked_trio(*extra: dict[str, Any]) -> pd.DataFrame:
    """A baseline, an honest defense, and a variant whose best robust accuracy stands on masked gradients."""
    rows = variant("m", "none", 0.95, {("ensemble", 0.1): 0.10, ("pgd", 0.1): 0.12})
    rows += variant("m", "masked", 0.94, {("ensemble", 0.1): 0.60, ("pgd", 0.1): 0.62})  # would dominate "honest"
    rows += variant("m", "honest", 0.90, {("ensemble", 0.1): 0.30, ("pgd", 0.1): 0.31})
    rows.append({"model": "m", "defense": "none", "category": "sanity", "metric": "vanishing_gradients", "value": 0.0, "message": "none"})
    return make_table(rows + list(extra))


def front_by_defense(comparison: pd.DataFrame, **kwargs: Any) -> dict[str, bool | None]:
    return {d: (None if s is pd.NA else bool(s)) for d, s in zip(comparison["defense"], pareto_front(comparison, **kwargs))}


def test_a_flagged_variant_with_the_best_robust_accuracy_is_left_off_the_front_and_marked_everywhere(tmp_path, monkeypatch):
    from reports import figures
    from reports.comparison import write_comparison
    from reports.markdown import summary_markdown

    comparison = comparison_table(masked_trio(sanity_flag("m", "masked", "vanishing_gradients"),
                                              sanity_flag("m", "masked", "black_box_stronger_than_white_box") | {"attack": "square", "param_value": 0.1}))
    assert front_by_defense(comparison) == {"none": True, "masked": None, "honest": True}  # honest is no longer dominated
    masked = line(comparison, "m", "masked")
    assert masked["flags"] == "vanishing_gradients; black_box_stronger_than_white_box (square at eps 0.1)"
    assert line(comparison, "m", "none")["flags"] == "" and line(comparison, "m", "honest")["flags"] == ""

    paths = write_comparison(comparison, tmp_path, [])
    saved = pd.read_csv(paths["comparison_csv"], keep_default_na=False).set_index("defense")
    assert saved.loc["masked", "pareto"] == "" and saved.loc["honest", "pareto"] == "True"
    assert saved.loc["masked", "pareto_note"].startswith("Robust accuracy, ensemble at eps 0.1 is flagged by sanity checks: vanishing_gradients")
    document = json.loads(paths["comparison_json"].read_text())
    assert [r["pareto"] for r in document["rows"]] == [True, None, True]

    captured = {}
    monkeypatch.setattr(figures, "trade_off", lambda **kwargs: captured.update(kwargs) or "data:image/png;base64,")
    html = render_comparison_html(comparison, [], "en")
    assert list(captured["left_out"]) == [False, True, False] and list(captured["front"]) == [True, False, True]
    assert "⚠ flagged" in html and "Left out of the front" in html and "is flagged by sanity checks: vanishing_gradients" in html
    front_line = re.search(r"\): <strong>([^<]*)</strong>", html)
    assert front_line and front_line.group(1) == "m, m / honest"

    summary = summary_markdown(AuditResult(table=masked_trio(sanity_flag("m", "masked", "vanishing_gradients")), metadata=run_metadata()))
    (masked_row,) = [r for r in summary.splitlines() if r.startswith("| m | masked |")]
    assert "left out: Robust accuracy, ensemble at eps 0.1 is flagged by sanity checks: vanishing\\_gradients" in masked_row


def test_a_waived_flag_keeps_the_variant_eligible_and_shows_the_waivers_reason():
    flag = sanity_flag("m", "masked", "vanishing_gradients", "waived", "a zero gradient (waived: ReLU6 saturation; Square agrees)")
    comparison = comparison_table(masked_trio(flag))
    assert front_by_defense(comparison) == {"none": True, "masked": True, "honest": False}
    masked = line(comparison, "m", "masked")
    assert masked["flags"] == "" and masked["waived"] == "vanishing_gradients: ReLU6 saturation; Square agrees"
    html = render_comparison_html(comparison, [], "en")
    assert "waived: vanishing_gradients: ReLU6 saturation; Square agrees" in html and "⚠ flagged" not in html


def test_failed_attacks_leave_out_the_worst_case_they_miss_but_not_an_attack_that_ran():
    error = {"model": "m", "defense": "masked", "category": "integrity", "attack": "square", "metric": "error", "status": "error",
             "message": "RuntimeError: boom"}
    comparison = comparison_table(masked_trio(error))
    assert front_by_defense(comparison) == {"none": True, "masked": None, "honest": True}
    assert "misses attacks that failed: square" in with_front(comparison)[0].set_index("defense").loc["masked", "pareto_note"]
    assert front_by_defense(comparison, robust=PGD) == {"none": True, "masked": True, "honest": False}  # pgd's own number stands


def test_a_failed_membership_attack_leaves_out_the_strongest_attack_figure():
    rows = variant("m", "none", 0.95, {("ensemble", 0.1): 0.1}, {"mia_loss": 0.70, "lira": 0.80})
    rows += variant("m", "dp", 0.94, {("ensemble", 0.1): 0.1}, {"mia_loss": 0.55})  # lira failed: 0.55 understates its leakage
    rows += variant("m", "reg", 0.90, {("ensemble", 0.1): 0.1}, {"mia_loss": 0.60, "lira": 0.65})
    rows.append({"model": "m", "defense": "dp", "category": "confidentiality", "attack": "lira", "metric": "error", "status": "error",
                 "message": "RuntimeError: boom"})
    rows.append({"model": "m", "defense": "dp", "category": "confidentiality", "attack": "mi_face", "metric": "error", "status": "error",
                 "message": "RuntimeError: boom"})
    table = make_table(rows)
    assert front_by_defense(comparison_table(table)) == {"none": True, "dp": None, "reg": True}
    assert line(comparison_table(table), "m", "dp")["failed_membership"] == "lira, mi_face"  # unknown kinds count, to fail closed
    known = comparison_table(table, membership={"mia_loss", "lira"})
    assert line(known, "m", "dp")["failed_membership"] == "lira"


def test_without_a_membership_auc_for_every_variant_leakage_is_no_objective_and_the_page_says_for_whom():
    rows = variant("m", "none", 0.95, {("ensemble", 0.1): 0.1}, {"mia_loss": 0.70}) + variant("m", "fs", 0.90, {("ensemble", 0.1): 0.3})
    comparison = comparison_table(make_table(rows))
    html = render_comparison_html(comparison, [], "en")
    assert "Membership AUC is not an objective, because these variants have none: m / fs." in html
    assert front_by_defense(comparison) == {"none": True, "fs": True}


TWINS = """
seed = 0
[data]
source = "digits"
[evaluation]
samples = 100
[history]
enabled = false
[[models]]
name = "honest"
kind = "torchscript"
path = "honest.ts"
[[models]]
name = "masked"
kind = "torchscript"
path = "masked.ts"
[[attacks]]
name = "fgsm"
eps = [0.1, 0.2]
[[attacks]]
name = "pgd"
eps = [0.1, 0.2]
steps = 10
"""


@pytest.mark.slow
def test_kansa_compare_never_crowns_a_gradient_masked_twin(digits, tmp_path):
    """The held-out case: two TorchScript files, one masked; its robust accuracy is the higher, and its own run flags it."""
    _, _, target = digits
    torch.jit.save(torch.jit.script(target.module.inner), tmp_path / "honest.ts")
    torch.jit.save(torch.jit.script(RoundsItsInput(target.module.inner)), tmp_path / "masked.ts")
    write(tmp_path / "audit.toml", TWINS)
    assert main(["run", str(tmp_path / "audit.toml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["compare", str(tmp_path / "run"), "--out", str(tmp_path / "cmp")]) == 0
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv", keep_default_na=False).set_index("model")
    column = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["pareto"]["objectives"][1]
    assert float(table.loc["masked", column]) > float(table.loc["honest", column]) + 0.2  # judged on numbers alone, it would win
    assert "vanishing_gradients" in table.loc["masked", "flags"] and table.loc["honest", "flags"] == ""
    assert table.loc["masked", "pareto"] == "" and "flagged by sanity checks" in table.loc["masked", "pareto_note"]
    assert table.loc["honest", "pareto"] == "True"
    assert "⚠ flagged" in (tmp_path / "cmp" / "comparison.html").read_text(encoding="utf-8")


# --- kansa compare puts side by side only what is comparable -------------------------------------

ATTACKS = [{"id": "pgd", "name": "pgd", "params": {"eps": [0.1], "steps": 40, "batch_size": 128}},
           {"id": "fgsm", "name": "fgsm", "params": {"eps": [0.1], "batch_size": 128}},
           {"id": "mia_loss", "name": "mia_loss", "params": {"bootstrap": 200}}]


def two_runs(tmp_path: Path, second_attacks: list[dict[str, Any]] = ATTACKS, **second: Any) -> list[str]:
    table = two_models()
    first = write_run(tmp_path / "a", table[table["model"].isin(["cnn", ""])], "r1", config={"attacks": ATTACKS})
    other = write_run(tmp_path / "b", table[table["model"] != "cnn"], "r2", config={"attacks": second_attacks}, **second)
    return [str(first), str(other)]


def refusal(capsys: Any, runs: list[str], out: Path) -> str:
    assert main(["compare", *runs, "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and not out.exists()  # one line, and nothing written
    return message


def test_kansa_compare_refuses_runs_on_different_data_and_groups_them_when_allowed(tmp_path, capsys):
    from audit.results import DataSummary

    mnist = DataSummary("mnist", "f" * 64, 10_000, [1, 28, 28], [0.0, 1.0], True, [str(c) for c in range(10)], {"test": 10_000}, 500, "e" * 64)
    runs = two_runs(tmp_path, data=mnist)
    message = refusal(capsys, runs, tmp_path / "cmp")
    assert "a and b audit different data: digits (00000000) vs mnist (ffffffff)" in message and "--allow-mismatch" in message
    assert main(["compare", *runs, "--out", str(tmp_path / "cmp"), "--allow-mismatch"]) == 0
    csv = pd.read_csv(tmp_path / "cmp" / "comparison.csv", keep_default_na=False)
    assert list(csv.columns[:3]) == ["run", "group", "model"]
    assert dict(zip(csv["run"], csv["group"])) == {"a": "digits (00000000)", "b": "mnist (ffffffff)"}
    # each data set has its own front: mlp / pruned is still beaten by mlp / none, and nothing of a judges b
    assert dict(zip(csv["run"] + "/" + csv["defense"], csv["pareto"].astype(str))) == {
        "a/none": "True", "a/dp": "True", "a/adv": "True", "b/none": "True", "b/pruned": "False", "b/quant": "True"}
    document = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert document["mismatches"] == ["a and b audit different data: digits (00000000) vs mnist (ffffffff)"]
    html = (tmp_path / "cmp" / "comparison.html").read_text()
    assert "not comparable side by side" in html and "audit different data" in html and "a · digits (00000000) · cnn" in html


def test_with_mismatches_allowed_a_variant_is_judged_only_against_its_own_group(tmp_path):
    from audit.results import DataSummary

    mnist = DataSummary("mnist", "f" * 64, 10_000, [1, 28, 28], [0.0, 1.0], True, [str(c) for c in range(10)], {"test": 10_000}, 500, "e" * 64)
    a = write_run(tmp_path / "a", make_table(variant("m", "none", 0.95, {("ensemble", 0.1): 0.5})), "r1")
    b = write_run(tmp_path / "b", make_table(variant("m", "none", 0.90, {("ensemble", 0.1): 0.4})), "r2", data=mnist)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp"), "--allow-mismatch"]) == 0
    csv = pd.read_csv(tmp_path / "cmp" / "comparison.csv", keep_default_na=False)
    assert list(csv["pareto"].astype(str)) == ["True", "True"]  # in one front, b's model would be beaten by a's


def test_kansa_compare_refuses_other_attack_budgets_and_other_samples(tmp_path, capsys):
    weaker = [{**ATTACKS[0], "params": {"eps": [0.1, 0.3], "steps": 10, "batch_size": 32}}, *ATTACKS[1:]]
    message = refusal(capsys, two_runs(tmp_path / "budget", weaker), tmp_path / "cmp")
    assert "robust_accuracy[pgd@0.1]: a and b ran pgd steps 40 vs 10" in message and "more difference" in message  # the ensemble too
    without_fgsm = [ATTACKS[0], ATTACKS[2]]
    message = refusal(capsys, two_runs(tmp_path / "members", without_fgsm), tmp_path / "cmp")
    assert "robust_accuracy[ensemble@0.1]: a takes it over fgsm, pgd, b over pgd" in message
    from audit.results import DataSummary

    other_draw = DataSummary("digits", "0" * 64, 10, [1, 8, 8], [0.0, 1.0], True, [str(c) for c in range(10)],
                             {"train": 6, "holdout": 2, "test": 2}, 2, "d" * 64)
    message = refusal(capsys, two_runs(tmp_path / "draw", data=other_draw), tmp_path / "cmp")
    assert "a and b attack different samples: 2 vs 2 evaluated, another draw" in message
    assert main(["compare", *two_runs(tmp_path / "same"), "--out", str(tmp_path / "cmp")]) == 0  # batch size and eps lists aside, the same
