"""The evidence behind the scorecard: a checklist per guideline characteristic and its traffic light.

Shared by the HTML report and summary.md, so both say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from audit.checks import masking_flags
from audit.gates import FAIL, INCONCLUSIVE
from audit.gates import SEVERITY as VERDICT_SEVERITY
from audit.metrics import Category, metric_info
from audit.results import AuditResult, RunMetadata
from reports.i18n import translator

MEASURED, ATTESTED, MISSING = "measured", "attested", "missing"


def gate_characteristic(check: pd.Series) -> str:
    """The characteristic a gate check evidences: declared by the gate, else by its metric (C-2 for a metric that declares none)."""
    if check["characteristic"]:
        return check["characteristic"]
    if check.get("kind") == "regression":
        return "E-1"
    info = metric_info(check.get("metric", ""))
    return info.characteristic if info is not None and info.characteristic else "C-2"


@dataclass
class Run:
    """What every builder reads: the result, the language, and the evidence gathered once."""

    result: AuditResult
    t: Callable[..., str]
    evidence: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    gate_state: dict[str, str] = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        return self.result.table

    @property
    def meta(self) -> RunMetadata:
        return self.result.metadata

    def config(self, key: str) -> Any:
        return self.meta.config.get(key) or {}

    def attestations(self, characteristic: str) -> list[dict[str, Any]]:
        return [a for a in self.meta.config.get("attestations", []) if a["characteristic"] == characteristic]

    def has(self, category: str, metric: str | None = None) -> bool:
        rows = self.table[(self.table["category"] == category) & (self.table["status"] == "ok")]
        return bool(len(rows if metric is None else rows[rows["metric"] == metric]))


def _item(run: Run, key: str, measured: bool = False, declared: Any = None, characteristic: str | None = None) -> dict[str, str]:
    """One checklist line: measured beats attested (a declaration or an attestation) beats missing."""
    if measured:
        status = MEASURED
    elif declared or (characteristic and run.attestations(characteristic)):
        status = ATTESTED
    else:
        status = MISSING
    return {"item": run.t(key), "status": status, "label": run.t(status)}


def _gates_with(run: Run, characteristic: str) -> bool:
    return characteristic in run.gate_state


def gather_evidence(run: Run) -> None:
    """Fill `run.evidence`: per characteristic, what Kansa measured, what was attested, what is missing."""
    component = run.config("component")
    table = run.table
    test_counts = table[(table["metric"] == "samples") & (table["subset"] == "split=test")]
    classes_everywhere = bool(len(test_counts))
    run.evidence = {
        "A-1": [
            _item(run, "ev_intended_use", declared=component.get("intended_use")),
            _item(run, "ev_risk_factors", declared=component.get("risk_factors")),
            _item(run, "ev_domain_analysis", characteristic="A-1"),
        ],
        "A-2": [
            _item(run, "ev_attributes", declared=component.get("attributes"), characteristic="A-2"),
            _item(run, "ev_class_coverage", measured=classes_everywhere),
        ],
        "B-1": [
            _item(run, "ev_split_shares", measured=run.has(Category.DATA_QUALITY, "class_share")),
            _item(run, "ev_provenance", characteristic="B-1"),
        ],
        "B-2": [_item(run, "ev_uniformity", measured=run.has(Category.DATA_QUALITY, "imbalance_ratio"))],
        "B-3": [
            _item(run, "ev_data_checks", measured=run.has(Category.DATA_QUALITY, "duplicates_across_splits")),
            _item(run, "ev_label_review", characteristic="B-3"),
        ],
        "C-1": [
            _item(run, "ev_accuracy", measured=run.has(Category.PERFORMANCE, "accuracy")),
            _item(run, "ev_accuracy_gate", measured=_gates_with(run, "C-1")),
        ],
        "C-2": [
            _item(run, "ev_robustness", measured=run.has(Category.INTEGRITY, "robust_accuracy")),
            _item(run, "ev_sanity", measured=run.has(Category.SANITY) and not any(
                len(masking_flags(table, m.name)) for m in run.meta.models)),
            _item(run, "ev_robustness_gate", measured=_gates_with(run, "C-2")),
        ],
        "D-1": [
            _item(run, "ev_versions", measured=bool(run.meta.versions)),
            _item(run, "ev_software_verification", characteristic="D-1"),
        ],
        "E-1": [
            _item(run, "ev_baseline", measured=bool(run.meta.baseline)),
            _item(run, "ev_monitoring", characteristic="E-1"),
        ],
        "S": [
            _item(run, "ev_threat_model", declared=component.get("threat_model"), characteristic="S"),
            _item(run, "ev_confidentiality", measured=run.has(Category.CONFIDENTIALITY)),
        ],
    }


def traffic_light(run: Run, characteristic: str) -> str:
    items = run.evidence[characteristic]
    gate = run.gate_state.get(characteristic)
    if gate == FAIL:
        return "red"
    if characteristic == "C-2" and items[1]["status"] == MISSING and run.has(Category.SANITY):
        return "red"
    if all(i["status"] == MISSING for i in items):
        return "grey"
    if gate == INCONCLUSIVE or any(i["status"] == MISSING for i in items):
        return "amber"
    return "green"


def build_run(result: AuditResult, lang: str) -> Run:
    run = Run(result, translator(lang))
    for _, check in result.gates.iterrows():
        characteristic = gate_characteristic(check)
        run.gate_state[characteristic] = max([run.gate_state.get(characteristic, "pass"), check["verdict"]], key=VERDICT_SEVERITY.get)
    gather_evidence(run)
    return run
