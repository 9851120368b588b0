"""One evaluation for every membership attack: ROC, AUC, advantage, TPR at low FPR, each with a bootstrap interval.

Membership attacks differ only in how they score a candidate; judging the scores is shared so
that every attack's numbers mean the same thing. All statistics are rank-based and computed in
float64; intervals come from a stratified bootstrap (members and non-members resampled
separately, so each replicate keeps the evaluation's balance), which also captures the
uncertainty of the threshold behind a TPR at a fixed FPR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.results import count_row

# Below this many expected false positives a TPR at a fixed FPR rests on a handful of
# non-members: it is reported, with a warning in the row's message.
MIN_FALSE_POSITIVES = 10
EXPOSED_SAMPLES = 8
_CHUNK = 200


@dataclass
class Roc:
    """ROC points from the strictest threshold to the loosest, starting at (0, 0)."""

    fpr: np.ndarray
    tpr: np.ndarray


def _tie_group_ends(sorted_scores: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])


def _rates(member_weights: np.ndarray, other_weights: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) per tie group for a batch of weightings of the score-sorted samples."""
    tp = np.cumsum(member_weights, axis=-1)[..., ends]
    fp = np.cumsum(other_weights, axis=-1)[..., ends]
    zero = np.zeros(tp.shape[:-1] + (1,))
    tpr = np.concatenate([zero, tp / tp[..., -1:]], axis=-1)
    fpr = np.concatenate([zero, fp / fp[..., -1:]], axis=-1)
    return fpr, tpr


def _auc(fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    """Trapezoidal area: a tie between a member and a non-member counts one half, as in the Mann-Whitney U."""
    return np.sum(np.diff(fpr, axis=-1) * (tpr[..., 1:] + tpr[..., :-1]) / 2, axis=-1)


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, alpha: float) -> np.ndarray:
    """The highest TPR among thresholds whose FPR is at most alpha (no interpolation between thresholds)."""
    return np.where(fpr <= alpha + 1e-12, tpr, 0.0).max(axis=-1)


def roc_curve(scores: np.ndarray, is_member: np.ndarray) -> Roc:
    """ROC of `scores` (higher means 'member'); tied scores form one threshold."""
    scores, is_member = _check(scores, is_member)
    order = np.argsort(-scores, kind="stable")
    member = is_member[order].astype(np.float64)
    fpr, tpr = _rates(member, 1.0 - member, _tie_group_ends(scores[order]))
    return Roc(fpr, tpr)


def _check(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    is_member = np.asarray(is_member, dtype=bool)
    if scores.shape != is_member.shape or scores.ndim != 1:
        raise ValueError(f"membership scores {scores.shape} and labels {is_member.shape} must be 1-D of one length")
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} membership scores are NaN or infinite")
    if is_member.all() or not is_member.any():
        raise ValueError("membership evaluation needs both members and non-members")
    return scores, is_member


def _fpr_warning(alpha: float, non_members: int) -> str:
    expected = alpha * non_members
    if expected >= MIN_FALSE_POSITIVES:
        return ""
    needed = math.ceil(MIN_FALSE_POSITIVES / alpha)
    if expected < 1:
        return (
            f"FPR {alpha:g} is below 1/{non_members} (the smallest non-zero FPR with {non_members} non-members): "
            f"this is the TPR at FPR 0; use at least {needed} non-members"
        )
    return (
        f"TPR at FPR {alpha:g} rests on {math.floor(expected)} false positive(s) among {non_members} non-members; "
        f"use at least {needed} non-members for a stable estimate"
    )


