"""results.json (versioned schema, docs/results-schema.md) and results.csv, straight from the table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from audit.files import write_text_atomic
from audit.gates import overall_verdict
from audit.results import SCHEMA_VERSION, AuditResult


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def results_json(result: AuditResult) -> str:
    records = [{k: _clean(v) for k, v in row.items()} for row in result.table.to_dict(orient="records")]
    document = {"schema": SCHEMA_VERSION, "metadata": result.metadata.to_json(), "results": records}
    return json.dumps(document, indent=1, ensure_ascii=False, default=str, allow_nan=False) + "\n"


def write_json(result: AuditResult, out_dir: Path) -> Path:
    path = out_dir / "results.json"
    write_text_atomic(path, results_json(result))
    return path


def write_csv(result: AuditResult, out_dir: Path) -> Path:
    path = out_dir / "results.csv"
    write_text_atomic(path, result.table.to_csv(index=False))
    return path


def write_gates_json(result: AuditResult, out_dir: Path) -> Path:
    """gates.json: the verdicts of a run (rewritten by `kansa gate`, while results.json stays as measured)."""
    path = out_dir / "gates.json"
    checks = [{k: _clean(v) for k, v in row.items()} for row in result.gates.to_dict(orient="records")]

    document = {
        "schema": "kansa.gates/1",
        "run_id": result.metadata.run_id,
        "verdict": overall_verdict(result.gates),
        "baseline": result.metadata.baseline,
        "checks": checks,
    }
    write_text_atomic(path, json.dumps(document, indent=1, ensure_ascii=False, default=str, allow_nan=False) + "\n")
    return path
