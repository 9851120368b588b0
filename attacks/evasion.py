"""White-box gradient attacks through ART: FGSM and PGD, in the L-inf or L2 ball, always on true labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from attacks import register
from attacks.base import EvasionAttack
from audit.params import Choice, Number, Param

if TYPE_CHECKING:
    from audit.models import Target


def _norm(value: str) -> float:
    return np.inf if value == "inf" else 2.0


@register
class FGSM(EvasionAttack):
    name = "fgsm"
    single_step = True
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
    randomized = True
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


@register
class AutoPGD(EvasionAttack):
    name = "apgd"
    summary = "Auto-PGD (Croce & Hein 2020): step-size-free PGD with cross-entropy or DLR loss"
    randomized = True
    params = (
        *EvasionAttack.params,
        Param("loss", Choice(("ce", "dlr")), "ce", "cross-entropy, or the difference-of-logits ratio (robust to logit scaling)"),
        Param("steps", Number(1, 10_000, integer=True), 50, "iterations per start"),
        Param("random_starts", Number(1, 100, integer=True), 1, "random starts in the ball"),
    )

    def perturb(self, target: "Target", x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
        return apgd(target, x, y, eps, self.values["norm"], self.values["loss"], self.values["steps"],
                    self.values["random_starts"], self.values["batch_size"])


def apgd(target: "Target", x: np.ndarray, y: np.ndarray, eps: float, norm: str, loss: str, steps: int, starts: int, batch: int) -> np.ndarray:
    from art.attacks.evasion import AutoProjectedGradientDescent

    attack = AutoProjectedGradientDescent(
        target.art_classifier,
        norm=_norm(norm),
        eps=eps,
        eps_step=2 * eps,
        max_iter=steps,
        nb_random_init=starts,
        batch_size=batch,
        loss_type="cross_entropy" if loss == "ce" else "difference_logits_ratio",
        verbose=False,
    )
    return attack.generate(x, y=y)


@register
class AutoAttack(EvasionAttack):
    name = "autoattack"
    summary = "AutoAttack-style cascade (Croce & Hein 2020): APGD-CE, then APGD-DLR, then Square on what survives"
    randomized = True
    params = (
        *EvasionAttack.params,
        Param("steps", Number(1, 10_000, integer=True), 50, "APGD iterations"),
        Param("queries", Number(1, 100_000, integer=True), 1000, "Square attack queries per sample"),
    )

    def perturb(self, target: "Target", x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
        from attacks.blackbox import square

        x_adv = x.copy()
        stages = (
            lambda xs, ys: apgd(target, xs, ys, eps, self.values["norm"], "ce", self.values["steps"], 1, self.values["batch_size"]),
            lambda xs, ys: apgd(target, xs, ys, eps, self.values["norm"], "dlr", self.values["steps"], 1, self.values["batch_size"]),
            lambda xs, ys: square(target, xs, ys, eps, self.values["norm"], self.values["queries"], self.values["batch_size"]),
        )
        for stage in stages:
            alive = np.flatnonzero(target.predict(x_adv, self.values["batch_size"]) == y)
            if len(alive) == 0:
                break
            candidate = stage(x[alive], y[alive]).astype(np.float32)
            flipped = target.predict(candidate, self.values["batch_size"]) != y[alive]
            x_adv[alive[flipped]] = candidate[flipped]
        return x_adv
