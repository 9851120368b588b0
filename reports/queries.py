"""Questions several renderers ask of the results table, answered once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from attacks import attack_norms, registry, swept_eps
from attacks.base import ENSEMBLE, NORM_NAMES, THREAT_EPS, WORST_CASE_OVER, WORST_CASE_SMALLER
from audit.params import as_written
from audit.results import variant_label
from reports.comparison import NOT_A_BUDGET, robust_column


@dataclass(frozen=True)
class HeadlineEps:
    """The eps a headline reads robust accuracy at, for one norm, and why that one.

    `why` is "declared" (the config's threat model), "gate" (the eps a robustness gate judges at;
    `source` names it) or "middle" (the middle of the sweep, as nothing was declared); never
    silently the largest eps, where every undefended model scores 0 and the headline says nothing.
    """

    norm: str
    eps: float
    why: str
    source: str
    sweep: tuple[float, ...]

    def text(self, t: Callable[..., str]) -> str:
        return t(f"headline_{self.why}", norm=NORM_NAMES[self.norm], eps=f"{self.eps:g}", source=self.source,
                 sweep=", ".join(f"{e:g}" for e in self.sweep))


def headline_eps(config: dict[str, Any]) -> list[HeadlineEps]:
    """Per norm the run attacked: the declared threat-model eps, else a robustness gate's, else the middle of the sweep."""
    swept = swept_eps(config.get("attacks", []))
    evaluation = config.get("evaluation", {})
    attack_norm = {**{name: norm for norm, name in ENSEMBLE.items()}, **attack_norms(config.get("attacks", []))}
    out = []
    for norm, sweep in swept.items():
        declared = evaluation.get(THREAT_EPS[norm])
        gated = [g for g in config.get("gates", []) if g["metric"] == "robust_accuracy" and g["at"] is not None
                 and attack_norm.get(g["attack"]) == norm and any(math.isclose(g["at"], e) for e in sweep)]
        if declared is not None:
            out.append(HeadlineEps(norm, float(declared), "declared", f"[evaluation] {THREAT_EPS[norm]}", tuple(sweep)))
        elif gated:
            out.append(HeadlineEps(norm, float(gated[0]["at"]), "gate", gated[0]["id"], tuple(sweep)))
        else:
            out.append(HeadlineEps(norm, sweep[(len(sweep) - 1) // 2], "middle", "", tuple(sweep)))
    return out


@dataclass
class Headline:
    """One variant's headline: its test accuracy row, and per headline eps its worst-case robust-accuracy row (None when unmeasured)."""

    model: str
    clean: pd.Series
    robust: list[tuple[HeadlineEps, pd.Series | None]]


def headline(table: pd.DataFrame, config: dict[str, Any]) -> list[Headline]:
    """Per model variant: clean accuracy, and robust accuracy at each `headline_eps` over every attack (the ensemble's row)."""
    accuracy = table[(table["metric"] == "accuracy") & (table["subset"] == "split=test")]
    robust = table[(table["metric"] == "robust_accuracy") & (table["subset"] == "all") & (table["status"] == "ok")]
    chosen = headline_eps(config)
    out = []
    for _, row in accuracy.iterrows():
        mine = robust[(robust["model"] == row["model"]) & (robust["defense"] == row["defense"])]
        at = []
        for eps in chosen:
            found = mine[(mine["attack"] == ENSEMBLE[eps.norm]) & ((mine["param_value"] - eps.eps).abs() <= 1e-9)]
            at.append((eps, found.iloc[0] if len(found) else None))
        out.append(Headline(variant_label(row["model"], row["defense"]), row, at))
    return out


def attacks_behind(row: pd.Series) -> str:
    """The attacks a worst-case row was taken over, as its message names them."""
    return str(row["message"]).removeprefix(WORST_CASE_OVER).removesuffix(WORST_CASE_SMALLER)


def headline_column(comparison: pd.DataFrame, config: dict[str, Any]) -> str | None:
    """The comparison's robust-accuracy column at the headline eps (L-inf first), so its Pareto front judges what the headline
    reports; None when the comparison has no such column (then it picks its own, and says which)."""
    for eps in sorted(headline_eps(config), key=lambda e: e.norm != "inf"):
        column = robust_column(ENSEMBLE[eps.norm], eps.eps)
        if column in comparison:
            return column
    return None


def attack_budgets(config: dict[str, Any]) -> dict[str, str]:
    """Per attack id, the budget behind its numbers as a reader checks it: every parameter but eps and the batch size,
    and the seeds a randomised attack's worst case was taken over."""
    known = registry()
    repeats = config.get("evaluation", {}).get("repeats", 1)
    out = {}
    for attack in config.get("attacks", []):
        shown = [f"{k}={_shown(v)}" for k, v in attack["params"].items() if k not in NOT_A_BUDGET and v is not None]  # None: derived from others, e.g. a step size from eps
        if repeats > 1 and attack["name"] in known and known[attack["name"]].randomized:
            shown.append(f"worst case over {repeats} seeds")
        out[attack["id"]] = ", ".join(shown) or "defaults"
    return out


def _shown(value: Any) -> str:
    """A parameter's value as the config spells it (TOML's true/false, floats without trailing zeros)."""
    if isinstance(value, list):
        return ", ".join(_shown(v) for v in value)
    if isinstance(value, bool):
        return as_written(value)
    return f"{value:g}" if isinstance(value, float) else str(value)
