"""Membership inference: does the model reveal which samples it was trained on?

Every attack here scores candidates (members: a sample of the training split; non-members: an
equal-size sample of the hold-out split, never trained on) and is judged by the same metrics
(`attacks.privacy_metrics`). What the attacker may use besides the target is its own data, drawn
disjoint from both evaluation sets: the rest of the hold-out split plus the test split (the
"population"), and, for attacks that learn from labelled examples, training samples that are not
evaluated ("known members"). `draw_protocol` is the one place these sets are drawn.

Scores are computed in float64 from the target's logits: float32 losses and probabilities of a
model at 100 % training accuracy tie at 0 and 1 for many members and non-members alike, which
destroys the low-FPR end of the ROC. Attacks on losses or logits read the model before any
output post-processing, so they do not measure what an output defense protects.
"""

from __future__ import annotations

import functools
import hashlib
import weakref
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from attacks import register
from attacks.base import Access, Attack, AttackContext, AttackKind, AttackOutput, ModelTrainer
from attacks.blackbox import seeded_hop_skip_jump
from attacks.privacy_metrics import evaluate_membership, exposed_samples, size_rows
from audit.errors import KansaError
from audit.metrics import Category
from audit.params import Choice, Location, Number, OneOrMany, Param
from audit.results import UNDEFENDED, count_row
from audit.seeding import content_seed, derive_seed, seed_everything
from audit.stats import log_softmax, softmax

if TYPE_CHECKING:
    from audit.data import Dataset, Splits
    from audit.models import Target

ATTACK_MODELS = ("rf", "gb", "lr", "dt", "knn", "svm", "nn")


# --------------------------------------------------------------------------- protocol


@dataclass(frozen=True)
class Protocol:
    """Dataset indices of the evaluation sets and of the attacker's own data (disjoint by construction)."""

    members: np.ndarray
    non_members: np.ndarray
    population: np.ndarray
    known_members: np.ndarray
    seed: int

    @property
    def candidates(self) -> np.ndarray:
        return np.concatenate([self.members, self.non_members])

    @property
    def is_member(self) -> np.ndarray:
        return np.r_[np.ones(len(self.members), bool), np.zeros(len(self.non_members), bool)]

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.members, self.non_members, self.population, self.known_members):
            h.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
            h.update(b"|")
        return h.hexdigest()


def _protocol_seed(context: AttackContext) -> int:
    """A seed fixed by the split (itself drawn from the audit seed), shared by every membership attack.

    Using the split rather than the per-cell seed gives all membership attacks of one audit the
    same members and non-members, so their ROC curves compare like for like.
    """
    return content_seed("kansa-membership-protocol", *(idx for _, idx in context.splits.items()))


