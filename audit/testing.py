"""Assert Kansa's gates from a team's own test suite (see also the `kansa_audit` pytest fixture)."""

from __future__ import annotations

from pathlib import Path

from audit.gates import FAIL, INCONCLUSIVE
from audit.results import AuditResult
from audit.runner import regate
from reports.junit import case_name


def assert_gates_pass(run: AuditResult | str | Path, allow_inconclusive: bool = False) -> AuditResult:
    """Raise AssertionError naming every failed (and, unless allowed, inconclusive) gate check.

    `run` is a finished AuditResult or a run folder (its gates are re-evaluated from results.json).
    A run with no gates fails the assertion: asserting nothing must not look like a pass.
    """
    result = run if isinstance(run, AuditResult) else regate(run)
    if result.gates.empty:
        raise AssertionError("the audit has no [[gates]]: nothing was checked")
    bad = {FAIL} if allow_inconclusive else {FAIL, INCONCLUSIVE}
    problems = result.gates[result.gates["verdict"].isin(bad)]
    if not problems.empty:
        lines = [f"{len(problems)} of {len(result.gates)} Kansa gate checks did not pass:"]
        lines += [f"  {c['verdict']}: {c['gate']} [{case_name(c)}] {c['reason']}" for _, c in problems.iterrows()]
        raise AssertionError("\n".join(lines))
    return result
