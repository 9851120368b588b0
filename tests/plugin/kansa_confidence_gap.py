"""A third-party attack, written as a plugin author would: only Kansa's public contract, no Kansa file changed.

It measures how much more confident the model is on its training samples than on samples it never
saw (the signal behind every loss- and confidence-based membership attack), as one new metric.
`tests/test_plugins.py` installs it through the `kansa.attacks` entry-point group.
"""

from __future__ import annotations

import math

import numpy as np

from attacks.base import Access, Attack, AttackContext, AttackKind, AttackOutput
from audit.metrics import Direction, Metric, register_metric
from audit.params import Number, Param
from audit.stats import Z95

GAP = register_metric(Metric("confidence_gap", "mean top-1 confidence on members minus on non-members", Direction.LOWER,
                             "score", ".3f", "S", True, "confidentiality"))


class ConfidenceGap(Attack):
    name = "confidence_gap"
    summary = "Top-1 confidence on training samples minus on held-out samples (a plugin)"
    kind = AttackKind.MEMBERSHIP
    access = Access.SCORES
    emits = (GAP.name,)
    params = (Param("samples", Number(10, 100_000, integer=True), 200, "members and non-members compared, each"),)

    def run(self, target, x, y, context: AttackContext) -> AttackOutput:
        assert context.dataset is not None and context.splits is not None
        n = self.values["samples"]
        members = _top1(target, context.dataset.x[context.splits.train[:n]])
        others = _top1(target, context.dataset.x[context.splits.holdout[:n]])
        gap = float(members.mean() - others.mean())
        half = Z95 * math.sqrt(members.var(ddof=1) / len(members) + others.var(ddof=1) / len(others))
        row = {"metric": GAP.name, "value": gap, "ci_low": gap - half, "ci_high": gap + half, "n": len(members) + len(others)}
        return AttackOutput([row], per_sample={"score": np.concatenate([members, others])})


def _top1(target, x: np.ndarray) -> np.ndarray:
    logits = target.logits(x)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).max(axis=1)
