"""The attack contract: the one file a plugin author reads.

An attack is a class with a `name`, a `summary`, declared `params` (validated, listed and
documented with no other code) and declared traits, which is all the runner, the sanity checks,
the gates and the report read about it; none of them special-cases an attack by name:

- `kind` (`AttackKind`): what it measures; evasion and minimisation attacks are integrity checks,
  the others confidentiality checks (the `category` of their rows): membership, inversion,
  attribute inference, and privacy audits (an empirical bound on a training recipe's epsilon).
- `norm`: the threat model, "inf" or "2" (evasion attacks; minimum-norm ones may also minimise
  "1" or "0", the count of values changed), or None for attacks without an epsilon ball; attacks
  with a norm join the per-sample worst case (the ensemble of that norm) at each of their eps.
- `access` (`Access`): gradients, the model's structure, scores or labels only; the sanity checks
  compare black-box with white-box (gradient) attacks of the same norm, and white-box ones with
  random noise. `inapplicable(target)` says why an attack cannot run on a model (its access is not
  given); the runner writes that as a not-applicable row, which no gate counts as missing evidence.
- `single_step`, `randomized`: one gradient step (compared with iterative attacks); randomised
  (re-run with other seeds for `[evaluation] repeats`).
- `AttackContext.train_like_target` (a `ModelTrainer`): trains models the way the attacked variant
  was made (its model's recipe, then its defense), and says whether that recipe is the real one
  (`exact`) and which it is (`recipe`), for the report.
- `needs_members`: it measures against the model's training data (members). The runner runs it
  only where the members are known — a model Kansa trained on its own split, or declared
  `data.train` — and otherwise writes an error row, so no figure stands on guessed members.
- `emits`: the metric names its rows carry (see `audit.metrics`, where a new one is registered).
- `data_kinds`, `data_note`, `check_data`, `check`: what it applies to and which parameter
  combinations it refuses, asked before anything is trained (`audit.plugins.Component`).
- `strengthened(eps)` (evasion attacks): a stronger version of itself, or None; the convergence
  probe runs it and flags the attack when it is much stronger.

As in Foolbox 3, the base classes own what is common (the sweep over epsilons, the threat model,
the metrics and their intervals) and distrust the subclass: an evasion attack implements only
`perturb`, and whatever it returns is checked against the shape, the eps ball and the input range.

The bases stream the attacked samples in batches and keep only per-sample results, so peak memory
grows with the batch size, not with the number of samples (bench/RESULTS.md, "Scale").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from audit.metrics import Category, Direction, metric_info
from audit.params import Choice, Location, Number, OneOrMany, Param
from audit.plugins import Component
from audit.results import mean_row, rate_row
from audit.stats import softmax

if TYPE_CHECKING:
    from audit.data import Dataset, Splits
    from audit.models import Target

GALLERY_SIZE = 8
ROBUST_AT = "robust_correct@eps="  # per-sample key of an integrity attack: robust at that eps
WORST_CASE_OVER, WORST_CASE_SMALLER = "worst case per sample over ", " at this eps and every smaller one"  # an ensemble row's message


@dataclass(frozen=True, eq=False)
class Retrained:
    """A model trained like the target: the model, and the rows its recipe reports of the run (a defense's achieved epsilon)."""

    target: "Target"
    rows: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, eq=False)
class ModelTrainer:
    """Trains models the way the attacked variant was made: its model's recipe, then its defense.

    An attacker who knows the recipe (the usual assumption of shadow and reference models) trains
    its models like this, so a DP-SGD variant's references train with DP and an adversarially
    trained one's with the same training. `exact` is False when the recipe is an approximation (a
    loaded model's is unknown): then no figure that is about the recipe itself may stand on it.
    `recipe` says which recipe, in words, for the report.
    """

    train: "Callable[[np.ndarray, np.ndarray, int], Retrained]"
    exact: bool
    recipe: str

    def __call__(self, x: np.ndarray, y: np.ndarray, seed: int) -> "Target":
        return self.train(x, y, seed).target


@dataclass
class AttackContext:
    """What an attack may know besides the target and the attacked samples.

    Privacy attacks need the whole split (members are drawn from train, non-members from
    hold-out) and a way to train models like the target (shadow, reference and surrogate models):
    `train_like_target(x, y, seed)`, a `ModelTrainer`.
    `advance(n)` reports n more attacked samples done, for the run's progress display.
    """

    seed: int
    class_names: list[str]
    dataset: "Dataset | None" = None
    splits: "Splits | None" = None
    train_like_target: ModelTrainer | None = None
    advance: Callable[[int], None] = field(default=lambda n: None)


