"""Release gates: rules on the results table that yield pass, fail or inconclusive — failing closed.

A gate selects rows of one metric (by model, defense, attack, swept value and subset) and
checks each against a threshold, or against the same row of a baseline run. Missing
evidence (no matching row, an errored attack, too few samples, an interval that straddles a
threshold the gate wants to be sure about) is *inconclusive*, never a pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from attacks.base import ENSEMBLE
from audit.checks import masking_flags
from audit.metrics import Category, Direction, metric_info
from audit.params import REQUIRED, Choice, Flag, Location, Number, Param, ParamSet, Text, optional_tables
from audit.results import UNDEFENDED, variant_label

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
SEVERITY = {PASS: 0, INCONCLUSIVE: 1, FAIL: 2}

OPERATORS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}

PRESETS: dict[str, dict[str, Any]] = {
    "robustness_floor": {"kind": "threshold", "metric": "robust_accuracy", "op": ">=", "threshold": 0.5, "confidence": True},
    "accuracy_floor": {"kind": "threshold", "metric": "accuracy", "subset": "split=test", "op": ">=", "threshold": 0.9, "confidence": True},
    "privacy_ceiling": {"kind": "threshold", "metric": "auc", "op": "<=", "threshold": 0.6, "confidence": True},
    "dp_claim_holds": {"kind": "threshold", "metric": "dp_claim_refuted", "op": "<=", "threshold": 0},
    "no_regression": {"kind": "regression", "metric": "robust_accuracy", "tolerance": 0.02},
}

GATE_PARAMS = (
    Param("id", Text(), None, "name in verdicts and junit.xml (default: preset or metric, numbered)"),
    Param("preset", Choice(tuple(PRESETS)), None, "start from a documented policy; keys given here override it"),
    Param("kind", Choice(("threshold", "regression")), "threshold", "compare with a threshold, or with the baseline run"),
    Param("metric", Text(), REQUIRED, "metric name in the results table, e.g. robust_accuracy"),
    Param("model", Text(), "*", "model name, or * for every model"),
    Param("defense", Text(), "*", "defense, or * for every variant"),
    Param("attack", Text(), None, 'attack id, or * for every attack (default: "ensemble", the per-sample worst case, for robust_accuracy and robust_accuracy_delta; else *)'),
    Param("at", Number(), None, "value of the swept parameter (eps, fpr); default: every value"),
    Param("subset", Text(), "all", "subset of the rows: all, class=..., split=test"),
    Param("op", Choice(tuple(OPERATORS)), ">=", "threshold gates: the metric must be <op> threshold"),
    Param("threshold", Number(), None, "threshold gates: the bound"),
    Param("confidence", Flag(), False, "require the whole 95% interval on the passing side (else inconclusive)"),
    Param("min_n", Number(0, None, integer=True), 30, "fewer samples behind a value than this is inconclusive"),
    Param("tolerance", Number(0, None), 0.0, "regression gates: allowed degradation"),
    Param("relative", Flag(), False, "regression gates: tolerance is a fraction of the baseline value"),
    Param("direction", Choice(("auto", "higher_is_better", "lower_is_better")), "auto", "regression gates: which way is better"),
    Param("characteristic", Text(), None, "guideline quality characteristic this gate evidences, e.g. C-2"),
    Param("level", Text(), None, "declared level the gate belongs to, e.g. AISL 1"),
)


@dataclass(frozen=True)
class Gate:
    id: str
    kind: str
    metric: str
    model: str
    defense: str
    attack: str
    at: float | None
    subset: str
    op: str
    threshold: float | None
    confidence: bool
    min_n: int
    tolerance: float
    relative: bool
    direction: str
    characteristic: str | None
    level: str | None

    def describe(self) -> str:
        if self.kind == "threshold":
            return f"{self.metric} {self.op} {self.threshold:g}" + (" (95% interval)" if self.confidence else "")
        tol = f"{self.tolerance:.0%}" if self.relative else f"{self.tolerance:g}"
        return f"{self.metric} no worse than baseline by more than {tol}"


def validate_gates_config(tables: Any, where: Location) -> list[dict[str, Any]]:
    gates: list[dict[str, Any]] = []
    for i, table in enumerate(optional_tables(tables, where)):
        here = where.child(i)
        preset = table.get("preset") if isinstance(table, dict) else None
        merged = {**PRESETS.get(preset, {}), **table} if isinstance(table, dict) else table
        values = ParamSet(GATE_PARAMS).validate(merged, here)
        if values["kind"] == "threshold" and values["threshold"] is None:
            raise here.child("threshold").error("missing; a threshold gate needs a number to compare with")
        if values["kind"] == "regression" and values["direction"] == "auto" and _direction(values["metric"]) is None:
            raise here.child("direction").error(
                f'metric "{values["metric"]}" has no known direction; set direction = "higher_is_better" or "lower_is_better"'
            )
        values["id"] = values["id"] or f"{preset or values['metric']}-{i + 1}"
        if values["attack"] is None:
            values["attack"] = "ensemble" if values["metric"] in ("robust_accuracy", "robust_accuracy_delta") else "*"
        values.pop("preset")
        gates.append(values)
    ids = [g["id"] for g in gates]
    for i, gate_id in enumerate(ids):
        if gate_id in ids[:i]:
            raise where.child(i).child("id").error(f'"{gate_id}" is already used by another gate')
    return gates


def _direction(metric: str) -> Direction | None:
    """Which way is better for direction = "auto": the registry's, or None when it has no better side or is unknown."""
    info = metric_info(metric)
    return info.direction if info is not None and info.direction != Direction.NEUTRAL else None


