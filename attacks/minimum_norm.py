"""Minimum-norm attacks, one run for the whole curve: FMN in L0, L1, L2 or L-inf (torch, the recommended one),
Carlini-Wagner L2 and DeepFool through ART (gradients), and the exact attack on a decision tree (its nodes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from attacks import register
from attacks.base import Access, MinimizationAttack
from attacks.fmn import NORMS, fmn
from audit.params import Choice, Location, Number, OneOrMany, Param

if TYPE_CHECKING:
    from audit.models import Target

# Budgets a user expects per norm on inputs in [0, 1]; L0's count input values changed.
FMN_EPS = {"inf": [0.05, 0.1, 0.2, 0.3], "2": [0.25, 0.5, 1.0, 2.0], "1": [1.0, 2.0, 5.0, 10.0], "0": [1.0, 3.0, 10.0, 30.0]}


@register
class FMN(MinimizationAttack):
    """Recommended over CW and DeepFool: in measurements on the digits CNN (tests/test_fmn.py) it finds smaller L2
    perturbations than either, in a fixed number of batched forward-backward passes, and it covers L0, L1 and L-inf too."""

    name = "fmn"
    summary = "Fast minimum-norm attack (Pintor et al. 2021): adaptive Lp-ball projections in L0, L1, L2 or L-inf, one run for the whole curve"
    params = (
        Param("eps", OneOrMany(Number(0, None, closed="neither")), None,
              "budgets to read robust accuracy off at; default per norm: " + "; ".join(f"{norm}: {', '.join(f'{e:g}' for e in eps)}"
                                                                               for norm, eps in FMN_EPS.items()) + " (L0: input values changed)"),
        Param("norm", Choice(NORMS), "2", "the norm minimised (\"0\" counts the input values changed)"),
        *(param for param in MinimizationAttack.params if param.name != "eps"),
        Param("steps", Number(1, 10_000, integer=True), 100, "forward-backward passes per batch", quick=3),
        Param("step_size", Number(0, 100, closed="right"), 1.0, "initial step along the L2-normalised gradient, annealed to 1/100 of it"),
        Param("gamma", Number(0, 1, closed="neither"), 0.05, "initial relative change of the ball's radius per step, annealed to 0.001"),
    )

    @classmethod
    def check(cls, values: dict[str, Any], where: Location) -> None:
        """Fill the eps of the chosen norm, so an L1 or L0 run never reads L2 budgets; L0 budgets are whole counts."""
        if values["eps"] is None:
            values["eps"] = list(FMN_EPS[values["norm"]])
        fractional = [e for e in values["eps"] if values["norm"] == "0" and not float(e).is_integer()]
        if fractional:
            raise where.child("eps").error(f"L0 budgets count input values changed and must be whole numbers, got {', '.join(f'{e:g}' for e in fractional)}")

    @property
    def norm(self) -> str:
        return self.values["norm"]

    def minimize(self, target: "Target", x: np.ndarray, y: np.ndarray) -> np.ndarray:
        import torch

        x_adv = fmn(target.attack_module, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y, dtype=np.int64)),
                    self.norm, self.values["steps"], target.clip_values, step_size=self.values["step_size"], gamma=self.values["gamma"])
        return x_adv.numpy()


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


@register
class DecisionTree(MinimizationAttack):
    """Exact for one tree: the tree splits its input space into boxes (its leaves), and the nearest point
    of another class's box is the box's projection of the sample, the smallest change in every Lp norm
    at once. Its robust accuracy is therefore the model's true one, not an upper bound. ART's
    DecisionTreeAttack (Papernot et al. 2016) searches the tree greedily and finds larger changes; the
    tests check this attack against it. A forest is not one tree (the exact search is NP-hard), so
    forests and boosters get decision- and score-based attacks instead.
    """

    name = "decision_tree"
    summary = "Exact minimum-norm attack on a scikit-learn decision tree: the nearest point the tree gives another class"
    access = Access.STRUCTURE
    data_kinds = ("tabular",)
    data_note = "a decision tree splits feature vectors"
    params = (
        Param("eps", OneOrMany(Number(0, None, closed="neither")), [0.05, 0.1, 0.2, 0.3], "budgets to read robust accuracy off at"),
        Param("norm", Choice(("inf", "2")), "inf", "the norm minimised"),
        *(param for param in MinimizationAttack.params if param.name != "eps"),
    )

    @property
    def norm(self) -> str:
        return self.values["norm"]

    def inapplicable(self, target: "Target") -> str | None:
        from sklearn.tree import DecisionTreeClassifier

        if isinstance(target.native, DecisionTreeClassifier) and target.native.n_outputs_ == 1:
            return None
        if target.native is None:
            return (f"reads the nodes of a scikit-learn decision tree (kind = \"skops\"), and this variant of {target.name} has none "
                    "to read (a torch or ONNX model, or a defense wraps the tree)")
        return (f"reads the nodes of one scikit-learn decision tree, and {target.name} is a {type(target.native).__name__}; "
                "decision- and score-based attacks (hopskipjump, transfer) apply to it")

    def minimize(self, target: "Target", x: np.ndarray, y: np.ndarray) -> np.ndarray:
        low, high, leaf_class = _leaf_boxes(target.native.tree_, target.clip_values)
        x_adv = x.copy()
        if not len(leaf_class):
            return x_adv
        distance = np.zeros((len(x), len(leaf_class)))
        for feature in range(x.shape[1]):
            column = x[:, feature, None].astype(np.float64)
            gap = np.maximum(low[None, :, feature] - column, 0) + np.maximum(column - high[None, :, feature], 0)
            distance = np.maximum(distance, gap) if self.norm == "inf" else distance + gap**2
        distance[leaf_class[None, :] == y[:, None]] = np.inf
        nearest = distance.argmin(axis=1)
        reachable = np.isfinite(distance[np.arange(len(x)), nearest])
        x_adv[reachable] = np.clip(x[reachable], low[nearest[reachable]], high[nearest[reachable]])
        return x_adv


def _leaf_boxes(tree: Any, clip_values: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per leaf the float32 box of inputs the tree sends to it, within the input range, and the leaf's class.

    scikit-learn sends a sample left when its float32 feature is <= the node's float64 threshold, so a
    box's upper bound is the largest float32 <= the thresholds it must not exceed and its lower bound
    the smallest float32 > those it must exceed. Leaves whose box lies outside the input range are left out.
    """
    n_features = tree.n_features
    lows, highs, classes = [], [], []
    stack = [(0, np.full(n_features, -np.inf), np.full(n_features, np.inf))]
    while stack:
        node, low, high = stack.pop()
        left, right = tree.children_left[node], tree.children_right[node]
        if left == right:  # a leaf
            lows.append(low)
            highs.append(high)
            classes.append(int(np.argmax(tree.value[node, 0])))
            continue
        feature, threshold = tree.feature[node], tree.threshold[node]
        left_high, right_low = high.copy(), low.copy()
        left_high[feature] = min(high[feature], threshold)
        right_low[feature] = max(low[feature], threshold)
        stack += [(right, right_low, high), (left, low, left_high)]
    low32, high32 = _above(np.array(lows)), _at_most(np.array(highs))
    low32 = np.maximum(low32, np.float32(clip_values[0]))
    high32 = np.minimum(high32, np.float32(clip_values[1]))
    inside = (low32 <= high32).all(axis=1)
    return low32[inside], high32[inside], np.array(classes, dtype=np.int64)[inside]


def _above(bound: np.ndarray) -> np.ndarray:
    """The smallest float32 strictly greater than each float64 bound."""
    nearest = bound.astype(np.float32)
    return np.where(nearest.astype(np.float64) <= bound, np.nextafter(nearest, np.float32(np.inf)), nearest)


def _at_most(bound: np.ndarray) -> np.ndarray:
    """The largest float32 not greater than each float64 bound."""
    nearest = bound.astype(np.float32)
    return np.where(nearest.astype(np.float64) > bound, np.nextafter(nearest, np.float32(-np.inf)), nearest)