def protocol_size(members: int | None, splits: "Splits") -> int:
    """How many members (and as many non-members) the protocol draws; `members` defaults to half the hold-out split,
    which leaves the other half (plus the test split) to the attacker."""
    train, holdout = splits.train, splits.holdout
    n = members if members is not None else min(len(train), len(holdout) // 2)
    if n < 1:
        raise KansaError(f"the hold-out split has {len(holdout)} samples: too few to draw non-members; enlarge data.split's hold-out fraction")
    if n > len(train):
        raise KansaError(f"members = {n} exceeds the training split ({len(train)} samples); lower members")
    if n > len(holdout):
        raise KansaError(
            f"members = {n} needs as many non-members, but the hold-out split has {len(holdout)} samples; "
            "lower members or enlarge data.split's hold-out fraction"
        )
    return n


def check_protocol(attack: str, values: dict[str, Any], splits: "Splits", where: Location) -> None:
    """The protocol a config asks for must fit the split: refused before anything is trained.

    An undeclared role is no config error: the runner refuses the cells that need it, as error rows.
    """
    if splits.declared and not (len(splits.train) and len(splits.holdout)):
        return
    try:
        protocol_size(values["members"], splits)
    except KansaError as exc:
        raise where.child("members").error(f"attack {attack}: {exc}") from None


def draw_protocol(context: AttackContext, members: int | None) -> Protocol:
    """Members from train, as many non-members from hold-out; the attacker gets everything else but train."""
    if context.splits is None or context.dataset is None:
        raise KansaError("membership attacks need the dataset and its train / hold-out / test split in the attack context")
    n = protocol_size(members, context.splits)
    train, holdout, test = context.splits.train, context.splits.holdout, context.splits.test
    seed = _protocol_seed(context)
    rng = np.random.default_rng(seed)
    train_order, holdout_order = rng.permutation(train), rng.permutation(holdout)
    population = rng.permutation(np.concatenate([holdout_order[n:], test]))
    return Protocol(
        members=np.sort(train_order[:n]),
        non_members=np.sort(holdout_order[:n]),
        population=population,
        known_members=train_order[n:],
        seed=seed,
    )


# --------------------------------------------------------------------------- signals and views


def true_class_log_prob(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log p(y | x) = -cross-entropy loss, in float64 (never rounds to 0 for a confident model)."""
    return log_softmax(logits)[np.arange(len(y)), y]


def logit_confidence(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Logit-scaled confidence log(p / (1 - p)) = z_y - logsumexp_{j != y} z_j, exact in float64 from logits."""
    z = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(y))
    others = z.copy()
    others[rows, y] = -np.inf
    top = others.max(axis=1, keepdims=True)
    return z[rows, y] - (top[:, 0] + np.log(np.exp(others - top).sum(axis=1)))


@functools.cache
def _view_class() -> type:
    import torch
    from art.estimators.classification import PyTorchClassifier

    class TargetView(PyTorchClassifier):
        """The target as ART's membership attacks expect it: probabilities (or labels only) from float64 logits.

        ART's wrapper would return the module's logits; its membership attacks assume
        probabilities (a gb attack model fell from AUC 0.71 to 0.57 on logits). Inputs are cast
        to float32 at the boundary (HopSkipJump hands float64 to the model under numpy 2), and
        losses are float64 cross-entropies from logits (ART's own are float32 and tie at 0).
        """

        def __init__(self, target: "Target", output: str) -> None:
            super().__init__(
                model=torch.nn.Sequential(target.module, torch.nn.Softmax(dim=1)),
                loss=torch.nn.CrossEntropyLoss(),
                input_shape=target.input_shape,
                nb_classes=target.n_classes,
                clip_values=target.clip_values,
                device_type=target.art_device,
            )
            self.kansa_target = target
            self.output = output

        def predict(self, x: np.ndarray, batch_size: int = 256, training_mode: bool = False, **kwargs: Any) -> np.ndarray:
            logits = self.kansa_target.logits(np.asarray(x, dtype=np.float32), batch_size)
            if self.output == "labels":
                return np.eye(self.nb_classes)[logits.argmax(axis=1)]
            return softmax(logits)

        def compute_loss(self, x: np.ndarray, y: np.ndarray, reduction: str = "none", **kwargs: Any) -> np.ndarray:
            labels = np.asarray(y)
            labels = labels.argmax(axis=1) if labels.ndim == 2 else labels.astype(np.int64)
            loss = -true_class_log_prob(self.kansa_target.logits(np.asarray(x, dtype=np.float32)), labels)
            return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]

    return TargetView


def target_view(target: "Target", output: str = "probabilities") -> Any:
    """An ART classifier over the target that returns probabilities, or one-hot labels for a label-only threat model."""
    return _view_class()(target, output)


def _require_trainer(context: AttackContext, attack: str, target: "Target") -> ModelTrainer:
    if context.train_like_target is None:
        raise KansaError(
            f"{attack} trains models like the target, but model {target.name!r} was loaded from a file "
            "(TorchScript or state_dict) and has no training recipe; audit a built-in model with it, "
            "or use an attack that needs no retraining (mia_loss, mia_confidence, mia_black_box)"
        )
    return context.train_like_target


# --------------------------------------------------------------------------- base


@dataclass
class Scores:
    """One attack's verdict on the candidates (members first, then non-members)."""

    scores: np.ndarray
    decisions: np.ndarray | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    artifacts: dict[str, np.ndarray] = field(default_factory=dict)


