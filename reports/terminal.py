"""The summary `kansa run` prints at the end, in the spirit of pytest's: short enough to read in a CI log.

Headline numbers per model variant (at the headline eps, saying why that one), what a reader must
not miss (sanity flags, failed cells, attacks that did not apply), and where the outputs are. The
gate checks and the verdict follow it (printed by the CLI, as for `kansa gate`).
"""

from __future__ import annotations

from pathlib import Path

from audit.checks import masking_flags
from audit.results import AuditResult, variant_label
from reports.formatting import fmt_ci
from reports.i18n import translator
from reports.queries import NORM_NAMES, attacks_behind, headline

RULE = "=" * 24


def terminal_summary(result: AuditResult, report: Path, out_dir: Path) -> str:
    t = translator("en")
    table, meta = result.table, result.metadata
    lines = [f"{RULE} kansa: {meta.title} {RULE}", f"data {meta.data.name}: {meta.data.evaluation_samples} attacked samples; "
             f"{len(meta.cells)} attack cells; the run took {meta.wall_seconds:.1f} s"]
    models = headline(table, meta.config)
    if models:
        chosen = [eps for eps, _ in models[0].robust]
        # the attacks behind each column, as the first variant measured them; a variant with others says so in its cell
        behind = [next((attacks_behind(row) for item in models if (row := item.robust[k][1]) is not None), "") for k in range(len(chosen))]
        header = ["variant", "clean accuracy", *(f"robust @ eps {e.eps:g} ({NORM_NAMES[e.norm]}, over {b})" for e, b in zip(chosen, behind))]

        def robust(row: object, common: str) -> str:
            if row is None:
                return "–"
            own = attacks_behind(row)
            return fmt_ci(row) + ("" if own == common else f" (over {own})")

        body = [[item.model, fmt_ci(item.clean), *(robust(row, b) for (_, row), b in zip(item.robust, behind))] for item in models]
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines += ["", *("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *body])]
        lines += [f"  {e.text(t)}" for e in chosen]
    flagged = []
    for model, defense in dict.fromkeys(zip(table["model"], table["defense"])):
        flags = masking_flags(table, model, defense) if model else None
        if flags is not None and not flags.empty:
            flagged.append(f"{variant_label(model, defense)}: {', '.join(sorted(set(flags['metric'])))}")
    if flagged:
        lines += ["", "sanity flags (their robustness numbers may reflect masked gradients; docs/checks.md):", *(f"  {f}" for f in flagged)]
    for status, heading in (("error", "failed"), ("not_applicable", "not applicable")):
        rows = table[table["status"] == status]
        if not rows.empty:
            lines += ["", f"{heading}:"]
            lines += [f"  {variant_label(r['model'], r['defense'])} / {r['attack'] or '(defense)'}: {_short(r['message'])}" for _, r in rows.iterrows()]
    lines += ["", f"report:  {report}", f"results: {out_dir / 'results.json'}, {out_dir / 'results.csv'}"]
    return "\n".join(lines)


def _short(message: str, limit: int = 160) -> str:
    message = " ".join(str(message).split())
    return message if len(message) <= limit else message[: limit - 1] + "…"