@dataclass
class AttackOutput:
    """Metric rows (without model/defense/attack columns, which the runner adds), per-sample arrays, artifacts."""

    rows: list[dict[str, Any]]
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    artifacts: dict[str, np.ndarray] = field(default_factory=dict)


class AttackKind(str, Enum):
    EVASION = "evasion"
    MINIMIZATION = "minimization"
    MEMBERSHIP = "membership"
    INVERSION = "inversion"
    ATTRIBUTE = "attribute"
    PRIVACY_AUDIT = "privacy_audit"  # an empirical lower bound on a training recipe's differential privacy

    @property
    def category(self) -> str:
        """The `category` column of the rows: integrity for adversarial examples, confidentiality for privacy attacks."""
        return Category.INTEGRITY if self in (AttackKind.EVASION, AttackKind.MINIMIZATION) else Category.CONFIDENTIALITY


class Access(str, Enum):
    """What the attacker reads from the model."""

    GRADIENTS = "gradients"
    STRUCTURE = "structure"  # the model's own internals, e.g. a decision tree's nodes and thresholds
    SCORES = "scores"
    LABELS = "labels"


class Attack(Component, ABC):
    """A named attack with declared parameters and traits (see the module docstring). Subclasses implement `run`."""

    family = "attack"
    kind: ClassVar[AttackKind]
    access: ClassVar[Access] = Access.GRADIENTS
    single_step: ClassVar[bool] = False
    needs_members: ClassVar[bool] = False
    emits: ClassVar[tuple[str, ...]] = ()

    @property
    def category(self) -> str:
        return self.kind.category

    @property
    def norm(self) -> str | None:
        return None

    @property
    def white_box(self) -> bool:
        return self.access is Access.GRADIENTS

    @property
    def black_box(self) -> bool:
        return self.access in (Access.SCORES, Access.LABELS)

    def inapplicable(self, target: "Target") -> str | None:
        """Why this attack cannot run on `target`, completing "<attack> ..."; None when it can."""
        if self.access is Access.GRADIENTS and not target.differentiable:
            return f"needs the model's gradients, and {target.name} gives none (see its model rows)"
        if self.access in (Access.GRADIENTS, Access.SCORES) and target.labels_only:
            return f"needs the model's scores, and {target.name} answers with labels only (see its model rows)"
        return None

    @classmethod
    def check_data(cls, values: dict[str, Any], dataset: "Dataset", splits: "Splits", where: Location) -> None:
        super().check_data(values, dataset, splits, where)
        outside = dataset.values_outside_range() if cls.kind.category == Category.INTEGRITY else 0
        if outside:
            low, high = dataset.input_range
            raise where.error(f"attack {cls.name} cannot measure robustness on these inputs: {outside} values of {dataset.name} lie outside "
                              f"the declared input_range [{low:g}, {high:g}], and an attack must stay inside it, so no eps ball around "
                              "them is honest; set data.scale (e.g. \"minmax\") or data.input_range")

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
            "conf_clean": softmax(clean_logits).max(axis=1),
            "x_adv": np.stack(per_eps("x_adv")),
            "pred_adv": np.stack([logits.argmax(axis=1) for logits in adv_logits]),
            "conf_adv": np.stack([softmax(logits).max(axis=1) for logits in adv_logits]),
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


# float32 arithmetic may put an honest attack's output a hair outside its ball or the input range.
BALL_RTOL, BALL_ATOL = 1e-4, 1e-6


def _distrusted(attack: "Attack", x: np.ndarray, x_adv: np.ndarray, clip: tuple[float, float], start: int) -> None:
    """Whatever a (possibly third-party) attack returns must have the inputs' shape and stay inside the input range."""
    if x_adv.shape != x.shape:
        raise ValueError(f"attack {attack.name} returned inputs of shape {x_adv.shape} for a batch of shape {x.shape} (samples from {start})")
    low, high = clip
    outside = (x_adv < low - BALL_ATOL) | (x_adv > high + BALL_ATOL) | ~np.isfinite(x_adv)
    if outside.any():
        raise ValueError(f"attack {attack.name} returned {int(outside.reshape(len(x), -1).any(axis=1).sum())} inputs outside the input range "
                         f"[{low:g}, {high:g}] (samples from {start}); its numbers would not be about valid inputs")