def protocol_params(members_default: int | None = None) -> tuple[Param, ...]:
    return (
        Param(
            "members",
            Number(1, None, integer=True),
            members_default,
            "members evaluated (drawn from train) and as many non-members (from hold-out)"
            + ("; default: half the hold-out split" if members_default is None else ""),
            quick=20,
        ),
        Param("fpr", OneOrMany(Number(0, 1, closed="neither")), [0.001, 0.01], "false-positive rate(s) at which the TPR is reported"),
        Param("bootstrap", Number(0, 100_000, integer=True), 1000, "bootstrap replicates behind every interval (0: none)", quick=20),
    )


class MembershipAttack(Attack):
    """Draws the protocol, lets the subclass score the candidates, and measures every attack the same way."""

    kind = AttackKind.MEMBERSHIP
    access = Access.SCORES
    needs_members = True
    emits = ("auc", "leakage", "advantage", "balanced_accuracy", "tpr_at_fpr", "members", "non_members")
    params = protocol_params()
    invertible: ClassVar[bool] = False

    @classmethod
    def check_data(cls, values: dict[str, Any], dataset: "Dataset", splits: "Splits", where: Location) -> None:
        super().check_data(values, dataset, splits, where)
        check_protocol(cls.name, values, splits, where)

    def reads_logits(self) -> bool:
        """Whether the scores come from logits or losses, i.e. before any output post-processing."""
        return False

    @abstractmethod
    def score(self, target: "Target", protocol: Protocol, context: AttackContext) -> Scores:
        """Membership scores (higher: more likely a member) for protocol.candidates."""

    def run(self, target: "Target", x: np.ndarray, y: np.ndarray, context: AttackContext) -> AttackOutput:
        protocol = draw_protocol(context, self.values["members"])
        dataset = context.dataset
        result = self.score(target, protocol, context)
        is_member = protocol.is_member
        rows, artifacts = evaluate_membership(
            result.scores, is_member, self.values["fpr"], self.values["bootstrap"], context.seed, result.decisions, self.invertible
        )
        if self.reads_logits() and target.defense != UNDEFENDED:
            note = "scores read the model's logits: output post-processing of this defense is bypassed"
            rows = [{**r, "message": "; ".join(m for m in (r.get("message", ""), note) if m)} for r in rows]
        rows += size_rows(members=len(protocol.members), non_members=len(protocol.non_members))
        rows += result.rows
        candidates = protocol.candidates
        top = exposed_samples(result.scores, is_member)
        artifacts.update(
            exposed_index=candidates[top],
            exposed_score=np.asarray(result.scores, dtype=np.float64)[top],
            exposed_label=dataset.y[candidates[top]],
            exposed_x=dataset.x[candidates[top]],
            **result.artifacts,
        )
        per_sample = {
            "index": candidates,
            "is_member": is_member,
            "score": np.asarray(result.scores, dtype=np.float64),
            **result.per_sample,
        }
        if result.decisions is not None:
            per_sample["decision"] = np.asarray(result.decisions, dtype=bool)
        return AttackOutput(rows, per_sample, artifacts)


# --------------------------------------------------------------------------- threshold attacks


@register
class LossThreshold(MembershipAttack):
    name = "mia_loss"
    summary = "Loss threshold (Yeom et al. 2018): members have lower loss; scores are -loss in float64"

    def reads_logits(self) -> bool:
        return True

    def score(self, target: "Target", protocol: Protocol, context: AttackContext) -> Scores:
        idx = protocol.candidates
        return Scores(true_class_log_prob(target.logits(context.dataset.x[idx]), context.dataset.y[idx]))


@register
class ConfidenceThreshold(MembershipAttack):
    name = "mia_confidence"
    summary = "Confidence threshold (Salem et al. 2019): members get more confident predictions; needs no labels"

    def reads_logits(self) -> bool:
        return True

    def score(self, target: "Target", protocol: Protocol, context: AttackContext) -> Scores:
        logits = target.logits(context.dataset.x[protocol.candidates])
        return Scores(logit_confidence(logits, logits.argmax(axis=1)))


# --------------------------------------------------------------------------- ART attacks


