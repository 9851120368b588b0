"""Each audit as an MLflow run: the config's parameters and hashes, the headline metrics, the outputs, tags to find it by.

Read from the results table, the verdicts and the run metadata, like every other output. Logging
never loses the audit: the outputs are on disk before it starts, and a failure (MLflow not
installed, a tracking server that does not answer) comes back as the reason, which `write_outputs`
records as a `tracking_failed` row.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from audit.errors import describe_exception
from audit.gates import overall_verdict
from audit.metrics import Category
from audit.results import AuditResult, variant_label

ARTIFACTS = ("report.html", "report.ja.html", "results.json", "results.csv", "junit.xml", "summary.md", "gates.json")
_PARAM_LENGTH = 6000  # MLflow's limit on a param value
_KEY = re.compile(r"[^A-Za-z0-9_\-. /:]")


def log_run(result: AuditResult, out_dir: Path, settings: dict[str, Any]) -> str | None:
    """Log the finished audit in `out_dir` to MLflow; None when it was logged, else why it could not be."""
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
    except ImportError:
        return "mlflow is not installed (pip install 'kansa[mlflow]')"
    run_id = None
    with _http_limits(settings):
        try:
            client = MlflowClient(tracking_uri=settings["uri"])
            experiment = client.get_experiment_by_name(settings["experiment"])
            experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(settings["experiment"])
            run = client.create_run(experiment_id, run_name=settings["run_name"] or result.metadata.title, tags=tags(result))
            run_id = run.info.run_id
            stamp = int(time.time() * 1000)
            metrics = [Metric(key, value, stamp, 0) for key, value in headline_metrics(result).items()]
            params = [Param(key, value) for key, value in run_params(result).items()]
            for start in range(0, max(len(metrics), len(params)), 100):
                client.log_batch(run_id, metrics=metrics[start : start + 100], params=params[start : start + 100])
            for name in ARTIFACTS:
                if (out_dir / name).is_file():
                    client.log_artifact(run_id, str(out_dir / name))
            client.set_terminated(run_id, "FINISHED")
        except Exception as exc:  # the audit stands whatever the tracking server does
            if run_id is not None:
                try:
                    client.set_terminated(run_id, "FAILED")
                except Exception:
                    pass
            return describe_exception(exc, limit=300)
    return None


def tags(result: AuditResult) -> dict[str, str]:
    """What a release run is found by: `tags."kansa.verdict" = 'pass' and tags."kansa.gated" = 'true'`."""
    meta = result.metadata
    verdict = overall_verdict(result.gates)
    out = {
        "kansa.verdict": verdict or "no gates",
        "kansa.gated": "true" if verdict is not None else "false",
        "kansa.models": ",".join(m.name for m in meta.models),
        "kansa.guideline_edition": str(meta.config.get("component", {}).get("guideline_edition", "")),
        "kansa.config_sha256": meta.config_sha256,
        "kansa.run_id": meta.run_id,
        "kansa.version": meta.versions.get("kansa", ""),
    }
    if meta.git.get("commit"):
        out["kansa.git_commit"] = str(meta.git["commit"])
    for gate, verdicts in result.gates.groupby("gate", sort=False):
        out[f"kansa.gate.{_key(str(gate))}"] = overall_verdict(verdicts) or ""
    return out


def run_params(result: AuditResult) -> dict[str, str]:
    """The validated config, flattened (`models.0.kind`), and the hashes that identify what was audited."""
    meta = result.metadata
    params = {"config_sha256": meta.config_sha256, "data_sha256": meta.data.sha256, "evaluated_sha256": meta.data.evaluated_sha256,
              "seed": str(meta.seed), "evaluation_samples": str(meta.data.evaluation_samples)}
    params.update(_flatten(meta.config))
    for variant in meta.variants:
        params[_key(f"weights_sha256.{variant_label(variant.model, variant.defense)}")] = variant.sha256
    return {key: value[:_PARAM_LENGTH] for key, value in params.items() if value != ""}


def headline_metrics(result: AuditResult) -> dict[str, float]:
    """Clean and robust accuracy per variant (`m / adv/robust_accuracy/pgd/0.1`), the strongest membership signal, the gates' counts.

    MLflow keys allow letters, digits and `_-. /:` only, so an eps is a path segment.
    """
    table = result.table[result.table["status"] == "ok"]
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[_key(key)] = float(value)

    for row in table[(table["metric"] == "accuracy") & (table["subset"] == "split=test")].itertuples():
        put(f"{variant_label(row.model, row.defense)}/accuracy", row.value)
    robust = table[(table["metric"] == "robust_accuracy") & (table["subset"] == "all")]
    for row in robust.itertuples():
        put(f"{variant_label(row.model, row.defense)}/robust_accuracy/{row.attack}/{row.param_value:g}", row.value)
    private = table[table["category"] == Category.CONFIDENTIALITY]
    for (model, defense), rows in private.groupby(["model", "defense"], sort=False):
        label = variant_label(model, defense)
        put(f"{label}/membership_auc_max", rows.loc[rows["metric"] == "auc", "value"].max())
        low = rows[rows["metric"] == "tpr_at_fpr"]
        if len(low):
            fpr = low["param_value"].min()
            put(f"{label}/tpr_at_fpr/{fpr:g}/max", low.loc[low["param_value"] == fpr, "value"].max())
    for verdict in ("pass", "fail", "inconclusive"):
        put(f"gates_{verdict}", int((result.gates["verdict"] == verdict).sum()) if len(result.gates) else 0)
    put("wall_seconds", result.metadata.wall_seconds)
    return out


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        return {_key(prefix): shown}
    out: dict[str, str] = {}
    for key, item in items:
        out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _key(text: str) -> str:
    return _KEY.sub("_", text)[:250]


@contextmanager
def _http_limits(settings: dict[str, Any]) -> Iterator[None]:
    """MLflow reads its HTTP timeout and retries from the environment: set them for the logging only."""
    limits = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(math.ceil(settings["timeout"]))),
              "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(settings["retries"]), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    saved = {key: os.environ.get(key) for key in limits}
    os.environ.update(limits)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def failure_row(reason: str, uri: str) -> dict[str, Any]:
    """The row that says an audit was not logged, and why."""
    return {"metric": "tracking_failed", "status": "ok", "value": 1.0, "category": Category.COST,
            "message": f"the audit could not be logged to MLflow at {uri}: {reason}; every output is on disk"}

