"""The HTML report, shaped like an evidence document for AIST's ML Quality Management Guideline.

The report is an ordered list of sections, each a builder (run -> context, or None to omit it)
and a template under templates/sections/. Every characteristic section carries an evidence
checklist (measured by Kansa / attested / missing) that also feeds the scorecard's traffic
lights. Builders only read the results table, verdicts, metadata and saved artifacts.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from attacks import registry
from audit.files import write_text_atomic
from audit.gates import overall_verdict
from audit.metrics import CHARACTERISTICS, Category, metric_info, panel_of
from audit.results import AuditResult, variant_label
from reports import figures
from reports.comparison import comparison_of, has_defenses
from reports.confidentiality import build_confidentiality
from reports.formatting import fmt, fmt_ci
from reports.junit import case_name
from reports.queries import NORM_NAMES, attack_budgets, attacks_behind, headline, headline_column, headline_eps
from reports.scorecard import Run, build_run, gate_characteristic, traffic_light
from reports.templating import template_environment
from reports.trade_offs import comparison_context


def _cover(run: Run) -> dict[str, Any]:
    component = run.config("component")
    t = run.t
    levels = [(t(key), component.get(key) or t("not_declared")) for key in ("aisl", "aipl", "aifl")]
    return {
        "component": component.get("name", ""),
        "intended_use": component.get("intended_use") or t("not_declared"),
        "edition": component.get("guideline_edition", ""),
        "levels": levels,
    }


def _scorecard(run: Run) -> dict[str, Any]:
    lights = [{"id": c, "name": run.t(c), "light": traffic_light(run, c), "meaning": run.t(traffic_light(run, c))} for c in CHARACTERISTICS]
    gates = [
        {
            "verdict": check["verdict"],
            "verdict_text": run.t(check["verdict"]),
            "gate": check["gate"],
            "where": case_name(check),
            "rule": check["rule"],
            "reason": check["reason"],
            "characteristic": gate_characteristic(check),
        }
        for _, check in run.result.gates.iterrows()
    ]
    verdict = overall_verdict(run.result.gates)
    chosen = headline_eps(run.meta.config)
    models = [
        {
            "model": item.model,
            "clean": fmt_ci(item.clean),
            "robust": [{"value": fmt_ci(row) if row is not None else "–", "behind": attacks_behind(row) if row is not None else ""}
                       for _, row in item.robust],
        }
        for item in headline(run.table, run.meta.config)
    ]
    return {"lights": lights, "gates": gates, "verdict": verdict, "verdict_text": run.t(verdict) if verdict else "",
            "baseline": run.meta.baseline, "headline": models,
            "headline_columns": [run.t("robust_at", norm=NORM_NAMES[e.norm], eps=f"{e.eps:g}") for e in chosen],
            "headline_notes": [e.text(run.t) for e in chosen]}


def _characteristic(run: Run, key: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"checklist": run.evidence[key], "attestations": run.attestations(key), "light": traffic_light(run, key), **(body or {})}


def _quality_rows(run: Run, metrics: tuple[str, ...]) -> list[dict[str, str]]:
    rows = run.table[(run.table["category"] == Category.DATA_QUALITY) & run.table["metric"].isin(metrics)]
    return [{"metric": r["metric"], "subset": r["subset"], "value": fmt_ci(r), "message": r["message"]} for _, r in rows.iterrows()]


def _a1(run: Run) -> dict[str, Any]:
    return _characteristic(run, "A-1", {"risk_factors": run.config("component").get("risk_factors") or []})


def _a2(run: Run) -> dict[str, Any]:
    table = run.table
    counts = table[(table["metric"] == "recall") & (table["category"] == Category.PERFORMANCE)]
    per_class = [{"name": r["subset"].split("=", 1)[1], "n": int(r["n"])} for _, r in counts.drop_duplicates("subset").iterrows()]
    return _characteristic(run, "A-2", {"attributes": run.config("component").get("attributes") or [], "per_class": per_class})


def _b1(run: Run) -> dict[str, Any]:
    return _characteristic(run, "B-1", {"rows": _quality_rows(run, ("samples", "classes", "features", "class_share"))})


def _b2(run: Run) -> dict[str, Any]:
    return _characteristic(run, "B-2", {"rows": _quality_rows(run, ("imbalance_ratio",))})


def _b3(run: Run) -> dict[str, Any]:
    metrics = ("duplicate_rows", "conflicting_labels", "nonfinite_rows_dropped", "values_outside_range", "duplicates_across_splits")
    return _characteristic(run, "B-3", {"rows": _quality_rows(run, metrics)})


def _c1(run: Run) -> dict[str, Any]:
    table = run.table[(run.table["category"] == Category.PERFORMANCE) & (run.table["status"] == "ok")]  # errors: in diagnostics
    classes = run.meta.data.classes
    models = []
    for (model, defense), rows in table.groupby(["model", "defense"], sort=False):
        accuracy = [{"split": r["subset"].split("=", 1)[1], "value": fmt_ci(r), "n": r["n"]} for _, r in rows[rows["metric"] == "accuracy"].iterrows()]
        per_class = []
        for name in classes:
            subset = rows[rows["subset"] == f"class={name}"].set_index("metric")
            per_class.append({"name": name, "precision": fmt_ci(subset.loc["precision"]), "recall": fmt_ci(subset.loc["recall"])})
        counts = {r["subset"]: int(r["value"]) for _, r in rows[rows["metric"] == "confusion"].iterrows()}
        peak = max(counts.values(), default=1) or 1
        matrix = [[{"count": counts[f"true={a};pred={b}"], "shade": round(counts[f"true={a};pred={b}"] / peak, 3)} for b in classes] for a in classes]
        models.append({"name": variant_label(model, defense), "accuracy": accuracy, "per_class": per_class, "classes": classes, "matrix": matrix})
    return _characteristic(run, "C-1", {"models": models})


def _robustness_lines(rows: pd.DataFrame, budgets: dict[str, str]) -> list[dict[str, Any]]:
    overall = rows[rows["subset"] == "all"]
    lines = []
    for (attack, eps), cell in overall.groupby(["attack", "param_value"], sort=False):
        by_metric = cell.set_index("metric")
        if "robust_accuracy" not in by_metric.index:
            continue

        def shown(metric: str, digits: int | None = None) -> str:
            if metric not in by_metric.index:
                return "–"
            return fmt(by_metric.loc[metric]["value"], digits) if digits else fmt_ci(by_metric.loc[metric])

        lines.append({
            "attack": attack, "budget": budgets.get(attack, ""), "eps": f"{eps:g}", "clean": shown("clean_accuracy"), "robust": shown("robust_accuracy"),
            "success": shown("success_rate"), "linf": shown("perturbation_linf", 4), "l2": shown("perturbation_l2", 4),
            "n": int(by_metric.loc["robust_accuracy"]["n"]), "note": by_metric.loc["robust_accuracy"]["message"],
        })
    return lines


def _cell_arrays(run: Run, model: str, defense: str) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(attack id, saved arrays) for every successful cell of a model variant whose artifacts are present."""
    return [(attack, arrays) for (m, d, attack), arrays in run.result.cell_arrays().items() if (m, d) == (model, defense)]


