"""The AutoAttack standard cascade (Croce & Hein 2020), in torch: each stage attacks only what the previous ones left robust.

The stages are the standard version's (APGD-CE, APGD-T, FAB-T, Square) with FMN (Pintor et al. 2021) for FAB-T.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from attacks import register
from attacks.apgd import DLR_MIN_CLASSES, TARGETED_DLR_MIN_CLASSES, apgd
from attacks.base import AttackContext, AttackOutput, EvasionAttack
from attacks.evasion import TorchAttack, Views, nested_sweep
from attacks.fmn import fmn
from attacks.square import square_search
from attacks.tensors import NORM_ORDER, per_sample, sample_norm
from audit.params import Number, Param

if TYPE_CHECKING:
    import torch

    from audit.models import Target

STANDARD_TARGETS, SQUARE_P_INIT = 9, 0.8  # the standard version's APGD-T target classes and Square's first square
Stage = Callable[["torch.Tensor", float], tuple["torch.Tensor", "torch.Tensor"]]  # (robust, eps) -> (still robust, adversarial inputs)


def plan(n_classes: int, image: bool) -> tuple[list[str], list[str]]:
    """The stages that apply to a model, and what was changed or left out (which makes the cascade weaker than the standard)."""
    stages, notes = ["APGD-CE"], []
    if n_classes >= TARGETED_DLR_MIN_CLASSES:
        stages.append("APGD-T")
    elif n_classes >= DLR_MIN_CLASSES:
        stages.append("APGD-DLR")
        notes.append(f"APGD-DLR untargeted in place of APGD-T (the targeted loss needs at least {TARGETED_DLR_MIN_CLASSES} classes; "
                     f"this model has {n_classes})")
    else:
        notes.append(f"without APGD-T (its loss needs at least {TARGETED_DLR_MIN_CLASSES} classes; this model has {n_classes})")
    stages.append("FMN")
    if image:
        stages.append("Square")
    else:
        notes.append("without Square (it perturbs image patches; these inputs are feature vectors)")
    return stages, notes


class _MinimumNorm:
    """FMN as a cascade stage (in place of the standard version's FAB-T: both look for the nearest boundary).

    One FMN run gives a sample's smallest adversarial example, which lies in every ball at least that
    large, so each sample is minimised once per batch and every eps of the sweep reads the result.
    """

    def __init__(self, model: Views, x: "torch.Tensor", y: "torch.Tensor", norm: str, steps: int, clip: tuple[float, float]) -> None:
        import torch

        self.model, self.x, self.y, self.norm, self.steps, self.clip = model, x, y, norm, steps, clip
        self.found = x.clone()
        self.size = torch.full((len(x),), float("inf"))
        self.done = torch.zeros(len(x), dtype=torch.bool)

    def stage(self, robust: "torch.Tensor", eps: float) -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        pending = (robust & ~self.done).nonzero().squeeze(1)
        if len(pending):
            found = fmn(self.model.differentiate, self.x[pending], self.y[pending], self.norm, self.steps, self.clip)
            with torch.no_grad():
                flipped = self.model.decide(found).argmax(1) != self.y[pending]
            size = sample_norm(found - self.x[pending], NORM_ORDER[self.norm])
            self.found[pending], self.size[pending] = found, torch.where(flipped, size, float("inf"))
            self.done[pending] = True
        broken = robust & (self.size <= eps)
        return robust & ~broken, torch.where(per_sample(broken, self.x), self.found, self.x)


@register
class AutoAttack(TorchAttack):
    name = "autoattack"
    summary = ("AutoAttack standard cascade (Croce & Hein 2020): APGD-CE, then APGD-T on the 9 most likely other classes, "
               "then FMN in place of FAB-T, then Square, each on what the previous ones left robust (APGD-T needs 4 classes "
               "or more, Square image inputs; a stage that does not apply is replaced or left out and the rows say so)")
    randomized = True
    params = (
        *EvasionAttack.params,
        Param("steps", Number(1, 10_000, integer=True), 100, "APGD iterations per start and target class", quick=3),
        Param("queries", Number(1, 100_000, integer=True), 5000, "Square attack queries per sample", quick=20),
    )

    def torch_sweep(self, model: Views, x: "torch.Tensor", y: "torch.Tensor", eps: list[float],
                    clip: tuple[float, float]) -> tuple["torch.Tensor", list["torch.Tensor"], list["torch.Tensor"]]:
        norm, steps = self.norm, self.values["steps"]
        n_classes = model.decide(x[:1]).shape[1] if len(x) else 0
        runs: dict[str, Stage] = {
            "APGD-CE": lambda robust, e: apgd(model, x, y, robust, e, norm, "ce", steps, 1, clip),
            "APGD-T": lambda robust, e: apgd(model, x, y, robust, e, norm, "dlr", steps, 1, clip, min(STANDARD_TARGETS, n_classes - 1)),
            "APGD-DLR": lambda robust, e: apgd(model, x, y, robust, e, norm, "dlr", steps, 1, clip),
            "FMN": _MinimumNorm(model, x, y, norm, steps, clip).stage,
            "Square": lambda robust, e: square_search(model.decide, x, y, robust, e, norm, self.values["queries"], clip, SQUARE_P_INIT),
        }
        stages = [runs[label] for label in plan(n_classes, x.dim() == 4)[0]]

        def cascade(robust: "torch.Tensor", e: float) -> tuple["torch.Tensor", "torch.Tensor"]:
            adversarial = x.clone()
            for stage in stages:
                still, found = stage(robust, e)
                adversarial[robust & ~still] = found[robust & ~still]
                robust = still
            return robust, adversarial

        return nested_sweep(model, x, y, eps, cascade)

    def run(self, target: "Target", x: np.ndarray, y: np.ndarray, context: AttackContext) -> AttackOutput:
        output = super().run(target, x, y, context)
        stages, notes = plan(target.n_classes, len(target.input_shape) == 3)
        if notes:
            note = (f"cascade of {', '.join(stages)}, " + "; ".join(notes)
                    + ": weaker than the full AutoAttack, so robust accuracy may be overstated")
            for row in output.rows:
                if row["metric"] == "robust_accuracy" and row.get("subset", "all") == "all":
                    row["message"] = note
        return output
