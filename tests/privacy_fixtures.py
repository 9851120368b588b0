"""Targets for the privacy tests: a deliberately overfit digits model and a regularised one, trained once per module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attacks.base import AttackContext
from audit.data import Dataset, Splits, load_dataset, split_dataset
from audit.models import Target, build_builtin, make_target, train

DIGITS = {"source": "digits", "input_range": [0.0, 1.0], "scale": "auto", "max_samples": None, "classes": None}
MLP = {
    "kind": "builtin", "name": "mlp", "architecture": "mlp", "hidden": [128, 64], "channels": [16, 32],
    "epochs": 300, "batch_size": 64, "learning_rate": 1e-3, "weight_decay": 0.0, "optimizer": "adam",
}


@dataclass
class Trained:
    dataset: Dataset
    splits: Splits
    target: Target
    model_cfg: dict[str, Any]

    def context(self, seed: int = 7, trainer: Any = "default") -> AttackContext:
        from audit.session import trainer_for

        chosen = trainer_for(self.model_cfg, self.dataset) if trainer == "default" else trainer
        return AttackContext(seed, self.dataset.class_names, self.dataset, self.splits, chosen)

    def accuracy(self, split: str) -> float:
        idx = dict(self.splits.items())[split]
        return float((self.target.predict(self.dataset.x[idx]) == self.dataset.y[idx]).mean())


def train_digits(split: list[float], **model: Any) -> Trained:
    """A digits MLP trained through Kansa's own pipeline (the recipe reference models reuse)."""
    import torch

    dataset = load_dataset({**DIGITS, "split": split}, Path("."), seed=0)
    splits = split_dataset(dataset, split, seed=0)
    cfg = {**MLP, **model}
    torch.manual_seed(0)
    module = build_builtin(cfg, dataset.input_shape, dataset.n_classes, dataset.is_image)
    train(module, dataset.x[splits.train], dataset.y[splits.train], cfg, seed=0, progress=False, label="mlp")
    return Trained(dataset, splits, make_target(module, dataset, "logits", "mlp"), cfg)


def overfit_digits() -> Trained:
    """~215 training images, 300 epochs: 100 % training accuracy, a few points lower on the hold-out split."""
    return train_digits([0.12, 0.3, 0.58])


def regularised_digits() -> Trained:
    """The full default training split (1,077 images), weight decay and few epochs: little to memorise."""
    return train_digits([0.6, 0.2, 0.2], epochs=15, weight_decay=1e-3)


def synthetic_tabular(n: int = 3000, s_drives_label: bool = True, seed: int = 0) -> Dataset:
    """Five uniform features plus a binary sensitive one (column 2); the label depends on it when asked."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 2, n)
    f = rng.uniform(0, 1, (n, 5))
    signal = f[:, 0] + (0.8 * s if s_drives_label else 0.8 * f[:, 1]) + 0.2 * rng.normal(size=n)
    y = (signal > 0.9).astype(np.int64)
    x = np.c_[f[:, :2], s, f[:, 2:]].astype(np.float32)
    return Dataset("synthetic", x, y, ["no", "yes"], (0.0, 1.0), False)


def row(rows: list[dict[str, Any]], metric: str, **where: Any) -> dict[str, Any]:
    """The one row of `metric` matching `where` (missing columns read as their table defaults)."""
    defaults = {"subset": "all", "param_value": None}
    found = [r for r in rows if r["metric"] == metric and all(r.get(k, defaults.get(k)) == v for k, v in where.items())]
    assert len(found) == 1, f"{len(found)} rows for {metric} {where}"
    return found[0]
