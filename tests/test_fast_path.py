"""The torch fast path of FGSM and PGD takes ART's steps exactly, with fewer passes; attacks stream batches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from attacks.base import AttackContext, EvasionAttack, MinimizationAttack
from attacks.evasion import FGSM, PGD

N = 64


@pytest.fixture(scope="module")
def small(digits):
    dataset, splits, target = digits
    index = splits.test[:N]
    return target, dataset.x[index], dataset.y[index], AttackContext(0, dataset.class_names)


def both_backends(make, target, x, y, context, seed=7):
    """The same attack through each backend from the same numpy and torch seeds: {backend: (x_adv, output)}."""
    results = {}
    for backend in ("torch", "art"):
        attack = make(backend)
        np.random.seed(seed)
        torch.manual_seed(seed)
        x_adv = attack.perturb(target, x, y, attack.values["eps"][0])
        np.random.seed(seed)
        torch.manual_seed(seed)
        results[backend] = (x_adv, attack.run(target, x, y, context))
    return results


def assert_same_per_sample(results):
    torch_out, art_out = results["torch"][1], results["art"][1]
    assert torch_out.per_sample.keys() == art_out.per_sample.keys()
    for key, value in torch_out.per_sample.items():
        assert np.array_equal(value, art_out.per_sample[key]), key
    assert np.array_equal(torch_out.artifacts["pred_adv"], art_out.artifacts["pred_adv"])


@pytest.mark.parametrize("norm, eps", [("inf", [0.05, 0.1, 0.2]), ("2", [0.5, 1.0])])
def test_fgsm_torch_path_equals_art_per_sample(small, norm, eps):
    target, x, y, context = small
    results = both_backends(lambda b: FGSM(eps=eps, norm=norm, batch_size=24, backend=b), target, x, y, context)
    assert_same_per_sample(results)
    torch_adv, art_adv = results["torch"][0], results["art"][0]
    if norm == "inf":
        assert np.array_equal(torch_adv, art_adv)
    else:  # ART's FGSM divides by a numpy norm, whose summation order differs from torch's in the last bit
        np.testing.assert_allclose(torch_adv, art_adv, rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm, eps, starts", [("inf", [0.05, 0.1], 0), ("2", [0.5, 1.0], 0), ("inf", [0.1], 1), ("2", [1.0], 2)])
def test_pgd_torch_path_equals_art_per_sample_with_and_without_random_starts(small, norm, eps, starts):
    target, x, y, context = small
    make = lambda b: PGD(eps=eps, norm=norm, steps=5, random_starts=starts, batch_size=24, early_stop=False, backend=b)  # noqa: E731
    results = both_backends(make, target, x, y, context)
    assert np.array_equal(results["torch"][0], results["art"][0])
    assert_same_per_sample(results)
    robust = [r["value"] for r in results["torch"][1].rows if r["metric"] == "robust_accuracy" and r.get("subset", "all") == "all"]
    assert robust[-1] < 1.0


def robust_curve(output, eps):
    return [output.per_sample[f"robust_correct@eps={e:g}"] for e in eps]


@pytest.mark.parametrize("norm, eps", [("inf", [0.02, 0.05, 0.1]), ("2", [0.25, 0.5, 1.0])])
def test_pgd_early_stop_breaks_every_sample_arts_steps_break_and_never_rises_with_eps(small, norm, eps):
    """Stopping at the first misclassified step keeps ART's trajectory up to it, so ART's broken samples are a subset."""
    target, x, y, context = small
    stopping = PGD(eps=eps, norm=norm, steps=10, random_starts=0, batch_size=24).run(target, x, y, context)
    art = PGD(eps=eps, norm=norm, steps=10, random_starts=0, batch_size=24, early_stop=False, backend="art").run(target, x, y, context)
    curve, reference = robust_curve(stopping, eps), robust_curve(art, eps)
    for k in range(len(eps)):
        assert not (curve[k] & ~reference[k]).any()  # robust here means robust under ART's last step too
        if k:
            assert not (curve[k] & ~curve[k - 1]).any()  # a sample broken at a smaller eps stays broken


def test_pgd_random_starts_repeat_under_one_seed_and_change_under_another(small):
    target, x, y, _ = small
    attack = PGD(eps=0.1, steps=3)

    def perturbed(seed):
        np.random.seed(seed)
        torch.manual_seed(seed)
        return attack.perturb(target, x, y, 0.1)

    assert np.array_equal(perturbed(1), perturbed(1))
    assert not np.array_equal(perturbed(1), perturbed(2))


class Counting(torch.nn.Module):
    """Counts forward passes, and those that build a graph (the gradient passes)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.forwards = self.with_grad = self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        self.rows += len(x)
        self.with_grad += int(torch.is_grad_enabled() and x.requires_grad)
        return self.inner(x)


def counted(target):
    module = Counting(target.module).eval()
    return replace(target, module=module, _classifier=None), module


@pytest.mark.parametrize("make, forwards, with_grad", [
    (lambda: FGSM(eps=[0.05, 0.1, 0.2]), 1 + 3, 1),  # one gradient pass gives the clean logits and every eps' step
    (lambda: PGD(eps=[0.05, 0.1], steps=5, random_starts=0, early_stop=False), 1 + 2 * (4 + 1), 1 + 2 * 4),  # first step shared, at x
    (lambda: PGD(eps=[0.05, 0.1], steps=5, random_starts=1, early_stop=False), 1 + 2 * (5 + 1), 2 * 5),
    (lambda: PGD(eps=0.1, steps=5, random_starts=2, early_stop=False), 1 + 2 * (5 + 1), 2 * 5),
])
def test_the_torch_path_makes_no_pass_beyond_the_attack_itself(small, make, forwards, with_grad):
    target, x, y, context = small
    target, module = counted(target)
    make().run(target, x, y, context)  # one batch: N <= the default batch size
    assert (module.forwards, module.with_grad) == (forwards, with_grad)


