"""The torch Square attack: as strong as ART's, inside the ball and the input range, reproducible, and frugal with queries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.base import AttackContext
from attacks.blackbox import Square
from attacks.square import square_attack, square_fraction
from audit.seeding import seed_everything
from audit.stats import wilson_interval

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUERIES = 30  # for the query-counting runs


class Recording(torch.nn.Module):
    """The model, remembering every batch it is asked about and what it answered."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        self.calls.append((x.clone(), out.clone()))
        return out


class AlwaysFirstClass(torch.nn.Module):
    """Never fooled (class 0 wins by far), so the search runs its whole budget; records the queries."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.queries.append(x.clone())
        return torch.cat([torch.full((len(x), 1), 100.0), torch.zeros(len(x), 9) + x.flatten(1).sum(1, keepdim=True) * 1e-3], 1)


def _size(delta: np.ndarray, norm: str) -> np.ndarray:
    flat = delta.reshape(len(delta), -1).astype(np.float64)
    return np.abs(flat).max(1) if norm == "inf" else np.linalg.norm(flat, axis=1)


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))


@pytest.fixture(scope="module")
def samples(digits):
    """150 test digits: (target, x, y)."""
    dataset, splits, target = digits
    index = splits.test[:150]
    return target, dataset.x[index].astype(np.float32), dataset.y[index]


@pytest.mark.parametrize(("norm", "eps"), [("inf", 0.1), ("2", 1.0)])
def test_as_strong_as_arts_square_attack(samples, norm, eps):
    target, x, y = samples
    robust = {}
    for backend in ("torch", "art"):
        seed_everything(0)
        out = Square(eps=[eps], norm=norm, queries=100, backend=backend).run(target, x, y, AttackContext(0, [str(k) for k in range(10)]))
        rows = {r["metric"]: r for r in out.rows if r.get("subset", "all") == "all"}
        robust[backend] = int(out.per_sample[f"robust_correct@eps={eps:g}"].sum())
        clean = rows["clean_accuracy"]["value"]
    _, art_high = wilson_interval(robust["art"], len(y))
    assert robust["torch"] / len(y) <= art_high, robust
    assert robust["torch"] / len(y) < clean - 0.2, robust  # it breaks a good share of the model, not just a few samples


@pytest.mark.parametrize(("norm", "eps"), [("inf", 0.3), ("2", 2.5)])
def test_outputs_stay_in_the_eps_ball_and_the_input_range(samples, norm, eps):
    target, x, y = samples
    seed_everything(1)
    x_adv = Square(eps=[eps], norm=norm, queries=50).perturb(target, x, y, eps)
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    assert _size(x_adv - x, norm).max() <= eps * (1 + 1e-6) + 1e-7
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert (target.predict(x_adv) != y).mean() > 0.8  # a large eps: nearly everything broken


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_the_search_stays_on_the_surface_of_the_ball(norm):
    """Away from the input range's bounds, every L-inf query sits at a corner (each pixel at x ± eps, the starting
    point in vertical stripes), and every L2 query spends exactly eps, as in the paper."""
    model, eps = AlwaysFirstClass(), 0.1 if norm == "inf" else 0.5
    x, y = torch.full((4, 2, 12, 12), 0.5), torch.zeros(4, dtype=torch.int64)
    torch.manual_seed(0)
    square_attack(model, x, y, eps, norm, 40, (0.0, 1.0))
    clean, start, *steps = [(q - x).numpy() for q in model.queries]
    assert len(steps) == 40 and not clean.any()
    for delta in (start, *steps):
        if norm == "inf":
            assert np.allclose(np.abs(delta), eps, atol=1e-6)
        else:
            assert np.allclose(_size(delta, "2"), eps, rtol=1e-5)
    if norm == "inf":
        assert (start == start[:, :, :1]).all()  # vertical stripes: one sign per column and channel
    assert any((step != start).any() for step in steps)


def test_the_sweep_measures_what_it_returns(samples):
    """The clean logits come from the attack's first query; the adversarial ones from a fresh prediction of its outputs."""
    target, x, y = samples
    seed_everything(3)
    out = Square(eps=[0.05, 0.2], queries=20).sweep_batch(target, x, y, [0.05, 0.2])
    assert np.array_equal(out.clean_logits, target.logits(x, len(x)))
    for x_adv, logits in zip(out.x_adv, out.adv_logits):
        assert np.array_equal(logits, target.logits(x_adv, len(x_adv)))
    assert (out.adv_logits[1].argmax(1) != y).sum() > (out.adv_logits[0].argmax(1) != y).sum()


