"""The results table: one row per (model, defense, attack, param, subset, metric).

Every report, gate and comparison reads this table and nothing else, so whatever a
renderer needs must be a row here (or a per-cell artifact named in the run metadata).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit.stats import mean_interval, wilson_interval

SCHEMA_VERSION = "kansa.results/1"

COLUMNS = [
    "model",
    "defense",
    "attack",
    "category",
    "param",
    "param_value",
    "subset",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "std",
    "status",
    "message",
]

# Rows of these categories measure time and vary between identical runs; everything else is reproducible.
TIMING_CATEGORIES = ("cost",)


def rate_row(metric: str, successes: int, n: int, **where: Any) -> dict[str, Any]:
    """A proportion with its Wilson interval."""
    low, high = wilson_interval(int(successes), int(n))
    value = successes / n if n else math.nan
    return {"metric": metric, "value": value, "ci_low": low, "ci_high": high, "n": int(n), **where}


def mean_row(metric: str, values: np.ndarray, **where: Any) -> dict[str, Any]:
    """An average with a normal interval."""
    mean, low, high = mean_interval(values)
    return {"metric": metric, "value": mean, "ci_low": low, "ci_high": high, "n": int(np.size(values)), **where}


def count_row(metric: str, count: float, **where: Any) -> dict[str, Any]:
    """A plain measured quantity with no sampling error (a count, a size, a time)."""
    return {"metric": metric, "value": float(count), **where}


def error_row(message: str, **where: Any) -> dict[str, Any]:
    return {"metric": "error", "status": "error", "message": message, **where}


def make_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Normalise row dicts into the fixed schema (missing cells get neutral defaults)."""
    defaults: dict[str, Any] = {
        "model": "",
        "defense": "none",
        "attack": "",
        "category": "",
        "param": "",
        "param_value": math.nan,
        "subset": "all",
        "metric": "",
        "value": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "n": 0,
        "std": math.nan,
        "status": "ok",
        "message": "",
    }
    unknown = {key for row in rows for key in row} - set(COLUMNS)
    if unknown:
        raise ValueError(f"result rows carry unknown columns: {sorted(unknown)}")
    table = pd.DataFrame([{**defaults, **row} for row in rows], columns=COLUMNS)
    for column in ("value", "ci_low", "ci_high", "param_value", "std"):
        table[column] = table[column].astype("float64")
    table["n"] = table["n"].astype("int64")
    return table


@dataclass
class AuditResult:
    """What a run returns to Python callers: the table, its metadata, and where it was written."""

    table: pd.DataFrame
    metadata: dict[str, Any]
    out_dir: Path | None = None
    artifacts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    gates: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def errors(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "error"]

    def metric(self, metric: str, **where: Any) -> pd.DataFrame:
        """Rows of one metric, filtered by any column, e.g. `metric("robust_accuracy", attack="pgd")`."""
        selected = self.table[self.table["metric"] == metric]
        for column, wanted in where.items():
            selected = selected[selected[column] == wanted]
        return selected


def load_results(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a results.json (or the run folder holding one) back into the table and its metadata."""
    import json

    from audit.errors import KansaError

    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise KansaError(f"results file not found: {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KansaError(f"{path}: not a readable results.json ({exc})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA_VERSION:
        found = document.get("schema") if isinstance(document, dict) else None
        raise KansaError(f"{path}: expected a Kansa results file with schema {SCHEMA_VERSION}, found {found!r}")
    rows = [{k: (math.nan if v is None and k in ("value", "ci_low", "ci_high", "param_value", "std") else v) for k, v in r.items()} for r in document["results"]]
    return make_table(rows), document["metadata"]


def load_run(run_dir: str | Path) -> AuditResult:
    """A finished run folder back as an AuditResult: table, metadata, verdicts and artifacts, to re-render it."""
    import json

    from audit.errors import KansaError

    run_dir = Path(run_dir)
    table, metadata = load_results(run_dir)
    gates = pd.DataFrame()
    gates_path = run_dir / "gates.json"
    if gates_path.is_file():
        try:
            checks = json.loads(gates_path.read_text(encoding="utf-8"))["checks"]
        except (OSError, ValueError, KeyError) as exc:
            raise KansaError(f"{gates_path}: not a readable gates file ({exc})") from None
        gates = pd.DataFrame(checks)
        for column in ("value", "ci_low", "ci_high", "param_value", "baseline"):
            if column in gates:
                gates[column] = pd.to_numeric(gates[column]).astype("float64")
    artifacts = {}
    for path in sorted((run_dir / "artifacts").glob("*.npz")):
        with np.load(path, allow_pickle=False) as archive:
            artifacts[path.stem] = {key: archive[key] for key in archive.files}
    return AuditResult(table=table, metadata=metadata, out_dir=run_dir, artifacts=artifacts, gates=gates)