@register
class RuleBased(MembershipAttack):
    name = "mia_rule_based"
    access = Access.LABELS
    summary = "ART's rule-based (gap) attack: a correctly classified sample is called a member"

    def score(self, target: "Target", protocol: Protocol, context: AttackContext) -> Scores:
        from art.attacks.inference.membership_inference import MembershipInferenceBlackBoxRuleBased

        idx = protocol.candidates
        # one-hot labels: ART infers the class count from integer labels present in the batch
        y = np.eye(target.n_classes)[context.dataset.y[idx]]
        called = MembershipInferenceBlackBoxRuleBased(target_view(target)).infer(context.dataset.x[idx], y).astype(bool)
        return Scores(called.astype(np.float64), decisions=called)


def _known_sets(protocol: Protocol, limit: int | None, attack: str) -> tuple[np.ndarray, np.ndarray]:
    """Labelled examples the attacker learns from: known members (train, not evaluated) and population non-members."""
    available = min(len(protocol.known_members), len(protocol.population))
    n = available if limit is None else min(limit, available)
    if n < 2:
        raise KansaError(
            f"{attack} learns from known members, but only {len(protocol.known_members)} training samples are left "
            f"after drawing {len(protocol.members)} members; lower members"
        )
    return protocol.known_members[:n], protocol.population[:n]


def _art_attack_model(target: "Target", input_type: str, model: str) -> Any:
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox

    return MembershipInferenceBlackBox(target_view(target), input_type=input_type, attack_model_type=model)


@register
class BlackBox(MembershipAttack):
    name = "mia_black_box"
    emits = (*MembershipAttack.emits, "known_members", "known_non_members")
    summary = "ART's MembershipInferenceBlackBox: an attack model learned on the target's outputs for known members and non-members"
    invertible = True
    params = (
        *protocol_params(),
        Param("input", Choice(("prediction", "loss")), "prediction", "what the attack model sees: the probability vector or the loss"),
        Param("attack_model", Choice(ATTACK_MODELS), "rf", "ART's attack model type (rf: random forest, gb: gradient boosting, ...)"),
        Param("known_members", Number(2, None, integer=True), None, "known members (and as many known non-members) to learn from; default: all left"),
    )

    def reads_logits(self) -> bool:
        return self.values["input"] == "loss"

    def score(self, target: "Target", protocol: Protocol, context: AttackContext) -> Scores:
        data = context.dataset
        known_in, known_out = _known_sets(protocol, self.values["known_members"], self.name)
        seed_everything(context.seed)  # ART's attack models draw from the global generators
        attack = _art_attack_model(target, self.values["input"], self.values["attack_model"])
        attack.fit(data.x[known_in], data.y[known_in], data.x[known_out], data.y[known_out])
        idx = protocol.candidates
        p = attack.infer(data.x[idx], data.y[idx], probabilities=True).reshape(-1).astype(np.float64)
        return Scores(p, decisions=p > 0.5, rows=size_rows(known_members=len(known_in), known_non_members=len(known_out)))


class _ShadowTemplate:
    """Stands in for an ART classifier inside ShadowModels: `fit` trains like the target, `predict` gives probabilities.

    ART's ShadowModels calls `fit()` with its defaults, which trains shadows far more briefly than
    the target; its attack then reports about 0.5 and reads as "no leakage".
    """

    def __init__(self, trainer: ModelTrainer, input_shape: tuple[int, ...], seed: int, counter: list[int] | None = None) -> None:
        self.trainer = trainer
        self.input_shape = input_shape
        self.seed = seed
        self.counter = counter if counter is not None else [0]
        self.model: "Target | None" = None

    def clone_for_refitting(self) -> "_ShadowTemplate":
        self.counter[0] += 1
        return _ShadowTemplate(self.trainer, self.input_shape, derive_seed(self.seed, self.counter[0]), self.counter)

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        labels = np.asarray(y)
        labels = labels.argmax(axis=1) if labels.ndim == 2 else labels
        self.model = self.trainer(np.ascontiguousarray(x, dtype=np.float32), labels.astype(np.int64), self.seed)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.model.logits(np.asarray(x, dtype=np.float32)))


