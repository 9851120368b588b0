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
import torch

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


class Hangs(torch.nn.Module):
    """A digits classifier whose forward never returns on some inputs: a hung target for cell_timeout.

    `on = "gradients"` hangs whenever input gradients are asked for (so evaluating the variant
    hangs: its gradient probe); `on = "off_grid"` hangs on inputs off the digits' 1/16 grid, which
    PGD's steps and the noise probe send and FGSM at eps 4/16 does not; `on = "never"` is the
    same model, well behaved.
    """

    def __init__(self, on: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        self.on = on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        off_grid = bool(((x * 16 - torch.round(x * 16)).abs() > 1e-4).any())
        if (self.on == "gradients" and x.requires_grad) or (self.on == "off_grid" and off_grid):
            n = 0
            while n >= 0:  # TorchScript has no sleep: 2**63 steps stand in for one
                n += 1
        return self.body(x)


HUNG = """
seed = 3
[data]
source = "digits"
[[models]]
name = "steady"
kind = "torchscript"
path = "never.ts"
[[models]]
name = "attacked_hangs"
kind = "torchscript"
path = "off_grid.ts"
[[models]]
name = "gradients_hang"
kind = "torchscript"
path = "gradients.ts"
[evaluation]
samples = 60
[execution]
cell_timeout = 4
[[attacks]]
name = "fgsm"
eps = [0.25]
[[attacks]]
name = "pgd"
eps = [0.25]
steps = 3
[[gates]]
id = "fgsm"
metric = "robust_accuracy"
attack = "fgsm"
at = 0.25
threshold = 0.0
[[gates]]
id = "worst_case"
metric = "robust_accuracy"
at = 0.25
threshold = 0.0
"""


def test_a_model_that_hangs_past_cell_timeout_is_an_error_row_and_the_rest_completes(tmp_path: Path):
    from audit import run_audit

    for on in ("never", "off_grid", "gradients"):
        torch.jit.script(Hangs(on)).save(str(tmp_path / f"{on}.ts"))
    started = time.monotonic()
    result = run_audit(write(tmp_path / "audit.toml", HUNG), tmp_path / "run", history=False)
    assert time.monotonic() - started < 150
    table = result.table
    errors = table[table.status == "error"]
    assert sorted(zip(errors.model, errors.attack.fillna(""))) == [("attacked_hangs", "pgd"), ("gradients_hang", "")]
    assert all("did not finish within cell_timeout = 4 s" in message for message in errors.message)
    fgsm = table[(table.attack == "fgsm") & (table.metric == "robust_accuracy") & (table.subset == "all")]
    assert sorted(fgsm.model) == ["attacked_hangs", "steady"] and set(fgsm.status) == {"ok"}
    # the sanity checks send noise: ended, and flagged, so that no integrity gate of that variant passes unchecked
    (unfinished,) = table[table.metric == "checks_unfinished"].itertuples()
    assert unfinished.model == "attacked_hangs" and unfinished.value == 1.0 and "unchecked" in unfinished.message
    verdicts = {(r.gate, r.model): r.verdict for r in result.gates.itertuples()}
    assert verdicts == {(gate, model): "pass" if model == "steady" else "inconclusive"
                        for gate in ("fgsm", "worst_case") for model in ("steady", "attacked_hangs", "gradients_hang")}
    assert [(cell.model, cell.attack) for cell in result.metadata.cells if cell.status != "ok"] == [("attacked_hangs", "pgd")]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["metadata"]["cells"]


def test_a_resumed_run_tries_its_failed_cells_again_and_reuses_the_rest(tmp_path: Path):
    from audit.cells import CellRecord, CellResult
    from audit.results import error_row
    from audit.runner import _Journal

    first = _Journal(tmp_path, resume=True, config_digest="c")
    first.save(CellResult("done", CellRecord("m", "none", "fgsm"), [{"metric": "robust_accuracy", "value": 0.5}]))
    first.save(CellResult("ended", CellRecord("m", "none", "pgd", status="error", message="ended"), [error_row("ended")]))
    again = _Journal(tmp_path, resume=True, config_digest="c")
    assert again.load("done") is not None and again.load("done").rows[0]["value"] == 0.5
    assert again.load("ended") is None  # a transient fault or a raised cell_timeout gets another chance


def test_cells_in_a_child_process_give_the_in_process_numbers(tmp_path: Path):
    from audit import run_audit

    text = SLOW_CELLS.replace("samples = 240", "samples = 60").replace("steps = 20", "steps = 3").replace("epochs = 5", "epochs = 1")
    in_process = run_audit(write(tmp_path / "a" / "audit.toml", text), tmp_path / "a" / "run", history=False)
    bounded = run_audit(write(tmp_path / "b" / "audit.toml", text + "\n[execution]\ncell_timeout = 600\n"), tmp_path / "b" / "run",
                        history=False)
    assert len(in_process.metadata.cells) == 7
    pd.testing.assert_frame_equal(measured(in_process), measured(bounded))