def _select(table: pd.DataFrame, gate: Gate) -> pd.DataFrame:
    rows = table[(table["metric"] == gate.metric) & (table["subset"] == gate.subset)]
    for column in ("model", "defense", "attack"):
        wanted = getattr(gate, column)
        if wanted != "*":
            rows = rows[rows[column] == wanted]
    if gate.at is not None:
        rows = rows[(rows["param_value"] - gate.at).abs() <= 1e-9 * max(1.0, abs(gate.at))]
    return rows


def _evidence(metric: str, category: str) -> tuple[str, bool]:
    """The category a row's evidence belongs to, and whether the model's undefended variant is part of it (a paired change)."""
    info = metric_info(metric)
    return (info.paired_from, True) if info is not None and info.paired_from is not None else (category, False)


def _errored_cells(table: pd.DataFrame, gate: Gate) -> pd.DataFrame:
    """Failed cells that could have produced the gate's evidence (same selectors, same kind of metric; for a paired
    change, the cells of the model as trained too), and failed variants (a defense, or a variant's evaluation) the gate
    selects: none of their evidence exists."""
    errors = table[table["status"] == "error"]
    whole_variant = (errors["model"].fillna("") != "") & (errors["attack"].fillna("") == "")  # no attack to select by
    paired = _evidence(gate.metric, "")[1]
    selected = pd.Series(True, index=errors.index)
    if gate.model != "*":
        selected &= errors["model"] == gate.model
    if gate.defense != "*":
        selected &= errors["defense"].isin([gate.defense, UNDEFENDED] if paired else [gate.defense])
    if gate.attack in ENSEMBLE.values():
        selected &= (errors["category"] == Category.INTEGRITY) | whole_variant  # the worst case over all attacks misses the failed one
    elif gate.attack != "*":
        selected &= (errors["attack"] == gate.attack) | whole_variant
    produced_by = {_evidence(gate.metric, c)[0] for c in table[(table["metric"] == gate.metric) & (table["status"] == "ok")]["category"]}
    if produced_by:
        selected &= errors["category"].isin(produced_by) | whole_variant
    return errors[selected]


def _failure(err: pd.Series) -> str:
    if pd.notna(err["attack"]) and err["attack"] != "":
        return f"attack {err['attack']} on {err['model']} errored: {err['message']}"
    return f"{variant_label(err['model'], err['defense'])} has no results: {err['message']}"


def _check_threshold(gate: Gate, row: pd.Series) -> tuple[str, str]:
    compare = OPERATORS[gate.op]
    value, low, high = row["value"], row["ci_low"], row["ci_high"]
    shown = f"{gate.metric} = {value:.4g}" + (f" [{low:.4g}, {high:.4g}]" if not math.isnan(low) else "")
    if not gate.confidence:
        verdict = PASS if compare(value, gate.threshold) else FAIL
        return verdict, f"{shown} {'meets' if verdict == PASS else 'misses'} {gate.op} {gate.threshold:g}"
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE, f"{shown} has no interval, and the gate asks for 95% confidence"
    if compare(low, gate.threshold) and compare(high, gate.threshold):
        return PASS, f"{shown}: the whole interval meets {gate.op} {gate.threshold:g}"
    if not compare(low, gate.threshold) and not compare(high, gate.threshold):
        return FAIL, f"{shown}: the whole interval misses {gate.op} {gate.threshold:g}"
    return INCONCLUSIVE, f"{shown}: the interval straddles {gate.threshold:g}; more samples would decide"


def _half_width(low: float, high: float) -> float:
    return 0.0 if math.isnan(low) or math.isnan(high) else (high - low) / 2


