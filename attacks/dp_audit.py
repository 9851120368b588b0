"""An empirical check of a differential-privacy claim: privacy auditing with one training run.

Steinke, Nasr & Jagielski (NeurIPS 2023): m canaries are each included in the training data
independently with probability 1/2, the recipe trains once, and an auditor guesses, for the
canaries it is surest about, which were included. An (epsilon, delta)-DP recipe lets no auditor
guess better than randomised response at epsilon, so the number of correct guesses bounds
epsilon from below at a declared confidence. A lower bound above the accountant's epsilon is not
a weak model but a broken claim: a bug in the training or in the accounting.

The bound is about the recipe (the model's training, then its defense), not about the shipped
weights: Kansa trains the recipe once more with the canaries, so it needs the recipe itself; a
loaded model's is unknown and its approximation would audit the approximation.

Canaries are input-space ones: samples from outside the training split with a label changed to
another class at random, which a model can only fit by memorising them. The auditor's score is
the canary's log-likelihood under its (changed) label. Several guess counts are tried, each at
the confidence divided by their number (Bonferroni), so choosing the best of them after seeing
the scores keeps the declared confidence.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from attacks import register
from attacks.base import Access, Attack, AttackContext, AttackKind, AttackOutput
from audit.errors import KansaError
from audit.metrics import Category
from audit.params import Choice, Number, OneOrMany, Param
from audit.results import count_row, rate_row
from audit.seeding import derive_seed
from audit.stats import log_softmax

if TYPE_CHECKING:
    from audit.models import Target


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses correct] under an (epsilon, delta)-DP recipe, m canaries (Steinke et al. 2023, Thm. 5.2).

    The pure-DP part is the tail of Binomial(r, e^eps / (1 + e^eps)); delta adds at most
    2 m delta times the largest average of the binomial's mass just below v.
    """
    from scipy.stats import binom

    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    below = np.cumsum(binom.pmf(v - np.arange(1, v + 1), r, q))  # P[v - i <= Binomial < v], i = 1..v
    alpha = float((below / np.arange(1, v + 1)).max())
    return min(tail + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, significance: float) -> float:
    """The largest epsilon an (epsilon, delta)-DP recipe could have and still be rejected at `significance` (0 when none is)."""
    if p_value(m, r, v, 0.0, delta) >= significance:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < significance:
        low, high = high, 2 * high
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if p_value(m, r, v, middle, delta) < significance else (low, middle)
    return low


def best_guesses(scores: np.ndarray, included: np.ndarray, counts: list[tuple[int, int]],
                 delta: float, confidence: float) -> tuple[float, int, int, tuple[int, int]]:
    """The highest lower bound over guess counts (k in, k out): (epsilon, guesses, correct, (k in, k out)).

    The top-k_in scores are guessed included and the bottom-k_out excluded; each count is judged at
    (1 - confidence) / len(counts), so the best of them still holds at `confidence`.
    """
    order = np.argsort(-scores, kind="stable")
    significance = (1 - confidence) / len(counts)
    best = (0.0, 0, 0, counts[0])
    for k_in, k_out in counts:
        correct = int(included[order[:k_in]].sum()) + (int((~included[order[len(order) - k_out:]]).sum()) if k_out else 0)
        bound = epsilon_lower_bound(len(scores), k_in + k_out, correct, delta, significance)
        if bound > best[0] or best[1] == 0:
            best = (bound, k_in + k_out, correct, (k_in, k_out))
    return best


