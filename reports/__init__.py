"""Renderers: one module per output format, each reading the results table and run metadata only."""

from __future__ import annotations

from pathlib import Path

from audit.files import write_npz_atomic
from audit.results import AuditResult


def write_outputs(result: AuditResult, out_dir: Path) -> dict[str, Path]:
    """Write every output of a run into `out_dir`; each file atomically, the report last."""
    from reports.html import write_html
    from reports.tabular import write_csv, write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    for key, arrays in result.artifacts.items():
        write_npz_atomic(out_dir / "artifacts" / f"{key}.npz", arrays)
    return {
        "json": write_json(result, out_dir),
        "csv": write_csv(result, out_dir),
        "html": write_html(result, out_dir),
    }
