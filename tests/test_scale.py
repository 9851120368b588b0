"""Executors and resumable runs: the same numbers whichever way the cells run, and after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import write

MATRIX = """
title = "scale"
seed = 11

[data]
source = "digits"

[[models]]
name = "cnn"
epochs = 5

[[models]]
name = "mlp"
architecture = "mlp"
epochs = 5

[evaluation]
samples = 120

[[attacks]]
name = "fgsm"
eps = [0.05, 0.1]

[[attacks]]
name = "pgd"
eps = [0.1]
steps = 10

[[defenses]]
name = "pruning"
sparsity = 0.5

[[defenses]]
name = "feature_squeezing"
bit_depth = 4
models = ["cnn"]
"""

SLOW_CELLS = """
title = "resume"
seed = 4

[data]
source = "digits"

[[models]]
name = "cnn"
epochs = 5

[evaluation]
samples = 240

[checks]
enabled = false
""" + "".join(f'\n[[attacks]]\nname = "pgd"\nid = "pgd-{i}"\neps = [0.{i}]\nsteps = 20\n' for i in range(1, 8))


def measured(result_or_path) -> pd.DataFrame:
    """The results without timing rows (the only values that differ between identical runs)."""
    if isinstance(result_or_path, Path):
        from audit.results import load_results

        table = load_results(result_or_path)[0]
    else:
        table = result_or_path.table
    return table[table.category != "cost"].reset_index(drop=True)


@pytest.mark.slow
def test_ray_executor_gives_the_local_results(tmp_path: Path):
    pytest.importorskip("ray")
    from audit import run_audit

    config = write(tmp_path / "audit.toml", MATRIX)
    local = run_audit(config, tmp_path / "local", history=False)
    os.environ.pop("RAY_ADDRESS", None)
    distributed = run_audit(config, tmp_path / "ray", history=False, executor="ray", resume=False)
    assert distributed.metadata.execution.executor == "ray"
    assert local.metadata.execution.executor == "local"
    assert len(local.metadata.cells) == 10  # 2 models x (none, pruning) + cnn x feature_squeezing, x 2 attacks
    pd.testing.assert_frame_equal(measured(local), measured(distributed))


def _kansa(*args: str) -> list[str]:
    return [sys.executable, "-m", "audit.cli", *args]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_results(tmp_path: Path):
    from audit import run_audit

    config = write(tmp_path / "audit.toml", SLOW_CELLS)
    whole = run_audit(config, tmp_path / "whole", history=False)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(_kansa("run", str(config), "--out", str(out), "--quiet", "--no-history"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "cells"
    deadline = time.monotonic() + 300
    while len(list(journal.glob("*.npz"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(journal.glob("*.npz")))
    assert 2 <= finished < 8, f"the kill should land mid-run ({finished} of 8 cells journaled)"
    assert not (out / "results.json").exists()
    resumed = subprocess.run(_kansa("run", str(config), "--out", str(out), "--quiet", "--no-history"), env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    metadata = json.loads((out / "results.json").read_text())["metadata"]
    assert metadata["execution"]["resumed_cells"] >= 2
    assert sum(cell["resumed"] for cell in metadata["cells"]) == metadata["execution"]["resumed_cells"]
    pd.testing.assert_frame_equal(measured(whole), measured(out))


@pytest.mark.slow
def test_a_changed_attack_reruns_only_its_own_cells(tmp_path: Path):
    from audit import run_audit
    from audit.errors import KansaError

    config = write(tmp_path / "audit.toml", SLOW_CELLS.replace("steps = 20", "steps = 5"))
    first = run_audit(config, tmp_path / "run", history=False)
    assert first.metadata.execution.resumed_cells == 0
    again = run_audit(config, tmp_path / "run", history=False)
    assert again.metadata.execution.resumed_cells == 7
    assert again.metadata.training.trained == []
    pd.testing.assert_frame_equal(measured(first), measured(again))
    write(config, SLOW_CELLS.replace("steps = 20", "steps = 5").replace("eps = [0.7]", "eps = [0.65]"))
    with pytest.raises(KansaError, match="different config"):
        run_audit(config, tmp_path / "run", history=False)
    changed = run_audit(config, tmp_path / "run", history=False, force=True)
    reran = [cell.attack for cell in changed.metadata.cells if not cell.resumed]
    assert reran == ["pgd-7"]
    assert len(list((tmp_path / "run" / "cells").glob("*.npz"))) == 8  # 7 attack cells + 1 finish; the old pgd-7 cells dropped
