"""Sanity checks catch masked gradients and weak attacks, and stay quiet on an honest evaluation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from attacks.base import ROBUST_AT, EvasionAttack
from attacks.evasion import FGSM, PGD, more_steps_and_a_restart
from audit import run_audit
from audit.checks import PROBE_SAMPLES, probe_convergence, probe_subsample, table_checks
from audit.cli import main
from audit.results import make_table, rate_row
from tests.conftest import SMALL_AUDIT, write
from tests.masked_models import RoundsItsInput

SMALL_AUDIT_FAST = SMALL_AUDIT.replace("epochs = 15", "epochs = 3")


def robust_rows(curves: dict[str, dict[float, float]], n: int = 200) -> "object":
    rows = []
    for attack, curve in curves.items():
        for eps, value in curve.items():
            rows.append(rate_row("robust_accuracy", round(value * n), n, model="m", attack=attack, category="integrity", param="eps", param_value=eps))
    return make_table(rows)


def flags(rows: list[dict], check: str) -> list[tuple[str, float, float]]:
    return [(r["attack"], r.get("param_value"), r["value"]) for r in rows if r["metric"] == check]


def test_monotonicity_check_on_synthetic_curves():
    table = robust_rows({"fgsm": {0.1: 0.6, 0.2: 0.3, 0.3: 0.1}, "pgd": {0.1: 0.5, 0.2: 0.2, 0.3: 0.4}})
    rows = table_checks(table, {"fgsm": FGSM(), "pgd": PGD()})
    assert flags(rows, "not_monotonic_in_eps") == [("fgsm", None, 0.0), ("pgd", None, 1.0)]
    (flagged,) = [r for r in rows if r["metric"] == "not_monotonic_in_eps" and r["value"] == 1.0]
    assert "rises from 0.200 at eps 0.2 to 0.400 at eps 0.3" in flagged["message"]


def test_single_vs_iterative_check_on_synthetic_curves():
    table = robust_rows({"fgsm": {0.1: 0.6, 0.2: 0.3}, "pgd": {0.1: 0.5, 0.2: 0.4}})
    rows = table_checks(table, {"fgsm": FGSM(), "pgd": PGD()})
    assert flags(rows, "iterative_weaker_than_single_step") == [("pgd", 0.1, 0.0), ("pgd", 0.2, 1.0)]
    noise_only = robust_rows({"fgsm": {0.1: 0.600}, "pgd": {0.1: 0.605}})  # one sample of 200: noise
    assert flags(table_checks(noise_only, {"fgsm": FGSM(), "pgd": PGD()}), "iterative_weaker_than_single_step")[0][2] == 0.0


class _Marked:
    """A synthetic target: a sample is misclassified when its first feature is negative."""

    clip_values = (-1.0, 1.0)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return (x[:, 0] < 0).astype(np.int64)


class _SlowAttack(EvasionAttack):
    """Flips the samples numbered below its steps times starts, up to 10 (the number is the second feature):
    more budget helps until it saturates."""

    name = "slow-test-attack"
    summary = "synthetic"
    params = (*PGD.params,)

    def strengthened(self, eps):
        return more_steps_and_a_restart(self, eps)

    def perturb(self, target, x, y, eps):
        flipped = x.copy()
        flipped[x[:, 1] < min(self.values["steps"] * self.values["random_starts"], 10), 0] = -1.0
        return flipped


def test_convergence_check_on_a_synthetic_attack():
    """The probe builds the stronger attack from the attack's own declaration, not through the registry, and runs it
    only on the samples the configured attack left robust."""
    x, y = np.ones((200, 3), np.float32), np.zeros(200, np.int64)
    x[:, 1] = np.arange(200)
    for steps, expected in ((20, 0.0), (2, 1.0)):  # 20 steps: saturated; 2 steps: 2 flips, then 6 more with more budget
        attack = _SlowAttack(eps=0.5, steps=steps, random_starts=1)
        table = robust_rows({"slow": {0.5: 1 - min(steps, 10) / 200}})
        per_sample = {"slow": {f"{ROBUST_AT}0.5": np.arange(200) >= min(steps, 10)}}
        (row,) = probe_convergence(_Marked(), x, y, table, {"slow": attack}, per_sample, np.arange(200))
        assert row["value"] == expected, row["message"]
    assert row["message"] == ("slow at eps 0.5 (0.990 as configured): 4 steps and 2 random starts instead of 2 and 1 breaks 6 of the "
                              "198 samples it left robust (3.0% of the samples probed); to measure with that effort, set steps = 4, random_starts = 2 "
                              "in the attack slow")


def test_the_probes_that_attack_again_run_on_a_stratified_subsample_of_the_attacked_samples():
    y = np.repeat(np.arange(10), [300, 200, 100, 100, 100, 100, 50, 25, 15, 10])
    subsample = probe_subsample(y, seed=3)
    assert len(subsample) == PROBE_SAMPLES and len(np.unique(subsample)) == PROBE_SAMPLES
    assert np.bincount(y[subsample], minlength=10).tolist() == [150, 100, 50, 50, 50, 50, 25, 13, 7, 5]
    assert np.array_equal(probe_subsample(y[:300], seed=3), np.arange(300))  # fewer than 500: all of them


MASKED_AUDIT = """
seed = 0
[data]
source = "digits"
[[models]]
name = "masked"
kind = "torchscript"
path = "masked.ts"
[evaluation]
samples = 120
[[attacks]]
name = "fgsm"
eps = [0.1, 0.3]
[[attacks]]
name = "pgd"
eps = [0.1, 0.3]
steps = 10
[[attacks]]
name = "square"
eps = [0.1, 0.3]
queries = 300
[[gates]]
metric = "robust_accuracy"
attack = "pgd"
at = 0.3
threshold = 0.5
"""


@pytest.fixture(scope="module")
def masked_run(digits, tmp_path_factory):
    _, _, target = digits
    folder = tmp_path_factory.mktemp("masked")
    torch.jit.save(torch.jit.script(RoundsItsInput(target.module.inner)), folder / "masked.ts")
    config = write(folder / "audit.toml", MASKED_AUDIT)
    return folder, config, run_audit(config, out_dir=folder / "out", history=False)


@pytest.mark.slow
def test_a_gradient_masked_model_is_flagged_and_broken_by_the_black_box_attack(masked_run):
    folder, config, result = masked_run
    robust = {(r["attack"], r["param_value"]): r["value"] for _, r in result.metric("robust_accuracy", subset="all").iterrows()}
    clean = result.metric("clean_accuracy", attack="fgsm", param_value=0.3).iloc[0]["value"]
    assert robust[("fgsm", 0.3)] > 0.5 and robust[("pgd", 0.3)] > 0.5  # gradient attacks call it robust
    assert robust[("square", 0.3)] < robust[("pgd", 0.3)] - 0.3  # the black-box attack breaks it
    assert robust[("ensemble", 0.3)] <= robust[("square", 0.3)]
    assert clean > 0.8
    sanity = result.table[result.table["category"] == "sanity"]
    flagged = set(sanity[sanity["value"] == 1.0]["metric"])
    assert {"vanishing_gradients", "large_eps_not_reaching_chance", "black_box_stronger_than_white_box"} <= flagged
    (check,) = result.gates.itertuples()
    assert check.verdict == "inconclusive" and "flagged on masked" in check.reason


@pytest.mark.slow
def test_a_waiver_with_a_reason_lets_the_gate_decide(masked_run, tmp_path, capsys):
    folder, config, result = masked_run
    waived = config.read_text() + "".join(
        f'\n[[waivers]]\nflag = "{flag}"\nreason = "test: the model is known to quantise its input"\n'
        for flag in ("vanishing_gradients", "large_eps_not_reaching_chance", "black_box_stronger_than_white_box",
                     "attack_no_better_than_noise", "not_converged", "iterative_weaker_than_single_step")
    )
    waived_config = write(folder / "waived.toml", waived)
    assert main(["gate", str(folder / "out"), "--config", str(waived_config)]) == 3  # waivers apply when the checks run
    out = tmp_path / "waived-run"
    assert main(["run", str(waived_config), "--out", str(out), "--quiet", "--no-history"]) == 0  # pgd at 0.3 >= 0.5
    rows = json.loads((out / "results.json").read_text())["results"]
    waived_rows = [r for r in rows if r["status"] == "waived"]
    assert waived_rows and all("waived: test: the model is known to quantise its input" in r["message"] for r in waived_rows)
    assert "waived: test: the model is known" in (out / "report.html").read_text()


class Noisy(torch.nn.Module):
    """A randomised defense: Gaussian noise on the input at every call."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + 0.05 * torch.randn_like(x))


