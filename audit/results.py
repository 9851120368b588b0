"""The results table: one row per (model, defense, attack, param, subset, metric).

Every report, gate and comparison reads this table and nothing else, so whatever a
renderer needs must be a row here (or a per-cell artifact named in the run metadata).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from audit.errors import KansaError
from audit.metrics import Category
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
TIMING_CATEGORIES = (Category.COST,)

# The `defense` of the undefended variant of a model, which every audit includes.
TEST_CORRECT = "sample/test_correct"  # a variant artifact: which test samples it classifies correctly
UNDEFENDED = "none"


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


def variant_label(model: str, defense: str) -> str:
    """How a model variant is named in reports and verdicts: the model alone as trained, `model / defense` when defended."""
    return model if defense == UNDEFENDED else f"{model} / {defense}"


def not_applicable_row(message: str, **where: Any) -> dict[str, Any]:
    """A cell that cannot apply to this model (e.g. a gradient attack on a model without gradients): visible, and no error."""
    return {"metric": "not_applicable", "status": "not_applicable", "message": message, **where}


def make_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Normalise row dicts into the fixed schema (missing cells get neutral defaults)."""
    defaults: dict[str, Any] = {
        "model": "",
        "defense": UNDEFENDED,
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


R = TypeVar("R")


def _record(cls: type[R], values: dict[str, Any]) -> R:
    """A record from its JSON object; keys it does not declare (written by a later Kansa) are ignored."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class DataSummary:
    """The data a run audited, as the report and the history describe it."""

    name: str
    sha256: str
    samples: int
    input_shape: list[int]
    input_range: list[float]
    is_image: bool
    classes: list[str]
    split_sizes: dict[str, int]
    evaluation_samples: int
    evaluated_sha256: str = ""  # which samples the attacks ran on (their indices); "" in runs of an older Kansa


@dataclass
class ModelRecord:
    """`members`: where the samples judged as its training data come from ("declared" in data.train, Kansa's own
    split of a model it trained: "kansa_split", or "unknown": then no membership figure is measured); `reference`:
    the recipe its shadow, reference and surrogate models are trained with."""

    name: str
    kind: str
    output: str
    sha256: str
    members: str = "kansa_split"
    reference: str = ""



@dataclass
class DefenseRecord:
    id: str
    name: str
    stage: str
    models: list[str]
    params: dict[str, Any]


@dataclass
class VariantRecord:
    """A model variant that was attacked: its weights' digest, whether they came from the weight cache, and its per-sample artifact.

    `reference`: the recipe its shadow, reference, surrogate and canary models are trained with (the model's, then the variant's defense).
    """

    model: str
    defense: str
    sha256: str
    cached: bool
    artifact: str = ""  # "" in runs of an older Kansa
    reference: str = ""  # "" in runs of an older Kansa


@dataclass
class CellRecord:
    """One attack cell (or a variant's finishing step, `attack` ""): how it ran and where its artifact is."""

    model: str
    defense: str
    attack: str
    status: str = "ok"
    seed: int | None = None
    seconds: float = 0.0
    repeats: int = 1
    artifact: str = ""
    message: str = ""
    key: str = ""
    resumed: bool = False


@dataclass
class Training:
    """Which weights the run trained and which it took from the cache (their labels)."""

    trained: list[str] = field(default_factory=list)
    from_cache: list[str] = field(default_factory=list)


@dataclass
class Execution:
    executor: str = "local"
    resumed_cells: int = 0
    device: str = "cpu"


@dataclass
class RunMetadata:
    """Everything a run records besides its rows: what was audited, how, where, and with which seeds.

    Written as the `metadata` object of results.json (`to_json`) and read back from it (`from_json`).
    `config` is the validated config (the schema of docs/config.md); `seeds` the seed manifest.
    """

    run_id: str
    created: str
    title: str
    config_path: str
    config_sha256: str
    config: dict[str, Any]
    config_text: str
    seed: int
    data: DataSummary
    models: list[ModelRecord] = field(default_factory=list)
    defenses: list[DefenseRecord] = field(default_factory=list)
    variants: list[VariantRecord] = field(default_factory=list)
    cells: list[CellRecord] = field(default_factory=list)
    training: Training = field(default_factory=Training)
    execution: Execution = field(default_factory=Execution)
    versions: dict[str, str] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=dict)
    git: dict[str, str | None] = field(default_factory=dict)
    seeds: dict[str, Any] = field(default_factory=dict)
    repeats: int = 1
    baseline: str | None = None
    wall_seconds: float = 0.0
    schema: str = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any], source: str = "results.json") -> "RunMetadata":
        try:
            return _record(cls, {
                **values,
                "data": _record(DataSummary, values["data"]),
                "models": [_record(ModelRecord, m) for m in values.get("models", [])],
                "defenses": [_record(DefenseRecord, d) for d in values.get("defenses", [])],
                "variants": [_record(VariantRecord, v) for v in values.get("variants", [])],
                "cells": [_record(CellRecord, c) for c in values.get("cells", [])],
                "training": _record(Training, values.get("training", {})),
                "execution": _record(Execution, values.get("execution", {})),
            })
        except (KeyError, TypeError) as exc:
            raise KansaError(f"{source}: the run metadata is incomplete ({exc})") from None


@dataclass
class AuditResult:
    """What a run returns to Python callers: the table, its metadata, and where it was written."""

    table: pd.DataFrame
    metadata: RunMetadata
    out_dir: Path | None = None
    artifacts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    gates: pd.DataFrame = field(default_factory=pd.DataFrame)
    comparison: pd.DataFrame | None = None  # the defense comparison, computed once by reports.comparison.comparison_of

    @property
    def errors(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "error"]

    def cell_arrays(self) -> dict[tuple[str, str, str], dict[str, np.ndarray]]:
        """The saved arrays of every successful attack cell whose artifact is present, by (model, defense, attack id)."""
        found = {}
        for cell in self.metadata.cells:
            arrays = self.artifacts.get(Path(cell.artifact).stem) if cell.status == "ok" and cell.artifact else None
            if arrays is not None:
                found[(cell.model, cell.defense, cell.attack)] = arrays
        return found

    def variant_arrays(self) -> dict[tuple[str, str], dict[str, np.ndarray]]:
        """The saved per-sample arrays of every built variant whose artifact is present, by (model, defense)."""
        found = {}
        for variant in self.metadata.variants:
            arrays = self.artifacts.get(Path(variant.artifact).stem) if variant.artifact else None
            if arrays is not None:
                found[(variant.model, variant.defense)] = arrays
        return found

    def metric(self, metric: str, **where: Any) -> pd.DataFrame:
        """Rows of one metric, filtered by any column, e.g. `metric("robust_accuracy", attack="pgd")`."""
        selected = self.table[self.table["metric"] == metric]
        for column, wanted in where.items():
            selected = selected[selected[column] == wanted]
        return selected


def load_results(path: str | Path) -> tuple[pd.DataFrame, RunMetadata]:
    """Read a results.json (or the run folder holding one) back into the table and its metadata."""
    import json


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
    return make_table(rows), RunMetadata.from_json(document.get("metadata") or {}, str(path))


def load_run(run_dir: str | Path) -> AuditResult:
    """A finished run folder back as an AuditResult: table, metadata, verdicts and artifacts, to re-render it."""
    import json


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
