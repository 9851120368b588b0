"""The one interface every attack implements, and the evasion base that owns the epsilon sweep.

As in Foolbox 3, the base class owns what is common (parameter validation, the sweep over
epsilons, clipping to the threat model, the metrics and their intervals); an evasion attack
implements only `perturb`. The runner, the report and `kansa list` never special-case one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from audit.params import Choice, Location, Number, OneOrMany, Param, ParamSet
from audit.results import mean_row, rate_row

if TYPE_CHECKING:
    from audit.data import Dataset, Splits
    from audit.models import Target

GALLERY_SIZE = 8


@dataclass
class AttackContext:
    """What an attack may know besides the target and the attacked samples.

    Privacy attacks need the whole split (members are drawn from train, non-members from
    hold-out) and a way to train models like the target (shadow and reference models).
    `train_like_target(x, y, seed)` trains a fresh model with the target's architecture and
    recipe; it is None when the target cannot be retrained (e.g. a TorchScript file).
    """

    seed: int
    class_names: list[str]
    dataset: "Dataset | None" = None
    splits: "Splits | None" = None
    train_like_target: "Callable[[np.ndarray, np.ndarray, int], Target] | None" = None


@dataclass
class AttackOutput:
    """Metric rows (without model/defense/attack columns, which the runner adds), per-sample arrays, artifacts."""

    rows: list[dict[str, Any]]
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    artifacts: dict[str, np.ndarray] = field(default_factory=dict)


class Attack(ABC):
    """A named attack with declared parameters. Subclasses set the class attributes and `run`."""

    name: ClassVar[str]
    category: ClassVar[str]
    summary: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, **values: Any) -> None:
        self.values = ParamSet(self.params).validate(values, Location(f"attack {self.name}"))

    @abstractmethod
    def run(self, target: "Target", x: np.ndarray, y: np.ndarray, context: AttackContext) -> AttackOutput:
        """Attack `target` on (x, y) and measure the outcome."""


def _finite(logits: np.ndarray, what: str) -> np.ndarray:
    """NaN logits would make argmax silently answer class 0; refuse to measure on them."""
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        raise ValueError(f"the model returned NaN or infinite outputs for {int(bad.sum())} of {len(bad)} {what} inputs")
    return logits


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


class EvasionAttack(Attack):
    """An attack that perturbs inputs within an epsilon ball; the base runs the epsilon sweep."""

    category = "integrity"
    params = (
        Param("eps", OneOrMany(Number(0, None, closed="neither")), [0.05, 0.1, 0.2, 0.3], "perturbation budget(s): a sweep in one run"),
        Param("norm", Choice(("inf", "2")), "inf", "threat model: L-inf or L2 ball"),
        Param("batch_size", Number(1, 100_000, integer=True), 128, "samples per attack batch (measured fastest here: bench/RESULTS.md)"),
    )

    @abstractmethod
    def perturb(self, target: "Target", x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
        """Adversarial versions of x within `eps` of it (in the declared norm), inside the clip range."""

    def run(self, target: "Target", x: np.ndarray, y: np.ndarray, context: AttackContext) -> AttackOutput:
        low, high = target.clip_values
        if self.values["norm"] == "inf" and max(self.values["eps"]) > high - low:
            raise ValueError(f"L-inf eps {max(self.values['eps']):g} exceeds the width of the input range [{low:g}, {high:g}]")
        n = len(y)
        clean_logits = _finite(target.logits(x, self.values["batch_size"]), "clean")
        clean_pred = clean_logits.argmax(axis=1)
        clean_correct = clean_pred == y
        gallery = np.flatnonzero(clean_correct)[:GALLERY_SIZE]
        per_sample: dict[str, np.ndarray] = {"clean_correct": clean_correct}
        artifacts: dict[str, np.ndarray] = {
            "eps": np.asarray(self.values["eps"], dtype=np.float64),
            "index": gallery,
            "x_clean": x[gallery],
            "y": y[gallery],
            "pred_clean": clean_pred[gallery],
            "conf_clean": _softmax(clean_logits[gallery]).max(axis=1),
        }
        x_adv_gallery, pred_adv_gallery, conf_adv_gallery = [], [], []
        rows: list[dict[str, Any]] = []
        for eps in self.values["eps"]:
            x_adv = self.perturb(target, x, y, eps).astype(np.float32, copy=False)
            adv_logits = _finite(target.logits(x_adv, self.values["batch_size"]), f"adversarial (eps={eps:g})")
            adv_pred = adv_logits.argmax(axis=1)
            robust = adv_pred == y
            delta = (x_adv - x).reshape(n, -1).astype(np.float64)
            where = {"param": "eps", "param_value": float(eps)}
            rows += [
                rate_row("clean_accuracy", int(clean_correct.sum()), n, **where),
                rate_row("robust_accuracy", int(robust.sum()), n, **where),
                rate_row("success_rate", int((clean_correct & ~robust).sum()), int(clean_correct.sum()), **where),
                mean_row("perturbation_linf", np.abs(delta).max(axis=1), **where),
                mean_row("perturbation_l2", np.linalg.norm(delta, axis=1), **where),
            ]
            for label, class_name in enumerate(context.class_names):
                mask = y == label
                rows.append(rate_row("robust_accuracy", int(robust[mask].sum()), int(mask.sum()), subset=f"class={class_name}", **where))
            per_sample[f"robust_correct@eps={eps:g}"] = robust
            x_adv_gallery.append(x_adv[gallery])
            pred_adv_gallery.append(adv_pred[gallery])
            conf_adv_gallery.append(_softmax(adv_logits[gallery]).max(axis=1))
        artifacts.update(
            x_adv=np.stack(x_adv_gallery), pred_adv=np.stack(pred_adv_gallery), conf_adv=np.stack(conf_adv_gallery)
        )
        return AttackOutput(rows, per_sample, artifacts)
