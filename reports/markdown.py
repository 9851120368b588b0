"""summary.md: the verdict first, then what failed or could not be decided, then the headline numbers.

Written for a CI step summary or a pull-request comment; Markdown-special characters in user
text are escaped so a model name cannot break the tables.
"""

from __future__ import annotations

import re
from pathlib import Path

from audit.files import write_text_atomic
from audit.gates import FAIL, INCONCLUSIVE, PASS, SEVERITY, overall_verdict
from audit.metrics import CHARACTERISTICS
from audit.results import AuditResult, variant_label
from reports.comparison import (
    CLEAN,
    MIA_AUC,
    MIA_AUC_ATTACK,
    comparison_of,
    delta_text,
    exclusions,
    format_value,
    front_text,
    has_defenses,
    pareto_front,
    resolve_axes,
    row_label,
)
from reports.formatting import fmt_ci
from reports.i18n import translator
from reports.junit import case_name
from reports.queries import NORM_NAMES, attacks_behind, headline, headline_column
from reports.scorecard import build_run, traffic_light

LIGHTS = {"red": "🔴", "amber": "🟠", "grey": "⚪", "green": "🟢"}
LIGHT_ORDER = {"red": 3, "amber": 2, "grey": 1, "green": 0}
ICONS = {PASS: "✅ pass", FAIL: "❌ fail", INCONCLUSIVE: "⚠️ inconclusive", None: "no gates"}


def escape(text: object) -> str:
    """Entities for HTML, backslashes for Markdown: user text shows as typed and cannot become markup."""
    html_safe = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_{}\[\]()#+!|~])", r"\\\1", html_safe).replace("\n", " ")


def summary_markdown(result: AuditResult) -> str:
    meta, table, gates = result.metadata, result.table, result.gates
    verdict = overall_verdict(gates)
    lines = [f"## Kansa audit: {escape(meta.title)}", "", f"**Verdict: {ICONS[verdict]}** · run `{meta.run_id}` · {meta.created}", ""]
    if meta.baseline:
        lines += [f"Baseline: {escape(meta.baseline)}", ""]
    run = build_run(result, "en")
    lights = [(c, traffic_light(run, c)) for c in CHARACTERISTICS]
    lines += ["### Scorecard", "", "| characteristic | status |", "| --- | --- |"]
    lines += [f"| {escape(run.t(c))} | {LIGHTS[light]} {run.t(light)} |" for c, light in sorted(lights, key=lambda cl: -LIGHT_ORDER[cl[1]])]
    lines.append("")
    if not gates.empty:
        ordered = gates.assign(rank=gates["verdict"].map(SEVERITY)).sort_values("rank", ascending=False, kind="stable")
        counts = ", ".join(f"{int((gates['verdict'] == v).sum())} {v}" for v in (FAIL, INCONCLUSIVE, PASS))
        lines += [f"### Gates ({counts})", "", "| verdict | gate | where | rule | evidence |", "| --- | --- | --- | --- | --- |"]
        for _, check in ordered.iterrows():
            lines.append(
                f"| {ICONS[check['verdict']]} | {escape(check['gate'])} | {escape(case_name(check))} | {escape(check['rule'])} | {escape(check['reason'])} |"
            )
        lines.append("")
    for status, heading in (("error", "Failed attack cells and defenses"), ("not_applicable", "Attacks that do not apply to a model")):
        cells = table[table["status"] == status]
        if not cells.empty:
            lines += [f"### {heading}", ""]
            lines += [f"- {escape(variant_label(r['model'], r['defense']))} / {escape(r['attack'] or '(defense)')}: {escape(r['message'])}"
                      for _, r in cells.iterrows()]
            lines.append("")
    models = headline(table, meta.config)
    if models:
        t = translator("en")
        chosen = [eps for eps, _ in models[0].robust]
        lines += ["### Headline", "", "| model | clean accuracy (test) | " + " | ".join(escape(t("robust_at", norm=NORM_NAMES[e.norm], eps=f"{e.eps:g}"))
                                                                          for e in chosen) + " |",
                  "| --- | --- | " + "--- | " * len(chosen)]
        for item in models:
            cells = [f"{fmt_ci(row)} ({escape(t('over_attacks', attacks=attacks_behind(row)))})" if row is not None else "–"
                     for _, row in item.robust]
            lines.append(f"| {escape(item.model)} | {fmt_ci(item.clean)} | " + " | ".join(cells) + " |")
        lines += ["", *(escape(e.text(t)) for e in chosen), ""]
    lines += _trade_offs(result)
    return "\n".join(lines)


def _trade_offs(result: AuditResult) -> list[str]:
    """The defended variants against their baselines (the headline columns of comparison.csv), when there are any."""
    comparison = comparison_of(result)
    if not has_defenses(comparison):
        return []
    t = translator("en")
    axes = resolve_axes(comparison, headline_column(comparison, result.metadata.config))
    front = pareto_front(comparison, axes.robust, axes.privacy)
    reasons = dict(zip(comparison.index, exclusions(comparison, axes)))
    columns = [c for c in (CLEAN, axes.robust, MIA_AUC, "size_bytes", "inference_ms_per_sample") if c and comparison[c].notna().any()]
    lines = ["### Defenses and trade-offs", "", "| model | defense | " + " | ".join(escape(row_label(c, t)) for c in columns) + " | Pareto front |",
             "| --- | --- | " + "--- | " * len(columns) + "--- |"]
    for index, row in comparison.iterrows():
        cells = []
        for column in columns:
            notes = [text for text in (delta_text(row, column, t), escape(row[MIA_AUC_ATTACK]) if column == MIA_AUC else "") if text]
            cells.append(format_value(column, row[column]) + (f" ({'; '.join(notes)})" if notes else ""))
        left_out = "; ".join(reason.text(t) for reason in reasons[index])
        pareto = front_text(front.loc[index], t) + (f" (left out: {escape(left_out)})" if left_out else "")
        lines.append(f"| {escape(row['model'])} | {escape(row['defense'])} | " + " | ".join(cells) + f" | {pareto} |")
    lines += [""] + ([escape(t("cmp_without_privacy", variants=", ".join(axes.without_privacy))), ""] if axes.without_privacy else [])
    lines += ["Changes are against the same model's `none` variant; every number is in comparison.csv. A variant left out of the Pareto "
              "front is neither on it nor used to judge others.", ""]
    return lines


def write_summary(result: AuditResult, out_dir: Path) -> Path:
    path = out_dir / "summary.md"
    write_text_atomic(path, summary_markdown(result))
    return path