def test_the_same_seed_gives_the_same_outputs(samples):
    target, x, y = samples
    attack = Square(eps=[0.1], queries=30)
    runs = []
    for seed in (5, 5, 6):
        seed_everything(seed)
        runs.append(attack.perturb(target, x[:60], y[:60], 0.1))
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


@pytest.fixture(scope="module", params=[("inf", 0.1), ("2", 1.0)], ids=["linf", "l2"])
def recorded(request, digits):
    """The kernel on digits far enough apart that each query names its sample: (x, y, x_adv, queries per sample, recorder)."""
    norm, eps = request.param
    dataset, splits, target = digits
    chosen: list[int] = []
    pred = target.predict(dataset.x[splits.test])
    wrong = [i for i, p in zip(splits.test, pred) if p != dataset.y[i]][:5]
    for i in [*wrong, *splits.test]:
        if len(chosen) < 80 and i not in chosen and all(_size(dataset.x[[i]] - dataset.x[[j]], norm)[0] > 2.5 * eps for j in chosen):
            chosen.append(i)
    x, y = dataset.x[chosen].astype(np.float32), dataset.y[chosen]
    model = Recording(target.module)
    seed_everything(2)
    x_adv = square_attack(model, *_tensors(x, y), eps, norm, QUERIES, target.clip_values).numpy()
    per_sample: list[list[tuple[np.ndarray, int]]] = [[] for _ in chosen]
    for inputs, logits in model.calls:
        distance = np.stack([_size(inputs.numpy() - x[k], norm) for k in range(len(x))], 1)
        owner = distance.argmin(1)
        assert (distance[np.arange(len(owner)), owner] <= eps * (1 + 1e-5)).all()
        for row, k in enumerate(owner):
            per_sample[k].append((inputs[row].numpy(), int(logits[row].argmax())))
    return x, y, x_adv, per_sample, model, target


def test_the_query_budget_is_respected(recorded):
    x, y, x_adv, per_sample, model, target = recorded
    sizes = [len(inputs) for inputs, _ in model.calls]
    assert len(sizes) <= QUERIES + 2 and sizes == sorted(sizes, reverse=True)  # one batched pass per iteration, over fewer and fewer samples
    counts = np.array([len(q) for q in per_sample])
    assert counts.max() <= QUERIES + 2  # the clean input, the starting point, one per iteration
    robust = target.predict(x_adv) == y
    assert robust.any() and (counts[robust] == QUERIES + 2).all()


def test_a_broken_sample_is_never_queried_again(recorded):
    x, y, x_adv, per_sample, _, target = recorded
    clean_wrong = target.predict(x) != y
    assert clean_wrong.any() and (target.predict(x_adv)[~clean_wrong] != y[~clean_wrong]).any()
    for k, queries in enumerate(per_sample):
        if clean_wrong[k]:
            assert len(queries) == 1 and np.array_equal(x_adv[k], x[k])  # asked once, for the clean logits; returned unchanged
            continue
        fooled = [pred != y[k] for _, pred in queries]
        assert not any(fooled[:-1])  # only the last query may have fooled the model: none after it
        if fooled[-1]:
            assert np.array_equal(queries[-1][0], x_adv[k])


def test_the_p_schedule_is_the_papers_rescaled_to_the_budget():
    assert [square_fraction(0.8, i, 10_000) for i in (0, 10, 11, 50, 51, 500, 501, 8000, 8001, 9999)] == [
        0.8, 0.8, 0.4, 0.4, 0.2, 0.1, 0.05, 0.8 / 256, 0.8 / 512, 0.8 / 512]
    assert [square_fraction(0.8, i, 100) for i in (0, 1, 2, 3, 5, 6, 99)] == [0.8, 0.2, 0.2, 0.1, 0.1, 0.05, 0.8 / 512]