def _check_regression(gate: Gate, row: pd.Series, base: pd.Series) -> tuple[str, str]:
    sign = 1.0 if (gate.direction if gate.direction != "auto" else _direction(gate.metric)) == Direction.HIGHER else -1.0
    degradation = sign * (base["value"] - row["value"])
    allowed = gate.tolerance * abs(base["value"]) if gate.relative else gate.tolerance
    # Independent estimates: the change's half-width combines both 95% half-widths in quadrature.
    spread = math.hypot(_half_width(row["ci_low"], row["ci_high"]), _half_width(base["ci_low"], base["ci_high"]))
    low, high = degradation - spread, degradation + spread
    shown = f"{gate.metric} = {row['value']:.4g} vs baseline {base['value']:.4g}: degradation {degradation:+.4g} [{low:+.4g}, {high:+.4g}]"
    if degradation <= allowed:
        return PASS, f"{shown} within tolerance {allowed:.4g}"
    if low > allowed:
        return FAIL, f"{shown} beyond tolerance {allowed:.4g}"
    return INCONCLUSIVE, f"{shown} exceeds tolerance {allowed:.4g} only within noise; more samples would decide"


KEYS = ["model", "defense", "attack", "param", "param_value", "subset", "metric"]


def _key(row: pd.Series) -> tuple[Any, ...]:
    return tuple(-1.0 if c == "param_value" and pd.isna(row[c]) else row[c] for c in KEYS)


def evaluate_gates(gates: list[dict[str, Any]], table: pd.DataFrame, baseline: pd.DataFrame | None = None) -> pd.DataFrame:
    """One verdict row per (gate, selected result row); a gate that selects nothing gets one inconclusive row."""
    base_index = {_key(r): r for _, r in baseline.iterrows()} if baseline is not None else {}
    flags_by_variant: dict[tuple[str, str], pd.DataFrame] = {}  # computed once per variant, not once per check
    out: list[dict[str, Any]] = []
    for spec in gates:
        gate = Gate(**spec)
        common = {"gate": gate.id, "kind": gate.kind, "metric": gate.metric, "rule": gate.describe(),
                  "characteristic": gate.characteristic or "", "level": gate.level or ""}
        errors = _errored_cells(table, gate)
        for _, err in errors.iterrows():
            out.append({**common, "model": err["model"], "defense": err["defense"], "attack": err["attack"],
                        "verdict": INCONCLUSIVE, "reason": _failure(err)})
        rows = _select(table[table["status"] == "ok"], gate)
        if rows.empty and errors.empty:
            out.append({**common, "verdict": INCONCLUSIVE, "reason": f"no result row matches {gate.metric} ({_selector(gate)})"})
        for _, row in rows.iterrows():
            where = {c: row[c] for c in ("model", "defense", "attack", "param_value", "subset")}
            measured = {"value": row["value"], "ci_low": row["ci_low"], "ci_high": row["ci_high"], "n": int(row["n"])}
            evidence, paired = _evidence(row["metric"], row["category"])
            variants = [(row["model"], row["defense"])] + ([(row["model"], UNDEFENDED)] if paired else [])
            if evidence == Category.INTEGRITY:
                for variant in variants:
                    if variant not in flags_by_variant:
                        flags_by_variant[variant] = masking_flags(table, *variant)
            flagged = [(v, flags_by_variant[v]) for v in variants if evidence == Category.INTEGRITY and not flags_by_variant[v].empty]
            if flagged:
                variant, flags = flagged[0]
                first = flags.iloc[0]
                verdict, reason = INCONCLUSIVE, (
                    f"sanity check {first['metric']} flagged on {variant_label(*variant)} ({first['message']}); "
                    "its robustness numbers may reflect masked gradients (waive with [[waivers]] and a reason)"
                )
            elif math.isnan(row["value"]):
                verdict, reason = INCONCLUSIVE, f"{gate.metric} has no value"
            elif not math.isnan(row["ci_low"]) and row["n"] < gate.min_n:
                verdict, reason = INCONCLUSIVE, f"{gate.metric} rests on n = {int(row['n'])} < min_n = {gate.min_n}"
            elif gate.kind == "threshold":
                verdict, reason = _check_threshold(gate, row)
            elif baseline is None:
                verdict, reason = INCONCLUSIVE, "no baseline run given (--baseline)"
            elif _key(row) not in base_index:
                verdict, reason = INCONCLUSIVE, "the baseline run has no matching row"
            else:
                base = base_index[_key(row)]
                measured["baseline"] = base["value"]
                verdict, reason = _check_regression(gate, row, base)
            out.append({**common, **where, **measured, "verdict": verdict, "reason": reason})
    columns = ["gate", "kind", "metric", "rule", "model", "defense", "attack", "param_value", "subset", "value", "ci_low", "ci_high", "n",
               "baseline", "verdict", "reason", "characteristic", "level"]
    return pd.DataFrame(out, columns=columns)


def _selector(gate: Gate) -> str:
    parts = [f"{c}={getattr(gate, c)}" for c in ("model", "defense", "attack") if getattr(gate, c) != "*"]
    if gate.at is not None:
        parts.append(f"at={gate.at:g}")
    parts.append(f"subset={gate.subset}")
    return ", ".join(parts)


def overall_verdict(verdicts: pd.DataFrame) -> str | None:
    """The worst verdict, or None when there are no gates."""
    if verdicts.empty:
        return None
    return max(verdicts["verdict"], key=SEVERITY.__getitem__)
