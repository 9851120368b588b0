"""White-box gradient attacks through ART: FGSM and PGD, in the L-inf or L2 ball, always on true labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from attacks import register
from attacks.base import EvasionAttack
from audit.params import Number, Param

if TYPE_CHECKING:
    from audit.models import Target


def _norm(value: str) -> float:
    return np.inf if value == "inf" else 2.0


@register
class FGSM(EvasionAttack):
    name = "fgsm"
    summary = "Fast gradient sign method (Goodfellow et al. 2015): one gradient step of size eps"

    def perturb(self, target: "Target", x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
        from art.attacks.evasion import FastGradientMethod

        attack = FastGradientMethod(
            target.art_classifier,
            norm=_norm(self.values["norm"]),
            eps=eps,
            eps_step=eps,
            batch_size=self.values["batch_size"],
        )
        return attack.generate(x, y=y)


@register
class PGD(EvasionAttack):
    name = "pgd"
    summary = "Projected gradient descent (Madry et al. 2018): iterated steps projected back into the eps ball"
    params = (
        *EvasionAttack.params,
        Param("steps", Number(1, 10_000, integer=True), 40, "gradient steps per start"),
        Param("step_size", Number(0, 10, closed="neither"), None, "step as a fraction of eps (default 2.5 / steps)"),
        Param("random_starts", Number(0, 100, integer=True), 1, "random starts in the ball; 0 starts at the clean input"),
    )

    def perturb(self, target: "Target", x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
        from art.attacks.evasion import ProjectedGradientDescent

        ratio = self.values["step_size"] or 2.5 / self.values["steps"]
        attack = ProjectedGradientDescent(
            target.art_classifier,
            norm=_norm(self.values["norm"]),
            eps=eps,
            eps_step=eps * ratio,
            max_iter=self.values["steps"],
            num_random_init=self.values["random_starts"],
            batch_size=self.values["batch_size"],
            verbose=False,
        )
        return attack.generate(x, y=y)
