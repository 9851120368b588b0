"""What a defense measurably changed: each defended variant against its model as trained, with paired intervals.

All variants of one run are measured on the same samples: the same test split for accuracy, the
same attacked samples for robust accuracy, the same members and non-members for membership
inference. Their difference is therefore paired, and far more precise than two independent
intervals suggest; computed without the pairing, noise would read like an effect, or an effect
like noise. Accuracies take Newcombe's interval for paired proportions (`stats.paired_difference`);
membership AUC and TPR a stratified bootstrap that resamples the same candidates for both variants.

The rows (category "comparison", metrics `*_delta`) are in the results table like any other, so
the report's trade-off section reads their intervals and a gate can ask that a defense gain at
least so much with confidence. A change whose interval covers 0 is no measurable change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from attacks.base import ENSEMBLE, ROBUST_AT, AttackKind, worst_case
from attacks.privacy_metrics import paired_replicates
from audit.metrics import Category
from audit.results import TEST_CORRECT, UNDEFENDED
from audit.seeding import derive_seed
from audit.stats import paired_difference

if TYPE_CHECKING:
    from attacks.base import Attack

STRONGEST = "membership-strongest"  # the highest AUC of each variant over its membership attacks, as the comparison shows it
BOOTSTRAP = 1000
SAMPLE = "sample/"

Arrays = dict[str, np.ndarray]


def change_rows(cells: dict[tuple[str, str, str], Arrays], variants: dict[tuple[str, str], Arrays], attacks: dict[str, "Attack"],
                seed: int) -> list[dict[str, Any]]:
    """Every paired change of every defended variant whose model was also audited as trained.

    `cells` are the saved arrays of the successful attack cells by (model, defense, attack id),
    `variants` those of the built variants by (model, defense), `attacks` the run's attacks by id.
    """
    rows: list[dict[str, Any]] = []
    for model, defense in variants:
        if defense == UNDEFENDED or (model, UNDEFENDED) not in variants:
            continue
        where = {"model": model, "defense": defense, "category": Category.COMPARISON}
        against = f"against {model} as trained"
        mine, base = variants[(model, defense)], variants[(model, UNDEFENDED)]
        if TEST_CORRECT in mine and TEST_CORRECT in base:
            rows.append({**where, **_proportion("accuracy_delta", mine[TEST_CORRECT], base[TEST_CORRECT], against), "subset": "split=test"})
        own = {a: _per_sample(cells[(model, defense, a)]) for a in attacks if (model, defense, a) in cells}
        theirs = {a: _per_sample(cells[(model, UNDEFENDED, a)]) for a in attacks if (model, UNDEFENDED, a) in cells}
        rows += [{**where, **row} for row in _integrity(own, theirs, attacks, against)]
        rows += [{**where, **row} for row in _membership(own, theirs, attacks, against, derive_seed(seed, "change", model, defense))]
    return rows


def _per_sample(arrays: Arrays) -> Arrays:
    return {k.removeprefix(SAMPLE): v for k, v in arrays.items() if k.startswith(SAMPLE)}


def _proportion(metric: str, mine: np.ndarray, base: np.ndarray, against: str) -> dict[str, Any]:
    value, low, high = paired_difference(mine, base)
    gained, lost = int((mine & ~base).sum()), int((~mine & base).sum())
    return {"metric": metric, "value": value, "ci_low": low, "ci_high": high, "n": len(mine),
            "message": f"paired on the same {len(mine)} samples {against}: {gained} gained, {lost} lost"}


def _integrity(own: dict[str, Arrays], theirs: dict[str, Arrays], attacks: dict[str, "Attack"], against: str) -> list[dict[str, Any]]:
    """Per attack and eps, and per worst case (ensemble) over each variant's own successful attacks, as its rows report it."""
    measured = [a for a in attacks if _integrity_attack(attacks[a])]
    rows = []
    for attack_id in (a for a in measured if a in own and a in theirs):
        for key, robust in own[attack_id].items():
            if key.startswith(ROBUST_AT) and len(theirs[attack_id].get(key, ())) == len(robust):
                rows.append({**_proportion("robust_accuracy_delta", robust, theirs[attack_id][key], against),
                             "attack": attack_id, "param": "eps", "param_value": float(key.removeprefix(ROBUST_AT)), "subset": "all"})
    mine = worst_case({a: (attacks[a].norm, own[a]) for a in measured if a in own})
    base = worst_case({a: (attacks[a].norm, theirs[a]) for a in measured if a in theirs})
    for where, (members, robust) in mine.items():
        if where not in base or len(base[where][1]) != len(robust):
            continue
        row = _proportion("robust_accuracy_delta", robust, base[where][1], against)
        if members != base[where][0]:
            row["message"] += f"; the worst cases are over different attacks ({', '.join(members)} vs {', '.join(base[where][0])})"
        rows.append({**row, "attack": ENSEMBLE[where[0]], "param": "eps", "param_value": where[1], "subset": "all"})
    return rows


def _integrity_attack(attack: "Attack") -> bool:
    return attack.kind.category == Category.INTEGRITY and attack.norm is not None


def _membership(own: dict[str, Arrays], theirs: dict[str, Arrays], attacks: dict[str, "Attack"], against: str,
                seed: int) -> list[dict[str, Any]]:
    """Per membership attack, and for the strongest of each variant, over the attacks that judged the same candidates in both."""
    keys = ("index", "is_member", "score")
    ids = [a for a, attack in attacks.items() if attack.kind is AttackKind.MEMBERSHIP
           and all(a in arrays and all(k in arrays[a] for k in keys) for arrays in (own, theirs))]
    if not ids:
        return []
    reference = own[ids[0]]
    same = [a for a in ids if all(np.array_equal(arrays[a][k], reference[k]) for arrays in (own, theirs) for k in keys[:2])]
    fprs = sorted({float(alpha) for a in same for alpha in attacks[a].values.get("fpr", [])})
    is_member = reference["is_member"].astype(bool)
    replicates = paired_replicates({(side, a): arrays[a]["score"] for side, arrays in (("mine", own), ("base", theirs)) for a in same},
                                   is_member, fprs, BOOTSTRAP, seed)
    sides = {side: {a: replicates[(side, a)] for a in same} for side in ("mine", "base")}
    for side in sides.values():
        side[STRONGEST] = {k: np.max([side[a][k] for a in same], axis=0) for k in side[same[0]]}
    note = (f"paired stratified bootstrap ({BOOTSTRAP} resamples) of the same {int(is_member.sum())} members and "
            f"{int((~is_member).sum())} non-members {against}")
    rows = []
    for name in [*same, STRONGEST]:
        mine, base = sides["mine"][name], sides["base"][name]
        message = note + (f"; the highest AUC of each variant over {', '.join(same)}" if name == STRONGEST else "")
        rows.append(_bootstrapped("auc_delta", mine["auc"] - base["auc"], len(is_member), message, attack=name, subset="all"))
        for alpha in fprs:
            rows.append(_bootstrapped("tpr_at_fpr_delta", mine[f"tpr@{alpha}"] - base[f"tpr@{alpha}"], int(is_member.sum()), message,
                                      attack=name, subset="all", param="fpr", param_value=alpha))
    return rows


def _bootstrapped(metric: str, differences: np.ndarray, n: int, message: str, **where: Any) -> dict[str, Any]:
    """The point difference (first entry) with the 2.5 and 97.5 percentiles of the resampled ones."""
    low, high = np.percentile(differences[1:], [2.5, 97.5])
    return {"metric": metric, "value": float(differences[0]), "ci_low": float(low), "ci_high": float(high), "n": n, "message": message, **where}