def _outside_ball(attack: "Attack", size: np.ndarray, eps: float, norm: str, start: int) -> None:
    """An adversarial example beyond the eps ball would overstate the attack: refuse the numbers, naming the attack."""
    over = size > eps * (1 + BALL_RTOL) + BALL_ATOL
    if over.any():
        raise ValueError(f"attack {attack.name} returned {int(over.sum())} inputs outside the L{norm} ball of eps {eps:g} "
                         f"(largest distance {size.max():.6g}, samples from {start}); its robust accuracy would be understated")


def _norms(delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample L-inf and L2 sizes, in float64 so the reported means do not depend on summation order."""
    flat = delta.reshape(len(delta), -1).astype(np.float64)
    return np.abs(flat).max(axis=1), np.linalg.norm(flat, axis=1)


@dataclass(frozen=True)
class Stronger:
    """What `strengthened` returns: the stronger attack and, for the flag's message, how it is stronger."""

    attack: "EvasionAttack"
    how: str


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

    kind = AttackKind.EVASION
    emits = ("clean_accuracy", "robust_accuracy", "success_rate", "perturbation_linf", "perturbation_l2")
    params = (
        Param("eps", OneOrMany(Number(0, None, closed="neither")), [0.05, 0.1, 0.2, 0.3], "perturbation budget(s): a sweep in one run", quick=[0.1]),
        Param("norm", Choice(("inf", "2")), "inf", "threat model: L-inf or L2 ball"),
        Param("batch_size", Number(1, 100_000, integer=True), 128, "samples per attack batch (measured fastest here: bench/RESULTS.md)"),
    )

    @property
    def norm(self) -> str:
        return self.values["norm"]

    def strengthened(self, eps: float) -> "Stronger | None":
        """A stronger version of this attack at `eps` for the convergence probe, or None when there is no obvious one."""
        return None

    @abstractmethod
    def perturb(self, target: "Target", x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
        """Adversarial versions of x within `eps` of it (in the declared norm), inside the clip range."""

    @property
    def nests_sweep(self) -> bool:
        """Whether a sample broken at one eps keeps that example at every larger eps instead of being attacked again.

        A point inside a ball is inside every larger ball of the same norm, so nesting is exact and only
        ever lowers robust accuracy; it also spares the attack on every sample already broken. An attack
        whose per-eps results are compared with a reference one by one (FGSM, PGD on ART's steps) says no.
        """
        return True

    def sweep_batch(self, target: "Target", x: np.ndarray, y: np.ndarray, eps: list[float]) -> SweepBatch:
        """Attack one batch at every eps: predict it, `perturb` it per eps (smallest first, only the samples still
        robust when the sweep nests), predict each result."""
        clean = target.logits(x, len(x))
        if not self.nests_sweep:
            x_adv = [self.perturb(target, x, y, e).astype(np.float32, copy=False) for e in eps]
            return SweepBatch(clean, x_adv, [target.logits(a, len(a)) for a in x_adv])
        robust = clean.argmax(axis=1) == y
        current, current_logits = np.asarray(x, dtype=np.float32), clean
        results: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        for e in sorted(set(eps)):
            attacked = np.flatnonzero(robust)
            if len(attacked):
                found = self.perturb(target, x[attacked], y[attacked], e).astype(np.float32, copy=False)
                found_logits = target.logits(found, len(found))
                current, current_logits = current.copy(), current_logits.copy()
                current[attacked], current_logits[attacked] = found, found_logits
                robust[attacked] = found_logits.argmax(axis=1) == y[attacked]
            results[e] = (current, current_logits)
        return SweepBatch(clean, [results[e][0] for e in eps], [results[e][1] for e in eps])

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
                _distrusted(self, xb, out.x_adv[k], (low, high), start)
                robust[k, start : start + batch] = _finite(out.adv_logits[k], f"adversarial (eps={eps:g})", start).argmax(axis=1) == yb
                linf[k, start : start + batch], l2[k, start : start + batch] = _norms(out.x_adv[k] - xb)
                _outside_ball(self, (linf if self.norm == "inf" else l2)[k, start : start + batch], eps, self.norm, start)
            gallery.add(start, xb, yb, out.clean_logits, correct, out.x_adv, out.adv_logits)
            context.advance(len(yb))
        per_sample: dict[str, np.ndarray] = {"clean_correct": clean_correct}
        rows: list[dict[str, Any]] = []
        for k, eps in enumerate(eps_list):
            rows += _rate_rows(y, clean_correct, robust[k], eps, context.class_names)
            where = {"param": "eps", "param_value": float(eps)}
            rows += [mean_row("perturbation_linf", linf[k], **where), mean_row("perturbation_l2", l2[k], **where)]
            per_sample[f"{ROBUST_AT}{eps:g}"] = robust[k]
        return AttackOutput(rows, per_sample, gallery.artifacts(eps_list))


class MinimizationAttack(Attack):
    """An attack that finds, per sample, the smallest perturbation that flips the prediction.

    One run gives the whole robust-accuracy-vs-eps curve: a sample is robust at eps when it is
    classified correctly and the attack found no flip of size <= eps (as in Foolbox 3), the size
    measured here in the attack's own `norm` ("inf", "2", "1", or "0": the number of input values
    changed). Samples are streamed in batches of `batch_size`, as in `EvasionAttack`.
    """

    kind = AttackKind.MINIMIZATION
    emits = ("clean_accuracy", "robust_accuracy", "success_rate", "success_rate_unbounded",
             *(f"{kind}_l{norm}" for norm in ("2", "inf", "1", "0") for kind in ("min_perturbation", "median_min_perturbation")))
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

    def perturbation_size(self, delta: np.ndarray) -> np.ndarray:
        """Per-sample size of a perturbation in this attack's norm, in float64 so the reported means do not depend on summation order."""
        flat = delta.reshape(len(delta), -1).astype(np.float64)
        if self.norm == "0":
            return np.count_nonzero(flat, axis=1).astype(np.float64)
        return np.linalg.norm(flat, ord=np.inf if self.norm == "inf" else float(self.norm), axis=1)

    def run(self, target: "Target", x: np.ndarray, y: np.ndarray, context: AttackContext) -> AttackOutput:
        n, batch = len(y), self.values["batch_size"]
        low, high = target.clip_values
        clean_correct, flipped = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        size = np.zeros(n)
        gallery = _Gallery()
        for start in range(0, n, batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            clean_logits = _finite(target.logits(xb, batch), "clean", start)
            correct = clean_logits.argmax(axis=1) == yb
            x_adv = np.clip(self.minimize(target, xb, yb), low, high).astype(np.float32, copy=False)
            _distrusted(self, xb, x_adv, (low, high), start)
            adv_logits = _finite(target.logits(x_adv, batch), "adversarial", start)
            clean_correct[start : start + batch] = correct
            flipped[start : start + batch] = correct & (adv_logits.argmax(axis=1) != yb)
            size[start : start + batch] = self.perturbation_size(x_adv - xb)
            gallery.add(start, xb, yb, clean_logits, correct, [x_adv], [adv_logits])
            context.advance(len(yb))
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
            per_sample[f"{ROBUST_AT}{eps:g}"] = robust
        return AttackOutput(rows, per_sample, gallery.artifacts([np.nan]))


ENSEMBLE = {"inf": "ensemble", "2": "ensemble-l2", "1": "ensemble-l1", "0": "ensemble-l0"}
NORM_NAMES = {"inf": "L∞", "2": "L2", "1": "L1", "0": "L0"}
THREAT_EPS = {"inf": "threat_linf_eps", "2": "threat_l2_eps", "1": "threat_l1_eps", "0": "threat_l0_eps"}  # the [evaluation] keys declaring each norm's threat-model eps


def worst_case(outputs: dict[str, tuple[str, dict[str, np.ndarray]]]) -> dict[tuple[str, float], tuple[list[str], np.ndarray]]:
    """Per (norm, eps), the attacks measured there and the per-sample worst case: robust only if none of them flipped it,
    at this eps or any smaller one of the same norm (a ball holds every smaller ball, so the curve never rises).

    `outputs` maps attack id to (norm, per-sample arrays).
    """
    groups: dict[tuple[str, float], dict[str, np.ndarray]] = {}
    for attack_id, (norm, per_sample) in outputs.items():
        for key, robust in per_sample.items():
            if key.startswith(ROBUST_AT):
                groups.setdefault((norm, float(key.removeprefix(ROBUST_AT))), {})[attack_id] = robust
    out: dict[tuple[str, float], tuple[list[str], np.ndarray]] = {}
    smaller: dict[str, tuple[set[str], np.ndarray]] = {}
    for (norm, eps), members in sorted(groups.items()):
        robust = np.logical_and.reduce(list(members.values()))
        names = set(members)
        if norm in smaller:
            names |= smaller[norm][0]
            robust = robust & smaller[norm][1]
        smaller[norm] = (names, robust)
        out[(norm, eps)] = (sorted(names), robust)
    return out


REPEATS = "repeats"  # the subset of the descriptive rows of a repeated attack: mean and spread over its seeds


def worst_over_repeats(runs: list[AttackOutput], y: np.ndarray, class_names: list[str]) -> AttackOutput:
    """Several seeds of one randomised attack, as gates read them: the worst case for the model.

    Per sample where the attack keeps per-sample results: robust only if every seed failed, the
    smallest perturbation any seed found. Other rows: the seed whose value is worst for the model by
    the metric's declared direction, with that seed's own interval (averaging interval endpoints is
    not an interval for anything). The mean and spread over the seeds of every overall row are kept
    as descriptive rows (subset "repeats", no interval).
    """
    first = runs[0]
    per_sample = dict(first.per_sample)
    keys = [k for k in per_sample if k.startswith(ROBUST_AT) and all(k in run.per_sample for run in runs)]
    for key in keys:
        per_sample[key] = np.logical_and.reduce([run.per_sample[key] for run in runs])
    if "min_perturbation" in per_sample and all("min_perturbation" in run.per_sample for run in runs):
        per_sample["min_perturbation"] = np.min([run.per_sample["min_perturbation"] for run in runs], axis=0)
    rows = [row for key in keys for row in _rate_rows(y, per_sample["clean_correct"], per_sample[key],
                                                       float(key.removeprefix(ROBUST_AT)), class_names)]
    recomputed = {_row_key(row) for row in rows}
    # a row some seeds do not write (a median of flipped samples when one seed flips none) is judged on the seeds that do
    by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run in runs:
        for row in run.rows:
            by_key.setdefault(_row_key(row), []).append(row)
    for key, versions in by_key.items():
        if key in recomputed:
            continue
        info = metric_info(versions[0]["metric"])
        direction = info.direction if info is not None else Direction.NEUTRAL
        values = [v.get("value", np.nan) for v in versions]
        if direction == Direction.NEUTRAL or len(versions) < len(runs) or np.isnan(values).any():
            rows.append({**versions[0], "value": float(np.mean(values)), "ci_low": np.nan, "ci_high": np.nan,
                         "message": f"mean over the {len(versions)} of {len(runs)} seeds that measured it (no worst case to take)"})
        else:
            rows.append(versions[int(np.argmin(values) if direction == Direction.HIGHER else np.argmax(values))])
    for key, versions in by_key.items():
        if key[1] == "all" and len(versions) > 1:
            values = np.array([v.get("value", np.nan) for v in versions], dtype=np.float64)
            rows.append({**versions[0], "subset": REPEATS, "value": float(values.mean()), "ci_low": np.nan, "ci_high": np.nan,
                         "std": float(values.std(ddof=1)), "message": f"mean and spread over {len(versions)} seeds; subset all holds the worst case"})
    return AttackOutput(rows, per_sample, first.artifacts)


def _row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["metric"], row.get("subset", "all"), row.get("param_value")


def ensemble_rows(
    outputs: dict[str, tuple[str, AttackOutput]], y: np.ndarray, class_names: list[str]
) -> list[dict[str, Any]]:
    """Per-sample worst case over every integrity attack at each (norm, eps): robust only if no attack flipped it.

    `outputs` maps attack id to (norm, output); the rows carry the ensemble's attack id and name its members.
    """
    if not outputs:
        return []
    clean_correct = next(iter(outputs.values()))[1].per_sample["clean_correct"]
    rows: list[dict[str, Any]] = []
    for (norm, eps), (members, worst) in worst_case({a: (norm, out.per_sample) for a, (norm, out) in outputs.items()}).items():
        note = WORST_CASE_OVER + ", ".join(members) + WORST_CASE_SMALLER
        rows += [{**row, "attack": ENSEMBLE[norm], "message": note} for row in _rate_rows(y, clean_correct, worst, eps, class_names)]
    return rows
