"""junit.xml: one test case per gate check, so any CI shows failed and inconclusive gates natively.

A failed gate is a <failure>; an inconclusive one is an <error> (missing evidence must not look
like a pass, nor like a skipped test).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

from audit.files import write_bytes_atomic
from audit.gates import FAIL, INCONCLUSIVE
from audit.results import AuditResult


def case_name(check: pd.Series) -> str:
    """Where a check applies, e.g. `cnn/none/pgd eps=0.1 all`."""
    parts = [str(check[c]) for c in ("model", "defense", "attack") if isinstance(check[c], str) and check[c]]
    name = "/".join(parts) or "(no matching row)"
    if isinstance(check["param_value"], float) and not math.isnan(check["param_value"]):
        name += f" at={check['param_value']:g}"
    if isinstance(check["subset"], str) and check["subset"] not in ("", "all"):
        name += f" {check['subset']}"
    return name


def junit_xml(result: AuditResult) -> bytes:
    gates = result.gates
    failures = int((gates["verdict"] == FAIL).sum())
    errors = int((gates["verdict"] == INCONCLUSIVE).sum())
    root = ET.Element("testsuites", name="kansa", tests=str(len(gates)), failures=str(failures), errors=str(errors))
    suite = ET.SubElement(
        root, "testsuite", name=f"kansa gates: {result.metadata.title}", tests=str(len(gates)),
        failures=str(failures), errors=str(errors), skipped="0", timestamp=result.metadata.created,
    )
    for _, check in gates.iterrows():
        case = ET.SubElement(suite, "testcase", classname=f"kansa.{check['gate']}", name=case_name(check), time="0")
        detail = f"{check['rule']}\n{check['reason']}"
        if check["verdict"] == FAIL:
            ET.SubElement(case, "failure", message=check["reason"], type="gate_failed").text = detail
        elif check["verdict"] == INCONCLUSIVE:
            ET.SubElement(case, "error", message=check["reason"], type="inconclusive").text = detail
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def write_junit(result: AuditResult, out_dir: Path) -> Path:
    path = out_dir / "junit.xml"
    write_bytes_atomic(path, junit_xml(result))
    return path
