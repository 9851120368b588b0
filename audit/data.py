"""Data: load a declared source, scale it into its declared input range, split it, and check it.

The split is the basis of every privacy claim: train holds the members, hold-out is never
trained on (membership inference needs true non-members), test is what attacks run on.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import DataError
from audit.metrics import Category
from audit.params import AnyOf, Choice, ListOf, Location, Number, Param, Text, validate_tagged
from audit.results import count_row, rate_row

BUILTIN_SOURCES = ("digits", "breast_cancer", "wine", "iris")
SPLIT_NAMES = ("train", "holdout", "test")

_SHAPE = ListOf(Number(low=1, integer=True), min_len=1, max_len=3)
COMMON_PARAMS = (
    Param("input_range", ListOf(Number(), length=2), [0.0, 1.0], "bounds every input (and every attack) stays in"),
    Param(
        "scale",
        AnyOf((Choice(("auto", "none", "minmax")), Number(low=0, closed="neither"))),
        "auto",
        "how raw values map into input_range: minmax per feature, divide by a number, or none",
    ),
    Param("split", ListOf(Number(0, 1, closed="neither"), length=3), [0.6, 0.2, 0.2], "train, hold-out, test fractions"),
    Param("max_samples", Number(low=30, integer=True), None, "stratified subsample before splitting"),
    Param("classes", ListOf(Text()), None, "display names of the classes, in label order"),
)
_FILE_PARAMS = (Param("path", Text(), doc="file path, relative to the config file"),)
_TABLE_PARAMS = (
    *_FILE_PARAMS,
    Param("label_column", Text(), doc="column holding the class label"),
    Param("feature_columns", ListOf(Text()), None, "feature columns (default: every other column)"),
    Param("image_shape", _SHAPE, None, "reshape each row to this image shape, e.g. [1, 28, 28]"),
)
SOURCE_PARAMS: dict[str, tuple[Param, ...]] = {
    **{name: () for name in BUILTIN_SOURCES},
    "csv": _TABLE_PARAMS,
    "parquet": _TABLE_PARAMS,
    "npz": (
        *_FILE_PARAMS,
        Param("x_key", Text(), "x", "array of inputs in the archive"),
        Param("y_key", Text(), "y", "array of labels in the archive"),
        Param("image_shape", _SHAPE, None, "reshape each input to this image shape"),
    ),
    "idx": (
        Param("images", Text(), doc="IDX image file (MNIST format), gzipped or not"),
        Param("labels", Text(), doc="IDX label file"),
    ),
}


def validate_data_config(table: Any, where: Location) -> dict[str, Any]:
    values = validate_tagged(table, where, "source", SOURCE_PARAMS, COMMON_PARAMS)
    low, high = values["input_range"]
    if not low < high:
        raise where.child("input_range").error(f"expected [low, high] with low < high, got {values['input_range']}")
    if abs(sum(values["split"]) - 1.0) > 1e-6:
        raise where.child("split").error(f"expected fractions that sum to 1, got {values['split']}")
    return values


@dataclass
class Dataset:
    """Inputs already scaled into `input_range`; labels are 0..k-1 indices into `class_names`."""

    name: str
    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    input_range: tuple[float, float]
    is_image: bool
    dropped_rows: int = 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def values_outside_range(self) -> int:
        low, high = self.input_range
        return int(((self.x < low) | (self.x > high)).sum())

    @property
    def kind(self) -> str:
        """"image" (inputs of shape (C, H, W)) or "tabular" (feature vectors): what attacks and defenses declare they need."""
        return "image" if self.is_image else "tabular"

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.x).tobytes())
        h.update(np.ascontiguousarray(self.y).tobytes())
        h.update("\x00".join(self.class_names).encode())
        return h.hexdigest()


@dataclass
class Splits:
    train: np.ndarray
    holdout: np.ndarray
    test: np.ndarray

    def items(self) -> list[tuple[str, np.ndarray]]:
        return [("train", self.train), ("holdout", self.holdout), ("test", self.test)]


def _resolve(path: str, base_dir: Path) -> Path:
    resolved = (base_dir / path).expanduser()
    if not resolved.is_file():
        raise DataError(f"data file not found: {resolved}")
    return resolved


def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray, list[str] | None, float | str]:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    if name == "digits":
        return bunch.images[:, None, :, :].astype(np.float64), bunch.target, None, 16.0
    return bunch.data.astype(np.float64), bunch.target, [str(t) for t in bunch.target_names], "minmax"


def _table(frame: Any, cfg: dict[str, Any], path: Path) -> tuple[np.ndarray, np.ndarray]:
    label = cfg["label_column"]
    if label not in frame.columns:
        raise DataError(f"{path}: no label column {label!r} (columns: {', '.join(map(str, frame.columns))})")
    features = cfg["feature_columns"] or [c for c in frame.columns if c != label]
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: feature columns not found: {', '.join(missing)}")
    if not features:
        raise DataError(f"{path}: no feature columns besides the label {label!r}")
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    for column in features:
        if not is_numeric_dtype(frame[column]) or is_bool_dtype(frame[column]):
            raise DataError(f"{path}: feature column {column!r} is not numeric (dtype {frame[column].dtype})")
    if frame[label].isna().any():
        raise DataError(f"{path}: label column {label!r} has {int(frame[label].isna().sum())} empty values")
    return frame[features].to_numpy(dtype=np.float64), frame[label].to_numpy()


def _read_csv(cfg: dict[str, Any], base_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    path = _resolve(cfg["path"], base_dir)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({str(exc).splitlines()[0]})") from None
    return _table(frame, cfg, path)


def _read_parquet(cfg: dict[str, Any], base_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    path = _resolve(cfg["path"], base_dir)
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    return _table(frame, cfg, path)


def _read_npz(cfg: dict[str, Any], base_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    import zipfile

    path = _resolve(cfg["path"], base_dir)
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in (cfg["x_key"], cfg["y_key"]):
                if key not in archive.files:
                    raise DataError(f"{path}: no array {key!r} (arrays: {', '.join(archive.files)})")
            x, y = archive[cfg["x_key"]], archive[cfg["y_key"]]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable NPZ archive of numeric arrays ({exc})") from None
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{path}: array {cfg['x_key']!r} is not numeric (dtype {x.dtype})")
    return x.astype(np.float64), y


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or not, checking its header against its size."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header is truncated")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX header declares {dims} ({expected} bytes) but the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _read_idx(cfg: dict[str, Any], base_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = _resolve(cfg["images"], base_dir), _resolve(cfg["labels"], base_dir)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.shape[0] != labels.shape[0] or labels.ndim != 1:
        raise DataError(f"{images_path}: {images.shape[0]} images but {labels_path} holds labels of shape {labels.shape}")
    return images.astype(np.float64), labels


_READERS = {"csv": _read_csv, "parquet": _read_parquet, "npz": _read_npz, "idx": _read_idx}


def _as_model_input(x: np.ndarray, image_shape: list[int] | None, origin: str) -> tuple[np.ndarray, bool]:
    if image_shape is not None:
        shape = tuple(image_shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
            raise DataError(f"{origin}: inputs of shape {x.shape[1:]} cannot be reshaped to image_shape {list(image_shape)}")
        return x.reshape((x.shape[0], *shape)), True
    if x.ndim == 2:
        return x, False
    if x.ndim == 3:
        return x[:, None, :, :], True
    if x.ndim == 4:
        return x, True
    raise DataError(f"{origin}: inputs have shape {x.shape}; expected (N, features), (N, H, W) or (N, C, H, W)")


def _scale(x: np.ndarray, scale: Any, input_range: tuple[float, float]) -> np.ndarray:
    low, high = input_range
    if scale == "none":
        return x
    if scale == "minmax":
        flat = x.reshape(x.shape[0], -1)
        lo = np.nanmin(np.where(np.isfinite(flat), flat, np.nan), axis=0)
        hi = np.nanmax(np.where(np.isfinite(flat), flat, np.nan), axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return (low + (flat - lo) / span * (high - low)).reshape(x.shape)
    return low + x / float(scale) * (high - low)


def _labels(raw: np.ndarray, names: list[str] | None, declared: list[str] | None, origin: str) -> tuple[np.ndarray, list[str]]:
    values, y = np.unique(raw, return_inverse=True)
    if names is None:
        names = [str(v) for v in values]
    else:
        names = [names[int(v)] for v in values]
    if declared is not None:
        if len(declared) != len(values):
            raise DataError(f"{origin}: data.classes names {len(declared)} classes but the labels hold {len(values)}: {[str(v) for v in values]}")
        names = list(declared)
    if len(values) < 2:
        raise DataError(f"{origin}: the labels hold only one class ({names}); a classifier audit needs at least two")
    return y.astype(np.int64), names


def load_dataset(cfg: dict[str, Any], base_dir: Path, seed: int) -> Dataset:
    """Load, clean (drop non-finite rows, recorded) and scale the declared source."""
    source = cfg["source"]
    names: list[str] | None = None
    auto_scale: float | str = "none"
    if source in BUILTIN_SOURCES:
        x, raw_y, names, auto_scale = _sklearn(source)
        origin = f"scikit-learn {source}"
        x, is_image = _as_model_input(x, None, origin)
    else:
        x, raw_y = _READERS[source](cfg, base_dir)
        origin = cfg.get("path") or cfg.get("images")
        if source == "idx":
            auto_scale = 255.0
        x, is_image = _as_model_input(x, cfg.get("image_shape"), origin)
    if x.shape[0] == 0:
        raise DataError(f"{origin}: no samples")
    finite = np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    dropped = int((~finite).sum())
    if dropped == x.shape[0]:
        raise DataError(f"{origin}: every sample holds a NaN or infinite value")
    x, raw_y = x[finite], raw_y[finite]
    y, class_names = _labels(raw_y, names, cfg["classes"], origin)
    input_range = (float(cfg["input_range"][0]), float(cfg["input_range"][1]))
    x = _scale(x, auto_scale if cfg["scale"] == "auto" else cfg["scale"], input_range).astype(np.float32)
    dataset = Dataset(source if source in BUILTIN_SOURCES else Path(origin).name, x, y, class_names, input_range, is_image, dropped)
    if cfg["max_samples"] is not None and cfg["max_samples"] < len(y):
        keep = _stratified_take(y, cfg["max_samples"], seed, origin)
        dataset.x, dataset.y = dataset.x[keep], dataset.y[keep]
    return dataset


def _stratified_take(y: np.ndarray, size: int, seed: int, origin: str) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    try:
        keep, _ = train_test_split(np.arange(len(y)), train_size=size, stratify=y, random_state=seed)
    except ValueError as exc:
        raise DataError(f"{origin}: cannot draw a stratified sample of {size}: {exc}") from None
    return np.sort(keep)


def split_dataset(dataset: Dataset, fractions: list[float], seed: int) -> Splits:
    """Stratified, seeded, disjoint train / hold-out / test index sets."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(dataset.y, minlength=dataset.n_classes)
    smallest = int(counts.argmin())
    if counts[smallest] < 3:
        raise DataError(
            f"class {dataset.class_names[smallest]!r} has {counts[smallest]} sample(s); "
            "a stratified train / hold-out / test split needs at least 3 per class"
        )
    train_f, holdout_f, test_f = fractions
    index = np.arange(len(dataset.y))
    try:
        rest, test = train_test_split(index, test_size=test_f, stratify=dataset.y, random_state=seed)
        train, holdout = train_test_split(
            rest, test_size=holdout_f / (train_f + holdout_f), stratify=dataset.y[rest], random_state=seed + 1
        )
    except ValueError as exc:
        raise DataError(f"cannot split {dataset.name} with fractions {fractions}: {exc}") from None
    return Splits(np.sort(train), np.sort(holdout), np.sort(test))


