"""Every data source loads into the declared range; splits are seeded, stratified and disjoint; findings are recorded."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pandas as pd
import pytest

from audit.data import load_dataset, quality_rows, read_idx, split_dataset, validate_data_config
from audit.errors import DataError
from audit.params import Location
from audit.results import make_table
from tests.conftest import MNIST_DIR


def load(tmp_path, **table):
    cfg = validate_data_config(table, Location("test.toml", "data"))
    return load_dataset(cfg, tmp_path, seed=0)


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize(
    "source, shape, n_classes",
    [("digits", (1797, 1, 8, 8), 10), ("breast_cancer", (569, 30), 2), ("wine", (178, 13), 3), ("iris", (150, 4), 3)],
)
def test_builtin_sources_are_scaled_into_the_input_range(tmp_path, source, shape, n_classes):
    data = load(tmp_path, source=source)
    assert data.x.shape == shape and data.x.dtype == np.float32
    assert data.n_classes == n_classes
    assert data.x.min() == pytest.approx(0.0) and data.x.max() == pytest.approx(1.0)
    assert data.is_image == (source == "digits")


def iris_frame() -> pd.DataFrame:
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    frame = bunch.frame.rename(columns={"target": "species"})
    frame["species"] = frame["species"].map(dict(enumerate(bunch.target_names)))
    return frame


def test_csv_source_with_string_labels(tmp_path):
    iris_frame().to_csv(tmp_path / "iris.csv", index=False)
    data = load(tmp_path, source="csv", path="iris.csv", label_column="species", scale="minmax")
    assert data.x.shape == (150, 4)
    assert data.class_names == ["setosa", "versicolor", "virginica"]
    assert np.bincount(data.y).tolist() == [50, 50, 50]


def test_parquet_source_with_feature_subset_and_image_shape(tmp_path):
    iris_frame().to_parquet(tmp_path / "iris.parquet")
    columns = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
    data = load(tmp_path, source="parquet", path="iris.parquet", label_column="species",
                feature_columns=columns, image_shape=[2, 2], scale="minmax")
    assert data.x.shape == (150, 1, 2, 2) and data.is_image


def test_npz_source_scaled_by_a_number(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (60, 8, 8)), y=np.repeat([0, 1, 2], 20))
    data = load(tmp_path, source="npz", path="d.npz", scale=255)
    assert data.x.shape == (60, 1, 8, 8) and data.x.max() <= 1.0


@pytest.mark.parametrize("compress", [False, True])
def test_idx_source_plain_and_gzipped(tmp_path, compress):
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (40, 5, 5)), np.repeat(np.arange(4), 10)
    opener = gzip.compress if compress else (lambda b: b)
    (tmp_path / "img.idx").write_bytes(opener(idx_bytes(images)))
    (tmp_path / "lab.idx").write_bytes(opener(idx_bytes(labels)))
    data = load(tmp_path, source="idx", images="img.idx", labels="lab.idx")
    assert data.x.shape == (40, 1, 5, 5)
    np.testing.assert_allclose(data.x[:, 0], images / 255.0, rtol=1e-6)
    assert data.y.tolist() == labels.tolist()


def test_idx_header_is_checked(tmp_path):
    good = idx_bytes(np.zeros((4, 3, 3)))
    (tmp_path / "magic.idx").write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(tmp_path / "magic.idx")
    (tmp_path / "short.idx").write_bytes(good[:-5])
    with pytest.raises(DataError, match=r"declares \(4, 3, 3\)"):
        read_idx(tmp_path / "short.idx")


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST folder absent: {MNIST_DIR}")
def test_reads_the_real_mnist_test_split():
    data = load(
        MNIST_DIR,
        source="idx",
        images="t10k-images-idx3-ubyte.gz",
        labels="t10k-labels-idx1-ubyte.gz",
    )
    assert data.x.shape == (10000, 1, 28, 28)
    assert np.bincount(data.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert 0.0 <= data.x.min() and data.x.max() == pytest.approx(1.0)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=f"data file not found: {tmp_path / 'absent.csv'}"):
        load(tmp_path, source="csv", path="absent.csv", label_column="y")


def test_splits_are_deterministic_disjoint_complete_and_stratified(tmp_path):
    data = load(tmp_path, source="digits")
    a, b = split_dataset(data, [0.6, 0.2, 0.2], seed=5), split_dataset(data, [0.6, 0.2, 0.2], seed=5)
    for (_, ia), (_, ib) in zip(a.items(), b.items()):
        assert np.array_equal(ia, ib)
    parts = [set(idx.tolist()) for _, idx in a.items()]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(range(len(data.y)))
    overall = np.bincount(data.y) / len(data.y)
    for _, idx in a.items():
        assert np.abs(np.bincount(data.y[idx], minlength=10) / len(idx) - overall).max() < 0.02
    other = split_dataset(data, [0.6, 0.2, 0.2], seed=6)
    assert not np.array_equal(other.test, a.test)


def test_quality_findings_duplicates_nonfinite_and_range(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.random((90, 4))
    y = np.repeat([0, 1, 2], 30)
    x[10:20] = x[0]  # ten copies of one class-0 row: they cannot all stay in one split
    x[5, 2] = np.nan
    x[7, 1] = 3.0
    np.savez(tmp_path / "q.npz", x=x, y=y)
    data = load(tmp_path, source="npz", path="q.npz")
    assert data.dropped_rows == 1 and len(data.y) == 89
    table = make_table(quality_rows(data, split_dataset(data, [0.6, 0.2, 0.2], seed=0))).set_index(["metric", "subset"])
    assert table.loc[("duplicate_rows", "all"), "value"] == 10
    assert table.loc[("nonfinite_rows_dropped", "all"), "value"] == 1
    assert table.loc[("values_outside_range", "all"), "value"] == 1
    across = table.xs("duplicates_across_splits", level="metric")
    assert across["value"].sum() >= 1
    assert across[across["value"] > 0]["message"].str.contains("appear in both").all()
    assert table.loc[("class_share", "class=1"), "n"] == 89


def test_a_class_too_small_to_stratify_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "s.npz", x=np.random.default_rng(0).random((32, 3)), y=np.array([0] * 15 + [1] * 15 + [2] * 2))
    data = load(tmp_path, source="npz", path="s.npz")
    with pytest.raises(DataError, match="class '2' has 2 sample"):
        split_dataset(data, [0.6, 0.2, 0.2], seed=0)
