"""The Python API: an audit end to end, its outputs written by the report writers.

It sits above both the pipeline (`audit.runner`) and the renderers (`reports`), so the pipeline
never imports a renderer; `from audit import run_audit` resolves here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from audit.config import Config
from audit.results import AuditResult
from audit.runner import run_audit as _run_audit
from reports import write_outputs


def run_audit(config: str | Path | Config, out_dir: str | Path | None = None, **options: Any) -> AuditResult:
    """Run the audit of `config`, writing every output into `out_dir` when given.

    `options` are those of `audit.runner.run_audit`: seed, quiet, baseline, history, force, lang, executor, resume, mlflow.
    """
    return _run_audit(config, out_dir, write_outputs=write_outputs, **options)
