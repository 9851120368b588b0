"""Regenerate the bad-input corpus (data and model files) deterministically.

    .venv/bin/python tests/corpus/generate.py

The files are committed; this script documents how each was made.
"""

from __future__ import annotations

import gzip
import io
import struct
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).parent
DATA, MODELS = HERE / "data", HERE / "models"
sys.path.insert(0, str(HERE / "configs"))
import corpus_models  # noqa: E402


def table(rows_per_class: int = 20, classes: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), rows_per_class)
    x = rng.random((len(y), 4)) * 0.5 + y[:, None] * 0.25
    frame = pd.DataFrame(x, columns=["f1", "f2", "f3", "f4"])
    frame["label"] = y
    return frame


def idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def data_files() -> None:
    DATA.mkdir(exist_ok=True)
    good = table()
    (DATA / "ragged.csv").write_text("f1,f2,label\n0.1,0.2,0\n0.1,0.2,0.3,0.4,1\n")
    (DATA / "empty.csv").write_bytes(b"")
    (DATA / "binary.csv").write_bytes(bytes(range(256)) * 4)
    with_text = good.copy()
    with_text["colour"] = ["red", "green", "blue"] * 20
    with_text.to_csv(DATA / "text_feature.csv", index=False)
    good.to_csv(DATA / "good.csv", index=False)
    tiny = good.copy()
    tiny.loc[tiny.index[-18:], "label"] = 1  # class 2 keeps 2 samples
    tiny.to_csv(DATA / "tiny_class.csv", index=False)
    single = good.copy()
    single["label"] = 0
    single.to_csv(DATA / "single_class.csv", index=False)
    nan_inf = good.copy()
    nan_inf.loc[3, "f1"] = np.nan
    nan_inf.loc[7, "f2"] = np.inf
    nan_inf.to_csv(DATA / "nan_inf.csv", index=False)
    all_nan = good.copy()
    all_nan["f1"] = np.nan
    all_nan.to_csv(DATA / "all_nan.csv", index=False)
    outside = good.copy()
    outside.loc[5, "f3"] = 4.0
    outside.to_csv(DATA / "out_of_range.csv", index=False)
    (DATA / "corrupt.parquet").write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")
    buffer = io.BytesIO()
    good.to_parquet(buffer)
    (DATA / "truncated.parquet").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    buffer = io.BytesIO()
    np.savez(buffer, x=good[["f1", "f2", "f3", "f4"]].to_numpy(), y=good["label"].to_numpy())
    (DATA / "truncated.npz").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    np.savez(DATA / "object_array.npz", x=np.array([{"a": 1}] * 60, dtype=object), y=good["label"].to_numpy())
    np.savez(DATA / "no_x.npz", inputs=good[["f1", "f2"]].to_numpy(), y=good["label"].to_numpy())
    np.savez(DATA / "short_y.npz", x=good[["f1", "f2", "f3", "f4"]].to_numpy(), y=good["label"].to_numpy()[:50])
    images = np.random.default_rng(1).integers(0, 256, (60, 6, 6))
    labels = np.repeat(np.arange(3), 20)
    (DATA / "images.idx").write_bytes(idx(images))
    (DATA / "labels.idx").write_bytes(idx(labels))
    (DATA / "labels_short.idx").write_bytes(idx(labels[:50]))
    (DATA / "bad_magic.idx").write_bytes(b"\x08\x03" + idx(images)[2:])
    (DATA / "wrong_count.idx").write_bytes(idx(images)[:-36])
    (DATA / "truncated.idx.gz").write_bytes(gzip.compress(idx(images))[:-40])


def model_files() -> None:
    MODELS.mkdir(exist_ok=True)
    torch.manual_seed(0)
    torch.save(corpus_models.build(hidden=32).state_dict(), MODELS / "wrong_arch.pt")
    torch.save(corpus_models.build(), MODELS / "whole_model.pt")
    for name, module in (("raises", corpus_models.Raises()), ("nan", corpus_models.ReturnsNaN()),
                         ("three_classes", corpus_models.ThreeClasses()), ("expects_mnist", corpus_models.ExpectsMnist())):
        torch.jit.save(torch.jit.script(module), MODELS / f"{name}.ts")
    (MODELS / "garbage.pt").write_bytes(bytes(range(256)) * 8)


if __name__ == "__main__":
    data_files()
    model_files()
