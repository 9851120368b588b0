"""The empirical DP audit: its statistics by hand, a large bound on a non-private model, a bound within the
accountant's epsilon on DP-SGD, a broken DP training caught, and reference models trained like the defended variant."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from attacks.base import AttackContext, ModelTrainer
from attacks.dp_audit import OneRunDPAudit, best_guesses, epsilon_lower_bound, p_value
from audit.data import load_dataset, split_dataset
from audit.errors import KansaError
from tests.conftest import write

DIGITS = {"source": "digits", "input_range": [0.0, 1.0], "scale": "auto", "max_samples": None, "classes": None, "split": [0.6, 0.2, 0.2]}
MLP = {"kind": "builtin", "name": "mlp", "architecture": "mlp", "hidden": [128, 64], "channels": [16, 32],
       "epochs": 100, "batch_size": 64, "learning_rate": 1e-3, "weight_decay": 0.0, "optimizer": "adam"}


def test_the_bound_is_the_binomial_tail_inverted():
    # all r guesses right: P[Binomial(r, q) >= r] = q^r, so the bound at significance s is logit(s^(1/r))
    q = 0.05 ** (1 / 100)
    assert epsilon_lower_bound(100, 100, 100, 0.0, 0.05) == pytest.approx(math.log(q / (1 - q)), rel=1e-6)
    assert p_value(100, 100, 100, math.log(q / (1 - q)), 0.0) == pytest.approx(0.05, rel=1e-6)
    assert epsilon_lower_bound(100, 100, 50, 0.0, 0.05) == 0.0  # no better than a coin
    assert 0 < epsilon_lower_bound(1000, 100, 100, 1e-5, 0.05) < epsilon_lower_bound(1000, 100, 100, 0.0, 0.05)  # delta weakens it


def test_the_best_guess_count_is_judged_at_the_bonferroni_level():
    included = np.arange(200) < 100
    scores = np.where(included, 1.0, 0.0) + np.linspace(0, 0.5, 200)  # perfectly separable
    counts = [(10, 10), (50, 50), (100, 0)]
    bound, guesses, correct, _ = best_guesses(scores, included, counts, 0.0, 0.95)
    assert guesses == correct == 100
    assert bound == pytest.approx(epsilon_lower_bound(200, 100, 100, 0.0, 0.05 / 3))


@pytest.fixture(scope="module")
def digits():
    dataset = load_dataset(DIGITS, Path("."), seed=0)
    return dataset, split_dataset(dataset, DIGITS["split"], seed=0)


def _audit(digits, trainer: ModelTrainer) -> dict[str, dict]:
    dataset, splits = digits
    out = OneRunDPAudit(canaries=700).run(None, None, None, AttackContext(3, dataset.class_names, dataset, splits, trainer))
    return {row["metric"]: row for row in out.rows}


def _dp_trainer(digits, epsilon: float) -> ModelTrainer:
    from audit.session import trainer_for
    from defenses.training import DPSGD

    dataset, splits = digits
    return trainer_for(MLP, dataset, splits=splits, defense=("dp", DPSGD(target_epsilon=epsilon, epochs=30)))


def test_a_non_private_overfit_recipe_gets_a_large_lower_bound(digits):
    from audit.session import trainer_for

    rows = _audit(digits, trainer_for(MLP, digits[0]))
    assert rows["dp_epsilon_lower_bound"]["value"] > 2.0  # measured 2.50: 137 of 140 guesses right
    assert "dp_claim_refuted" not in rows  # nothing was claimed


def test_dp_sgd_at_epsilon_2_is_bounded_within_its_accountant(digits):
    rows = _audit(digits, _dp_trainer(digits, 2.0))
    claimed, bound = rows["dp_epsilon_claimed"]["value"], rows["dp_epsilon_lower_bound"]["value"]
    assert claimed <= 2.0 + 1e-6
    assert bound <= claimed  # measured: bound 0 against the accountant's 1.99
    assert rows["dp_claim_refuted"]["value"] == 0


def test_dp_sgd_with_its_noise_removed_is_caught(digits, monkeypatch: pytest.MonkeyPatch):
    import torch

    # the optimizer adds no noise, while the accountant still counts the noise multiplier it was given
    monkeypatch.setattr("opacus.optimizers.optimizer._generate_noise", lambda std, reference, **kw: torch.zeros_like(reference))
    rows = _audit(digits, _dp_trainer(digits, 1.0))
    claimed, bound = rows["dp_epsilon_claimed"]["value"], rows["dp_epsilon_lower_bound"]["value"]
    assert claimed <= 1.0 + 1e-6 and bound > claimed  # measured: bound above 2 against a claimed 1
    assert rows["dp_claim_refuted"]["value"] == 1
    assert "broken" in rows["dp_claim_refuted"]["message"]


def test_an_approximated_recipe_is_refused(digits):
    dataset, splits = digits
    approximate = ModelTrainer(lambda x, y, seed: None, exact=False, recipe="an approximation of the model's unknown recipe")
    with pytest.raises(KansaError, match="unknown"):
        OneRunDPAudit(canaries=100).run(type("T", (), {"name": "loaded"})(), None, None,
                                        AttackContext(3, dataset.class_names, dataset, splits, approximate))


AUDIT = """
title = "dp audit"
seed = 2

[data]
source = "digits"

[[models]]
name = "mlp"
architecture = "mlp"
epochs = 40

[evaluation]
samples = 100

[checks]
enabled = false

[[defenses]]
name = "dp_sgd"
target_epsilon = 2.0
epochs = 15

[[attacks]]
name = "dp_audit"
canaries = 300

[[attacks]]
name = "lira"
members = 100
references = 2
bootstrap = 0

[[gates]]
preset = "dp_claim_holds"
defense = "dp_sgd"
"""


def test_an_audit_bounds_every_variant_and_references_train_like_the_variant(tmp_path: Path):
    from audit import run_audit
    from audit.config import load_config
    from audit.session import session_for

    config_path = write(tmp_path / "audit.toml", AUDIT)
    result = run_audit(config_path, out_dir=tmp_path / "run", history=False)
    table = result.table
    bounds = table[table.metric == "dp_epsilon_lower_bound"].set_index("defense").value
    assert set(bounds.index) == {"none", "dp_sgd"}
    assert table[(table.metric == "dp_claim_refuted") & (table.defense == "dp_sgd")].value.tolist() == [0.0]
    assert result.gates["verdict"].tolist() == ["pass"]
    references = {(v.model, v.defense): v.reference for v in result.metadata.variants}
    assert "dp_sgd" in references[("mlp", "dp_sgd")] and "dp_sgd" not in references[("mlp", "none")]
    assert "dp_sgd" in (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    # the DP variant's reference models train with DP: the recipe reports its epsilon
    session = session_for(load_config(config_path), None)
    x, y = session.dataset.x[:300], session.dataset.y[:300]
    assert any(r["metric"] == "dp_epsilon" for r in session.trainer("mlp", "dp_sgd").train(x, y, 0).rows)
    assert session.trainer("mlp").train(x, y, 0).rows == ()
