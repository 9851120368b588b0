"""HopSkipJump (Chen, Jordan and Wainwright, IEEE S&P 2020) in torch, batched over samples.

A decision-based attack: it reads only whether the predicted label differs from the true one. From
a random input the model misclassifies, each iteration (1) binary-searches the segment (L2) or the
L-inf box towards the clean input for the boundary, (2) estimates the gradient's direction there
from the labels of `num_evals` random probes around the boundary point (the mean of the probe
directions weighted by their +/-1 outcome, minus its mean as a baseline), (3) steps along it by a
size halved from 2 dist / sqrt(iteration) until the step lands on the adversarial side. Every
constant (binary-search thresholds, probe radius, 100 x sqrt(iteration) probes capped at
`max_evals`) is ART's, which follows the authors' code; ART is the reference `backend = "art"`.
One difference from ART: the last step is followed by one more binary search, as in the authors'
code and Foolbox (ART starts each iteration with the search, so its result is the last step's
point, off the boundary): a few more queries for a smaller perturbation that is still adversarial.

ART attacks one sample at a time, so its binary and step-size searches query the model one input
at a time. Here each search step is one query of all samples still searching, and probes are drawn
for as many samples as fill a pass of `batch` inputs: the queries per sample are the same, in far
fewer and fuller passes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from attacks.tensors import per_sample, sample_norm

if TYPE_CHECKING:
    import torch

INIT_TRIALS = 100  # random inputs drawn to find a misclassified starting point (ART's init_size)
INIT_THRESHOLD = 0.001  # the starting point's binary search, on the interpolation weight
MAX_HALVINGS = 40  # the step-size search halves at most this often; the boundary point itself is adversarial


class Oracle:
    """The model as a decision-based attacker sees it: is each point misclassified? Queries go in passes of at most `batch` inputs.

    Bounded passes, not all probes at once: a CPU pass costs more per input once its activations
    outgrow the caches (the MNIST CNN: 18 us per input at 128-512, 31 at 1,024, 63 at 10,700).
    """

    def __init__(self, module: "torch.nn.Module", clip: tuple[float, float], batch: int) -> None:
        self.module, self.clip, self.chunk = module, clip, batch

    def adversarial(self, points: "torch.Tensor", labels: "torch.Tensor") -> "torch.Tensor":
        import torch

        with torch.no_grad():
            return torch.cat([self.module(points[i : i + self.chunk].clamp(*self.clip)).argmax(1) != labels[i : i + self.chunk]
                              for i in range(0, len(points), self.chunk)])


def hop_skip_jump(module: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor", norm: str, steps: int, clip: tuple[float, float],
                  max_evals: int = 1000, init_evals: int = 100, batch: int = 128) -> "torch.Tensor":
    """Per sample, the adversarial input HopSkipJump ends at after `steps` iterations, minimising `norm` ("2" or "inf").

    A sample the model already misclassifies, or one for which no random input is misclassified,
    comes back unchanged. The model is queried at most `batch` inputs at a time. Randomness comes
    from torch's global generator.
    """
    import torch

    if norm not in ("2", "inf"):
        raise ValueError(f'HopSkipJump minimises the L2 or the L-inf norm ("2" or "inf"), not {norm!r}')
    oracle = Oracle(module, clip, batch)
    best = x.clone()
    with torch.no_grad():
        live = (module(x).argmax(1) == y).nonzero().squeeze(1)
    start, found = _starting_points(oracle, x[live], y[live])
    live = live[found]
    if not len(live):
        return best
    origin, labels = x[live], y[live]
    d = origin[0].numel()
    theta = 0.01 / math.sqrt(d) if norm == "2" else 0.01 / d
    current = _boundary(oracle, origin, start[found], labels, "2", INIT_THRESHOLD)
    for iteration in range(steps):
        if iteration == 0:
            delta = torch.full((len(live),), 0.1 * (clip[1] - clip[0]))
        else:
            delta = _distance(origin, current, norm) * (math.sqrt(d) if norm == "2" else d) * theta
        current = _boundary(oracle, origin, current, labels, norm, theta)
        direction = _direction(oracle, current, labels, delta, min(int(init_evals * math.sqrt(iteration + 1)), max_evals), norm, clip)
        current = _step(oracle, current, labels, direction, 2 * _distance(origin, current, norm) / math.sqrt(iteration + 1), clip)
    current = _boundary(oracle, origin, current, labels, norm, theta)
    failed = current.flatten(1).isnan().any(1)
    best[live] = torch.where(per_sample(failed, current), origin, current)
    return best


def _starting_points(oracle: Oracle, x: "torch.Tensor", y: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Uniform random inputs the model misclassifies, one per sample (up to `INIT_TRIALS` draws each), and which samples have one."""
    import torch

    start, found = x.clone(), torch.zeros(len(x), dtype=torch.bool)
    for _ in range(INIT_TRIALS):
        pending = (~found).nonzero().squeeze(1)
        if not len(pending):
            break
        noise = torch.empty_like(x[pending]).uniform_(*oracle.clip)
        hit = oracle.adversarial(noise, y[pending])
        start[pending[hit]] = noise[hit]
        found[pending[hit]] = True
    return start, found


