"""The fast minimum-norm attack (FMN: Pintor, Roli, Brendel and Biggio, NeurIPS 2021) on torch tensors, in L0, L1, L2 and L-inf.

FMN steps along the L2-normalised gradient of the logit margin and projects onto an Lp ball around
the input whose radius it adapts per sample: until a first adversarial point is found the radius
jumps to the linearised distance to the boundary, then it shrinks by a factor (1 - gamma) while the
point is adversarial and grows by (1 + gamma) while it is not, so the iterates close in on the
boundary from both sides. The step size and gamma follow cosine annealing, and the smallest
adversarial point seen is kept. Unlike CW there is no binary search over a trade-off constant,
and unlike DeepFool the search goes on after the first flip, refining it.

The defaults (100 steps, step size 1 annealed to 1/100 of it, gamma 0.05 annealed to 0.001) are
those of the authors' implementation in foolbox. L0's radius is a count of input values, changed
by whole numbers, and its projection keeps the largest entries of the perturbation.

One change from the paper: before the first flip the radius also grows by at least (1 + gamma) a
step. The linearised distance ignores the clipping to the input range, so where many inputs sit at
its edges (a digit's saturated pixels) the paper's rule settles on a radius the clipping eats and
never flips the sample: on the digits CNN, 47 of 190 samples in L1 (foolbox's L1FMNAttack
likewise) and 121 of 190 in L2. With the growth every one flips.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from attacks.tensors import NORM_ORDER, per_sample, sample_norm

if TYPE_CHECKING:
    import torch

NORMS = ("0", "1", "2", "inf")
FINAL_GAMMA = 0.001
FINAL_STEP_FRACTION = 0.01
_DUAL = {"1": math.inf, "2": 2.0, "inf": 1.0}  # the distance to a linear boundary is |margin| / ||gradient||_dual


def fmn(module: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor", norm: str, steps: int, clip: tuple[float, float],
        step_size: float = 1.0, gamma: float = 0.05) -> "torch.Tensor":
    """Per sample, the smallest adversarial input FMN finds in `norm` within `steps` forward-backward passes of the
    whole batch; a sample it never flips, or one `module` already misclassifies, comes back unchanged.

    Untargeted on the true labels `y`; the inputs stay inside `clip`. Deterministic.
    """
    import torch

    if norm not in NORMS:
        raise ValueError(f"FMN minimises one of the norms {', '.join(NORMS)}, not {norm!r}")
    low, high = clip
    n = len(x)
    order = NORM_ORDER[norm]
    worst = sample_norm(torch.maximum(x - low, high - x), order)
    radius = (torch.ones if norm == "0" else torch.zeros)(n, dtype=x.dtype)
    best, best_size = x.clone(), torch.full((n,), math.inf, dtype=x.dtype)
    found = torch.zeros(n, dtype=torch.bool)
    point = x.clone()
    for step in range(steps):
        cosine = (1 + math.cos(math.pi * step / steps)) / 2
        alpha = step_size * (FINAL_STEP_FRACTION + (1 - FINAL_STEP_FRACTION) * cosine)
        rate = FINAL_GAMMA + (gamma - FINAL_GAMMA) * cosine
        margin, adversarial, grad = _margin_and_gradient(module, point, y)
        delta = point - x
        size = sample_norm(delta, order)
        smaller = adversarial & (size < best_size)
        best_size = torch.where(smaller, size, best_size)
        best = torch.where(per_sample(smaller, x), point, best)
        found |= adversarial
        if norm == "0":
            radius = torch.where(adversarial, torch.minimum(torch.minimum(radius - 1, (radius * (1 - rate)).floor()), best_size),
                                 torch.maximum(radius + 1, (radius * (1 + rate)).floor())).clamp(min=0)
        else:
            to_boundary = margin.abs() / sample_norm(grad, _DUAL[norm]).clamp(min=1e-12)
            radius = torch.where(adversarial, torch.minimum(radius * (1 - rate), best_size),
                                 torch.maximum(radius * (1 + rate), torch.where(found, 0.0, size + to_boundary)))
        radius = torch.minimum(radius, worst)
        moved = delta + alpha * grad / per_sample(sample_norm(grad, 2.0).clamp(min=1e-12), x)
        point = (x + _project(moved, radius, norm)).clamp(low, high)
    return best


def _margin_and_gradient(module: "torch.nn.Module", point: "torch.Tensor",
                         y: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """Per sample the margin (true logit minus the largest other), whether it is misclassified, and the input gradient that lowers the margin.

    One forward and one backward for the batch; NaN gradient entries become 0, as in the other gradient attacks.
    """
    import torch

    with torch.enable_grad():
        point = point.detach().requires_grad_(True)
        logits = module(point)
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
        margin = true - other
        (grad,) = torch.autograd.grad(-margin.sum(), point)
    return margin.detach(), logits.detach().argmax(dim=1) != y, grad.masked_fill_(grad.isnan(), 0.0)


def _project(delta: "torch.Tensor", radius: "torch.Tensor", norm: str) -> "torch.Tensor":
    """The nearest point (in L2) of the ball of `radius` in `norm` around 0, per sample; for L0, the `radius` largest entries."""
    import torch

    flat = delta.flatten(1)
    if norm == "inf":
        return torch.maximum(torch.minimum(flat, radius[:, None]), -radius[:, None]).view_as(delta)
    if norm == "2":
        factor = (radius / sample_norm(flat, 2.0).clamp(min=1e-12)).clamp(max=1.0)
        return (flat * factor[:, None]).view_as(delta)
    if norm == "1":
        return _project_l1(flat, radius).view_as(delta)
    kept = torch.arange(flat.shape[1]).expand_as(flat) < radius.long()[:, None]
    ranked = flat.abs().argsort(dim=1, descending=True, stable=True)
    return (flat * torch.zeros_like(kept).scatter(1, ranked, kept)).view_as(delta)


def _project_l1(flat: "torch.Tensor", radius: "torch.Tensor") -> "torch.Tensor":
    """Euclidean projection onto the L1 ball (Duchi, Shalev-Shwartz, Singer and Chandra, ICML 2008): soft-thresholding by the theta
    that leaves an L1 norm of exactly `radius`; rows already inside are kept as they are."""
    import torch

    magnitude = flat.abs()
    sorted_desc = magnitude.sort(dim=1, descending=True).values
    cumulative = sorted_desc.cumsum(dim=1)
    rank = torch.arange(1, flat.shape[1] + 1, dtype=flat.dtype)
    finite = torch.where(radius.isfinite(), radius, 0.0)[:, None]
    active = (sorted_desc * rank > cumulative - finite).sum(dim=1, keepdim=True).clamp(min=1)
    theta = (cumulative.gather(1, active - 1) - finite) / active
    projected = (magnitude - theta).clamp(min=0) * flat.sign()
    return torch.where((magnitude.sum(dim=1) <= radius)[:, None], flat, projected)
