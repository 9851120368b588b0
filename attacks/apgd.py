"""Auto-PGD (Croce & Hein 2020) in torch: APGD-CE, APGD-DLR and the targeted APGD-T, L-inf and L2.

The steps, the momentum and the checkpoints that halve a sample's step size follow the authors'
reference implementation (fra31/auto-attack, `autopgd_base.py`). What differs is bookkeeping that
cannot change a sample's outcome: a sample stops being attacked once it is misclassified (every
per-sample quantity of the algorithm, step sizes and checkpoints included, is that sample's own, so
the others take the same steps), restarts and target classes run only on the samples still robust,
and in a sweep a sample broken at a smaller eps keeps that adversarial example at every larger eps
of the same norm (it lies inside every larger ball). The forward and backward passes are then the
ones the outcome needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from attacks import register
from attacks.base import EvasionAttack, Stronger
from attacks.evasion import TorchOrArt, Views, art_norm, more_steps_and_a_restart, nested_sweep
from attacks.tensors import NORM_ORDER, per_sample, sample_norm
from audit.params import Choice, Location, Number, Param

if TYPE_CHECKING:
    import torch

    from audit.data import Dataset, Splits
    from audit.models import Target

Loss = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor | None"], "torch.Tensor"]

MOMENTUM = 0.75  # the weight of the new step against the previous one (the reference's alpha)
STEP = 2.0  # the initial step, in units of eps
OSCILLATION = 0.75  # the reference's rho: a checkpoint halves the step unless the loss rose in this share of its steps


def ce_loss(logits: "torch.Tensor", y: "torch.Tensor", target: "torch.Tensor | None") -> "torch.Tensor":
    """Per-sample cross-entropy, ascended; targeted: the negative cross-entropy towards the target class."""
    import torch.nn.functional as F

    return F.cross_entropy(logits, y, reduction="none") if target is None else -F.cross_entropy(logits, target, reduction="none")


def dlr_loss(logits: "torch.Tensor", y: "torch.Tensor", target: "torch.Tensor | None") -> "torch.Tensor":
    """The difference-of-logits ratio: invariant to shifting and scaling the logits, so a model cannot escape it by saturating.

    Untargeted: -(z_y - max_{i != y} z_i) / (z_(1) - z_(3)); targeted: -(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2),
    with z_(k) the k-th largest logit.
    """
    import torch

    ordered, order = logits.sort(dim=1)
    rows = torch.arange(len(logits))
    true = logits[rows, y]
    if target is None:
        best_other = torch.where(order[:, -1] == y, ordered[:, -2], ordered[:, -1])
        return -(true - best_other) / (ordered[:, -1] - ordered[:, -3] + 1e-12)
    return -(true - logits[rows, target]) / (ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + 1e-12)


LOSSES: dict[str, Loss] = {"ce": ce_loss, "dlr": dlr_loss}


def _unit(v: "torch.Tensor", norm: str) -> "torch.Tensor":
    """v over its per-sample norm (the reference's `normalize`, 1e-12 keeping a zero vector zero)."""
    return v / per_sample(sample_norm(v, NORM_ORDER[norm]) + 1e-12, v)


def _into_ball(point: "torch.Tensor", x: "torch.Tensor", eps: float, norm: str, clip: tuple[float, float]) -> "torch.Tensor":
    """Project onto the eps ball around x, then into the input range (the reference's order; both keep the point in the ball)."""
    import torch

    if norm == "inf":
        return torch.minimum(torch.maximum(point, x - eps), x + eps).clamp(*clip)
    delta = point - x
    size = torch.linalg.vector_norm(delta.flatten(1), 2, dim=1)
    return (x + _unit(delta, "2") * per_sample(size.clamp(max=eps), delta)).clamp(*clip)


@dataclass
class _Probe:
    """One gradient evaluation: logits of the differentiated model, the per-sample loss, its input gradient, and
    whether the deciding model misclassifies the point (its own pass only when the two views differ)."""

    logits: "torch.Tensor"
    loss: "torch.Tensor"
    grad: "torch.Tensor"
    fooled: "torch.Tensor"


def _probe(model: "Views", point: "torch.Tensor", y: "torch.Tensor", target: "torch.Tensor | None", loss: Loss) -> _Probe:
    import torch

    with torch.enable_grad():
        p = point.detach().requires_grad_(True)
        logits = model.differentiate(p)
        per_sample = loss(logits, y, target)
        (grad,) = torch.autograd.grad(per_sample.sum(), p)
    logits = logits.detach()
    if model.shared:
        decided = logits
    else:
        with torch.no_grad():
            decided = model.decide(point)
    return _Probe(logits, per_sample.detach(), grad.masked_fill_(grad.isnan(), 0.0), decided.argmax(1) != y)


def _checkpoints(steps: int) -> tuple[int, int, int]:
    """The reference's schedule: the first checkpoint after 22% of the steps, each later one 3% sooner, none closer than 6%."""
    return max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)


