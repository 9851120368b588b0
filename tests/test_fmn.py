"""FMN numbers a user can trust: at least as strong as DeepFool and CW in L2 and as PGD in L-inf on the digits CNN, its reported
minimal sizes are the norms of what it returns (L0: values changed), it is deterministic, and an L1 config gets L1 rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.base import ENSEMBLE, AttackContext, AttackOutput
from attacks.evasion import PGD
from attacks.fmn import fmn
from attacks.minimum_norm import FMN, FMN_EPS, CarliniWagnerL2, DeepFool
from audit.api import run_audit
from audit.checks import tolerance
from audit.config import load_config
from audit.errors import ConfigError
from reports.queries import headline_eps
from tests.conftest import write

SAMPLES = 150
ORDER = {"0": 0, "1": 1, "2": 2, "inf": np.inf}


@pytest.fixture(scope="module")
def attacked(digits, one_torch_thread):
    dataset, splits, target = digits
    x, y = dataset.x[splits.test][:SAMPLES], dataset.y[splits.test][:SAMPLES]
    return target, x, y, AttackContext(0, dataset.class_names)


def overall(output: AttackOutput, metric: str, eps: float | None = None) -> dict:
    (row,) = [r for r in output.rows if r["metric"] == metric and r.get("subset", "all") == "all" and r.get("param_value") == eps]
    return row


@pytest.fixture(scope="module")
def fmn_l2(attacked):
    target, x, y, context = attacked
    return FMN(norm="2").run(target, x, y, context)


def test_fmn_l2_is_at_least_as_strong_as_deepfool_at_every_eps_and_finds_smaller_perturbations(attacked, fmn_l2):
    target, x, y, context = attacked
    deepfool = DeepFool().run(target, x, y, context)
    for eps in FMN_EPS["2"]:
        assert overall(fmn_l2, "robust_accuracy", eps)["value"] <= overall(deepfool, "robust_accuracy", eps)["value"] + tolerance(len(y)), eps
    assert overall(fmn_l2, "median_min_perturbation_l2")["value"] <= overall(deepfool, "median_min_perturbation_l2")["value"]


@pytest.mark.slow
def test_fmn_l2_finds_smaller_perturbations_than_cw(attacked, fmn_l2):
    target, x, y, context = attacked
    cw = CarliniWagnerL2().run(target, x, y, context)
    assert overall(fmn_l2, "median_min_perturbation_l2")["value"] <= overall(cw, "median_min_perturbation_l2")["value"]
    for eps in FMN_EPS["2"]:
        assert overall(fmn_l2, "robust_accuracy", eps)["value"] <= overall(cw, "robust_accuracy", eps)["value"] + tolerance(len(y)), eps


def test_fmn_linf_robust_accuracy_at_0_1_is_within_pgds_interval_or_lower(attacked):
    target, x, y, context = attacked
    torch.manual_seed(0)
    np.random.seed(0)
    pgd = overall(PGD(eps=[0.1]).run(target, x, y, context), "robust_accuracy", 0.1)
    assert overall(FMN(norm="inf", eps=[0.1]).run(target, x, y, context), "robust_accuracy", 0.1)["value"] <= pgd["ci_high"]


@pytest.mark.parametrize("norm", ["0", "1", "2", "inf"])
def test_the_reported_minimal_size_is_the_norm_of_the_returned_perturbation(attacked, norm):
    target, x, y, context = attacked
    attack = FMN(norm=norm, batch_size=SAMPLES)  # one batch, so `minimize` below sees exactly what the run saw
    output = attack.run(target, x, y, context)
    delta = (np.clip(attack.minimize(target, x, y), 0, 1).astype(np.float32) - x).reshape(len(x), -1).astype(np.float64)
    flipped = np.isfinite(output.per_sample["min_perturbation"]) & output.per_sample["clean_correct"]
    expected = np.linalg.norm(delta, ord=ORDER[norm], axis=1)
    np.testing.assert_allclose(output.per_sample["min_perturbation"][flipped], expected[flipped], rtol=1e-12)
    assert overall(output, f"min_perturbation_l{norm}")["value"] == pytest.approx(expected[flipped].mean())
    assert overall(output, f"median_min_perturbation_l{norm}")["value"] == pytest.approx(np.median(expected[flipped]))
    assert overall(output, "success_rate_unbounded")["value"] >= 0.97
    assert (expected[flipped] > 0).all()
    if norm == "0":
        assert np.array_equal(expected, (delta != 0).sum(axis=1))
        minimal = output.per_sample["min_perturbation"]
        for eps in FMN_EPS["0"]:
            robust = output.per_sample[f"robust_correct@eps={eps:g}"]
            assert np.array_equal(robust, output.per_sample["clean_correct"] & (minimal > eps))


def test_misclassified_samples_come_back_unchanged_and_the_rest_stay_in_range(attacked):
    target, x, y, _ = attacked
    wrong = y.copy()
    wrong[:10] = (target.predict(x[:10]) + 1) % 10  # labels the model gets wrong: already "adversarial"
    x_adv = fmn(target.attack_module, torch.from_numpy(x[:40]), torch.from_numpy(wrong[:40].astype(np.int64)), "2", 20, (0.0, 1.0)).numpy()
    np.testing.assert_array_equal(x_adv[:10], x[:10])
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and (x_adv[10:] != x[10:40]).any()


def test_the_same_seed_gives_identical_outputs(attacked):
    target, x, y, context = attacked
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(FMN(norm="1", steps=30).run(target, x[:60], y[:60], context))
    assert runs[0].rows == runs[1].rows
    for key, values in runs[0].per_sample.items():
        np.testing.assert_array_equal(values, runs[1].per_sample[key])


def test_each_norm_gets_its_own_budgets_and_l0_budgets_are_counts():
    assert FMN(norm="1").values["eps"] == FMN_EPS["1"] != FMN().values["eps"] == FMN_EPS["2"]
    assert FMN(norm="0").values["eps"] == FMN_EPS["0"] and FMN(norm="0", eps=[4]).values["eps"] == [4]
    with pytest.raises(ConfigError, match=r"eps: .*whole numbers, got 2\.5"):
        FMN(norm="0", eps=[1, 2.5])


L1_AUDIT = """
seed = 3
[data]
source = "digits"
[[models]]
name = "cnn"
epochs = 2
[evaluation]
samples = 40
[cache]
enabled = false
[history]
enabled = false
[[attacks]]
name = "fmn"
norm = "1"
steps = 10
"""


def test_an_l1_fmn_in_the_config_gives_ensemble_l1_rows_at_the_l1_budgets_and_a_report_headed_by_them(tmp_path, one_torch_thread):
    table = run_audit(write(tmp_path / "audit.toml", L1_AUDIT), out_dir=tmp_path / "run").table
    worst = table[(table["attack"] == ENSEMBLE["1"]) & (table["metric"] == "robust_accuracy") & (table["subset"] == "all")]
    assert sorted(worst["param_value"]) == FMN_EPS["1"] and (worst["status"] == "ok").all()
    assert set(table.loc[table["attack"] == "fmn", "metric"]) >= {"min_perturbation_l1", "median_min_perturbation_l1"}
    assert "noise-l1" in set(table["attack"])
    assert "Robust accuracy at eps 2 (L1)" in (tmp_path / "run" / "report.html").read_text(encoding="utf-8")


def test_the_headline_of_an_l1_run_reads_its_l1_sweep(tmp_path):
    config = load_config(write(tmp_path / "audit.toml", L1_AUDIT))
    (headline,) = headline_eps({"attacks": config.attacks, "evaluation": config.evaluation, "gates": config.gates})
    assert headline.norm == "1"