def _interval(samples: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def evaluate_membership(
    scores: np.ndarray,
    is_member: np.ndarray,
    fprs: list[float],
    bootstrap: int,
    seed: int,
    decisions: np.ndarray | None = None,
    invertible: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Result rows and ROC artifacts for one attack's scores on members and non-members.

    `decisions` are the attack's own yes/no calls (a learned attack model, a rule); without them
    balanced accuracy is taken at the best threshold, i.e. (1 + advantage) / 2, an optimistic
    figure because that threshold is chosen with the evaluation's labels. `invertible` marks
    attacks whose learned model may rank members lower than non-members: they also report
    leakage = |AUC - 0.5|.
    """
    scores, is_member = _check(scores, is_member)
    order = np.argsort(-scores, kind="stable")
    ends = _tie_group_ends(scores[order])
    member_sorted = is_member[order]
    n1, n0 = int(is_member.sum()), int((~is_member).sum())
    member_pos, other_pos = np.flatnonzero(member_sorted), np.flatnonzero(~member_sorted)
    decided = None if decisions is None else np.asarray(decisions, dtype=bool)[order]

    def statistics(w1: np.ndarray, w0: np.ndarray) -> dict[str, np.ndarray]:
        """Every statistic for a batch of bootstrap weights (w1 on members, w0 on non-members)."""
        member_w = np.zeros(w1.shape[:-1] + (len(scores),))
        other_w = np.zeros_like(member_w)
        member_w[..., member_pos] = w1
        other_w[..., other_pos] = w0
        fpr, tpr = _rates(member_w, other_w, ends)
        auc = _auc(fpr, tpr)
        out = {"auc": auc, "leakage": np.abs(auc - 0.5), "advantage": (tpr - fpr).max(axis=-1)}
        for alpha in fprs:
            out[f"tpr@{alpha}"] = _tpr_at(fpr, tpr, alpha)
        if decided is None:
            out["balanced_accuracy"] = (1.0 + out["advantage"]) / 2
        else:
            tpr_d = (member_w * decided).sum(axis=-1) / member_w.sum(axis=-1)
            tnr_d = (other_w * ~decided).sum(axis=-1) / other_w.sum(axis=-1)
            out["balanced_accuracy"] = (tpr_d + tnr_d) / 2
        return out

    point = {k: float(v) for k, v in statistics(np.ones(n1), np.ones(n0)).items()}
    rng = np.random.default_rng(seed)
    replicates: dict[str, list[np.ndarray]] = {k: [] for k in point}
    for size in _chunks(bootstrap):
        for key, values in statistics(*_resample(rng, n1, n0, size)).items():
            replicates[key].append(values)

    def row(metric: str, key: str, n: int, **where: Any) -> dict[str, Any]:
        low, high = _interval(np.concatenate(replicates[key])) if bootstrap else (math.nan, math.nan)
        return {"metric": metric, "value": point[key], "ci_low": low, "ci_high": high, "n": n, "subset": "all", **where}

    rows = [row("auc", "auc", n1 + n0)]
    if invertible:
        rows.append(row("leakage", "leakage", n1 + n0))
    rows += [row("advantage", "advantage", n1 + n0), row("balanced_accuracy", "balanced_accuracy", n1 + n0)]
    for alpha in fprs:
        rows.append(row("tpr_at_fpr", f"tpr@{alpha}", n1, param="fpr", param_value=float(alpha), message=_fpr_warning(alpha, n0)))
    roc = Roc(*_rates(member_sorted.astype(np.float64), (~member_sorted).astype(np.float64), ends))
    return rows, {"roc_fpr": roc.fpr, "roc_tpr": roc.tpr}


def _chunks(total: int) -> list[int]:
    return [min(_CHUNK, total - start) for start in range(0, total, _CHUNK)]


def _resample(rng: np.random.Generator, n1: int, n0: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`size` stratified bootstrap weightings: counts over the members (n1) and, separately, over the non-members (n0)."""
    w1 = rng.multinomial(n1, np.full(n1, 1.0 / n1), size=size).astype(np.float64)
    w0 = rng.multinomial(n0, np.full(n0, 1.0 / n0), size=size).astype(np.float64)
    return w1, w0


def paired_replicates(scores: dict[str, np.ndarray], is_member: np.ndarray, fprs: list[float], bootstrap: int,
                      seed: int) -> dict[str, dict[str, np.ndarray]]:
    """AUC and TPR at each FPR of several score vectors over the same candidates, point value first, then under
    `bootstrap` stratified resamples shared by all of them: differences between them are paired.

    Returns, per score name, arrays of length 1 + bootstrap for "auc" and "tpr@<fpr>".
    """
    is_member = np.asarray(is_member, dtype=bool)
    n1, n0 = int(is_member.sum()), int((~is_member).sum())
    member_pos, other_pos = np.flatnonzero(is_member), np.flatnonzero(~is_member)
    rng = np.random.default_rng(seed)
    weights = [np.ones((1, len(is_member)))]
    for size in _chunks(bootstrap):
        w1, w0 = _resample(rng, n1, n0, size)
        batch = np.zeros((size, len(is_member)))
        batch[:, member_pos], batch[:, other_pos] = w1, w0
        weights.append(batch)
    out = {}
    for name, values in scores.items():
        values, _ = _check(values, is_member)
        order = np.argsort(-values, kind="stable")
        ends, member = _tie_group_ends(values[order]), is_member[order]
        stats: dict[str, list[np.ndarray]] = {"auc": [], **{f"tpr@{alpha}": [] for alpha in fprs}}
        for w in weights:
            fpr, tpr = _rates(w[:, order] * member, w[:, order] * ~member, ends)
            stats["auc"].append(_auc(fpr, tpr))
            for alpha in fprs:
                stats[f"tpr@{alpha}"].append(_tpr_at(fpr, tpr, alpha))
        out[name] = {key: np.concatenate(parts) for key, parts in stats.items()}
    return out


def exposed_samples(scores: np.ndarray, is_member: np.ndarray, k: int = EXPOSED_SAMPLES) -> np.ndarray:
    """Positions of the k members the attack is surest about: the training samples the model exposes most."""
    member_pos = np.flatnonzero(is_member)
    return member_pos[np.argsort(-np.asarray(scores, dtype=np.float64)[member_pos], kind="stable")[:k]]


def size_rows(**sizes: int) -> list[dict[str, Any]]:
    """The protocol's sample counts as rows, so every reported rate states what it rests on."""
    return [count_row(name, value) for name, value in sizes.items()]