def _min_perturbations(run: Run, model: str, defense: str) -> str | None:
    series = {}
    for attack, arrays in _cell_arrays(run, model, defense):
        if "sample/min_perturbation" in arrays:
            values = arrays["sample/min_perturbation"]
            series[attack] = values[np.isfinite(values) & (values > 0)]
    return figures.distributions(series, "minimal perturbation") if series else None


def _gallery(run: Run, model: str, defense: str) -> list[dict[str, str]]:
    if not run.meta.data.is_image:
        return []
    classes = run.meta.data.classes
    value_range = tuple(run.meta.data.input_range)
    panels = []
    for attack, arrays in _cell_arrays(run, model, defense):
        if "x_adv" not in arrays or len(arrays["index"]) == 0:
            continue
        pick = len(arrays["eps"]) // 2
        eps = float(arrays["eps"][pick])
        clean_caps = [f"{classes[t]}→{classes[p]} {c:.0%}" for t, p, c in zip(arrays["y"], arrays["pred_clean"], arrays["conf_clean"])]
        adv_caps = [f"→{classes[p]} {c:.0%}" for p, c in zip(arrays["pred_adv"][pick], arrays["conf_adv"][pick])]
        image = figures.image_rows(
            [
                ("clean", arrays["x_clean"], clean_caps),
                ("adversarial", arrays["x_adv"][pick], adv_caps),
                ("perturbation (amplified)", figures.amplified(arrays["x_clean"], arrays["x_adv"][pick], value_range), [""] * len(adv_caps)),
            ],
            value_range,
        )
        panels.append({"attack": attack, "eps": "minimal" if math.isnan(eps) else f"{eps:g}", "image": image})
    return panels


