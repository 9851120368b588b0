"""The defense trade-offs as people read them: the report's section, its plot, and `kansa compare`.

The numbers come from `reports.comparison` (the analysis, shared with summary.md and the CSV/JSON
files); this module only lays them out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from audit.errors import KansaError
from audit.files import write_text_atomic
from audit.results import UNDEFENDED, load_results
from reports import figures
from reports.comparison import (
    ATTACK_OF,
    CLEAN,
    DETAILS,
    FAILED,
    FLAGS,
    GROUP,
    MIA_AUC,
    WAIVED,
    Axes,
    combine,
    comparison_table,
    delta_text,
    exclusions,
    format_value,
    front_text,
    grouped,
    membership_attacks,
    mismatches,
    on_front,
    pareto_front,
    parse_robust_column,
    resolve_axes,
    row_label,
    run_reference,
    run_setting,
    value_columns,
    variant_name,
    write_comparison,
)
from reports.i18n import translator
from reports.templating import template_environment


def trade_off_figure(comparison: pd.DataFrame, front: pd.Series, axes: Axes, with_run: bool = False) -> str | None:
    """The trade-off plot of the variants with both accuracies, or None when there is no robust column.

    Variants left off the front are crossed out, so a flagged number cannot read as the best one.
    """
    if axes.robust is None:
        return None
    shown = comparison[comparison[CLEAN].notna() & comparison[axes.robust].notna()]
    if shown.empty:
        return None
    leakage = shown[MIA_AUC].to_numpy(dtype=np.float64)
    attack, eps = parse_robust_column(axes.robust)
    groups = GROUP in shown  # runs compared despite their differences: one front per group, so no line across them
    return figures.trade_off(
        labels=[variant_name(r, with_run) + (f" [{r[GROUP]}]" if groups else "") for _, r in shown.iterrows()],
        clean=shown[CLEAN].to_numpy(dtype=np.float64),
        robust=shown[axes.robust].to_numpy(dtype=np.float64),
        leakage=leakage if np.isfinite(leakage).any() else None,
        front=front.loc[shown.index].fillna(False).to_numpy(dtype=bool),
        frontier=np.zeros(len(shown), dtype=bool) if groups else pareto_front(shown, axes.robust, privacy=False).fillna(False).to_numpy(dtype=bool),
        left_out=np.array([bool(reasons) for reasons in exclusions(shown, axes)], dtype=bool),
        robust_label=f"robust accuracy ({attack}, eps {eps:g})",
        leakage_label="best membership AUC (lower is better)",
        front_label="Pareto front" + (" (with membership AUC)" if axes.privacy else ""),
    )


def comparison_context(comparison: pd.DataFrame, t: Callable[..., str], robust: str | None = None) -> dict[str, Any]:
    """What templates/sections/defenses.html.j2 shows: the plot, the front, and per model a table of variants."""
    axes = resolve_axes(comparison, robust)
    front = pareto_front(comparison, axes.robust, axes.privacy)
    reasons = dict(zip(comparison.index, exclusions(comparison, axes)))
    with_run = "run" in comparison and comparison["run"].nunique() > 1
    groups = []
    for key, rows in comparison.groupby([k for k in ("run", GROUP, "model") if k in comparison], sort=False):
        title = " · ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        lines = []
        for column in value_columns(comparison):
            if rows[column].isna().all():
                continue  # nothing measured: no line rather than a line of dashes
            cells = []
            for _, r in rows.iterrows():
                text = format_value(column, r[column])
                attack = r[ATTACK_OF[column]] if column in ATTACK_OF else ""
                if attack:
                    text += f" ({attack})"
                cells.append({"value": text, "delta": delta_text(r, column, t)})
            lines.append({"label": row_label(column, t), "cells": cells, "key": column == axes.robust})
        pareto = [front_text(v, t) for v in front.loc[rows.index]]
        flags = [r[FLAGS] or (f"{t('cmp_waived')}: {r[WAIVED]}" if r[WAIVED] else "–") for _, r in rows.iterrows()]
        groups.append({
            "title": title,
            "variants": [{"name": r["defense"], "baseline": r["defense"] == UNDEFENDED, "flagged": bool(r[FLAGS])} for _, r in rows.iterrows()],
            "lines": lines,
            "flags": flags if (rows[FLAGS] != "").any() or (rows[WAIVED] != "").any() else None,
            "pareto": pareto,
            "details": [{"defense": r["defense"], "text": r[DETAILS]} for _, r in rows.iterrows() if r[DETAILS]],
            "failed": [{"defense": r["defense"], "text": r[FAILED]} for _, r in rows.iterrows() if r[FAILED]],
        })
    left_out = [{"name": variant_name(r, with_run), "why": "; ".join(reason.text(t) for reason in reasons[i])}
                for i, r in comparison.iterrows() if reasons[i]]
    return {
        "figure": trade_off_figure(comparison, front, axes, with_run),
        "objectives": [row_label(objective, t) for objective in axes.objectives],
        "without_privacy": t("cmp_without_privacy", variants=", ".join(axes.without_privacy)) if axes.without_privacy else "",
        "front": [variant_name(r, with_run) for i, r in comparison.iterrows() if on_front(front.loc[i])],
        "left_out": left_out,
        "groups": groups,
    }


def render_comparison_html(comparison: pd.DataFrame, runs: list[dict[str, Any]], lang: str = "en", robust: str | None = None,
                           differences: Sequence[str] = ()) -> str:
    """comparison.html of `kansa compare`: the runs it read and how they differ, then the same trade-off section as the report."""
    t = translator(lang)
    return template_environment().get_template("comparison.html.j2").render(
        ctx=comparison_context(comparison, t, robust), runs=runs, differences=differences, t=t, lang=lang
    )


def _labels(run_dirs: Sequence[Path], run_ids: Sequence[str]) -> list[str]:
    """Folder names, which people choose; the run id is added where two folders share a name."""
    names = [Path(d).resolve().name for d in run_dirs]
    labels = [n if names.count(n) == 1 else f"{n}#{r}" for n, r in zip(names, run_ids)]
    return [label if labels.count(label) == 1 else f"{label}#{i + 1}" for i, label in enumerate(labels)]


def compare_runs(run_dirs: Sequence[str | Path], out_dir: Path, lang: str = "en", robust: str | None = None,
                 allow_mismatch: bool = False) -> dict[str, Path]:
    """`kansa compare`: the combined table, its Pareto front and plot from several finished runs, written to `out_dir`.

    Runs that differ in data, attacked samples or attack budgets are refused, naming the first
    difference; with `allow_mismatch` they are compared in groups, each with its own front.
    """
    loaded = [load_results(d) for d in run_dirs]
    labels = _labels([Path(d) for d in run_dirs], [meta.run_id for _, meta in loaded])
    combined = combine([comparison_table(table, meta.defenses, run=label, membership=membership_attacks(meta))
                        for (table, meta), label in zip(loaded, labels)])
    settings = [run_setting(meta, label) for (_, meta), label in zip(loaded, labels)]
    differences = mismatches(combined, settings)
    if differences and not allow_mismatch:
        more = f" (and {len(differences) - 1} more difference{'s' * (len(differences) > 2)})" if len(differences) > 1 else ""
        raise KansaError(f"{differences[0]}{more}; their numbers are not comparable side by side "
                         "(--allow-mismatch compares them anyway, each data set and setting judged apart)")
    if differences:
        combined = grouped(combined, settings)
    runs = [run_reference(meta, label, Path(d)) for (_, meta), label, d in zip(loaded, labels, run_dirs)]
    resolve_axes(combined, robust)  # a bad --robust is an input error before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    written = write_comparison(combined, out_dir, runs, robust, differences)
    written["comparison_html"] = out_dir / "comparison.html"
    write_text_atomic(written["comparison_html"], render_comparison_html(combined, runs, lang, robust, differences))
    return written