def test_random_outputs_are_flagged_and_attacked_through_the_expectation(digits, tmp_path):
    _, _, target = digits
    torch.jit.save(torch.jit.script(Noisy(target.module.inner)), tmp_path / "noisy.ts")
    config = write(tmp_path / "audit.toml", MASKED_AUDIT.replace("masked.ts", "noisy.ts").replace("samples = 120", "samples = 40")
                   .split("[[attacks]]\nname = \"pgd\"")[0] + "[checks]\neot_samples = 4\n")
    result = run_audit(config, history=False)
    (row,) = result.table[result.table["metric"] == "randomized_outputs"].itertuples()
    assert row.value == 1.0 and "expectation over 4 passes" in row.message
    assert result.metric("robust_accuracy", attack="fgsm", subset="all")["value"].notna().all()


def test_repeats_gate_on_the_worst_case_and_describe_mean_and_spread_for_randomised_attacks_only(tmp_path):
    text = SMALL_AUDIT_FAST.replace("samples = 200", "samples = 60\nrepeats = 3")
    result = run_audit(write(tmp_path / "audit.toml", text), history=False)
    worst = result.metric("robust_accuracy", attack="pgd", subset="all").set_index("param_value")
    spread = result.metric("robust_accuracy", attack="pgd", subset="repeats").set_index("param_value")
    assert spread["std"].notna().all() and spread["ci_low"].isna().all() and worst["ci_low"].notna().all()
    assert (worst["value"] <= spread["value"] + 1e-12).all()  # a sample is robust only if every seed failed
    assert result.metric("robust_accuracy", attack="fgsm", subset="repeats").empty
    assert {c.attack: c.repeats for c in result.metadata.cells} == {"fgsm": 1, "pgd": 3}
    from reports.html import render_html

    budgets = re.findall(r"<tr><td>(\w+)</td><td>([^<]*)</td><td class=\"num\">0.05</td>", render_html(result))
    assert ("pgd", "norm=inf, steps=10, random_starts=3, early_stop=true, backend=torch, worst case over 3 seeds") in budgets  # the budget beside each number
    assert any(attack == "fgsm" and "seeds" not in budget for attack, budget in budgets)


