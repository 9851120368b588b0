"""Torch-native Auto-PGD and the AutoAttack cascade: as strong as ART's, targeted where asked, frugal, monotone, reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.apgd import AutoPGD
from attacks.autoattack import AutoAttack
from attacks.base import ROBUST_AT, AttackContext
from audit.errors import ConfigError
from audit.models import Target
from audit.seeding import seed_everything
from audit.stats import wilson_interval


@pytest.fixture(scope="module")
def samples(digits, one_torch_thread):
    dataset, splits, target = digits
    return target, dataset.x[splits.test][:150], dataset.y[splits.test][:150], AttackContext(0, dataset.class_names)


def robust_at(output, eps: float) -> int:
    (row,) = [r for r in output.rows if r["metric"] == "robust_accuracy" and r.get("subset", "all") == "all" and r["param_value"] == eps]
    return round(row["value"] * row["n"])


@pytest.mark.parametrize("norm, eps, loss", [("inf", 0.1, "ce"), ("inf", 0.1, "dlr"), ("2", 0.5, "ce"), ("2", 0.5, "dlr")])
def test_as_strong_as_arts_auto_pgd(samples, norm, eps, loss):
    target, x, y, context = samples
    robust = {}
    for backend in ("torch", "art"):
        seed_everything(0)
        robust[backend] = robust_at(AutoPGD(eps=[eps], norm=norm, loss=loss, steps=20, backend=backend).run(target, x, y, context), eps)
    _, art_high = wilson_interval(robust["art"], len(y))
    assert robust["torch"] / len(y) <= art_high, robust
    assert robust["torch"] < 0.9 * len(y)  # it did attack: the clean accuracy is about 0.95


def test_apgd_t_drives_samples_to_the_class_it_targets(samples):
    """With one target class, the runner-up of the clean logits, the samples it breaks land in that class."""
    target, x, y, context = samples
    seed_everything(0)
    attack = AutoPGD(eps=[0.1], loss="dlr", targets=1, steps=20)
    x_adv = attack.perturb(target, x, y, 0.1)
    clean, adversarial = target.logits(x), target.predict(x_adv)
    broken = (clean.argmax(1) == y) & (adversarial != y)
    assert broken.sum() >= 0.3 * len(y)
    runner_up = np.argsort(-clean, axis=1)[:, 1]
    assert (adversarial[broken] == runner_up[broken]).mean() >= 0.9


def test_a_sweep_never_unbreaks_a_sample_at_a_larger_eps(samples):
    target, x, y, context = samples
    seed_everything(0)
    per_sample = AutoPGD(eps=[0.05, 0.1, 0.2], steps=10).run(target, x, y, context).per_sample
    small, middle, large = (per_sample[f"{ROBUST_AT}{e:g}"] for e in (0.05, 0.1, 0.2))
    assert not (middle & ~small).any() and not (large & ~middle).any()
    assert large.sum() < middle.sum() < small.sum()


class Counting(torch.nn.Module):
    """The model, recording how many samples each forward pass carries."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.sizes = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return self.inner(x)


def test_samples_leave_the_passes_once_broken_and_misclassified_ones_never_enter(samples):
    target, x, y, context = samples
    counting = Counting(target.module)
    counted = Target("cnn", "none", counting, target.input_shape, target.n_classes, target.clip_values, "logits", target.digest)
    steps = 20
    seed_everything(0)
    per_sample = AutoPGD(eps=[0.1], steps=steps, batch_size=len(y)).run(counted, x, y, context).per_sample
    correct, robust = per_sample["clean_correct"], per_sample[f"{ROBUST_AT}0.1"]
    sizes = counting.sizes[1:-1]  # between the clean and the final prediction: the start and one pass per step
    assert sizes[0] == correct.sum()  # the misclassified samples are never attacked
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] >= robust.sum()
    assert sum(sizes) < (steps + 1) * correct.sum() * 0.8  # broken samples stopped costing passes


def test_the_same_seed_gives_the_same_numbers(samples):
    target, x, y, context = samples
    outputs = []
    for _ in range(2):
        seed_everything(7)
        outputs.append(AutoPGD(eps=[0.1], steps=10, targets=3, loss="dlr").run(target, x, y, context).per_sample)
    assert all(np.array_equal(outputs[0][k], outputs[1][k]) for k in outputs[0])


def test_the_cascade_breaks_everything_its_first_stage_breaks_and_names_its_stages(samples):
    target, x, y, context = samples
    seed_everything(0)
    alone = AutoPGD(eps=[0.1], steps=10).run(target, x, y, context)
    seed_everything(0)
    cascade = AutoAttack(eps=[0.1], steps=10, queries=50).run(target, x, y, context)
    key = f"{ROBUST_AT}0.1"
    assert not (cascade.per_sample[key] & ~alone.per_sample[key]).any()  # same seed: APGD-CE takes the same steps first
    assert cascade.per_sample[key].sum() <= alone.per_sample[key].sum()
    (row,) = [r for r in cascade.rows if r["metric"] == "robust_accuracy" and r.get("subset", "all") == "all"]
    assert not row.get("message")  # ten classes of images: the whole standard cascade ran


@pytest.mark.parametrize("values, key", [
    ({"backend": "art", "targets": 3}, "targets"),
])
def test_combinations_the_backend_cannot_run_are_refused_naming_the_key(values, key):
    with pytest.raises(ConfigError, match=f"attack apgd: {key}: "):
        AutoPGD(**values)
