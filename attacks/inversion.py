"""Model inversion: can the model's gradients reconstruct what its classes look like in the training data?

MIFace (Fredrikson et al. 2015, as ART 1.20 implements it) climbs each class's probability from a
start image. Kansa runs ART's algorithm step for step in torch, all classes in one batch and one
backward pass per step (ART takes one per class and step: 5x the time, bench/RESULTS.md); the tests
check the reconstructions against ART's own. A picture alone proves little
(the start image already looks like "an average digit"), so every reconstruction is measured:
the target's confidence in it, and its similarity (Pearson correlation) to its own class-mean
training image versus the other classes' means. The start image gets the same measures, and
the report states what the attack recovers beyond it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from attacks import register
from attacks.base import Attack, AttackContext, AttackKind, AttackOutput
from attacks.membership import draw_protocol
from audit.errors import KansaError
from audit.params import Choice, Number, Param
from audit.results import count_row, mean_row, rate_row
from audit.stats import softmax

if TYPE_CHECKING:
    from audit.models import Target


def correlation_matrix(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Pearson correlation of every image with every reference (rows: images); 0 where an image is constant."""
    a = images.reshape(len(images), -1).astype(np.float64)
    b = references.reshape(len(references), -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a @ b.T) / np.outer(norm_a, norm_b)
    return np.nan_to_num(r, nan=0.0)


def inversion_measures(confidence: np.ndarray, similarity: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class measures of images meant to depict classes 0..k-1, given their similarity to each class mean.

    own: similarity to the image's own class mean; other: mean similarity to the other classes'
    means; closest_own: whether its own class mean is the most similar one.
    """
    k = similarity.shape[0]
    own = np.diag(similarity)
    other = (similarity.sum(axis=1) - own) / max(k - 1, 1)
    return {"confidence": confidence, "own": own, "other": other, "closest_own": similarity.argmax(axis=1) == np.arange(k)}


# ART 1.20's MIFace defaults: a sample stays active while its cost is at most the threshold or no lower than the
# worst of its last `window` costs, which in practice keeps every sample active for all `max_iter` steps.
ART_THRESHOLD, ART_WINDOW = 0.99, 100


def mi_face(target: "Target", start: np.ndarray, labels: np.ndarray, max_iter: int, learning_rate: float) -> np.ndarray:
    """ART's MIFace update, batched: x += learning_rate * d p_label(x) / dx, clipped to the input range.

    The gradient is the probability's on `attack_module` (the model behind any output post-processor,
    as for every white-box attack); the cost that decides when a sample stops is read on the audited outputs.
    """
    import torch

    low, high = target.clip_values
    x = torch.from_numpy(np.ascontiguousarray(start, dtype=np.float32)).clone()
    rows = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    active = np.ones(len(x), dtype=bool)
    window = np.full((len(x), ART_WINDOW), np.inf)
    for step in range(max_iter):
        if not active.any():
            break
        chosen = torch.from_numpy(np.flatnonzero(active))
        batch = x[chosen].requires_grad_(True)
        with torch.enable_grad():
            probabilities = torch.softmax(target.attack_module(batch), dim=1)
            gradient, = torch.autograd.grad(probabilities[torch.arange(len(chosen)), rows[chosen]].sum(), batch)
        x[chosen] = torch.clamp(batch.detach() + learning_rate * gradient, low, high)
        cost = 1 - softmax(target.logits(x.numpy()))[np.arange(len(x)), labels]
        active = (cost <= ART_THRESHOLD) | (cost >= window.max(axis=1))
        window[:, step % ART_WINDOW] = cost
    return x.numpy()


@register
class MIFace(Attack):
    name = "mi_face"
    kind = AttackKind.INVERSION
    needs_members = True
    emits = ("inversion_confidence", "inversion_similarity_own", "inversion_similarity_other", "inversion_closest_own", "inversion_gain", "iterations")
    summary = "MIFace (Fredrikson et al. 2015, ART's algorithm in batched torch): one reconstruction per class by gradient ascent, measured against class-mean training images"
    params = (
        Param("max_iter", Number(1, 100_000, integer=True), 300, "gradient steps per class (ART 1.20's stopping rule runs all of them)", quick=5),
        Param("learning_rate", Number(0, 100, closed="neither"), 0.1, "gradient step size"),
        Param("start", Choice(("mean", "noise")), "mean", "start image (also the baseline): the attacker's mean sample, or uniform noise"),
    )

    def run(self, target: "Target", x: np.ndarray, y: np.ndarray, context: AttackContext) -> AttackOutput:
        if context.dataset is None or context.splits is None:
            raise KansaError("mi_face needs the dataset and its split in the attack context")
        data = context.dataset
        k = data.n_classes
        train_x, train_y = data.x[context.splits.train], data.y[context.splits.train]
        missing = [data.class_names[c] for c in range(k) if not (train_y == c).any()]
        if missing:
            raise KansaError(f"mi_face compares reconstructions with class-mean training images, but classes {missing} have no training samples")
        class_means = np.stack([train_x[train_y == c].mean(axis=0) for c in range(k)]).astype(np.float32)
        low, high = target.clip_values
        # the attacker's own data: everything but the training split (no member is used)
        attacker = draw_protocol(context, None).population
        if self.values["start"] == "mean":
            start = np.repeat(data.x[attacker].mean(axis=0, keepdims=True), k, axis=0).astype(np.float32)
        else:
            start = np.random.default_rng(context.seed).uniform(low, high, (k, *data.input_shape)).astype(np.float32)
        labels = np.arange(k)
        reconstructions = mi_face(target, start, labels, self.values["max_iter"], float(self.values["learning_rate"]))

        def confidence(images: np.ndarray) -> np.ndarray:
            return softmax(target.logits(images))[labels, labels]

        similarity = correlation_matrix(reconstructions, class_means)
        baseline_similarity = correlation_matrix(start, class_means)
        rec = inversion_measures(confidence(reconstructions), similarity)
        base = inversion_measures(confidence(start), baseline_similarity)
        rows: list[dict[str, Any]] = []
        # Means over every class are exact (the classes are all there are, not a sample): no interval.
        for subset, m in (("all", rec), ("baseline", base)):
            rows += [
                count_row("inversion_confidence", float(m["confidence"].mean()), n=k, subset=subset),
                count_row("inversion_similarity_own", float(m["own"].mean()), n=k, subset=subset),
                count_row("inversion_similarity_other", float(m["other"].mean()), n=k, subset=subset),
                rate_row("inversion_closest_own", int(m["closest_own"].sum()), k, subset=subset),
            ]
        rows.append(mean_row("inversion_gain", rec["own"] - base["own"], subset="all"))
        for c, name in enumerate(data.class_names):
            rows += [
                count_row("inversion_confidence", rec["confidence"][c], subset=f"class={name}"),
                count_row("inversion_similarity_own", rec["own"][c], subset=f"class={name}"),
            ]
        rows.append(count_row("iterations", self.values["max_iter"]))
        artifacts = {
            "reconstructions": reconstructions,
            "baseline": start,
            "class_means": class_means,
            "confidence": rec["confidence"],
            "baseline_confidence": base["confidence"],
            "similarity": similarity,
            "baseline_similarity": baseline_similarity,
        }
        return AttackOutput(rows, {}, artifacts)