def test_pgd_early_stop_spends_no_pass_on_samples_already_broken(small):
    target, x, y, context = small
    rows = {}
    for early_stop in (False, True):
        counting, module = counted(target)
        PGD(eps=[0.1, 0.2], steps=10, early_stop=early_stop).run(counting, x, y, context)
        rows[early_stop] = module.rows
    assert rows[True] < rows[False]  # 893 against 1,472 sample evaluations when written


class StraightThroughQuantizer(torch.autograd.Function):
    """8 grey levels forward, identity backward: a defense wrapped for BPDA."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 7) / 7

    @staticmethod
    def backward(ctx, grad):
        return grad


class Quantized(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(StraightThroughQuantizer.apply(x))


def test_gradients_go_through_the_modules_own_backward_and_eval_mode_is_kept(small):
    target, x, y, context = small
    defended = replace(target, module=Quantized(target.module).eval(), _classifier=None)
    results = both_backends(lambda b: FGSM(eps=0.2, backend=b), defended, x, y, context)
    assert_same_per_sample(results)
    out = results["torch"][1]
    assert out.per_sample["robust_correct@eps=0.2"].sum() < out.per_sample["clean_correct"].sum()
    assert not any(m.training for m in defended.module.modules())


class Rounded(torch.nn.Module):
    """Rounds its input to 8 grey levels: no gradient of its own (a quantized model, say)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 7) / 7)


@pytest.mark.parametrize("make", [lambda b: FGSM(eps=0.2, backend=b), lambda b: PGD(eps=0.2, steps=3, random_starts=2, early_stop=False, backend=b)])
def test_a_target_borrowing_gradients_is_differentiated_through_them_and_measured_on_its_module(small, make):
    target, x, y, context = small
    borrowed = replace(target, module=Rounded(target.module).eval(), gradient_module=target.module, _classifier=None)
    results = both_backends(make, borrowed, x, y, context)
    assert np.array_equal(results["torch"][0], results["art"][0])
    assert_same_per_sample(results)
    out = results["torch"][1]
    assert np.array_equal(out.per_sample["clean_correct"], borrowed.predict(x) == y)
    assert out.per_sample["robust_correct@eps=0.2"].sum() < out.per_sample["clean_correct"].sum()


class Recording(EvasionAttack):
    """Records the batches the base hands to `perturb`; the perturbation is a fixed step within the ball."""

    name = "recording-test-attack"
    summary = "test double"
    sizes: list[int]

    def perturb(self, target, x, y, eps):
        self.sizes.append(len(x))
        return np.clip(x + eps * np.sign(x - 0.5), 0.0, 1.0)


class RecordingMinimum(MinimizationAttack):
    name = "recording-test-minimum"
    summary = "test double"
    sizes: list[int]

    def minimize(self, target, x, y):
        self.sizes.append(len(x))
        return 1.0 - x


def test_evasion_and_minimization_attacks_stream_batches_and_keep_the_first_correct_samples_as_gallery(small):
    target, x, y, context = small
    evasion, minimum = Recording(eps=[0.1, 0.2], batch_size=10), RecordingMinimum(batch_size=10)
    evasion.sizes, minimum.sizes = [], []
    out = evasion.run(target, x, y, context)
    correct = target.predict(x) == y
    expected = [target.predict(evasion.perturb(target, x, y, 0.1)) == y]
    expected.append(expected[0] & (target.predict(evasion.perturb(target, x, y, 0.2)) == y))  # the sweep nests: broken at 0.1, broken at 0.2
    batches = [slice(i, i + 10) for i in range(0, N, 10)]
    assert evasion.sizes[: 2 * len(batches)] == [int(r[b].sum()) for b in batches for r in (correct, expected[0])]  # only samples still robust
    assert np.array_equal(out.per_sample["clean_correct"], correct)
    assert np.array_equal(out.artifacts["index"], np.flatnonzero(correct)[:8])
    assert np.array_equal(out.per_sample["robust_correct@eps=0.1"], expected[0])
    assert np.array_equal(out.per_sample["robust_correct@eps=0.2"], expected[1])
    assert out.artifacts["x_adv"].shape == (2, 8, *x.shape[1:])
    out = minimum.run(target, x, y, context)
    assert minimum.sizes == [10] * 6 + [4]
    assert len(out.per_sample["min_perturbation"]) == N and out.artifacts["x_adv"].shape == (1, 8, *x.shape[1:])


def test_peak_memory_of_an_attack_pass_does_not_grow_with_the_number_of_samples(small):
    """Only per-sample booleans and norms may grow with n; full-size copies of the inputs may not (tracemalloc sees numpy)."""
    import tracemalloc

    target, _, _, context = small
    linear = replace(target, module=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval(),
                     input_shape=(1, 28, 28), _classifier=None)
    rng = np.random.default_rng(0)

    def peak(attack, n):
        x, y = rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)
        tracemalloc.start()
        attack.run(linear, x, y, context)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    for attack in (Recording(eps=[0.1, 0.2], batch_size=64), RecordingMinimum(batch_size=64)):
        attack.sizes = []
        small_n, large_n = peak(attack, 512), peak(attack, 4096)
        assert large_n - small_n < 1_000_000  # 8x the samples; one full float32 copy of 4,096 inputs would be 12.8 MB
