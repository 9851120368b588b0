"""Kansa's orchestration: config, data, models, the runner and the results table.

`from audit import run_audit` is the Python API; it is resolved lazily so that light modules
(config validation, the CLI's help) load neither pandas nor the pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit.api import run_audit
    from audit.config import load_config
    from audit.results import AuditResult

__all__ = ["run_audit", "load_config", "AuditResult"]


def __getattr__(name: str) -> Any:
    if name == "run_audit":
        from audit.api import run_audit

        return run_audit
    if name == "load_config":
        from audit.config import load_config

        return load_config
    if name == "AuditResult":
        from audit.results import AuditResult

        return AuditResult
    raise AttributeError(f"module 'audit' has no attribute {name!r}")