def _row_keys(x: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(x.reshape(x.shape[0], -1))
    return flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))).ravel()


def quality_rows(dataset: Dataset, splits: Splits) -> list[dict[str, Any]]:
    """Data-quality findings as result rows; a non-empty message marks something a reviewer should read."""
    where = {"category": Category.DATA_QUALITY, "model": "", "defense": ""}
    rows: list[dict[str, Any]] = []
    n = len(dataset.y)
    counts = np.bincount(dataset.y, minlength=dataset.n_classes)
    rows.append(count_row("samples", n, **where))
    rows.append(count_row("classes", dataset.n_classes, **where))
    rows.append(count_row("features", int(np.prod(dataset.input_shape)), **where))
    for name, count in zip(dataset.class_names, counts):
        rows.append(rate_row("class_share", int(count), n, subset=f"class={name}", **where))
    ratio = counts.max() / max(counts.min(), 1)
    rows.append(count_row("imbalance_ratio", ratio, message=f"largest class is {ratio:.1f}x the smallest" if ratio > 3 else "", **where))
    keys = _row_keys(dataset.x)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    duplicates = n - len(first)
    rows.append(count_row("duplicate_rows", duplicates, message=f"{duplicates} samples repeat an earlier one" if duplicates else "", **where))
    conflicting = 0
    if duplicates:
        labels_per_key = {}
        for key_id, label in zip(inverse, dataset.y):
            labels_per_key.setdefault(int(key_id), set()).add(int(label))
        conflicting = sum(1 for labels in labels_per_key.values() if len(labels) > 1)
    rows.append(count_row("conflicting_labels", conflicting, message=f"{conflicting} identical inputs carry different labels" if conflicting else "", **where))
    rows.append(
        count_row(
            "nonfinite_rows_dropped",
            dataset.dropped_rows,
            message=f"{dataset.dropped_rows} samples with NaN or infinite values were dropped" if dataset.dropped_rows else "",
            **where,
        )
    )
    low, high = dataset.input_range
    outside = dataset.values_outside_range()
    rows.append(
        count_row(
            "values_outside_range",
            outside,
            message=f"{outside} values lie outside the declared input_range [{low:g}, {high:g}]; integrity attacks refuse such data" if outside else "",
            **where,
        )
    )
    split_keys = {}
    for split_name, idx in splits.items():
        rows.append(count_row("samples", len(idx), subset=f"split={split_name}", **where))
        split_keys[split_name] = set(inverse[idx].tolist())
    for a, b in (("train", "holdout"), ("train", "test"), ("holdout", "test")):
        shared = len(split_keys[a] & split_keys[b])
        message = f"{shared} distinct inputs appear in both {a} and {b}" if shared else ""
        rows.append(count_row("duplicates_across_splits", shared, subset=f"split={a}~{b}", message=message, **where))
    return rows