@register
class Shadow(MembershipAttack):
    name = "mia_shadow"
    emits = (*MembershipAttack.emits, "shadow_models", "shadow_train_size", "attacker_samples")
    summary = "ART ShadowModels (Shokri et al. 2017): shadows trained like the target on the attacker's data teach an attack model"
    invertible = True
    params = (
        *protocol_params(),
        Param("shadows", Number(1, 64, integer=True), 3, "shadow models, each trained like the target", quick=1),
        Param("attack_model", Choice(ATTACK_MODELS), "rf", "ART's attack model type"),
    )

    def score(self, target: "Target", protocol: Protocol, context: AttackContext) -> Scores:
        from art.attacks.inference.membership_inference import ShadowModels

        trainer = _require_trainer(context, self.name, target)
        data = context.dataset
        # each shadow trains on half of this pool: as many samples as the target's training split
        pool = protocol.population[: 2 * len(context.splits.train)]
        if len(pool) < 4:
            raise KansaError(f"{self.name}: the attacker's population has {len(pool)} samples; shadow models need more")
        seed_everything(context.seed)  # ART's attack models draw from the global generators
        shadows = ShadowModels(
            _ShadowTemplate(trainer, target.input_shape, context.seed), self.values["shadows"], random_state=context.seed
        )
        (m_x, m_y, m_pred), (o_x, o_y, o_pred) = shadows.generate_shadow_dataset(data.x[pool], data.y[pool])
        attack = _art_attack_model(target, "prediction", self.values["attack_model"])
        attack.fit(y=m_y, pred=m_pred, test_y=o_y, test_pred=o_pred)
        idx = protocol.candidates
        p = attack.infer(data.x[idx], data.y[idx], probabilities=True).reshape(-1).astype(np.float64)
        rows = size_rows(shadow_models=self.values["shadows"], shadow_train_size=len(pool) // 2, attacker_samples=len(pool))
        return Scores(p, decisions=p > 0.5, rows=rows)


@register
class LabelOnly(MembershipAttack):
    name = "mia_label_only"
    access = Access.LABELS
    emits = (*MembershipAttack.emits, "known_members", "known_non_members", "distance_threshold")
    summary = "ART LabelOnlyDecisionBoundary (Choquette-Choo et al. 2021): members lie farther from the boundary; sees labels only"
    params = (
        *protocol_params(members_default=100),
        Param("calibration", Number(2, None, integer=True), 50, "known members (and non-members) that calibrate the distance threshold", quick=5),
        Param("max_iter", Number(1, 1000, integer=True), 10, "HopSkipJump iterations per sample", quick=1),
        Param("max_eval", Number(1, 100_000, integer=True), 1000, "HopSkipJump queries per gradient estimate", quick=10),
        Param("init_eval", Number(1, 10_000, integer=True), 100, "HopSkipJump initial queries per gradient estimate", quick=5),
    )

    def score(self, target: "Target", protocol: Protocol, context: AttackContext) -> Scores:
        from art.attacks.inference.membership_inference import LabelOnlyDecisionBoundary

        data = context.dataset
        known_in, known_out = _known_sets(protocol, self.values["calibration"], self.name)
        hsj = {k: self.values[k] for k in ("max_iter", "max_eval", "init_eval")}
        seed_everything(context.seed)  # ART's attack models draw from the global generators
        attack = LabelOnlyDecisionBoundary(target_view(target, "labels"))
        idx = protocol.candidates
        with seeded_hop_skip_jump():
            attack.calibrate_distance_threshold(
                data.x[known_in], data.y[known_in], data.x[known_out], data.y[known_out], verbose=False, **hsj
            )
            # After supervised calibration ART maps distances to the calibration accuracy of their bin,
            # which is not monotone in the distance; without the bins it returns sigmoid(distance - tau).
            attack.threshold_bins = []
            p = attack.infer(data.x[idx], data.y[idx], probabilities=True, verbose=False, **hsj)[:, 1].astype(np.float64)
        rows = size_rows(known_members=len(known_in), known_non_members=len(known_out))
        rows.append(count_row("distance_threshold", float(attack.distance_threshold_tau)))
        return Scores(p, decisions=p > 0.5, rows=rows)


# --------------------------------------------------------------------------- reference-model attacks


@dataclass
class ReferenceSignals:
    """Reference models' logits on the candidates and on a population sample none of them trained on."""

    candidates: np.ndarray  # (K, n_candidates, classes)
    population: np.ndarray  # (K, n_population, classes)
    is_in: np.ndarray  # (K, n_candidates): candidate in the reference model's training set
    train_size: int
    seconds: float  # training done in this call
    total_seconds: float  # training time of all K models, whenever they were trained
    reused: int


@dataclass(frozen=True)
class _Reference:
    candidates: np.ndarray
    population: np.ndarray
    is_in: np.ndarray
    seconds: float
    train_size: int


# Reference models trained in this process, per trainer, keyed by everything that fixes them; an
# audit running both rmia and lira (or a benchmark sweeping K) trains each model once.
_REFERENCE_CACHE: "weakref.WeakKeyDictionary[Any, dict[tuple, _Reference]]" = weakref.WeakKeyDictionary()


def clear_reference_cache() -> None:
    _REFERENCE_CACHE.clear()


def _reference_model(
    trainer: ModelTrainer, data: Any, protocol: Protocol, mode: str, k: int, size: int, population: np.ndarray, pool: np.ndarray
) -> tuple[_Reference, bool]:
    """Train reference model k (independent of how many are asked for) and read its logits.

    Offline, it trains on a random subset of the attacker's pool. Online, model 2p trains on a
    random half of the candidates and model 2p+1 on the other half, each topped up from the pool,
    so every candidate is in the training set of half the models.
    """
    import time

    key = (protocol.digest(), mode, k, size, len(population))
    cache = _REFERENCE_CACHE.setdefault(trainer, {})
    if key in cache:
        return cache[key], True
    candidates = protocol.candidates
    is_in = np.zeros(len(candidates), bool)
    if mode == "offline":
        chosen = np.random.default_rng([protocol.seed, 0, k]).choice(pool, min(size, len(pool)), replace=False)
    else:
        order = np.random.default_rng([protocol.seed, 1, k // 2]).permutation(len(candidates))
        half = order[: len(order) // 2] if k % 2 == 0 else order[len(order) // 2 :]
        is_in[half] = True
        fill = np.random.default_rng([protocol.seed, 2, k]).choice(pool, min(max(size - len(half), 0), len(pool)), replace=False)
        chosen = np.concatenate([candidates[half], fill])
    start = time.perf_counter()
    model = trainer(data.x[chosen], data.y[chosen], derive_seed(protocol.seed, 3, mode == "online", k))
    seconds = time.perf_counter() - start
    cache[key] = _Reference(model.logits(data.x[candidates]), model.logits(data.x[population]), is_in, seconds, len(chosen))
    return cache[key], False


class ReferenceAttack(MembershipAttack):
    """Compares the target with K reference models trained through Kansa's own pipeline on the attacker's data.

    The attacker's population is split in two: a sample that no model trains on (it calibrates
    the scores as known non-members) and a pool the reference models train on.
    """

    emits = (*MembershipAttack.emits, "reference_models", "reference_train_size", "population_samples", "attacker_samples",
             "reference_training_seconds", "reference_models_seconds", "reference_models_reused")
    params = (
        *protocol_params(),
        Param("references", Number(1, 64, integer=True), 2, "reference models K, each trained like the target", quick=1),
        Param("mode", Choice(("offline", "online")), "offline", "offline: references never see the candidates; online: each candidate is in half of them (K >= 2)"),
        Param("population", Number(10, None, integer=True), 1000, "attacker samples no model trains on, used as known non-members (at most half the attacker's data)"),
        Param("reference_size", Number(1, None, integer=True), None, "training-set size of each reference model; default: the target's training split"),
    )

    @classmethod
    def check(cls, values: dict[str, Any], where: Location) -> None:
        if values["mode"] == "online" and values["references"] < 2:
            raise where.child("references").error(f"mode = \"online\" needs at least 2 (each candidate must be in some and out of some); got {values['references']}")

    def reads_logits(self) -> bool:
        return True

    def signals(self, target: "Target", protocol: Protocol, context: AttackContext) -> ReferenceSignals:
        trainer = _require_trainer(context, self.name, target)
        k_total, mode = self.values["references"], self.values["mode"]
        attacker = protocol.population
        n_pop = min(self.values["population"], len(attacker) // 2)
        if n_pop < 2:
            raise KansaError(f"{self.name}: the attacker's data has {len(attacker)} samples; at least 4 are needed")
        population, pool = attacker[:n_pop], attacker[n_pop:]
        size = self.values["reference_size"] or len(context.splits.train)
        built = [_reference_model(trainer, context.dataset, protocol, mode, k, size, population, pool) for k in range(k_total)]
        models = [m for m, _ in built]
        return ReferenceSignals(
            candidates=np.stack([m.candidates for m in models]),
            population=np.stack([m.population for m in models]),
            is_in=np.stack([m.is_in for m in models]),
            train_size=models[0].train_size,
            seconds=float(sum(m.seconds for m, cached in built if not cached)),
            total_seconds=float(sum(m.seconds for m in models)),
            reused=sum(cached for _, cached in built),
        )

    @abstractmethod
    def score_signals(self, target_cand: np.ndarray, target_pop: np.ndarray, ref: ReferenceSignals, y_cand: np.ndarray, y_pop: np.ndarray) -> Scores:
        """Scores from the target's and the references' logits."""

    def score(self, target: "Target", protocol: Protocol, context: AttackContext) -> Scores:
        ref = self.signals(target, protocol, context)
        data = context.dataset
        n_pop = ref.population.shape[1]
        population = protocol.population[:n_pop]
        result = self.score_signals(
            target.logits(data.x[protocol.candidates]), target.logits(data.x[population]), ref,
            data.y[protocol.candidates], data.y[population],
        )
        result.rows += size_rows(
            reference_models=self.values["references"], reference_train_size=ref.train_size,
            population_samples=n_pop, attacker_samples=len(protocol.population),
        )
        # cost rows: wall time varies between runs, and models reused from an earlier cell cost nothing here
        result.rows += [
            count_row("reference_training_seconds", ref.seconds, category=Category.COST),
            count_row("reference_models_seconds", ref.total_seconds, category=Category.COST),
            count_row("reference_models_reused", ref.reused, category=Category.COST),
        ]
        target_size = len(context.splits.train)
        if ref.train_size < target_size:
            note = (
                f"reference models trained on {ref.train_size} samples, fewer than the target's {target_size}: "
                "the attacker's data is too small to mimic the target, so this attack understates the leakage"
            )
            result.rows = [{**r, "message": note} if r["metric"] == "reference_train_size" else r for r in result.rows]
        return result


def rmia_scores(
    target_x: np.ndarray, ref_x: np.ndarray, ref_in_x: np.ndarray, target_z: np.ndarray, ref_z: np.ndarray, a: float
) -> tuple[np.ndarray, np.ndarray]:
    """RMIA (Zarifzadeh et al. 2024) from true-class log-probabilities: (log LR(x), Pr_z[LR(x) > LR(z)]).

    LR(x) = p(x | target) / p(x), with p(x) = (p_in(x) + p_out(x)) / 2 averaged over reference
    models; where no reference model trained on x (offline, and every population sample z),
    p_in is approximated as a * p_out + (1 - a), i.e. p(x) = ((1 + a) p_out(x) + 1 - a) / 2.
    Shapes: target_x (n,), ref_x and ref_in_x (K, n), target_z (m,), ref_z (K, m).
    """
    log_px = _rmia_log_marginal(ref_x, ref_in_x, a)
    log_pz = _rmia_log_marginal(ref_z, np.zeros_like(ref_z, dtype=bool), a)
    log_lr_x = target_x - log_px
    log_lr_z = np.sort(target_z - log_pz)
    dominated = np.searchsorted(log_lr_z, log_lr_x, side="left") / len(log_lr_z)
    return log_lr_x, dominated


def _rmia_log_marginal(log_p: np.ndarray, is_in: np.ndarray, a: float) -> np.ndarray:
    p = np.exp(log_p)
    n_in, n_out = is_in.sum(axis=0), (~is_in).sum(axis=0)
    if (n_out == 0).any():
        raise ValueError("RMIA needs at least one reference model that did not train on each sample")
    p_out = np.where(~is_in, p, 0.0).sum(axis=0) / n_out
    p_in = np.where(n_in > 0, np.where(is_in, p, 0.0).sum(axis=0) / np.maximum(n_in, 1), a * p_out + (1 - a))
    return np.log((p_in + p_out) / 2)


@register
class RMIA(ReferenceAttack):
    name = "rmia"
    summary = "RMIA (Zarifzadeh et al. 2024): the target's likelihood ratio against K reference models, compared with population samples"
    params = (
        *ReferenceAttack.params,
        Param("offline_a", Number(0, 1), 0.3, "offline: p_in(x) is approximated as a * p_out(x) + (1 - a)"),
    )

    def score_signals(self, target_cand: np.ndarray, target_pop: np.ndarray, ref: ReferenceSignals, y_cand: np.ndarray, y_pop: np.ndarray) -> Scores:
        ref_x = np.stack([true_class_log_prob(r, y_cand) for r in ref.candidates])
        ref_z = np.stack([true_class_log_prob(r, y_pop) for r in ref.population])
        log_lr, dominated = rmia_scores(
            true_class_log_prob(target_cand, y_cand), ref_x, ref.is_in, true_class_log_prob(target_pop, y_pop), ref_z,
            self.values["offline_a"],
        )
        # The paper's score Pr_z[LR(x) > LR(z)] is a monotone function of LR(x); ranking by LR(x)
        # gives the same order without the ties a finite population leaves at 0 and 1.
        return Scores(log_lr, per_sample={"population_dominated": dominated})


def lira_scores(
    target_x: np.ndarray, ref_x: np.ndarray, ref_in_x: np.ndarray, target_z: np.ndarray, ref_z: np.ndarray, online: bool
) -> np.ndarray:
    """LiRA (Carlini et al. 2022) with one global variance, from logit-scaled confidences phi.

    Offline: (phi - mu_out(x)) / sigma, a one-sided test against the OUT distribution.
    Online: log N(phi; mu_in, sigma^2) - log N(phi; mu_out, sigma^2). mu_in / mu_out are
    per-sample means over the reference models that did / did not train on the sample; sigma is
    the spread of phi - mu_out over population samples that neither the target nor any reference
    model trained on, i.e. measured under the null hypothesis.
    """
    mu_out_x = _masked_mean(ref_x, ~ref_in_x)
    sigma = float(np.std(target_z - ref_z.mean(axis=0), ddof=1))
    if not sigma > 0:
        raise ValueError("LiRA: the population's scores do not vary; the null distribution cannot be estimated")
    if not online:
        return (target_x - mu_out_x) / sigma
    mu_in_x = _masked_mean(ref_x, ref_in_x)
    return ((target_x - mu_out_x) ** 2 - (target_x - mu_in_x) ** 2) / (2 * sigma**2)


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    counts = mask.sum(axis=0)
    if (counts == 0).any():
        raise ValueError(f"LiRA: {int((counts == 0).sum())} samples have no reference model on one side (in / out)")
    return np.where(mask, values, 0.0).sum(axis=0) / counts


@register
class LiRA(ReferenceAttack):
    name = "lira"
    summary = "LiRA (Carlini et al. 2022): Gaussian likelihood ratio of the target's logit-scaled confidence under K reference models"

    def score_signals(self, target_cand: np.ndarray, target_pop: np.ndarray, ref: ReferenceSignals, y_cand: np.ndarray, y_pop: np.ndarray) -> Scores:
        ref_x = np.stack([logit_confidence(r, y_cand) for r in ref.candidates])
        ref_z = np.stack([logit_confidence(r, y_pop) for r in ref.population])
        scores = lira_scores(
            logit_confidence(target_cand, y_cand), ref_x, ref.is_in, logit_confidence(target_pop, y_pop), ref_z,
            self.values["mode"] == "online",
        )
        return Scores(scores)