def _sanity_rows(run: Run, model: str, defense: str) -> list[dict[str, str]]:
    table = run.table
    rows = table[(table["category"] == Category.SANITY) & (table["model"] == model) & (table["defense"] == defense)]
    out = []
    for _, r in rows.iterrows():
        info = metric_info(r["metric"])
        if info is None or info.unit != "flag":  # a measurement beside the checks (the noise baseline), not a flag
            state, observed = "", fmt_ci(r)
        else:
            state = "waived" if r["status"] == "waived" else ("flagged" if r["value"] == 1.0 else "clear")
            observed = r["message"]
        out.append({"check": r["metric"], "attack": r["attack"], "eps": "" if math.isnan(r["param_value"]) else f"{r['param_value']:g}",
                    "state": state, "state_text": run.t(state) if state else "", "observed": observed})
    return out


def _c2(run: Run) -> dict[str, Any]:
    table = run.table[(run.table["category"] == Category.INTEGRITY) & (run.table["status"] == "ok")]
    budgets = attack_budgets(run.meta.config)
    models = []
    for (model, defense), rows in table.groupby(["model", "defense"], sort=False):
        name = variant_label(model, defense)
        overall = rows[(rows["subset"] == "all") & (rows["metric"] == "robust_accuracy")]
        per_class = rows[(rows["metric"] == "robust_accuracy") & rows["subset"].str.startswith("class=")]
        minimal = rows[rows["metric"].map(panel_of) == "minimal_perturbation"]
        models.append({
            "name": name,
            "curve": figures.robustness_curve(overall, f"{name}: robust accuracy vs eps") if len(overall) else None,
            "heatmap": figures.class_heatmap(per_class, f"{name}: robust accuracy per class") if len(per_class) else None,
            "lines": _robustness_lines(rows, budgets),
            "min_norm": [{"attack": r["attack"], "metric": r["metric"], "value": fmt_ci(r), "n": int(r["n"])} for _, r in minimal.iterrows()],
            "min_figure": _min_perturbations(run, model, defense),
            "gallery": _gallery(run, model, defense),
            "sanity": _sanity_rows(run, model, defense),
        })
    return _characteristic(run, "C-2", {"models": models})


def _d1(run: Run) -> dict[str, Any]:
    meta = run.meta
    return _characteristic(run, "D-1", {
        "versions": meta.versions,
        "hashes": {"config": meta.config_sha256, "data": meta.data.sha256, **{f"model {m.name}": m.sha256 for m in meta.models},
                   **{f"model {variant_label(v.model, v.defense)}": v.sha256 for v in meta.variants}},
        "models": meta.models,
        "cells": [{**asdict(c), "model": variant_label(c.model, c.defense), "seconds": fmt(c.seconds, 2)} for c in meta.cells],
        "machine": meta.machine,
        "seeds": meta.seeds,
        "wall": fmt(meta.wall_seconds, 1),
    })


def _e1(run: Run) -> dict[str, Any]:
    gates = run.result.gates
    regression = gates[gates["kind"] == "regression"] if "kind" in gates else gates.iloc[0:0]
    checks = [{"gate": c["gate"], "where": case_name(c), "verdict": c["verdict"], "verdict_text": run.t(c["verdict"]), "reason": c["reason"]}
              for _, c in regression.iterrows()]
    return _characteristic(run, "E-1", {"baseline": run.meta.baseline, "checks": checks})