def _distance(origin: "torch.Tensor", current: "torch.Tensor", norm: str) -> "torch.Tensor":
    return sample_norm(current - origin, 2.0 if norm == "2" else math.inf)


def _boundary(oracle: Oracle, origin: "torch.Tensor", current: "torch.Tensor", labels: "torch.Tensor", norm: str,
              theta: float) -> "torch.Tensor":
    """Binary search from each adversarial `current` towards its origin, ending on the adversarial side of the boundary.

    L2 searches the interpolation weight in [0, 1] to within `theta`; L-inf the box radius around
    the origin, from the current distance down, to within min(radius x theta, theta).
    """
    import torch

    if norm == "2":
        upper, threshold = torch.ones(len(origin)), torch.full((len(origin),), theta)
    else:
        upper = _distance(origin, current, "inf")
        threshold = torch.clamp(upper * theta, max=theta)
    lower = torch.zeros_like(upper)
    while True:
        searching = ((upper - lower) > threshold).nonzero().squeeze(1)
        if not len(searching):
            break
        alpha = (upper[searching] + lower[searching]) / 2
        hit = oracle.adversarial(_towards(origin[searching], current[searching], alpha, norm), labels[searching])
        upper[searching] = torch.where(hit, alpha, upper[searching])
        lower[searching] = torch.where(hit, lower[searching], alpha)
    return _towards(origin, current, upper, norm)


def _towards(origin: "torch.Tensor", current: "torch.Tensor", alpha: "torch.Tensor", norm: str) -> "torch.Tensor":
    """The point `alpha` of the way from origin to current (L2), or current clipped to the L-inf box of radius alpha (L-inf)."""
    import torch

    a = per_sample(alpha, origin)
    if norm == "2":
        return (1 - a) * origin + a * current
    return torch.maximum(torch.minimum(current, origin + a), origin - a)


def _direction(oracle: Oracle, current: "torch.Tensor", labels: "torch.Tensor", delta: "torch.Tensor", probes: int, norm: str,
               clip: tuple[float, float]) -> "torch.Tensor":
    """The estimated gradient direction at each boundary point from `probes` label queries at radius `delta` (the paper's Eq. 14).

    Probes are unit Gaussian (L2) or uniform (L-inf) directions, clipped into the input range as ART
    clips them; the probes of as many samples as fit in one of the oracle's passes are drawn together.
    """
    import torch

    shape = current.shape[1:]
    group = max(1, oracle.chunk // probes)
    out = torch.empty_like(current)
    for i in range(0, len(current), group):
        point, size = current[i : i + group, None], per_sample(delta[i : i + group], current[:, None])
        noise = torch.randn(len(point), probes, *shape) if norm == "2" else torch.empty(len(point), probes, *shape).uniform_(-1, 1)
        noise = noise / noise.flatten(2).norm(dim=2).view(len(point), probes, *[1] * len(shape))
        probe = (point + size * noise).clamp(*clip)
        noise = (probe - point) / size
        hit = oracle.adversarial(probe.flatten(0, 1), labels[i : i + group].repeat_interleave(probes)).view(len(point), probes)
        sign = (2 * hit.to(current.dtype) - 1).view(len(point), probes, *[1] * len(shape))
        mean = sign.mean(1, keepdim=True)
        weight = torch.where(mean.abs() == 1, mean, sign - mean)
        out[i : i + group] = (weight * noise).mean(1)
    if norm == "2":
        return out / per_sample(sample_norm(out, 2.0), out)
    return out.sign()


def _step(oracle: Oracle, current: "torch.Tensor", labels: "torch.Tensor", direction: "torch.Tensor", size: "torch.Tensor",
          clip: tuple[float, float]) -> "torch.Tensor":
    """Move along `direction` by the largest of size/2, size/4, ... that stays adversarial; a sample none does stays where it is."""
    import torch

    moved, pending = current.clone(), torch.arange(len(current))
    for _ in range(MAX_HALVINGS):
        size[pending] /= 2
        candidate = (current[pending] + per_sample(size[pending], current) * direction[pending]).clamp(*clip)
        hit = oracle.adversarial(candidate, labels[pending])
        moved[pending[hit]] = candidate[hit]
        pending = pending[~hit]
        if not len(pending):
            break
    return moved