@register
class OneRunDPAudit(Attack):
    name = "dp_audit"
    summary = ("Privacy auditing in one training run (Steinke et al. 2023): canaries included at random, membership guesses, "
               "an empirical lower bound on the recipe's epsilon next to the accountant's")
    kind = AttackKind.PRIVACY_AUDIT
    access = Access.SCORES
    emits = ("dp_epsilon_lower_bound", "dp_epsilon_claimed", "dp_claim_refuted", "dp_audit_canaries", "dp_audit_guess_accuracy")
    params = (
        Param("canaries", Number(2, None, integer=True), 1000, "canaries m, drawn from outside the training split (at most what is there)",
              quick=100),
        Param("canary", Choice(("mislabeled", "clean")), "mislabeled", "mislabeled: a random other class, fit only by memorising; "
              "clean: the sample as it is (a weaker audit)"),
        Param("guess_fractions", OneOrMany(Number(0, 1, closed="right")), [0.02, 0.05, 0.1, 0.2, 0.5],
              "shares of the canaries guessed, each once half in / half out and once all in (Bonferroni over all)"),
        Param("confidence", Number(0, 1, closed="neither"), 0.95, "confidence of the lower bound"),
        Param("delta", Number(0, 1, closed="left"), None, "delta of the audited guarantee (default: the recipe's claimed delta, else 0)"),
    )

    def run(self, target: "Target", x: np.ndarray, y: np.ndarray, context: AttackContext) -> AttackOutput:
        trainer, data, splits = context.train_like_target, context.dataset, context.splits
        if trainer is None or data is None or splits is None:
            raise KansaError("dp_audit retrains the model's recipe with canaries, and this run gives no way to train like the model")
        if not trainer.exact:
            raise KansaError(f"dp_audit bounds the epsilon of a training recipe, and {target.name}'s is unknown (it was loaded; "
                             f"{trainer.recipe}); audit the recipe as a built-in model")
        if not len(splits.train):
            raise KansaError("dp_audit trains on the model's training split, and there is none: declare data.train")
        outside = np.setdiff1d(np.arange(len(data.y)), splits.train)
        m = min(self.values["canaries"], len(outside))
        if m < 20:
            raise KansaError(f"dp_audit needs at least 20 canaries from outside the training split; {len(outside)} samples are there")
        rng = np.random.default_rng(derive_seed(context.seed, "canaries"))
        chosen = rng.choice(outside, m, replace=False)
        labels = data.y[chosen].copy()
        if self.values["canary"] == "mislabeled":
            labels = (labels + rng.integers(1, data.n_classes, m)) % data.n_classes
        included = rng.random(m) < 0.5
        x_train = np.concatenate([data.x[splits.train], data.x[chosen[included]]])
        y_train = np.concatenate([data.y[splits.train], labels[included]])
        retrained = trainer.train(x_train, y_train, derive_seed(context.seed, "canary run"))
        claims = {row["metric"]: float(row["value"]) for row in retrained.rows if row["metric"] in ("dp_epsilon", "dp_delta")}
        delta = self.values["delta"] if self.values["delta"] is not None else claims.get("dp_delta", 0.0)
        scores = log_softmax(retrained.target.logits(data.x[chosen]))[np.arange(m), labels]
        counts = sorted({(max(1, round(f * m / 2)), max(1, round(f * m / 2))) for f in self.values["guess_fractions"]}
                        | {(max(1, round(f * m)), 0) for f in self.values["guess_fractions"]})
        counts = [(k_in, k_out) for k_in, k_out in counts if k_in + k_out <= m]
        bound, guesses, correct, (k_in, k_out) = best_guesses(scores, included, counts, delta, self.values["confidence"])
        how = (f"at {self.values['confidence']:.0%} confidence and delta {delta:.2g}: {correct} of {guesses} guesses right "
               f"({k_in} guessed in, {k_out} out) on {m} {self.values['canary']} canaries, {int(included.sum())} of them trained on; "
               f"best of {len(counts)} guess counts, Bonferroni-corrected; the recipe ({trainer.recipe}) trained once more with them")
        rows = [
            count_row("dp_epsilon_lower_bound", bound, category=Category.CONFIDENTIALITY, message=how),
            count_row("dp_audit_canaries", m, category=Category.CONFIDENTIALITY),
            rate_row("dp_audit_guess_accuracy", correct, guesses, category=Category.CONFIDENTIALITY),
        ]
        if "dp_epsilon" in claims:
            claimed = claims["dp_epsilon"]
            refuted = bound > claimed
            rows += [
                count_row("dp_epsilon_claimed", claimed, category=Category.CONFIDENTIALITY,
                          message="the accountant's epsilon for the audited run (the training split plus the included canaries)"),
                count_row("dp_claim_refuted", float(refuted), category=Category.CONFIDENTIALITY, message=(
                    f"the empirical lower bound {bound:.3g} exceeds the accountant's epsilon {claimed:.3g}: the training or the accounting "
                    "is broken" if refuted else f"the empirical lower bound {bound:.3g} is within the accountant's epsilon {claimed:.3g}")),
            ]
        per_sample: dict[str, Any] = {"canary_index": chosen, "canary_label": labels, "canary_included": included, "canary_score": scores}
        return AttackOutput(rows, artifacts=per_sample)
