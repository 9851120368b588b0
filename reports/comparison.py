"""The defense comparison: one line per (model, defended variant), each number next to its change against the baseline.

A defense buys robustness or privacy with accuracy, size and time. Reading that price off the
report section by section is error-prone, so this module lays it out once: clean accuracy,
robust accuracy per attack and eps, the strongest membership attack, size and time, and for each
the change against the same model's undefended variant (`defense = "none"`) of the same run.
The Pareto front then says which variants no other variant beats on every axis at once.

Only the results table (and the optional `defenses` metadata) is read; a number that is not in
the table stays NaN, never estimated. `kansa compare` combines several runs' tables; deltas are
then still taken within each run, because a baseline from another run was trained and
attacked under other settings.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import numpy as np
import pandas as pd

from attacks import registry as attack_registry
from attacks.base import ENSEMBLE
from audit.checks import masking_flags, waiver_reason
from audit.deltas import STRONGEST
from audit.errors import KansaError
from audit.files import write_text_atomic
from audit.metrics import Category
from audit.results import UNDEFENDED, AuditResult, DefenseRecord, RunMetadata, variant_label
from reports.i18n import translator

SCHEMA = "kansa.comparison/1"
KEYS = ("run", "model", "defense")

CLEAN = "clean_accuracy"
MIA_AUC = "membership_auc"
MIA_AUC_ATTACK = "membership_auc_attack"
MIA_FPR = 0.01
MIA_TPR = "membership_tpr@fpr=0.01"
MIA_TPR_ATTACK = "membership_tpr_attack"
ATTACK_OF = {MIA_AUC: MIA_AUC_ATTACK, MIA_TPR: MIA_TPR_ATTACK}  # which attack reached the reported best
COSTS = ("size_bytes", "nonzero_parameters", "training_seconds", "inference_ms_per_sample")
DETAILS, FAILED, PARETO, PARETO_NOTE = "defense_details", "failed", "pareto", "pareto_note"
# What makes a variant's numbers unreliable: unwaived sanity flags (its robust accuracy), errored integrity
# attacks (its worst case over attacks) and errored membership attacks (its strongest membership attack).
FLAGS, WAIVED, FAILED_INTEGRITY, FAILED_MEMBERSHIP = "flags", "waived", "failed_integrity", "failed_membership"
TEXT_COLUMNS = (MIA_AUC_ATTACK, MIA_TPR_ATTACK, DETAILS, FLAGS, WAIVED, FAILED, FAILED_INTEGRITY, FAILED_MEMBERSHIP)
DELTA = "_delta"
DELTA_LOW, DELTA_HIGH = "_delta_low", "_delta_high"  # the paired 95% interval of a change (audit.deltas), where the run measured one
PAIRED = "_paired"  # a line's (value, low, high) of its change row, reconciled with the computed delta in `_add_deltas`

_ROBUST = re.compile(r"robust_accuracy\[(?P<attack>.+)@(?P<eps>[^@\]]+)\]")


def robust_column(attack: str, eps: float) -> str:
    """The column of robust accuracy under `attack` at `eps`, e.g. `robust_accuracy[pgd@0.1]`."""
    return f"robust_accuracy[{attack}@{eps:g}]"


def parse_robust_column(column: str) -> tuple[str, float] | None:
    """(attack, eps) of a robust-accuracy column, None for any other column."""
    match = _ROBUST.fullmatch(column)
    return (match["attack"], float(match["eps"])) if match else None


def robust_columns(comparison: pd.DataFrame) -> list[str]:
    """The robust-accuracy columns, in table order (the delta columns are not among them)."""
    return [c for c in comparison.columns if parse_robust_column(c)]


def value_columns(comparison: pd.DataFrame) -> list[str]:
    """The numeric measurements that carry a delta, in display order."""
    return [CLEAN, *robust_columns(comparison), MIA_AUC, MIA_TPR, *COSTS]


def sampled(column: str) -> bool:
    """Whether a column is measured on samples, so its change needs an interval to be read (costs are not)."""
    return column not in COSTS


def _changes(rows: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """The variant's paired change rows (audit.deltas) by the comparison column they belong to."""
    found: dict[str, tuple[float, float, float]] = {}
    for _, row in rows[rows["category"] == Category.COMPARISON].iterrows():
        if row["metric"] == "accuracy_delta" and row["subset"] == "split=test":
            column = CLEAN
        elif row["metric"] == "robust_accuracy_delta" and pd.notna(row["param_value"]):
            column = robust_column(row["attack"], row["param_value"])
        elif row["metric"] == "auc_delta" and row["attack"] == STRONGEST:
            column = MIA_AUC
        elif row["metric"] == "tpr_at_fpr_delta" and row["attack"] == STRONGEST and np.isclose(row["param_value"], MIA_FPR):
            column = MIA_TPR
        else:
            continue
        found.setdefault(column, (float(row["value"]), float(row["ci_low"]), float(row["ci_high"])))
    return found


