"""`[execution] device`: the run says where it ran, and a GPU it cannot find is refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from audit.cli import main
from tests.conftest import SMALL_AUDIT, write

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_cuda_without_a_gpu_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(tmp_path / "audit.toml", SMALL_AUDIT + '\n[execution]\ndevice = "cuda"\n')
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "execution.device" in err[0] and "sees no CUDA device" in err[0], err
    assert not (tmp_path / "run" / "results.json").exists()


def test_auto_runs_on_the_cpu_here_and_says_so(small_run) -> None:
    assert small_run.metadata.execution.device == ("cpu" if NO_CUDA else "cuda")


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_gpu_smoke_an_audit_on_cuda_matches_the_cpu_audit(tmp_path: Path) -> None:
    from audit import run_audit

    runs = {}
    for device in ("cpu", "cuda"):
        path = write(tmp_path / device / "audit.toml", SMALL_AUDIT + f'\n[execution]\ndevice = "{device}"\n[cache]\nenabled = false\n')
        runs[device] = run_audit(path, out_dir=tmp_path / device / "run", history=False)
    assert runs["cuda"].metadata.execution.device == "cuda"
    for run in runs.values():
        assert (run.table["status"] == "ok").all()
    accuracy = {d: r.table.query("metric == 'accuracy' and subset == 'split=test'")["value"].iloc[0] for d, r in runs.items()}
    assert abs(accuracy["cpu"] - accuracy["cuda"]) < 0.05, accuracy  # other kernels, other weights: close, not equal
