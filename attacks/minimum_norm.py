"""Minimum-norm white-box attacks through ART: Carlini-Wagner L2 and DeepFool (one run, the whole curve)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from attacks import register
from attacks.base import MinimizationAttack
from audit.params import Number, Param

if TYPE_CHECKING:
    from audit.models import Target


@register
class CarliniWagnerL2(MinimizationAttack):
    name = "cw"
    summary = "Carlini-Wagner L2 (2017): optimisation for the smallest L2 perturbation that flips the label"
    params = (
        *MinimizationAttack.params,
        Param("steps", Number(1, 10_000, integer=True), 20, "optimiser steps per binary-search step", quick=3),
        Param("search_steps", Number(1, 100, integer=True), 5, "binary-search steps over the trade-off constant", quick=1),
        Param("learning_rate", Number(0, 10, closed="right"), 0.1, "optimiser step size"),
        Param("initial_const", Number(0, 1e6, closed="right"), 10.0, "starting trade-off constant (a small one leaves most samples unflipped: bench/RESULTS.md)"),
    )

    def minimize(self, target: "Target", x: np.ndarray, y: np.ndarray) -> np.ndarray:
        from art.attacks.evasion import CarliniL2Method

        attack = CarliniL2Method(
            target.art_classifier,
            learning_rate=self.values["learning_rate"],
            binary_search_steps=self.values["search_steps"],
            max_iter=self.values["steps"],
            initial_const=self.values["initial_const"],
            batch_size=self.values["batch_size"],
            verbose=False,
        )
        return attack.generate(x, y=y)


@register
class DeepFool(MinimizationAttack):
    name = "deepfool"
    summary = "DeepFool (Moosavi-Dezfooli et al. 2016): iterated linearisation towards the nearest decision boundary (L2)"
    params = (
        *MinimizationAttack.params,
        Param("steps", Number(1, 10_000, integer=True), 50, "maximum iterations", quick=3),
        Param("overshoot", Number(0, 1), 0.02, "step past the boundary, so the label really flips"),
    )

    def minimize(self, target: "Target", x: np.ndarray, y: np.ndarray) -> np.ndarray:
        from art.attacks.evasion import DeepFool as ArtDeepFool

        attack = ArtDeepFool(
            target.art_classifier,
            max_iter=self.values["steps"],
            epsilon=self.values["overshoot"],
            nb_grads=target.n_classes,
            batch_size=self.values["batch_size"],
            verbose=False,
        )
        return attack.generate(x, y=y)
