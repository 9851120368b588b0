"""The report's confidentiality section: membership inference, model inversion, attribute inference, and any other.

Everything comes from the results table and the per-cell artifacts (ROC points, per-sample
scores, reconstructions); nothing is recomputed here except the figures. Which panel shows an
attack is read from the metric registry (`Metric.panel` of the metrics its rows carry): the three
families Kansa ships have their own panels, any other attack (a plugin's) a generic one that lists
its metrics with their declared meaning and format.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from audit.metrics import Category, metric_info, panel_of
from audit.results import AuditResult, RunMetadata, variant_label
from reports import figures
from reports.formatting import fmt_ci, shown_with_interval


def _fmt_ci(row: pd.Series | None) -> str:
    return "–" if row is None else fmt_ci(row)


def _one(rows: pd.DataFrame, metric: str, **where: Any) -> pd.Series | None:
    selected = rows[rows["metric"] == metric]
    for column, value in where.items():
        selected = selected[np.isclose(selected[column], value)] if isinstance(value, float) else selected[selected[column] == value]
    return selected.iloc[0] if len(selected) else None


def _count(rows: pd.DataFrame, metric: str) -> str:
    row = _one(rows, metric)
    return "–" if row is None else f"{int(row['value']):,}"


def _membership(variant: tuple[str, str], rows: pd.DataFrame, arrays: dict[tuple[str, str, str], dict[str, np.ndarray]],
                meta: RunMetadata) -> dict[str, Any] | None:
    attacks = list(dict.fromkeys(rows["attack"]))
    if not attacks:
        return None
    fprs = sorted(set(rows[rows["metric"] == "tpr_at_fpr"]["param_value"].dropna()))
    lines, notes, curves, panels = [], [], [], []
    best, best_auc = None, -math.inf
    for attack in attacks:
        cell = rows[rows["attack"] == attack]
        auc = _one(cell, "auc")
        tprs = []
        for alpha in fprs:
            row = _one(cell, "tpr_at_fpr", param_value=float(alpha))
            flagged = row is not None and bool(row["message"])
            tprs.append(_fmt_ci(row) + (" *" if flagged else ""))
            if flagged:
                notes.append(f"{attack}: {row['message']}")
        lines.append(
            {
                "attack": attack,
                "auc": _fmt_ci(auc),
                "leakage": _fmt_ci(_one(cell, "leakage")),
                "advantage": _fmt_ci(_one(cell, "advantage")),
                "balanced_accuracy": _fmt_ci(_one(cell, "balanced_accuracy")),
                "tpr": tprs,
                "members": _count(cell, "members"),
                "non_members": _count(cell, "non_members"),
                "attacker": _count(cell, "attacker_samples") if _one(cell, "attacker_samples") is not None else _count(cell, "known_members"),
            }
        )
        for _, r in cell[(cell["message"] != "") & (cell["metric"] != "tpr_at_fpr")].iterrows():
            notes.append(f"{attack}: {r['message']}")
        found = arrays.get((*variant, attack))
        if found is None or "roc_fpr" not in found:
            continue
        curves.append((attack if auc is None else f"{attack} (AUC {auc['value']:.2f})", found["roc_fpr"], found["roc_tpr"]))
        is_member = found["sample/is_member"].astype(bool)
        scores = found["sample/score"]
        panels.append((attack, scores[is_member], scores[~is_member]))
        if auc is not None and auc["value"] > best_auc and "exposed_x" in found:
            best, best_auc = attack, auc["value"]
    exposed = None
    if best is not None:
        found = arrays[(*variant, best)]
        classes = meta.data.classes
        samples = [{"row": int(i), "label": classes[int(c)], "score": f"{s:.3g}"}
                   for i, c, s in zip(found["exposed_index"], found["exposed_label"], found["exposed_score"])]
        captions = [f"#{e['row']} {e['label']} s={e['score']}" for e in samples]
        exposed = {
            "attack": best,
            "image": figures.image_rows([("most exposed", found["exposed_x"], captions)], tuple(meta.data.input_range))
            if meta.data.is_image
            else None,
            "samples": samples,
        }
    return {
        "fprs": [f"{a:g}" for a in fprs],
        "lines": lines,
        "notes": list(dict.fromkeys(notes)),
        "roc": figures.roc_curves(curves, variant_label(*variant)) if curves else None,
        "histograms": figures.score_histograms(panels, variant_label(*variant)) if panels else None,
        "exposed": exposed,
    }


def _inversion(variant: tuple[str, str], rows: pd.DataFrame, arrays: dict[tuple[str, str, str], dict[str, np.ndarray]],
               meta: RunMetadata) -> list[dict[str, Any]]:
    panels = []
    classes = meta.data.classes
    for attack in dict.fromkeys(rows["attack"]):
        cell = rows[rows["attack"] == attack]
        measures = []
        for metric, label in (
            ("inversion_confidence", "inv_confidence"),
            ("inversion_similarity_own", "inv_similarity_own"),
            ("inversion_similarity_other", "inv_similarity_other"),
            ("inversion_closest_own", "inv_closest_own"),
        ):
            measures.append(
                {"label": label, "attack": _fmt_ci(_one(cell, metric, subset="all")), "baseline": _fmt_ci(_one(cell, metric, subset="baseline"))}
            )
        found = arrays.get((*variant, attack))
        image = None
        if found is not None and meta.data.is_image:
            k = len(found["confidence"])
            own = np.diag(found["similarity"])
            base_own = np.diag(found["baseline_similarity"])
            image = figures.image_rows(
                [
                    ("reconstruction", found["reconstructions"], [f"{classes[c]} p={found['confidence'][c]:.2f} r={own[c]:.2f}" for c in range(k)]),
                    ("start (baseline)", found["baseline"], [f"p={found['baseline_confidence'][c]:.2f} r={base_own[c]:.2f}" for c in range(k)]),
                    ("class mean (train)", found["class_means"], [classes[c] for c in range(k)]),
                ],
                tuple(meta.data.input_range),
            )
        panels.append({"attack": attack, "measures": measures, "gain": _fmt_ci(_one(cell, "inversion_gain")), "iterations": _count(cell, "iterations"), "image": image})
    return panels


def _attribute(rows: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for attack in dict.fromkeys(rows["attack"]):
        cell = rows[rows["attack"] == attack]
        lines = []
        for split, label in (("split=train", "attr_members"), ("split=holdout", "attr_non_members")):
            lines.append(
                {
                    "records": label,
                    "attack": _fmt_ci(_one(cell, "attribute_accuracy", subset=split)),
                    "baseline": _fmt_ci(_one(cell, "attribute_accuracy_baseline", subset=split)),
                    "majority": _fmt_ci(_one(cell, "attribute_accuracy_majority", subset=split)),
                    "gain": _fmt_ci(_one(cell, "attribute_gain", subset=split)),
                }
            )
        out.append({"attack": attack, "lines": lines, "values": _count(cell, "feature_values"), "attacker": _count(cell, "attacker_samples")})
    return out


def _generic(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Attacks no dedicated panel presents: each metric with its declared meaning, as the registry describes it."""
    out = []
    for attack, cell in rows.groupby("attack", sort=False):
        lines = []
        for _, r in cell.iterrows():
            info = metric_info(r["metric"])
            lines.append({"metric": r["metric"], "meaning": info.meaning if info else "", "subset": r["subset"],
                          "at": "" if math.isnan(r["param_value"]) else f"{r['param']}={r['param_value']:g}",
                          "value": shown_with_interval(r), "n": f"{int(r['n']):,}" if r["n"] else "", "message": r["message"]})
        out.append({"attack": attack, "lines": lines})
    return out


