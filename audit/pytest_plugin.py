"""pytest plugin (entry point `pytest11: kansa`): the `kansa_audit` fixture runs an audit into tmp_path.

    def test_release_gates(kansa_audit):
        assert_gates_pass(kansa_audit("audit.toml"))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

if TYPE_CHECKING:
    from audit.results import AuditResult


@pytest.fixture
def kansa_audit(tmp_path: Path) -> Callable[..., "AuditResult"]:
    """Call with a config path (and any run_audit keyword); outputs go to a fresh folder, history is off."""

    def run(config: str | Path, **kwargs: Any) -> "AuditResult":
        from audit.api import run_audit

        kwargs.setdefault("out_dir", tmp_path / "kansa")
        kwargs.setdefault("history", False)
        return run_audit(config, **kwargs)

    return run
