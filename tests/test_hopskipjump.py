"""The batched torch HopSkipJump: as strong as ART's, labels only, inside the input range, reproducible, and batched."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from attacks.base import AttackContext
from attacks.blackbox import HopSkipJump
from attacks.hopskipjump import hop_skip_jump
from audit.seeding import seed_everything
from audit.stats import wilson_interval

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = [str(k) for k in range(10)]


class Counting(torch.nn.Module):
    """The model, counting its calls and the inputs it was asked about."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls, self.inputs = inner, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.inputs += len(x)
        return self.inner(x)


@pytest.fixture(scope="module")
def samples(digits):
    """60 test digits: (target, x, y)."""
    dataset, splits, target = digits
    index = splits.test[:60]
    return target, dataset.x[index].astype(np.float32), dataset.y[index]


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))


@pytest.mark.parametrize(("norm", "eps"), [("2", 1.0), ("inf", 0.2)])
def test_as_strong_as_arts_hop_skip_jump(samples, norm, eps):
    """Robust accuracy at eps within ART's interval or below it, and a median minimal perturbation no larger than ART's by more than a quarter."""
    target, x, y = samples
    robust, median = {}, {}
    for backend in ("torch", "art"):
        seed_everything(0)
        out = HopSkipJump(eps=[eps], norm=norm, steps=8, max_queries=200, backend=backend).run(target, x, y, AttackContext(0, CLASSES))
        robust[backend] = int(out.per_sample[f"robust_correct@eps={eps:g}"].sum())
        rows = {r["metric"]: r["value"] for r in out.rows if r.get("subset", "all") == "all"}
        median[backend] = rows[f"median_min_perturbation_l{norm}"]
        clean = rows["clean_accuracy"]
        assert rows["success_rate_unbounded"] == 1.0  # every correctly classified digit is flipped by some amount
    _, art_high = wilson_interval(robust["art"], len(y))
    assert robust["torch"] / len(y) <= art_high, robust
    assert robust["torch"] / len(y) < clean - 0.2, robust  # it breaks a good share, not a few samples
    assert median["torch"] <= 1.25 * median["art"], median


def test_outputs_are_adversarial_in_range_and_leave_misclassified_samples_alone(samples):
    target, x, y = samples
    pred = target.predict(x)
    wrong = pred != y
    assert wrong.any() and (~wrong).any()
    seed_everything(1)
    x_adv = hop_skip_jump(target.module, *_tensors(x, y), "2", 3, target.clip_values, max_evals=50, init_evals=50).numpy()
    assert x_adv.shape == x.shape and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.array_equal(x_adv[wrong], x[wrong])
    assert (target.predict(x_adv)[~wrong] != y[~wrong]).all()  # each starting point was misclassified, and every move stays so


def test_the_same_seed_gives_the_same_outputs(samples):
    target, x, y = samples
    runs = []
    for seed in (5, 5, 6):
        seed_everything(seed)
        runs.append(hop_skip_jump(target.module, *_tensors(x[:20], y[:20]), "inf", 2, target.clip_values, max_evals=30, init_evals=30).numpy())
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_the_same_queries_as_arts_in_far_fewer_passes(samples):
    """Each search step queries every sample still searching at once, where ART attacks one sample at a time
    (its binary searches ask about one input per pass); the number of queries stays ART's."""
    target, x, y = samples
    counted = {}
    for backend in ("torch", "art"):
        model = Counting(target.module)
        seed_everything(2)
        HopSkipJump(eps=[1.0], steps=3, max_queries=40, backend=backend).minimize(replace(target, module=model, _classifier=None), x[:30], y[:30])
        counted[backend] = model
    torch_, art = counted["torch"], counted["art"]
    assert 0.7 < torch_.inputs / art.inputs < 1.3, (torch_.inputs, art.inputs)
    assert 5 * torch_.calls < art.calls, (torch_.calls, art.calls)