def _ok(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["status"] == "ok"]


def _variants(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(model, defense) pairs in order of appearance, each model's baseline first."""
    pairs = list(dict.fromkeys(zip(table["model"], table["defense"])))
    pairs = [(m, d) for m, d in pairs if m]  # data-quality rows belong to no model
    models = list(dict.fromkeys(m for m, _ in pairs))
    return [(m, d) for m in models for d in sorted((d for mm, d in pairs if mm == m), key=lambda d: d != UNDEFENDED)]


def _first_value(rows: pd.DataFrame, metric: str) -> float:
    selected = rows[rows["metric"] == metric]
    return float(selected["value"].iloc[0]) if len(selected) else math.nan


def _best(rows: pd.DataFrame) -> tuple[float, str]:
    """The highest value and the attack that reached it (the first one on ties); NaN and "" when there is none."""
    rows = rows[rows["value"].notna()]
    if rows.empty:
        return math.nan, ""
    best = rows.loc[rows["value"].idxmax()]
    return float(best["value"]), str(best["attack"])


def _defense_details(rows: pd.DataFrame, declared: DefenseRecord | None) -> str:
    """What the defense was, as the run recorded it: its declaration and its `defense` rows, whichever exist."""
    parts = []
    if declared:
        params = declared.params
        parts.append((declared.name or declared.id) + (f" ({declared.stage})" if declared.stage else "")
                     + ("" if not params else ": " + ", ".join(f"{k}={v}" for k, v in params.items())))
    for _, row in rows.iterrows():
        text = f"{row['metric']}={row['value']:g}" if not math.isnan(row["value"]) else str(row["metric"])
        parts.append(text + (f" ({row['message']})" if row["message"] else ""))
    return "; ".join(parts)


def _failed(rows: pd.DataFrame) -> str:
    """Which parts of a variant errored, so a NaN in its line has a visible reason."""
    return ", ".join(dict.fromkeys(str(r["attack"] or r["category"] or "?") for _, r in rows.iterrows()))


def _flag_names(flags: pd.DataFrame, waived: bool = False) -> str:
    """Raised sanity flags as `check (attack at eps)`, each once; for waived flags, the waiver's reason."""
    names = []
    for _, row in flags.iterrows():
        where = " at ".join(str(part) for part in (row["attack"], f"eps {row['param_value']:g}" if pd.notna(row["param_value"]) else "") if part)
        names.append(row["metric"] + (f" ({where})" if where else "") + (f": {waiver_reason(row['message'])}" if waived else ""))
    return "; ".join(dict.fromkeys(names))


def membership_attacks(metadata: RunMetadata) -> set[str]:
    """The ids of a run's attacks that write a membership AUC (an unknown plugin's id counts, to fail closed)."""
    known = attack_registry()
    return {a["id"] for a in metadata.config.get("attacks", []) if a["name"] not in known or "auc" in known[a["name"]].emits}


def _variant_line(rows: pd.DataFrame, declared: DefenseRecord | None, membership: Collection[str] | None) -> dict[str, Any]:
    ok = _ok(rows)
    clean = ok[(ok["category"] == Category.PERFORMANCE) & (ok["metric"] == "accuracy") & (ok["subset"] == "split=test")]
    line: dict[str, Any] = {CLEAN: _first_value(clean, "accuracy")}
    robust = ok[(ok["category"] == Category.INTEGRITY) & (ok["metric"] == "robust_accuracy") & (ok["subset"] == "all") & ok["param_value"].notna()]
    for _, row in robust.iterrows():
        line.setdefault(robust_column(row["attack"], row["param_value"]), float(row["value"]))
    privacy = ok[ok["category"] == Category.CONFIDENTIALITY]
    line[MIA_AUC], line[MIA_AUC_ATTACK] = _best(privacy[(privacy["metric"] == "auc") & (privacy["subset"] == "all")])
    tpr = privacy[(privacy["metric"] == "tpr_at_fpr") & np.isclose(privacy["param_value"].fillna(-1.0), MIA_FPR)]
    line[MIA_TPR], line[MIA_TPR_ATTACK] = _best(tpr)
    cost = ok[(ok["category"] == Category.COST) & (ok["attack"] == "")]
    for metric in COSTS:
        line[metric] = _first_value(cost, metric)
    line[DETAILS] = _defense_details(ok[ok["category"] == Category.DEFENSE], declared)
    for column, change in _changes(ok).items():
        line[column + PAIRED] = change
    errors = rows[rows["status"] == "error"]
    line[FAILED] = _failed(errors)
    line[FAILED_INTEGRITY] = _failed(errors[errors["category"] == Category.INTEGRITY])
    privacy_errors = errors[errors["category"] == Category.CONFIDENTIALITY]
    line[FAILED_MEMBERSHIP] = _failed(privacy_errors if membership is None else privacy_errors[privacy_errors["attack"].isin(membership)])
    if len(rows):
        model, defense = rows["model"].iloc[0], rows["defense"].iloc[0]
        line[FLAGS] = _flag_names(masking_flags(rows, model, defense))
        line[WAIVED] = _flag_names(masking_flags(rows, model, defense, status="waived"), waived=True)
    return line


def robust_order(comparison: pd.DataFrame) -> list[str]:
    """Attacks in order of first appearance among the robust columns."""
    return list(dict.fromkeys(parse_robust_column(c)[0] for c in comparison.columns if parse_robust_column(c)))


def _ordered(comparison: pd.DataFrame) -> pd.DataFrame:
    """Keys, then every measurement followed by its delta (robust columns by attack, then eps), then the text columns."""
    attacks = robust_order(comparison)
    robust = sorted(robust_columns(comparison), key=lambda c: (attacks.index(parse_robust_column(c)[0]), parse_robust_column(c)[1]))
    columns = [k for k in (KEYS[0], GROUP, *KEYS[1:]) if k in comparison]
    for column in [CLEAN, *robust, MIA_AUC, MIA_TPR, *COSTS]:
        columns += [column, column + DELTA] + ([column + DELTA_LOW, column + DELTA_HIGH] if sampled(column) else [])
        columns += [ATTACK_OF[column]] if column in ATTACK_OF else []
    columns += [DETAILS, FLAGS, WAIVED, FAILED, FAILED_INTEGRITY, FAILED_MEMBERSHIP]
    columns += [c for c in (PARETO, PARETO_NOTE) if c in comparison]
    return comparison[columns]


def _add_deltas(comparison: pd.DataFrame) -> pd.DataFrame:
    """value - the same model's baseline value (within the same run); NaN when either is missing.

    The change's interval is the run's paired one, taken only when that row measured this very
    difference (a strongest-attack AUC over other attacks, say, is not this change).
    """
    group = [k for k in ("run", "model") if k in comparison]
    out = comparison.copy()
    for column in value_columns(comparison):
        baseline = comparison[column].where(comparison["defense"] == UNDEFENDED)
        reference = baseline.groupby([comparison[k] for k in group]).transform("first")
        out[column + DELTA] = delta = comparison[column] - reference
        if not sampled(column):
            continue
        paired = comparison[column + PAIRED] if column + PAIRED in comparison else pd.Series([None] * len(comparison), index=comparison.index)
        same = [isinstance(p, tuple) and np.isclose(p[0], d, rtol=0, atol=1e-9) for p, d in zip(paired, delta)]
        out[column + DELTA_LOW] = [p[1] if ok else math.nan for p, ok in zip(paired, same)]
        out[column + DELTA_HIGH] = [p[2] if ok else math.nan for p, ok in zip(paired, same)]
    return out.drop(columns=[c for c in out.columns if c.endswith(PAIRED)])


def comparison_table(table: pd.DataFrame, defenses: Sequence[DefenseRecord] = (), run: str | None = None,
                     membership: Collection[str] | None = None) -> pd.DataFrame:
    """One row per (model, defense) of a results table, with the change of every number against the model's baseline.

    `defenses` (a run's declarations, optional) names the defenses; `run` adds a leading `run`
    column, for combining several runs with `combine`. `membership` (see `membership_attacks`) is
    which attack ids write a membership AUC; without it every errored confidentiality attack
    counts as one, so an error never goes unnoticed.
    """
    declared = {d.id: d for d in defenses}
    lines = []
    for model, defense in _variants(table):
        rows = table[(table["model"] == model) & (table["defense"] == defense)]
        lines.append({**({"run": run} if run is not None else {}), "model": model, "defense": defense,
                      **_variant_line(rows, declared.get(defense), membership)})
    comparison = pd.DataFrame(lines) if lines else pd.DataFrame(columns=[k for k in KEYS if run is not None or k != "run"])
    for column in value_columns(comparison):
        comparison[column] = comparison[column].astype("float64") if column in comparison else math.nan
    for column in TEXT_COLUMNS:
        comparison[column] = comparison[column].fillna("") if column in comparison else ""
    return _ordered(_add_deltas(comparison))


def combine(comparisons: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Several runs' comparison tables (each built with its `run` label) as one; deltas stay within each run."""
    combined = pd.concat(list(comparisons), ignore_index=True)
    numeric = [c + suffix for c in robust_columns(combined) for suffix in ("", DELTA, DELTA_LOW, DELTA_HIGH)]
    combined[numeric] = combined[numeric].astype("float64")
    return _ordered(combined)


# --- what makes runs comparable ------------------------------------------------------------------

GROUP = "group"
NOT_A_BUDGET = ("eps", "batch_size")  # a column is per eps; the batch size changes speed, not strength


@dataclass(frozen=True)
class RunSetting:
    """What two runs must share for their numbers to stand side by side: the data, the attacked samples, the budgets.

    `budgets` holds each attack's declaration without the parameters that do not change its strength;
    `integrity` and `membership` are the attack ids behind the worst-case and strongest-attack columns.
    """

    label: str
    data: str
    data_sha256: str
    evaluated_sha256: str
    evaluation_samples: int
    budgets: dict[str, tuple[str, tuple[tuple[str, Any], ...]]]
    integrity: frozenset[str]
    membership: frozenset[str]

    @property
    def key(self) -> tuple[Any, ...]:
        return self.data_sha256, self.evaluated_sha256, tuple(sorted(self.budgets.items()))


def run_setting(metadata: RunMetadata, label: str) -> RunSetting:
    known = attack_registry()
    attacks = metadata.config.get("attacks", [])
    budgets = {a["id"]: (a["name"], tuple(sorted((k, repr(v)) for k, v in a["params"].items() if k not in NOT_A_BUDGET)))
               for a in attacks}
    integrity = frozenset(a["id"] for a in attacks if a["name"] not in known or known[a["name"]].kind.category == Category.INTEGRITY)
    data = metadata.data
    return RunSetting(label, f"{data.name} ({data.sha256[:8]})", data.sha256, data.evaluated_sha256, data.evaluation_samples,
                      budgets, integrity, frozenset(membership_attacks(metadata)))


def _column_attacks(column: str, setting: RunSetting) -> frozenset[str]:
    parsed = parse_robust_column(column)
    if parsed is None:
        return setting.membership
    return setting.integrity if parsed[0] in ENSEMBLE.values() else frozenset({parsed[0]})


def _budget_difference(attack: str, mine: tuple[str, tuple[Any, ...]], theirs: tuple[str, tuple[Any, ...]]) -> str:
    if mine[0] != theirs[0]:
        return f"{attack} is {mine[0]} vs {theirs[0]}"
    a, b = dict(mine[1]), dict(theirs[1])
    return f"{attack} " + ", ".join(f"{k} {a.get(k, '–')} vs {b.get(k, '–')}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def mismatches(combined: pd.DataFrame, settings: Sequence[RunSetting]) -> list[str]:
    """Every way the runs of a combined comparison differ in what their side-by-side numbers mean, one sentence each."""
    if not settings:
        return []
    first, found = settings[0], []
    for other in settings[1:]:
        pair = f"{first.label} and {other.label}"
        if other.data_sha256 != first.data_sha256:
            found.append(f"{pair} audit different data: {first.data} vs {other.data}")
            continue
        if not first.evaluated_sha256 or not other.evaluated_sha256:
            older = first.label if not first.evaluated_sha256 else other.label
            found.append(f"{older} does not record which samples it attacked (a run of an older Kansa), so {pair} cannot be shown to share them")
        elif other.evaluated_sha256 != first.evaluated_sha256:
            found.append(f"{pair} attack different samples: {first.evaluation_samples} vs {other.evaluation_samples} evaluated"
                         + (", another draw" if first.evaluation_samples == other.evaluation_samples else ""))
        for column in [*robust_columns(combined), MIA_AUC, MIA_TPR]:
            if not all(combined.loc[combined["run"] == s.label, column].notna().any() for s in (first, other)):
                continue  # not side by side: one of them has no number in this column
            mine, theirs = _column_attacks(column, first), _column_attacks(column, other)
            if mine != theirs:
                found.append(f"{column}: {first.label} takes it over {', '.join(sorted(mine))}, {other.label} over {', '.join(sorted(theirs))}")
                continue
            differ = [_budget_difference(a, first.budgets[a], other.budgets[a]) for a in sorted(mine)
                      if a in first.budgets and a in other.budgets and first.budgets[a] != other.budgets[a]]
            if differ:
                found.append(f"{column}: {pair} ran {'; '.join(differ)}")
    return list(dict.fromkeys(found))


def grouped(combined: pd.DataFrame, settings: Sequence[RunSetting]) -> pd.DataFrame:
    """The combined table with a `group` column: runs of one data set and setting form one group, judged apart from the others."""
    keys = list(dict.fromkeys(s.key for s in settings))
    names = {}
    for key in keys:
        data = next(s.data for s in settings if s.key == key)
        same_data = [k for k in keys if k[0] == key[0]]
        names[key] = data if len(same_data) == 1 else f"{data} · setting {same_data.index(key) + 1}"
    by_run = {s.label: names[s.key] for s in settings}
    out = combined.copy()
    out.insert(1, GROUP, out["run"].map(by_run))
    return out


# --- Pareto front ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axes:
    """The objectives of the Pareto front: robust accuracy at one column, and whether privacy leakage counts.

    `without_privacy` names the variants that have no membership AUC when some others have one:
    then leakage is no objective, and the page says for whom it is missing.
    """

    robust: str | None
    privacy: bool
    without_privacy: tuple[str, ...] = ()

    @property
    def objectives(self) -> list[str]:
        return [CLEAN] + ([self.robust] if self.robust else []) + ([MIA_AUC] if self.privacy else [])


@dataclass(frozen=True)
class Exclusion:
    """Why a variant is left off the Pareto front: an objective without a value (`missing`), or with one
    its own run distrusts: robust accuracy under unwaived sanity flags (`flagged`), or a worst case or
    strongest attack that misses attacks which errored (`errored`). A left-out variant is not judged,
    and judges no other: an unreliable number must not push an honest one off the front."""

    kind: str
    objective: str
    detail: str = ""

    def text(self, t: Callable[..., str]) -> str:
        return t(f"cmp_out_{self.kind}", objective=row_label(self.objective, t), detail=self.detail)


def exclusions(comparison: pd.DataFrame, axes: Axes) -> list[list[Exclusion]]:
    """Per variant (in table order) why it is left off the front; an empty list when it is judged."""
    out = []
    for _, row in comparison.iterrows():
        reasons = []
        for objective in axes.objectives:
            if math.isnan(row[objective]):
                reasons.append(Exclusion("missing", objective))
            elif objective == MIA_AUC and row[FAILED_MEMBERSHIP]:
                reasons.append(Exclusion("errored", objective, row[FAILED_MEMBERSHIP]))
            elif objective == axes.robust:
                if row[FLAGS]:
                    reasons.append(Exclusion("flagged", objective, row[FLAGS]))
                if parse_robust_column(objective)[0] in ENSEMBLE.values() and row[FAILED_INTEGRITY]:
                    reasons.append(Exclusion("errored", objective, row[FAILED_INTEGRITY]))
        out.append(reasons)
    return out


def default_robust_column(comparison: pd.DataFrame) -> str | None:
    """The strongest attack setting that still separates the variants.

    Candidates are the robust columns measured for every variant (else those measured for the
    most), preferring the per-sample worst case over all L-inf attacks (`ensemble`, what gates use
    by default). Among them the one with the lowest mean robust accuracy wins, skipping columns
    where every variant scores the same (a large eps at which everything is 0 ranks nothing);
    ties go to the larger eps.
    """
    columns = robust_columns(comparison)
    if not columns:
        return None
    coverage = {c: int(comparison[c].notna().sum()) for c in columns}
    pool = [c for c in columns if coverage[c] == max(coverage.values())]
    pool = [c for c in pool if parse_robust_column(c)[0] == "ensemble"] or pool
    informative = [c for c in pool if comparison[c].nunique(dropna=True) > 1] or pool
    return min(informative, key=lambda c: (comparison[c].mean(), -parse_robust_column(c)[1]))


def resolve_axes(comparison: pd.DataFrame, robust: str | None = None, privacy: bool | None = None) -> Axes:
    """The front's objectives: `robust` or the default column; privacy when every variant has a membership AUC."""
    if robust is not None and robust not in comparison:
        available = ", ".join(robust_columns(comparison)) or "none"
        raise KansaError(f"no robust-accuracy column {robust!r} in the comparison (available: {available})")
    robust = robust if robust is not None else default_robust_column(comparison)
    measured = comparison[MIA_AUC].notna()
    without = tuple(variant_name(r, True) for _, r in comparison[~measured].iterrows()) if measured.any() else ()
    if privacy is None:
        privacy = bool(len(comparison)) and bool(measured.all())
    return Axes(robust, privacy, () if privacy else without)


def pareto_front(comparison: pd.DataFrame, robust: str | None = None, privacy: bool | None = None) -> pd.Series:
    """Per variant: True when no other variant is at least as good on every objective and better on one.

    Objectives: clean accuracy and robust accuracy at `robust` (maximised), the best membership
    AUC (minimised) when `privacy`. Identical variants do not dominate each other, so both stay
    on the front. A variant with an `exclusions` reason is not judged (<NA>), nor used to judge others.
    With a `group` column (runs compared despite `mismatches`) each group has its own front.
    """
    axes = resolve_axes(comparison, robust, privacy)
    signs = [-1.0 if column == MIA_AUC else 1.0 for column in axes.objectives]
    points = comparison[axes.objectives].to_numpy(dtype=np.float64) * np.array(signs)
    judged = np.array([not reasons for reasons in exclusions(comparison, axes)], dtype=bool)
    groups = comparison[GROUP].to_numpy() if GROUP in comparison else np.zeros(len(comparison))
    front = pd.Series(pd.array([pd.NA] * len(comparison), dtype="boolean"), index=comparison.index, name=PARETO)
    for position in np.flatnonzero(judged):
        point, candidates = points[position], points[judged & (groups == groups[position])]
        dominated = ((candidates >= point).all(axis=1) & (candidates > point).any(axis=1)).any()
        front.iloc[position] = not dominated
    return front


# --- presentation, shared by the report section, summary.md and `kansa compare` -----------------


def variant_name(row: pd.Series | dict[str, Any], with_run: bool = False) -> str:
    """The report's name of a variant (`model`, or `model / defense`), after its run's label when several are compared."""
    name = variant_label(row["model"], row["defense"])
    return f"{row['run']}: {name}" if with_run and "run" in row else name


def on_front(state: Any) -> bool | None:
    """A nullable Pareto flag as Python: True, False, or None when the variant was not judged."""
    return None if state is pd.NA else bool(state)


def front_text(state: Any, t: Callable[..., str]) -> str:
    """yes / no, or a dash for a variant that was not judged (which is neither)."""
    return {True: t("yes"), False: t("no"), None: "–"}[on_front(state)]


def has_defenses(comparison: pd.DataFrame) -> bool:
    """Whether any model was audited defended; without that a trade-off section would only repeat the headline."""
    return bool((comparison["defense"] != UNDEFENDED).any())


def _signed(number: float, text: str) -> str:
    if number == 0:
        return "±" + text
    return ("+" if number > 0 else "−") + text


def _change(column: str, delta: float, t: Callable[..., str] | None) -> str:
    """A change of a sampled measurement: accuracies and TPR in points (with the unit when `t` is given), AUC as a difference."""
    if column == MIA_AUC:
        return _signed(delta, f"{abs(delta):.3f}")
    points = _signed(delta, f"{abs(delta) * 100:.1f}")
    return t("delta_pts", delta=points) if t is not None else points


def format_delta(column: str, value: float, delta: float, t: Callable[..., str], low: float = math.nan, high: float = math.nan) -> str:
    """The change against the baseline as a reader compares it: accuracy in points with its paired interval, sizes and times in percent.

    A change whose interval covers 0 reads as no measurable change; one without an interval says so.
    """
    if math.isnan(delta):
        return "–"
    if sampled(column):
        text = _change(column, delta, t)
        if math.isnan(low) or math.isnan(high):
            return t("delta_no_interval", change=text)
        interval = f"{text} [{_change(column, low, None)}, {_change(column, high, None)}]"
        return t("delta_none", change=interval) if low <= 0 <= high else interval
    reference = value - delta
    if reference and math.isfinite(reference):
        return _signed(delta, f"{abs(delta) / abs(reference) * 100:.1f}%")
    return _signed(delta, f"{abs(delta):g}")


def delta_text(row: pd.Series, column: str, t: Callable[..., str]) -> str:
    """A variant's change in `column` as shown next to its value; nothing for the baseline itself or a value that is missing."""
    if row["defense"] == UNDEFENDED or math.isnan(row[column]):
        return ""
    low, high = (row[column + DELTA_LOW], row[column + DELTA_HIGH]) if sampled(column) else (math.nan, math.nan)
    return format_delta(column, row[column], row[column + DELTA], t, low, high)


def format_value(column: str, value: float) -> str:
    """Counts and bytes as integers, times to three significant digits, rates and AUC to three decimals."""
    if math.isnan(value):
        return "–"
    if column in ("size_bytes", "nonzero_parameters"):
        return f"{value:,.0f}"
    if column in ("training_seconds", "inference_ms_per_sample"):
        return f"{value:.3g}"
    return f"{value:.3f}"


def row_label(column: str, t: Callable[..., str]) -> str:
    """A column's name for readers, in the report's language."""
    parsed = parse_robust_column(column)
    if parsed:
        return t("cmp_robust", attack=parsed[0], eps=f"{parsed[1]:g}")
    return t(f"cmp_{column.split('@')[0]}")


# --- files ------------------------------------------------------------------------------------


def with_front(comparison: pd.DataFrame, robust: str | None = None) -> tuple[pd.DataFrame, Axes]:
    """The table with its `pareto` and `pareto_note` (why a variant was left out) columns, and the objectives judged on."""
    axes = resolve_axes(comparison, robust)
    t = translator("en")
    notes = ["; ".join(reason.text(t) for reason in reasons) for reasons in exclusions(comparison, axes)]
    return comparison.assign(**{PARETO: pareto_front(comparison, axes.robust, axes.privacy), PARETO_NOTE: notes}), axes


def _json_value(value: Any) -> Any:
    if value is pd.NA or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def comparison_json(comparison: pd.DataFrame, axes: Axes, runs: list[dict[str, Any]], differences: Sequence[str] = ()) -> str:
    """comparison.json: the rows (NaN as null), the runs they come from, how they differ, and what the front was judged on."""
    document = {
        "schema": SCHEMA,
        "runs": runs,
        "mismatches": list(differences),
        "pareto": {"objectives": axes.objectives, "without_membership_auc": list(axes.without_privacy)},
        "rows": [{k: _json_value(v) for k, v in row.items()} for row in comparison.to_dict(orient="records")],
    }
    return json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def write_comparison(comparison: pd.DataFrame, out_dir: Path, runs: list[dict[str, Any]], robust: str | None = None,
                     differences: Sequence[str] = ()) -> dict[str, Path]:
    """comparison.csv and comparison.json (each atomically) with the Pareto column."""
    table, axes = with_front(comparison, robust)
    paths = {"comparison_csv": out_dir / "comparison.csv", "comparison_json": out_dir / "comparison.json"}
    write_text_atomic(paths["comparison_csv"], table.to_csv(index=False))
    write_text_atomic(paths["comparison_json"], comparison_json(table, axes, runs, differences))
    return paths


def comparison_of(result: AuditResult) -> pd.DataFrame:
    """The run's defense comparison: computed on first use and kept, so every output of one run shows the same table."""
    if result.comparison is None:
        result.comparison = comparison_table(result.table, result.metadata.defenses, membership=membership_attacks(result.metadata))
    return result.comparison


def run_reference(metadata: RunMetadata, label: str | None = None, path: Path | None = None) -> dict[str, Any]:
    """How comparison.json names a run it read."""
    reference: dict[str, Any] = {"run_id": metadata.run_id, "title": metadata.title, "created": metadata.created}
    if label is not None:
        reference["label"] = label
    if path is not None:
        reference["path"] = str(path)
    return reference