def _panel(cell: pd.DataFrame) -> str:
    """The panel of one attack's rows: the first one its metrics declare, "" (generic) when none does."""
    return next((panel for panel in map(panel_of, cell["metric"]) if panel), "")


def build_confidentiality(result: AuditResult) -> dict[str, Any] | None:
    """Context for templates/sections/confidentiality.html.j2, or None when no confidentiality attack ran."""
    table = result.table[result.table["category"] == Category.CONFIDENTIALITY]
    if table.empty:
        return None
    errors = [{"model": variant_label(r["model"], r["defense"]), "attack": r["attack"], "message": r["message"]} for _, r in table[table["status"] == "error"].iterrows()]
    ok = table[table["status"] == "ok"]
    arrays = result.cell_arrays()
    models = []
    for variant, rows in ok.groupby(["model", "defense"], sort=False):
        panels = {attack: _panel(cell) for attack, cell in rows.groupby("attack", sort=False)}

        def of(panel: str) -> pd.DataFrame:
            return rows[rows["attack"].map(panels) == panel]

        model = next(m for m in result.metadata.models if m.name == variant[0])
        record = next((v for v in result.metadata.variants if (v.model, v.defense) == variant), None)
        entry = {
            "name": variant_label(*variant),
            "members": f"members_{model.members}",
            "reference": record.reference if record is not None and record.reference else model.reference,
            "membership": _membership(variant, of("membership"), arrays, result.metadata),
            "inversion": _inversion(variant, of("inversion"), arrays, result.metadata),
            "attribute": _attribute(of("attribute")),
            "other": _generic(of("")),
        }
        if entry["membership"] or entry["inversion"] or entry["attribute"] or entry["other"]:
            models.append(entry)
    return {"models": models, "errors": errors}
