"""The Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial attack via random search") in torch.

Random search on the margin loss (the true logit minus the best other one) from the paper's
initialisations (vertical stripes at the corners of the L-inf ball; a grid of pseudo-Gaussian bumps
for L2), each step changing one random square whose side follows the paper's piecewise schedule,
rescaled to the query budget as the reference code and ART rescale it. Every sample draws its own
squares, at any position with equal chance, as in the paper (the reference's L2 code and ART share
one square per batch, and the reference never draws the last row or column).

ART predicts its unbroken samples twice more per iteration besides the candidate, and the broken
ones once; here each iteration is one batched forward pass over the samples not broken yet, and a
sample is never queried again once the model misclassifies it (its argmax, what Kansa measures,
is no longer the label). A sample gets at most `queries + 2` evaluations: the clean input, the
starting point and one per iteration (`clean_logits` saves the first).

All randomness comes from torch's global CPU generator, which every audit cell seeds.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The reference schedule halves p after these iterations of a 10,000-iteration run; shorter runs rescale it.
HALVINGS_AT = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
SCHEDULE_LENGTH = 10_000
# The reference redraws a square's signs until they change the image; bounded, as an eps below float resolution never does.
SIGN_REDRAWS = 10
L2_INIT_TILES = 5  # the L2 initialisation tiles the image with a 5 x 5 grid of bumps
TINY = 1e-12


def square_fraction(p_init: float, iteration: int, iterations: int) -> float:
    """The fraction of pixels the square covers at `iteration` of `iterations` (the reference's p_selection)."""
    progress = int(iteration / iterations * SCHEDULE_LENGTH)
    return p_init / 2 ** bisect_left(HALVINGS_AT, progress)


def square_attack(module: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor", eps: float, norm: str, queries: int,
                  clip: tuple[float, float], p_init: float = 0.8, clean_logits: "torch.Tensor | None" = None) -> "torch.Tensor":
    """Adversarial versions of the NCHW batch x within `eps` (norm "inf" or "2") and inside `clip`.

    `queries` counts iterations after the starting point, as ART's `max_iter` does. Samples the
    model already misclassifies come back unchanged. The starting point is kept whatever its loss,
    as in the reference: the L2 step redistributes the current perturbation, so it needs one.
    """
    import torch

    with torch.no_grad():
        logits = module(x) if clean_logits is None else clean_logits
        best = x.clone()
        alive = torch.nonzero(logits.argmax(1) == y).flatten()
        if not len(alive):
            return best
        # The samples not broken yet, compacted: their inputs, labels, best points and margins.
        origin, labels = x[alive], y[alive]
        current = _initial(origin, eps, norm, clip)
        out = module(current)
        margin, fooled = _margin(out, labels), out.argmax(1) != labels
        h, w = x.shape[2:]
        step = _linf_step if norm == "inf" else _l2_step
        for iteration in range(queries + 1):
            if fooled.any():
                best[alive[fooled]] = current[fooled]
                keep = ~fooled
                alive, origin, labels, current, margin = alive[keep], origin[keep], labels[keep], current[keep], margin[keep]
            if not len(alive) or iteration == queries:
                break
            side = _side(square_fraction(p_init, iteration, queries) * h * w, norm, min(h, w))
            candidate = step(origin, current, eps, side, clip)
            out = module(candidate)
            candidate_margin, fooled = _margin(out, labels), out.argmax(1) != labels
            better = fooled | (candidate_margin < margin)
            current = torch.where(better.view(-1, 1, 1, 1), candidate, current)
            margin = torch.where(better, candidate_margin, margin)
        best[alive] = current
        return best


def square_search(module: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor", robust: "torch.Tensor", eps: float, norm: str,
                  queries: int, clip: tuple[float, float], p_init: float) -> tuple["torch.Tensor", "torch.Tensor"]:
    """The attack on the samples marked `robust`: (still robust, adversarial inputs), as the cascade and `nested_sweep` take it."""
    import torch

    still, adversarial = robust.clone(), x.clone()
    live = robust.nonzero().squeeze(1)
    if len(live):
        found = square_attack(module, x[live], y[live], eps, norm, queries, clip, p_init)
        with torch.no_grad():
            still[live] = module(found).argmax(1) == y[live]
        adversarial[live] = found
    return still, adversarial


def _margin(logits: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
    """The true class's logit minus the largest other one: the loss the search lowers (negative only when another class wins)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    return true - logits.scatter(1, y[:, None], float("-inf")).amax(1)


def _side(area: float, norm: str, largest: int) -> int:
    """The square's side for a covered area: at least 1 pixel for L-inf, an odd 3 or more for L2 (as the reference), at most the image's."""
    side = max(int(round(math.sqrt(area))), 1 if norm == "inf" else 3)
    if norm == "2" and side % 2 == 0:
        side += 1
    return min(side, largest)


def _signs(*shape: int) -> "torch.Tensor":
    import torch

    return torch.randint(0, 2, shape).float() * 2 - 1


def _windows(n: int, side: int, h: int, w: int) -> "torch.Tensor":
    """Flat (row-major) pixel indices of one random side x side square per sample, every position equally likely."""
    import torch

    top, left = torch.randint(0, h - side + 1, (n, 1, 1)), torch.randint(0, w - side + 1, (n, 1, 1))
    offsets = torch.arange(side)
    return ((top + offsets[None, :, None]) * w + left + offsets[None, None, :]).flatten(1)


def _initial(x: "torch.Tensor", eps: float, norm: str, clip: tuple[float, float]) -> "torch.Tensor":
    """The paper's starting points: vertical stripes of ±eps (L-inf), or a grid of bumps of random signs scaled to eps (L2)."""
    import torch

    n, c, h, w = x.shape
    if norm == "inf":
        return (x + eps * _signs(n, c, 1, w)).clamp(*clip)
    side = max(h // L2_INIT_TILES, 1)
    top0, left0 = max((h - L2_INIT_TILES * side) // 2, 0), max((w - L2_INIT_TILES * side) // 2, 0)
    delta = torch.zeros_like(x)
    for top in range(top0, h - side + 1, side):
        for left in range(left0, w - side + 1, side):
            delta[:, :, top : top + side, left : left + side] += _bumps(n, side)[:, None] * _signs(n, c, 1, 1)
    return (x + eps * delta / (_l2(delta) + TINY)).clamp(*clip)


def _linf_step(x: "torch.Tensor", best: "torch.Tensor", eps: float, side: int, clip: tuple[float, float]) -> "torch.Tensor":
    """Set one random square per sample to x ± eps, one sign per channel; a draw of signs that changes nothing is redrawn,
    up to SIGN_REDRAWS draws in all (as the reference), the redraws of all such samples at once."""
    import torch

    n, c = x.shape[:2]
    where = _windows(n, side, *x.shape[2:])[:, None].expand(n, c, -1)  # (n, c, side * side)
    origin, now = x.flatten(2).gather(2, where), best.flatten(2).gather(2, where)
    square = (origin + eps * _signs(n, c, 1)).clamp(*clip)
    unchanged = (square == now).flatten(1).all(1).nonzero().squeeze(1)
    if len(unchanged):
        draws = (origin[unchanged, None] + eps * _signs(len(unchanged), SIGN_REDRAWS - 1, c, 1)).clamp(*clip)
        changes = (draws != now[unchanged, None]).flatten(2).any(2)
        first = torch.where(changes.any(1), changes.int().argmax(1), SIGN_REDRAWS - 2)
        square[unchanged] = draws[torch.arange(len(unchanged)), first]
    return best.flatten(2).scatter(2, where, square).view_as(best)


def _l2_step(x: "torch.Tensor", best: "torch.Tensor", eps: float, side: int, clip: tuple[float, float]) -> "torch.Tensor":
    """The paper's L2 step: a fresh bump in one square, the mass of a second square moved into it, the whole delta back at norm eps.

    Per channel, the new square gets its old mass, the second square's and an equal share of the
    budget left unused (the reference's update). The two squares are handled as gathered windows,
    so beside the model's pass a step costs a handful of whole-image operations.
    """
    import torch

    n, c, h, w = x.shape
    delta = (best - x).flatten(2)  # (n, c, h * w)
    first, second = _windows(n, side, h, w), _windows(n, side, h, w)
    at_first, at_second = first[:, None].expand(n, c, -1), second[:, None].expand(n, c, -1)
    old, moved_out = delta.gather(2, at_first), delta.gather(2, at_second)
    corner_row, corner_col = first[:, :1] // w, first[:, :1] % w
    rows, cols = second // w, second % w
    only_second = ~((rows >= corner_row) & (rows < corner_row + side) & (cols >= corner_col) & (cols < corner_col + side))
    total = delta.square().sum((1, 2))
    mass = old.square().sum(2, keepdim=True) + (moved_out.square() * only_second[:, None]).sum(2, keepdim=True)
    fresh = _bumps(n, side).flatten(1)[:, None] * _signs(n, c, 1) + old / (old.norm(dim=2, keepdim=True) + TINY)
    fresh = fresh / (fresh.norm(dim=2, keepdim=True) + TINY) * ((eps**2 - total).clamp_min(0).view(n, 1, 1) / c + mass).sqrt()
    size = (total - mass.sum((1, 2)) + fresh.square().sum((1, 2))).clamp_min(0).sqrt()  # the new delta's norm, from the two windows
    delta = delta.scatter(2, at_second, 0.0).scatter_(2, at_first, fresh).view_as(x)
    return torch.addcmul(x, delta, (eps / (size + TINY)).view(n, 1, 1, 1)).clamp_(*clip)


def _l2(delta: "torch.Tensor") -> "torch.Tensor":
    return delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def _bumps(n: int, side: int) -> "torch.Tensor":
    """The paper's bump per sample, transposed for a random half of them (n, side, side)."""
    import torch

    bump = _bump(side)
    return torch.where(torch.randint(0, 2, (n, 1, 1)).bool(), bump.T, bump)


@lru_cache(maxsize=64)
def _bump(side: int) -> "torch.Tensor":
    """Two pseudo-Gaussian halves of opposite sign, unit L2 norm (the reference's meta_pseudo_gaussian_pert); cached per side, never written to."""
    import torch

    bump = torch.cat([_pseudo_gaussian(side // 2, side), -_pseudo_gaussian(side - side // 2, side)])
    return bump / bump.norm()


def _pseudo_gaussian(rows: int, cols: int) -> "torch.Tensor":
    """Nested rectangles around the centre weighted 1 / k^2, unit L2 norm (the reference's pseudo_gaussian_pert_rectangles)."""
    import torch

    delta = torch.zeros(rows, cols)
    top, left = rows // 2, cols // 2
    for k in range(max(top, left) + 1):
        delta[max(top - k, 0) : top + k + 1, max(left - k, 0) : left + k + 1] += 1.0 / (k + 1) ** 2
    return delta / delta.norm() if rows else delta