def apgd_run(model: "Views", x: "torch.Tensor", y: "torch.Tensor", eps: float, norm: str, loss: Loss, steps: int,
             clip: tuple[float, float], target: "torch.Tensor | None" = None,
             owner: "torch.Tensor | None" = None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """One start of APGD per row of x: (whether each row was misclassified at some step, the last such point or x).

    Rows may be copies of one sample (its restarts and target classes, run side by side): `owner` gives
    each row's sample, and every row of a sample leaves the passes as soon as one of them misclassifies it.
    """
    import torch

    n = len(x)
    owner = torch.arange(n) if owner is None else owner
    noise = 2 * torch.rand_like(x) - 1 if norm == "inf" else torch.randn_like(x)
    current = (x + eps * _unit(noise, norm)).clamp(*clip)
    probe = _probe(model, current, y, target, loss)
    fooled = probe.fooled.clone()
    broken = torch.zeros(int(owner.max()) + 1 if n else 0, dtype=torch.bool)
    broken[owner[fooled]] = True
    adversarial = torch.where(per_sample(fooled, x), current, x)
    grad, loss_now = probe.grad, probe.loss
    best, best_grad, best_loss = current.clone(), grad.clone(), loss_now.clone()
    previous = current.clone()
    step = torch.full((n,), STEP * eps)
    losses = torch.zeros(steps, n)
    length, shrink, shortest = _checkpoints(steps)
    since_checkpoint = 0
    best_at_checkpoint, halved_at_checkpoint = best_loss.clone(), torch.ones(n, dtype=torch.bool)
    for i in range(steps):
        live = (~broken[owner]).nonzero().squeeze(1)
        if len(live) == 0:
            break
        rows: "torch.Tensor | slice" = slice(None) if len(live) == n else live  # views while every row is live, no gathers
        xs, now, before = x[rows], current[rows], previous[rows]
        weight = MOMENTUM if i > 0 else 1.0
        direction = grad[rows].sign() if norm == "inf" else _unit(grad[rows], "2")
        moved = _into_ball(now + per_sample(step[rows], now) * direction, xs, eps, norm, clip)
        moved = _into_ball(now + (moved - now) * weight + (now - before) * (1 - weight), xs, eps, norm, clip)
        previous[rows], current[rows] = now, moved  # previous is written first, from current
        probe = _probe(model, moved, y[rows], None if target is None else target[rows], loss)
        grad[rows], losses[i, rows] = probe.grad, probe.loss
        newly = live[probe.fooled]
        fooled[newly], adversarial[newly], broken[owner[newly]] = True, moved[probe.fooled], True
        better = probe.loss > best_loss[live]
        improved = live[better]
        best[improved], best_grad[improved], best_loss[improved] = moved[better], probe.grad[better], probe.loss[better]
        since_checkpoint += 1
        if since_checkpoint == length:
            rises = sum((losses[i - back] > losses[i - back - 1]).float() for back in range(length))
            halve = (rises <= length * OSCILLATION) | (~halved_at_checkpoint & (best_at_checkpoint >= best_loss))
            halved_at_checkpoint, best_at_checkpoint = halve, best_loss.clone()
            step[halve] /= 2
            current[halve], grad[halve] = best[halve], best_grad[halve]
            length, since_checkpoint = max(length - shrink, shortest), 0
    return fooled, adversarial


SIDE_BY_SIDE = 9  # restarts and target classes run at once per sample (the standard APGD-T's 9 targets): bounds memory at 9 batches


def apgd(model: "Views", x: "torch.Tensor", y: "torch.Tensor", robust: "torch.Tensor", eps: float, norm: str, loss: str,
         steps: int, restarts: int, clip: tuple[float, float], targets: int = 0,
         clean_logits: "torch.Tensor | None" = None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """APGD on the samples marked `robust`: (still robust, adversarial inputs; x where none was found).

    `targets` = k > 0 is APGD-T: each of the k most likely other classes (by the differentiated model's
    clean logits) becomes the target of the targeted loss, with `restarts` starts each. The reference
    runs starts and targets one after the other on the samples still robust; here up to `SIDE_BY_SIDE`
    of them run side by side, and a sample's runs stop together once one breaks it: the same outcome
    (a sample is broken when any start breaks it) in far fewer, larger passes.
    """
    import torch

    robust, adversarial = robust.clone(), x.clone()
    loss_fn = LOSSES[loss]
    runs = [(rank, start) for rank in (range(1, targets + 1) if targets else [None]) for start in range(restarts)]
    if targets:
        if clean_logits is None:
            with torch.no_grad():
                clean_logits = model.differentiate(x)
        ranked = clean_logits.argsort(dim=1, descending=True)
    for first in range(0, len(runs), SIDE_BY_SIDE):
        live = robust.nonzero().squeeze(1)
        if len(live) == 0:
            break
        chunk = runs[first : first + SIDE_BY_SIDE]
        rows = live.repeat(len(chunk))
        target = torch.cat([ranked[live, rank] for rank, _ in chunk]) if targets else None
        fooled, found = apgd_run(model, x[rows], y[rows], eps, norm, loss_fn, steps, clip, target, owner=rows)
        robust[rows[fooled]] = False
        for block in reversed(range(len(chunk))):  # a sample broken by several runs keeps the first run's point, whatever the order of writes
            part = slice(block * len(live), (block + 1) * len(live))
            adversarial[live[fooled[part]]] = found[part][fooled[part]]
    return robust, adversarial


# The DLR loss divides by the gap between the first and third largest logits, its targeted form by the first and the mean of the third and fourth.
DLR_MIN_CLASSES, TARGETED_DLR_MIN_CLASSES = 3, 4


@register
class AutoPGD(TorchOrArt):
    name = "apgd"
    summary = "Auto-PGD (Croce & Hein 2020): step-size-free PGD with cross-entropy or DLR loss; APGD-T with `targets`"
    randomized = True
    params = (
        *EvasionAttack.params,
        Param("loss", Choice(("ce", "dlr")), "ce", "cross-entropy, or the difference-of-logits ratio (robust to logit scaling; 3 classes or more)"),
        Param("steps", Number(1, 10_000, integer=True), 100, "iterations per start (the authors' choice)", quick=3),
        Param("random_starts", Number(1, 100, integer=True), 1, "random starts in the ball (per target class with `targets`)"),
        Param("targets", Number(0, 999, integer=True), 0,
              "APGD-T: attack the k most likely other classes in turn with the targeted loss (0: untargeted; torch backend)"),
        Param("backend", Choice(("torch", "art")), "torch",
              "torch: a batched torch loop of the authors' algorithm; art: ART's AutoProjectedGradientDescent (untargeted only)"),
    )

    @classmethod
    def check_data(cls, values: dict[str, Any], dataset: "Dataset", splits: "Splits", where: Location) -> None:
        super().check_data(values, dataset, splits, where)
        needed = TARGETED_DLR_MIN_CLASSES if values["loss"] == "dlr" and values["targets"] else DLR_MIN_CLASSES
        if values["loss"] == "dlr" and dataset.n_classes < needed:
            raise where.child("loss").error(
                f'"dlr"{" with targets" if values["targets"] else ""} needs at least {needed} classes (it divides by a gap between '
                f'the largest logits); {dataset.name} has {dataset.n_classes}: use loss = "ce"')
        if values["targets"] >= dataset.n_classes:
            raise where.child("targets").error(f"{values['targets']} other classes to target, but {dataset.name} has {dataset.n_classes} classes in all")

    @classmethod
    def check(cls, values: dict[str, Any], where: Location) -> None:
        super().check(values, where)
        if values["backend"] == "art" and values["targets"]:
            raise where.child("targets").error("ART's Auto-PGD has no top-k targeted mode; use backend = \"torch\" or targets = 0")

    def strengthened(self, eps: float) -> Stronger:
        return more_steps_and_a_restart(self, eps)

    def art_attack(self, target: "Target", eps: float) -> Any:
        return art_apgd(target, eps, self.norm, self.values["loss"], self.values["steps"], self.values["random_starts"], self.values["batch_size"])

    def torch_sweep(self, model: Views, x: "torch.Tensor", y: "torch.Tensor", eps: list[float],
                    clip: tuple[float, float]) -> tuple["torch.Tensor", list["torch.Tensor"], list["torch.Tensor"]]:
        v = self.values
        return nested_sweep(model, x, y, eps, lambda robust, e: apgd(model, x, y, robust, e, self.norm, v["loss"], v["steps"],
                                                                      v["random_starts"], clip, v["targets"]))


def art_apgd(target: "Target", eps: float, norm: str, loss: str, steps: int, starts: int, batch: int) -> Any:
    """ART's Auto-PGD, the reference the torch path is checked against."""
    from art.attacks.evasion import AutoProjectedGradientDescent

    return AutoProjectedGradientDescent(
        target.art_classifier,
        norm=art_norm(norm),
        eps=eps,
        eps_step=STEP * eps,
        max_iter=steps,
        nb_random_init=starts,
        batch_size=batch,
        loss_type="cross_entropy" if loss == "ce" else "difference_logits_ratio",
        verbose=False,
    )
