"""Shared fixtures: the digits model is trained once per session and reused by every test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from audit.results import RunMetadata

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session", autouse=True)
def _history_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory):
    """Runs record history and cache weights; keep both out of the working directory."""
    os.environ["KANSA_HISTORY"] = str(tmp_path_factory.mktemp("history") / "history.sqlite")
    os.environ["KANSA_CACHE"] = str(tmp_path_factory.mktemp("weights"))

@pytest.fixture(scope="module")
def one_torch_thread():
    """For a module of tiny models: they gain nothing from threads and lose a lot when the cores are shared
    (onnxruntime and the tree libraries follow torch's thread count)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
MNIST_DIR = SHARED / "data" / "mnist"

SMALL_AUDIT = """
title = "test audit"
seed = 3

[data]
source = "digits"

[[models]]
name = "cnn"
epochs = 15

[evaluation]
samples = 200

[[attacks]]
name = "fgsm"
eps = [0.05, 0.1, 0.2]

[[attacks]]
name = "pgd"
eps = [0.05, 0.1, 0.2]
steps = 10
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("cfg") / "audit.toml", SMALL_AUDIT)


@pytest.fixture(scope="session")
def small_run(small_config: Path, tmp_path_factory: pytest.TempPathFactory):
    """One complete audit (train, FGSM and PGD sweeps, all outputs) shared by the report and results tests."""
    from audit import run_audit

    return run_audit(small_config, out_dir=tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="session")
def digits():
    """(dataset, splits, trained target) for direct attack tests."""
    from audit.config import load_config
    from audit.data import load_dataset, split_dataset
    from audit.models import build_builtin, make_target, train

    config = load_config(_config_file(SMALL_AUDIT))
    dataset = load_dataset(config.data, config.base_dir, seed=0)
    splits = split_dataset(dataset, config.data["split"], seed=0)
    model_cfg = config.models[0]
    import torch

    torch.manual_seed(0)
    module = build_builtin(model_cfg, dataset.input_shape, dataset.n_classes, dataset.is_image)
    train(module, dataset.x[splits.train], dataset.y[splits.train], model_cfg, seed=0, progress=False, label="cnn")
    return dataset, splits, make_target(module, dataset, "logits", "cnn")


def _config_file(text: str) -> Path:
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="kansa-test-"))
    return write(directory / "audit.toml", text)


def run_metadata(**fields: Any) -> "RunMetadata":
    """Metadata of a run that was never executed, for tests that build a results table by hand."""
    from audit.results import DataSummary, RunMetadata

    data = DataSummary("digits", "0" * 64, 10, [1, 8, 8], [0.0, 1.0], True, [str(c) for c in range(10)], {"train": 6, "holdout": 2, "test": 2}, 2,
                       "e" * 64)
    defaults: dict[str, Any] = {"run_id": "r0", "created": "2026-01-01T00:00:00+00:00", "title": "t", "config_path": "audit.toml",
                                "config_sha256": "0" * 64, "config": {"attacks": []}, "config_text": "", "seed": 0, "data": data}
    return RunMetadata(**{**defaults, **fields})