def _security(run: Run) -> dict[str, Any]:
    return _characteristic(run, "S", {
        "threat_model": run.config("component").get("threat_model") or run.t("threat_default"),
        "confidentiality": build_confidentiality(run.result),
    })


def _defenses(run: Run) -> dict[str, Any] | None:
    """The trade-off between the defended variants, omitted when every model was audited only as trained."""
    comparison = comparison_of(run.result)
    return comparison_context(comparison, run.t, headline_column(comparison, run.meta.config)) if has_defenses(comparison) else None


def _diagnostics(run: Run) -> dict[str, Any]:
    table = run.table
    errors = table[table["status"] == "error"]
    shown_elsewhere = (Category.INTEGRITY, Category.SANITY, Category.CONFIDENTIALITY, Category.COMPARISON)
    notes = table[(table["message"] != "") & (table["status"] == "ok") & ~table["category"].isin(shown_elsewhere)]
    limitations = [run.t("lim_bounds"), run.t("lim_samples", n=run.meta.data.evaluation_samples)]

    attacks = registry()
    run_attacks = [a["name"] for a in run.meta.config["attacks"]]
    if not any(attacks[name].black_box for name in run_attacks if name in attacks):
        limitations.append(run.t("lim_no_blackbox"))
    if not run.has(Category.CONFIDENTIALITY):
        limitations.append(run.t("lim_no_confidentiality"))
    if not run.has(Category.SANITY):
        limitations.append(run.t("lim_no_checks"))
    not_applicable = table[table["status"] == "not_applicable"]
    return {
        "errors": [{"model": variant_label(r["model"], r["defense"]), "attack": r["attack"] or "(defense)", "message": r["message"]}
                   for _, r in errors.iterrows()],
        "not_applicable": [{"model": variant_label(r["model"], r["defense"]), "attack": r["attack"], "message": r["message"]}
                           for _, r in not_applicable.iterrows()],
        "notes": [{"metric": r["metric"], "subset": r["subset"], "message": r["message"]} for _, r in notes.iterrows()],
        "limitations": limitations,
    }


def _appendix(run: Run) -> dict[str, Any]:
    return {"config_text": run.meta.config_text, "config_path": run.meta.config_path}


SECTIONS: list[tuple[str, Callable[[Run], dict[str, Any] | None]]] = [
    ("scorecard", _scorecard),
    ("A-1", _a1), ("A-2", _a2), ("B-1", _b1), ("B-2", _b2), ("B-3", _b3),
    ("C-1", _c1), ("C-2", _c2), ("D-1", _d1), ("E-1", _e1), ("S", _security),
    ("defenses", _defenses),
    ("diagnostics", _diagnostics),
    ("appendix", _appendix),
]

# Sections that are not a guideline characteristic: their own template, no checklist.
PLAIN_SECTIONS = ("scorecard", "defenses", "diagnostics", "appendix")


def render_html(result: AuditResult, lang: str = "en") -> str:
    run = build_run(result, lang)
    env = template_environment()
    sections = []
    for key, build in SECTIONS:
        context = build(run)
        if context is not None:
            template = f"sections/{key if key in PLAIN_SECTIONS else 'characteristic'}.html.j2"
            sections.append({"id": key, "title": run.t(key), "template": template, "ctx": context,
                             "body": f"sections/{key}.html.j2"})
    return env.get_template("report.html.j2").render(
        meta=result.metadata, sections=sections, t=run.t, lang=lang, cover=_cover(run)
    )


def report_name(lang: str) -> str:
    return "report.html" if lang == "en" else f"report.{lang}.html"


def write_html(result: AuditResult, out_dir: Path, lang: str = "en") -> Path:
    path = out_dir / report_name(lang)
    with figures.stored_in(out_dir / "figures"):
        write_text_atomic(path, render_html(result, lang))
    return path