def test_each_seed_breaking_other_samples_leaves_only_the_samples_no_seed_broke():
    """Averaging three seeds that each break a different third would report 2/3 robust; the worst case is 0."""
    from attacks.base import AttackOutput, worst_over_repeats

    y = np.zeros(90, dtype=np.int64)
    runs = []
    for seed in range(3):
        robust = np.arange(90) % 3 != seed
        rows = [rate_row("robust_accuracy", int(robust.sum()), 90, param="eps", param_value=0.1),
                {"metric": "perturbation_linf", "value": 0.1 - seed / 100, "ci_low": 0.05, "ci_high": 0.15, "n": 90, "subset": "all"},
                rate_row("clean_accuracy", 90, 90, param="eps", param_value=0.1),
                rate_row("success_rate", int((~robust).sum()), 90, param="eps", param_value=0.1),
                rate_row("robust_accuracy", int(robust.sum()), 90, subset="class=0", param="eps", param_value=0.1)]
        if seed < 2:  # a row one seed does not write (as a median over flipped samples when none flipped)
            rows.append({"metric": "median_min_perturbation_linf", "value": 0.2, "ci_low": np.nan, "ci_high": np.nan, "n": 30, "subset": "all"})
        runs.append(AttackOutput(rows, {"clean_correct": np.ones(90, bool), "robust_correct@eps=0.1": robust}))
    out = worst_over_repeats(runs, y, ["0"])
    rows = {(r["metric"], r.get("subset", "all")): r for r in out.rows}
    assert rows[("robust_accuracy", "all")]["value"] == 0 and rows[("robust_accuracy", "all")]["ci_high"] > 0
    assert rows[("success_rate", "all")]["value"] == 1 and not out.per_sample["robust_correct@eps=0.1"].any()
    described = rows[("robust_accuracy", "repeats")]
    assert described["value"] == pytest.approx(2 / 3) and np.isnan(described["ci_low"]) and described["std"] == pytest.approx(0.0)
    assert rows[("perturbation_linf", "all")]["value"] == pytest.approx(0.1 - 1 / 100) and np.isnan(rows[("perturbation_linf", "all")]["ci_low"])
    assert "2 of 3 seeds" in rows[("median_min_perturbation_linf", "all")]["message"]


def test_the_worst_case_curve_never_rises_with_eps():
    """Held-out case: only FGSM ran at the largest eps; a sample PGD broke at a smaller eps stays broken there."""
    from attacks.base import worst_case

    broken_by_pgd = np.array([True, False, True, True])  # robust per sample
    fgsm = {"robust_correct@eps=0.1": np.ones(4, bool), "robust_correct@eps=0.2": np.ones(4, bool), "robust_correct@eps=0.3": np.ones(4, bool)}
    pgd = {"robust_correct@eps=0.1": np.ones(4, bool), "robust_correct@eps=0.2": broken_by_pgd}
    curve = worst_case({"fgsm": ("inf", fgsm), "pgd": ("inf", pgd)})
    assert [robust.mean() for _, robust in curve.values()] == [1.0, 0.75, 0.75]
    assert curve[("inf", 0.3)][0] == ["fgsm", "pgd"]  # the attacks behind it, smaller eps included
