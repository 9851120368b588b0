"""The one interface every attack implements, and the evasion base that owns the epsilon sweep.

As in Foolbox 3, the base class owns what is common (parameter validation, the sweep over
epsilons, clipping to the threat model, the metrics and their intervals); an evasion attack
implements only `perturb`. The runner, the report and `kansa list` never special-case one.

The bases stream the attacked samples in batches and keep only per-sample results, so peak memory
grows with the batch size, not with the number of samples (bench/RESULTS.md, "Scale").
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
    recipe (for a loaded model: the built-in architecture and recipe for the data).
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
    """A named attack with declared parameters. Subclasses set the class attributes and `run`.

    `randomized` attacks are re-run with other seeds when the config asks for repeats;
    `gradient_access` and `single_step` tell the sanity checks what to compare.
    """

    name: ClassVar[str]
    category: ClassVar[str]
    summary: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    randomized: ClassVar[bool] = False
    gradient_access: ClassVar[bool] = True
    single_step: ClassVar[bool] = False

    def __init__(self, **values: Any) -> None:
        self.values = ParamSet(self.params).validate(values, Location(f"attack {self.name}"))

    @abstractmethod
    def run(self, target: "Target", x: np.ndarray, y: np.ndarray, context: AttackContext) -> AttackOutput:
        """Attack `target` on (x, y) and measure the outcome."""


def _finite(logits: np.ndarray, what: str, start: int) -> np.ndarray:
    """NaN logits would make argmax silently answer class 0; refuse to measure on them.

    Attacks stream batches and stop at the first bad one, so the count is that batch's (from sample `start`).
    """
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        raise ValueError(f"the model returned NaN or infinite outputs for {int(bad.sum())} of {len(bad)} {what} inputs"
                         f" (samples {start}-{start + len(bad) - 1})")
    return logits


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


class _Gallery:
    """A few clean / adversarial pairs per eps for the report, collected batch by batch.

    It keeps the first `GALLERY_SIZE` correctly classified samples and only those, so memory does
    not grow with the number of attacked samples. One entry per eps (NaN eps: a minimisation
    attack's minimal perturbation).
    """

    def __init__(self) -> None:
        self.count = 0
        self.parts: list[dict[str, Any]] = []

    def add(self, start: int, x: np.ndarray, y: np.ndarray, clean_logits: np.ndarray, correct: np.ndarray,
            x_adv: list[np.ndarray], adv_logits: list[np.ndarray]) -> None:
        """Keep this batch's share of the gallery; `start` is the batch's offset in the attacked samples.

        The first batch always adds an entry, possibly empty, so the arrays keep their shapes when no sample is correct.
        """
        if self.parts and self.count >= GALLERY_SIZE:
            return
        local = np.flatnonzero(correct)[: GALLERY_SIZE - self.count]
        self.count += len(local)
        self.parts.append({
            "index": start + local, "x_clean": x[local], "y": y[local], "clean_logits": clean_logits[local],
            "x_adv": [a[local] for a in x_adv], "adv_logits": [lg[local] for lg in adv_logits],
        })

    def artifacts(self, eps: list[float]) -> dict[str, np.ndarray]:
        def joined(key: str) -> np.ndarray:
            return np.concatenate([part[key] for part in self.parts])

        def per_eps(key: str) -> list[np.ndarray]:
            return [np.concatenate([part[key][k] for part in self.parts]) for k in range(len(eps))]

        clean_logits, adv_logits = joined("clean_logits"), per_eps("adv_logits")
        return {
            "eps": np.asarray(eps, dtype=np.float64),
            "index": joined("index"),
            "x_clean": joined("x_clean"),
            "y": joined("y"),
            "pred_clean": clean_logits.argmax(axis=1),
            "conf_clean": _softmax(clean_logits).max(axis=1),
            "x_adv": np.stack(per_eps("x_adv")),
            "pred_adv": np.stack([logits.argmax(axis=1) for logits in adv_logits]),
            "conf_adv": np.stack([_softmax(logits).max(axis=1) for logits in adv_logits]),
        }


def _rate_rows(y: np.ndarray, clean_correct: np.ndarray, robust: np.ndarray, eps: float, class_names: list[str]) -> list[dict[str, Any]]:
    """Clean and robust accuracy, success rate and per-class robust accuracy at one eps."""
    n = len(y)
    where = {"param": "eps", "param_value": float(eps)}
    rows = [
        rate_row("clean_accuracy", int(clean_correct.sum()), n, **where),
        rate_row("robust_accuracy", int(robust.sum()), n, **where),
        rate_row("success_rate", int((clean_correct & ~robust).sum()), int(clean_correct.sum()), **where),
    ]
    for label, class_name in enumerate(class_names):
        mask = y == label
        rows.append(rate_row("robust_accuracy", int(robust[mask].sum()), int(mask.sum()), subset=f"class={class_name}", **where))
    return rows


def _norms(delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample L-inf and L2 sizes, in float64 so the reported means do not depend on summation order."""
    flat = delta.reshape(len(delta), -1).astype(np.float64)
    return np.abs(flat).max(axis=1), np.linalg.norm(flat, axis=1)


@dataclass
class SweepBatch:
    """One batch through an epsilon sweep: its clean logits and, per eps, the adversarial inputs and their logits."""

    clean_logits: np.ndarray
    x_adv: list[np.ndarray]
    adv_logits: list[np.ndarray]


class EvasionAttack(Attack):
    """An attack that perturbs inputs within an epsilon ball; the base runs the epsilon sweep.

    The base streams the samples in batches of `batch_size` and keeps only per-sample results
    (booleans and norms) and the gallery, so peak memory does not grow with the number of samples.
    A concrete attack implements `perturb`; one that gets logits as a by-product of attacking (a
    gradient attack's forward passes) may override `sweep_batch` to skip prediction passes.
    """

    category = "integrity"
    params = (
        Param("eps", OneOrMany(Number(0, None, closed="neither")), [0.05, 0.1, 0.2, 0.3], "perturbation budget(s): a sweep in one run"),
        Param("norm", Choice(("inf", "2")), "inf", "threat model: L-inf or L2 ball"),
        Param("batch_size", Number(1, 100_000, integer=True), 128, "samples per attack batch (measured fastest here: bench/RESULTS.md)"),
    )

    @property
    def norm(self) -> str:
        return self.values["norm"]

    @abstractmethod
    def perturb(self, target: "Target", x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
        """Adversarial versions of x within `eps` of it (in the declared norm), inside the clip range."""

    def sweep_batch(self, target: "Target", x: np.ndarray, y: np.ndarray, eps: list[float]) -> SweepBatch:
        """Attack one batch at every eps: predict it, `perturb` it per eps, predict each result."""
        x_adv = [self.perturb(target, x, y, e).astype(np.float32, copy=False) for e in eps]
        return SweepBatch(target.logits(x, len(x)), x_adv, [target.logits(a, len(a)) for a in x_adv])

    def run(self, target: "Target", x: np.ndarray, y: np.ndarray, context: AttackContext) -> AttackOutput:
        low, high = target.clip_values
        eps_list: list[float] = self.values["eps"]
        if self.values["norm"] == "inf" and max(eps_list) > high - low:
            raise ValueError(f"L-inf eps {max(eps_list):g} exceeds the width of the input range [{low:g}, {high:g}]")
        n, batch = len(y), self.values["batch_size"]
        clean_correct = np.zeros(n, dtype=bool)
        robust = np.zeros((len(eps_list), n), dtype=bool)
        linf, l2 = np.zeros((len(eps_list), n)), np.zeros((len(eps_list), n))
        gallery = _Gallery()
        for start in range(0, n, batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            out = self.sweep_batch(target, xb, yb, eps_list)
            correct = _finite(out.clean_logits, "clean", start).argmax(axis=1) == yb
            clean_correct[start : start + batch] = correct
            for k, eps in enumerate(eps_list):
                robust[k, start : start + batch] = _finite(out.adv_logits[k], f"adversarial (eps={eps:g})", start).argmax(axis=1) == yb
                linf[k, start : start + batch], l2[k, start : start + batch] = _norms(out.x_adv[k] - xb)
            gallery.add(start, xb, yb, out.clean_logits, correct, out.x_adv, out.adv_logits)
        per_sample: dict[str, np.ndarray] = {"clean_correct": clean_correct}
        rows: list[dict[str, Any]] = []
        for k, eps in enumerate(eps_list):
            rows += _rate_rows(y, clean_correct, robust[k], eps, context.class_names)
            where = {"param": "eps", "param_value": float(eps)}
            rows += [mean_row("perturbation_linf", linf[k], **where), mean_row("perturbation_l2", l2[k], **where)]
            per_sample[f"robust_correct@eps={eps:g}"] = robust[k]
        return AttackOutput(rows, per_sample, gallery.artifacts(eps_list))


class MinimizationAttack(Attack):
    """An attack that finds, per sample, the smallest perturbation that flips the prediction.

    One run gives the whole robust-accuracy-vs-eps curve: a sample is robust at eps when it is
    classified correctly and the attack found no flip of size <= eps (as in Foolbox 3). Samples
    are streamed in batches of `batch_size`, as in `EvasionAttack`.
    """

    category = "integrity"
    params = (
        Param("eps", OneOrMany(Number(0, None, closed="neither")), [0.25, 0.5, 1.0, 2.0], "budgets to read robust accuracy off at"),
        Param("batch_size", Number(1, 100_000, integer=True), 128, "samples per attack batch"),
    )

    @property
    def norm(self) -> str:
        return "2"

    @abstractmethod
    def minimize(self, target: "Target", x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Adversarial candidates with no size bound; failures may be returned unchanged."""

    def run(self, target: "Target", x: np.ndarray, y: np.ndarray, context: AttackContext) -> AttackOutput:
        n, batch = len(y), self.values["batch_size"]
        low, high = target.clip_values
        clean_correct, flipped = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        linf, l2 = np.zeros(n), np.zeros(n)
        gallery = _Gallery()
        for start in range(0, n, batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            clean_logits = _finite(target.logits(xb, batch), "clean", start)
            correct = clean_logits.argmax(axis=1) == yb
            x_adv = np.clip(self.minimize(target, xb, yb), low, high).astype(np.float32, copy=False)
            adv_logits = _finite(target.logits(x_adv, batch), "adversarial", start)
            clean_correct[start : start + batch] = correct
            flipped[start : start + batch] = correct & (adv_logits.argmax(axis=1) != yb)
            linf[start : start + batch], l2[start : start + batch] = _norms(x_adv - xb)
            gallery.add(start, xb, yb, clean_logits, correct, [x_adv], [adv_logits])
        size = l2 if self.norm == "2" else linf
        minimal = np.where(flipped, size, np.inf)
        minimal[~clean_correct] = 0.0
        per_sample: dict[str, np.ndarray] = {"clean_correct": clean_correct, "min_perturbation": minimal}
        rows: list[dict[str, Any]] = [
            rate_row("success_rate_unbounded", int(flipped.sum()), int(clean_correct.sum())),
            mean_row(f"min_perturbation_l{self.norm}", size[flipped]),
        ]
        if flipped.any():
            rows.append({"metric": f"median_min_perturbation_l{self.norm}", "value": float(np.median(size[flipped])), "n": int(flipped.sum())})
        for eps in self.values["eps"]:
            robust = clean_correct & (minimal > eps)
            rows += _rate_rows(y, clean_correct, robust, eps, context.class_names)
            per_sample[f"robust_correct@eps={eps:g}"] = robust
        return AttackOutput(rows, per_sample, gallery.artifacts([np.nan]))


ENSEMBLE = {"inf": "ensemble", "2": "ensemble-l2"}


def ensemble_rows(
    outputs: dict[str, tuple[str, AttackOutput]], y: np.ndarray, class_names: list[str]
) -> list[dict[str, Any]]:
    """Per-sample worst case over every integrity attack at each (norm, eps): robust only if no attack flipped it.

    `outputs` maps attack id to (norm, output); the rows carry the ensemble's attack id and name its members.
    """
    groups: dict[tuple[str, float], dict[str, np.ndarray]] = {}
    clean_correct = None
    for attack_id, (norm, output) in outputs.items():
        clean_correct = output.per_sample["clean_correct"] if clean_correct is None else clean_correct
        for key, robust in output.per_sample.items():
            if key.startswith("robust_correct@eps="):
                groups.setdefault((norm, float(key.split("=", 1)[1])), {})[attack_id] = robust
    rows: list[dict[str, Any]] = []
    for (norm, eps), members in sorted(groups.items()):
        worst = np.logical_and.reduce(list(members.values()))
        note = "worst case per sample over " + ", ".join(sorted(members))
        rows += [{**row, "attack": ENSEMBLE[norm], "message": note} for row in _rate_rows(y, clean_correct, worst, eps, class_names)]
    return rows
