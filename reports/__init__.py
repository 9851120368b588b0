"""Renderers: one module per output format, each reading the results table, verdicts and run metadata only."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from audit.files import write_npz_atomic
from audit.results import AuditResult, make_table
from reports.comparison import comparison_of, run_reference, write_comparison
from reports.html import write_html
from reports.junit import write_junit
from reports.markdown import write_summary
from reports.queries import headline_column
from reports.tabular import write_csv, write_gates_json, write_json
from reports.tracking import failure_row, log_run


def write_gate_outputs(result: AuditResult, out_dir: Path) -> dict[str, Path]:
    """The verdict files a CI job reads: gates.json, junit.xml, summary.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "gates": write_gates_json(result, out_dir),
        "junit": write_junit(result, out_dir),
        "summary": write_summary(result, out_dir),
    }


def write_outputs(result: AuditResult, out_dir: Path, lang: str = "en", tracking: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write every output of a run into `out_dir` (each file atomically, the report last), then log it to MLflow when
    `tracking` asks; a run that could not be logged gets a `tracking_failed` row, and its outputs are written again with it."""
    written = _write_all(result, out_dir, lang)
    mlflow = (tracking or {}).get("mlflow")
    if mlflow is not None:
        reason = log_run(result, out_dir, mlflow)
        if reason is not None:
            print(f"kansa: the audit could not be logged to MLflow ({reason}); every output is on disk", file=sys.stderr)
            result.table = pd.concat([result.table, make_table([failure_row(reason, mlflow["uri"])])], ignore_index=True)
            written = _write_all(result, out_dir, lang)
    return written


def _write_all(result: AuditResult, out_dir: Path, lang: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for key, arrays in result.artifacts.items():
        write_npz_atomic(out_dir / "artifacts" / f"{key}.npz", arrays)
    written = {"json": write_json(result, out_dir), "csv": write_csv(result, out_dir)}
    comparison = comparison_of(result)
    written.update(write_comparison(comparison, out_dir, [run_reference(result.metadata)], headline_column(comparison, result.metadata.config)))
    written.update(write_gate_outputs(result, out_dir))
    written["html"] = write_html(result, out_dir, lang)
    return written
