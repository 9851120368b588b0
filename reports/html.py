"""The HTML report: an ordered list of sections, each a builder (table -> context) and a template.

Adding a section means one builder here and one template under templates/sections/; a builder
returning None leaves its section out (e.g. the gallery for tabular data).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from audit.files import write_text_atomic
from audit.results import AuditResult
from audit.gates import overall_verdict
from reports import figures
from reports.junit import case_name
from reports.queries import headline

TEMPLATES = Path(__file__).parent / "templates"


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:.{digits}f}"
    return str(value)


def fmt_ci(row: pd.Series) -> str:
    """An estimate with its interval, or a plain count; estimates always show the same precision."""
    if math.isnan(row["ci_low"]):
        return fmt(row["value"])
    return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def _summary(result: AuditResult) -> dict[str, Any]:
    table = result.table
    models = [
        {
            "model": item["model"],
            "clean": fmt_ci(item["clean"]),
            "worst": fmt_ci(item["worst"]) if item["worst"] is not None else "–",
            "worst_at": f"{item['worst']['attack']} eps={item['worst']['param_value']:g}" if item["worst"] is not None else "",
        }
        for item in headline(table)
    ]
    gates = [
        {
            "verdict": check["verdict"],
            "gate": check["gate"],
            "where": case_name(check),
            "rule": check["rule"],
            "reason": check["reason"],
            "characteristic": check["characteristic"],
        }
        for _, check in result.gates.iterrows()
    ]
    return {
        "headline": models,
        "verdict": overall_verdict(result.gates),
        "gates": gates,
        "baseline": result.metadata.get("baseline"),
        "errors": int((table["status"] == "error").sum()),
        "findings": int(((table["category"] == "data_quality") & (table["message"] != "")).sum()),
    }


def _data_quality(result: AuditResult) -> dict[str, Any]:
    rows = result.table[result.table["category"] == "data_quality"]
    return {
        "rows": [
            {"metric": r["metric"], "subset": r["subset"], "value": fmt_ci(r), "message": r["message"]}
            for _, r in rows.iterrows()
        ]
    }


def _performance(result: AuditResult) -> dict[str, Any]:
    table = result.table[result.table["category"] == "performance"]
    classes = result.metadata["data"]["classes"]
    models = []
    for model, rows in table.groupby("model", sort=False):
        accuracy = [{"split": r["subset"].split("=", 1)[1], "value": fmt_ci(r), "n": r["n"]} for _, r in rows[rows["metric"] == "accuracy"].iterrows()]
        per_class = []
        for name in classes:
            subset = rows[rows["subset"] == f"class={name}"].set_index("metric")
            per_class.append({"name": name, "precision": fmt_ci(subset.loc["precision"]), "recall": fmt_ci(subset.loc["recall"])})
        confusion = rows[rows["metric"] == "confusion"]
        counts = {r["subset"]: int(r["value"]) for _, r in confusion.iterrows()}
        peak = max(counts.values(), default=1) or 1
        matrix = [
            [{"count": counts[f"true={t};pred={p}"], "shade": round(counts[f"true={t};pred={p}"] / peak, 3)} for p in classes]
            for t in classes
        ]
        models.append({"name": model, "accuracy": accuracy, "per_class": per_class, "classes": classes, "matrix": matrix})
    return {"models": models}


def _robustness(result: AuditResult) -> dict[str, Any] | None:
    table = result.table[(result.table["category"] == "integrity") & (result.table["status"] == "ok")]
    if table.empty:
        return None
    models = []
    for model, rows in table.groupby("model", sort=False):
        overall = rows[rows["subset"] == "all"]
        curve = figures.robustness_curve(overall[overall["metric"] == "robust_accuracy"], f"{model}: robust accuracy vs eps")
        lines = []
        for (attack, eps), cell in overall.groupby(["attack", "param_value"], sort=False):
            by_metric = cell.set_index("metric")
            lines.append(
                {
                    "attack": attack,
                    "eps": f"{eps:g}",
                    "clean": fmt_ci(by_metric.loc["clean_accuracy"]),
                    "robust": fmt_ci(by_metric.loc["robust_accuracy"]),
                    "success": fmt_ci(by_metric.loc["success_rate"]),
                    "linf": fmt(by_metric.loc["perturbation_linf"]["value"], 4),
                    "l2": fmt(by_metric.loc["perturbation_l2"]["value"], 4),
                    "n": int(by_metric.loc["robust_accuracy"]["n"]),
                }
            )
        per_class = rows[(rows["metric"] == "robust_accuracy") & (rows["subset"] != "all")]
        pivot = per_class.assign(column=per_class["attack"] + " " + per_class["param_value"].map("{:g}".format)).pivot_table(
            index="subset", columns="column", values="value", sort=False
        )
        class_table = {
            "columns": list(pivot.columns),
            "rows": [{"name": idx.split("=", 1)[1], "cells": [fmt(v) for v in pivot.loc[idx]]} for idx in pivot.index],
        }
        models.append({"name": model, "curve": curve, "lines": lines, "per_class": class_table})
    return {"models": models}


def _gallery(result: AuditResult) -> dict[str, Any] | None:
    if not result.metadata["data"]["is_image"]:
        return None
    classes = result.metadata["data"]["classes"]
    value_range = tuple(result.metadata["data"]["input_range"])
    panels = []
    for cell in result.metadata["cells"]:
        if cell["status"] != "ok":
            continue
        arrays = result.artifacts.get(Path(cell["artifact"]).stem)
        if arrays is None or len(arrays["index"]) == 0:
            continue
        pick = len(arrays["eps"]) // 2
        eps = float(arrays["eps"][pick])
        clean_caps = [f"{classes[t]}→{classes[p]} {c:.0%}" for t, p, c in zip(arrays["y"], arrays["pred_clean"], arrays["conf_clean"])]
        adv_caps = [f"→{classes[p]} {c:.0%}" for p, c in zip(arrays["pred_adv"][pick], arrays["conf_adv"][pick])]
        image = figures.gallery(arrays["x_clean"], arrays["x_adv"][pick], clean_caps, adv_caps, value_range)
        panels.append({"model": cell["model"], "attack": cell["attack"], "eps": f"{eps:g}", "image": image})
    return {"panels": panels} if panels else None


def _diagnostics(result: AuditResult) -> dict[str, Any]:
    table = result.table
    errors = table[table["status"] == "error"]
    notes = table[(table["message"] != "") & (table["status"] != "error")]
    return {
        "errors": [{"model": r["model"], "attack": r["attack"], "message": r["message"]} for _, r in errors.iterrows()],
        "notes": [{"where": r["category"], "metric": r["metric"], "subset": r["subset"], "message": r["message"]} for _, r in notes.iterrows()],
    }


def _environment(result: AuditResult) -> dict[str, Any]:
    meta = result.metadata
    return {
        "versions": meta["versions"],
        "hashes": {"config": meta["config_sha256"], "data": meta["data"]["sha256"], **{f"model {m['name']}": m["sha256"] for m in meta["models"]}},
        "models": meta["models"],
        "cells": [{**c, "seconds": fmt(c["seconds"], 2)} for c in meta["cells"]],
        "machine": meta["machine"],
        "wall": fmt(meta["wall_seconds"], 1),
    }


def _appendix(result: AuditResult) -> dict[str, Any]:
    return {"config_text": result.metadata["config_text"], "config_path": result.metadata["config_path"]}


SECTIONS: list[tuple[str, str, Callable[[AuditResult], dict[str, Any] | None]]] = [
    ("summary", "Summary", _summary),
    ("data_quality", "Data quality", _data_quality),
    ("performance", "Correctness of the trained model", _performance),
    ("robustness", "Stability: robustness to adversarial examples", _robustness),
    ("gallery", "Adversarial examples", _gallery),
    ("diagnostics", "Diagnostics", _diagnostics),
    ("environment", "Environment and reproducibility", _environment),
    ("appendix", "Appendix: configuration", _appendix),
]


def render_html(result: AuditResult) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined)
    sections = []
    for key, title, build in SECTIONS:
        context = build(result)
        if context is not None:
            sections.append({"id": key, "title": title, "template": f"sections/{key}.html.j2", "ctx": context})
    return env.get_template("report.html.j2").render(meta=result.metadata, sections=sections)


def write_html(result: AuditResult, out_dir: Path) -> Path:
    path = out_dir / "report.html"
    write_text_atomic(path, render_html(result))
    return path
