"""Data: load the declared sources, scale them into the declared input range, assign roles, and check them.

The roles are the basis of every privacy claim: train holds the members, hold-out is never
trained on (membership inference needs true non-members), test is what accuracy and integrity
attacks measure. They are either declared (a source per role, a split column, or an index file:
the data a team's own model was really trained on) or Kansa's own seeded split of one source,
which only a model Kansa trains itself may be judged against. Declared roles are never re-split.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import DataError
from audit.metrics import Category
from audit.params import AnyOf, Choice, ListOf, Location, Number, Param, ParamSet, Text, validate_tagged
from audit.results import count_row, rate_row

BUILTIN_SOURCES = ("digits", "breast_cancer", "wine", "iris")
SPLIT_NAMES = ("train", "holdout", "test")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

_SHAPE = ListOf(Number(low=1, integer=True), min_len=1, max_len=3)
COMMON_PARAMS = (
    Param("input_range", ListOf(Number(), length=2), [0.0, 1.0], "bounds every input (and every attack) stays in"),
    Param(
        "scale",
        AnyOf((Choice(("auto", "none", "minmax")), Number(low=0, closed="neither"))),
        "auto",
        "how raw values map into input_range: minmax per feature, divide by a number, or none",
    ),
    Param("max_samples", Number(low=30, integer=True), None, "stratified subsample before splitting (of each declared role)"),
    Param("classes", ListOf(Text()), None, "display names of the classes, in label order"),
)
_SPLIT_PARAM = Param("split", ListOf(Number(0, 1, closed="neither"), length=3), [0.6, 0.2, 0.2],
                     "train, hold-out, test fractions of Kansa's own split (one source without declared roles)")
ONE_SOURCE_PARAMS = (
    _SPLIT_PARAM,
    Param("split_file", Text(), None,
          "JSON file of row indices per role, {\"train\": [...], \"holdout\": [...], \"test\": [...]}: declared roles, never re-split"),
)
_FILE_PARAMS = (Param("path", Text(), doc="file path, relative to the config file"),)
_TABLE_PARAMS = (
    *_FILE_PARAMS,
    Param("label_column", Text(), doc="column holding the class label"),
    Param("feature_columns", ListOf(Text()), None, "feature columns (default: every other column)"),
    Param("image_shape", _SHAPE, None, "reshape each row to this image shape, e.g. [1, 28, 28]"),
    Param("split_column", Text(), None, "column naming each row's role (train, holdout or test): declared roles, never re-split"),
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
    "image_folder": (
        Param("path", Text(), doc="folder holding one sub-folder of PNG or JPEG images per class (named by the class, or its number), relative to the config file"),
        Param("image_shape", ListOf(Number(low=1, integer=True), min_len=2, max_len=3),
              doc="every image is resized to [C, H, W] (C = 1: grey, 3: RGB), or [H, W] for grey"),
    ),
}


def validate_data_config(table: Any, where: Location) -> dict[str, Any]:
    """One source (Kansa splits it, or a split column or index file declares the roles), or a source per role."""
    if isinstance(table, dict) and any(role in table for role in SPLIT_NAMES):
        values = _validate_roles(table, where)
    else:
        values = validate_tagged(table, where, "source", SOURCE_PARAMS, (*COMMON_PARAMS, *ONE_SOURCE_PARAMS))
        _check_source(values, where)
        if abs(sum(values["split"]) - 1.0) > 1e-6:
            raise where.child("split").error(f"expected fractions that sum to 1, got {values['split']}")
        if values.get("split_column") and values["split_file"]:
            raise where.child("split_file").error("the roles are already declared by split_column; declare them once")
        values["roles"] = None
    low, high = values["input_range"]
    if not low < high:
        raise where.child("input_range").error(f"expected [low, high] with low < high, got {values['input_range']}")
    return values


def _validate_roles(table: dict[str, Any], where: Location) -> dict[str, Any]:
    for key in ("source", *(p.name for p in ONE_SOURCE_PARAMS)):
        if key in table:
            raise where.child(key).error(
                "the roles are declared by [data.train], [data.holdout] and [data.test], so Kansa does not re-split the data; remove it"
                if key != "source" else "declare either one source here or a source per role ([data.train], [data.holdout], [data.test]), not both")
    if "test" not in table:
        raise where.child("test").error("missing; declared roles need a [data.test] source (what accuracy and integrity attacks measure)")
    values = ParamSet(COMMON_PARAMS, extra_keys=SPLIT_NAMES).validate(table, where)
    roles = {}
    for role in SPLIT_NAMES:
        if role in table:
            roles[role] = validate_tagged(table[role], where.child(role), "source", SOURCE_PARAMS)
            _check_source(roles[role], where.child(role))
            if roles[role].get("split_column"):
                raise where.child(role).child("split_column").error(f"every row of data.{role} has the role {role}; remove split_column")
    return {**values, "split": None, "roles": roles}


def _check_source(values: dict[str, Any], where: Location) -> None:
    if values["source"] == "image_folder" and (len(values["image_shape"]) == 3 and values["image_shape"][0] not in (1, 3)):
        raise where.child("image_shape").error(f"expected 1 (grey) or 3 (RGB) channels first, got {values['image_shape']}")


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
    feature_names: list[str] | None = None  # the columns of a tabular source, in input order; None when unnamed

    def feature_index(self, feature: int | str) -> int:
        """The input column of a feature given by name or by index, as a config may declare it (ValueError when there is none)."""
        if isinstance(feature, str):
            if self.feature_names is None or feature not in self.feature_names:
                named = f"its features are {', '.join(self.feature_names)}" if self.feature_names else "its features have no names; give a column index"
                raise ValueError(f"{self.name} has no feature {feature!r}: {named}")
            return self.feature_names.index(feature)
        width = self.input_shape[0]
        if feature >= width:
            raise ValueError(f"{feature} is out of range: {self.name} has {width} features (0 to {width - 1})")
        return feature

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
    """Index sets into the dataset; `declared` when the user declared them (else Kansa's seeded split).

    A role the user did not declare is empty.
    """

    train: np.ndarray
    holdout: np.ndarray
    test: np.ndarray
    declared: bool = False

    def items(self) -> list[tuple[str, np.ndarray]]:
        return [("train", self.train), ("holdout", self.holdout), ("test", self.test)]


def _resolve(path: str, base_dir: Path) -> Path:
    resolved = (base_dir / path).expanduser()
    if not resolved.is_file():
        raise DataError(f"data file not found: {resolved}")
    return resolved


def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray, list[str] | None, float | str, list[str] | None]:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    if name == "digits":
        return bunch.images[:, None, :, :].astype(np.float64), bunch.target, None, 16.0, None
    return bunch.data.astype(np.float64), bunch.target, [str(t) for t in bunch.target_names], "minmax", [str(f) for f in bunch.feature_names]


# inputs, labels, each row's declared role when the file declares them, and the feature columns' names when it has them
_Read = tuple[np.ndarray, np.ndarray, "np.ndarray | None", "list[str] | None"]


def _table(frame: Any, cfg: dict[str, Any], path: Path) -> _Read:
    label, split_column = cfg["label_column"], cfg.get("split_column")
    for role, column in (("label", label), ("split", split_column)):
        if column is not None and column not in frame.columns:
            raise DataError(f"{path}: no {role} column {column!r} (columns: {', '.join(map(str, frame.columns))})")
    features = cfg["feature_columns"] or [c for c in frame.columns if c not in (label, split_column)]
    if split_column in features:
        raise DataError(f"{path}: the split column {split_column!r} cannot also be a feature")
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
    if split_column is not None:
        roles = frame[split_column].astype("string").fillna("").to_numpy(dtype=object)
        unknown = sorted(set(roles) - set(SPLIT_NAMES))
        if unknown:
            raise DataError(f"{path}: split column {split_column!r} holds {', '.join(map(repr, unknown[:5]))}; expected train, holdout or test")
        return frame[features].to_numpy(dtype=np.float64), frame[label].to_numpy(), roles.astype(str), [str(c) for c in features]
    return frame[features].to_numpy(dtype=np.float64), frame[label].to_numpy(), None, [str(c) for c in features]


def _read_csv(cfg: dict[str, Any], base_dir: Path) -> _Read:
    import pandas as pd

    path = _resolve(cfg["path"], base_dir)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({str(exc).splitlines()[0]})") from None
    return _table(frame, cfg, path)


def _read_parquet(cfg: dict[str, Any], base_dir: Path) -> _Read:
    import pandas as pd

    path = _resolve(cfg["path"], base_dir)
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    return _table(frame, cfg, path)


def _read_npz(cfg: dict[str, Any], base_dir: Path) -> _Read:
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
    if x.ndim < 1 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{path}: arrays {cfg['x_key']!r} of shape {x.shape} and {cfg['y_key']!r} of shape {y.shape} must hold one label per sample")
    return x.astype(np.float64), y, None, None


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


def _read_idx(cfg: dict[str, Any], base_dir: Path) -> _Read:
    images_path, labels_path = _resolve(cfg["images"], base_dir), _resolve(cfg["labels"], base_dir)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.shape[0] != labels.shape[0] or labels.ndim != 1:
        raise DataError(f"{images_path}: {images.shape[0]} images but {labels_path} holds labels of shape {labels.shape}")
    return images.astype(np.float64), labels, None, None


def _read_image_folder(cfg: dict[str, Any], base_dir: Path) -> _Read:
    from PIL import Image

    root = (base_dir / cfg["path"]).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no class sub-folders (expected one folder of PNG or JPEG images per class)")
    shape = cfg["image_shape"]
    channels, height, width = (1, *shape) if len(shape) == 2 else shape
    images, labels = [], []
    for folder in folders:
        for file in sorted(f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES):
            try:
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BILINEAR))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise DataError(f"{file}: not a readable image ({exc})") from None
            images.append(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))
            labels.append(folder.name)
    if not images:
        raise DataError(f"{root}: no PNG or JPEG images in its class folders ({', '.join(f.name for f in folders[:5])})")
    numbered = all(f.name.isdigit() for f in folders)  # folders 0..9 are the labels 0..9, as in a role read from a file
    return np.stack(images).astype(np.float64), np.array([int(n) for n in labels] if numbered else labels), None, None


_READERS = {"csv": _read_csv, "parquet": _read_parquet, "npz": _read_npz, "idx": _read_idx, "image_folder": _read_image_folder}
_AUTO_SCALE = {"idx": 255.0, "image_folder": 255.0}


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


@dataclass
class _Source:
    """One source as read: inputs in model shape (unscaled), raw labels, and each row's declared role ("" if none)."""

    x: np.ndarray
    labels: np.ndarray
    roles: np.ndarray | None
    names: list[str] | None
    auto_scale: float | str
    origin: str
    name: str
    is_image: bool
    feature_names: list[str] | None = None


def _read_source(cfg: dict[str, Any], base_dir: Path, role: str | None = None) -> _Source:
    source = cfg["source"]
    names: list[str] | None = None
    if source in BUILTIN_SOURCES:
        x, labels, names, auto_scale, features = _sklearn(source)
        origin, name, shape, roles = f"scikit-learn {source}", source, None, None
    else:
        x, labels, roles, features = _READERS[source](cfg, base_dir)
        origin = cfg.get("path") or cfg.get("images")
        name, shape, auto_scale = Path(origin).name, cfg.get("image_shape"), _AUTO_SCALE.get(source, "none")
    if role is not None:
        origin, roles = f"data.{role} ({origin})", np.full(len(labels), role)
    x, is_image = _as_model_input(x, shape, origin)
    if x.shape[0] == 0:
        raise DataError(f"{origin}: no samples")
    return _Source(x, labels, roles, names, auto_scale, origin, name, is_image, features if not is_image else None)


def _roles_from_file(cfg: dict[str, Any], base_dir: Path, rows: int) -> np.ndarray:
    """Each row's role from a JSON file of row indices per role; rows it does not list take no part."""
    import json

    path = _resolve(cfg["split_file"], base_dir)
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(listed, dict) or set(listed) - set(SPLIT_NAMES) or "test" not in listed:
        raise DataError(f"{path}: expected an object with lists of row indices under \"train\", \"holdout\" and \"test\" (test required)")
    roles = np.full(rows, "", dtype=object)
    for role, indices in listed.items():
        if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise DataError(f"{path}: {role!r} must be a list of row numbers (0 = the first data row)")
        outside = [i for i in indices if not 0 <= i < rows]
        if outside:
            raise DataError(f"{path}: {role!r} lists row {outside[0]}, but the data has rows 0-{rows - 1}")
        taken = [i for i in indices if roles[i]]
        if taken:
            raise DataError(f"{path}: row {taken[0]} is listed under both {roles[taken[0]]!r} and {role!r}")
        roles[indices] = role
    return roles.astype(str)


def _combine(sources: list[_Source], cfg: dict[str, Any]) -> tuple[Dataset, np.ndarray | None]:
    """Clean (drop non-finite rows, recorded), label and scale the sources as one dataset, so every role shares one label map and one scale."""
    first = sources[0]
    for other in sources[1:]:
        if other.x.shape[1:] != first.x.shape[1:]:
            raise DataError(f"{other.origin}: inputs of shape {other.x.shape[1:]}, but {first.origin} has {first.x.shape[1:]}")
        if other.feature_names and first.feature_names and other.feature_names != first.feature_names:
            raise DataError(f"{other.origin}: feature columns {other.feature_names} differ from {first.origin}'s {first.feature_names}")
        if _label_kind(other) != _label_kind(first):
            raise DataError(f"{other.origin}: labels are {_label_kind(other)} but {first.origin}'s are {_label_kind(first)}")
    scales = {str(s.auto_scale) for s in sources}
    if cfg["scale"] == "auto" and len(scales) > 1:
        raise DataError(f"data.scale = \"auto\" means different scales for {first.origin} and {sources[1].origin}; set data.scale")
    x = np.concatenate([s.x for s in sources])
    labels = np.concatenate([s.labels for s in sources])
    roles = None if first.roles is None else np.concatenate([s.roles for s in sources])
    origin = " + ".join(s.origin for s in sources)
    if roles is not None:
        used = roles != ""
        x, labels, roles = x[used], labels[used], roles[used]
    finite = np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    dropped = int((~finite).sum())
    if dropped == x.shape[0]:
        raise DataError(f"{origin}: every sample holds a NaN or infinite value")
    x, labels = x[finite], labels[finite]
    y, class_names = _labels(labels, first.names, cfg["classes"], origin)
    input_range = (float(cfg["input_range"][0]), float(cfg["input_range"][1]))
    x = _scale(x, first.auto_scale if cfg["scale"] == "auto" else cfg["scale"], input_range).astype(np.float32)
    name = " + ".join(dict.fromkeys(s.name for s in sources))
    features = first.feature_names if all(s.feature_names == first.feature_names for s in sources) else None
    return Dataset(name, x, y, class_names, input_range, first.is_image, dropped, features), None if roles is None else roles[finite]


def _label_kind(source: _Source) -> str:
    return "numbers" if source.labels.dtype.kind in "iub" else "names"


def load_dataset(cfg: dict[str, Any], base_dir: Path, seed: int) -> Dataset:
    """Load, clean and scale one declared source, its roles ignored (a stratified subsample when `max_samples` asks)."""
    return _without_roles(_read_source(cfg, base_dir), cfg, seed)


def _without_roles(source: _Source, cfg: dict[str, Any], seed: int) -> Dataset:
    dataset, _ = _combine([replace(source, roles=None)], cfg)
    if cfg["max_samples"] is not None and cfg["max_samples"] < len(dataset.y):
        keep = _stratified_take(dataset.y, cfg["max_samples"], seed, source.origin)
        dataset.x, dataset.y = dataset.x[keep], dataset.y[keep]
    return dataset


def load_data(cfg: dict[str, Any], base_dir: Path, sample_seed: int, split_seed: int) -> tuple[Dataset, Splits]:
    """The dataset and its roles: the declared ones as they are, or else Kansa's seeded split of the one source."""
    if cfg["roles"] is not None:
        sources = [_read_source(role_cfg, base_dir, role) for role, role_cfg in cfg["roles"].items()]
    else:
        source = _read_source(cfg, base_dir)
        if cfg["split_file"]:
            source.roles = _roles_from_file(cfg, base_dir, len(source.labels))
        if source.roles is None:
            dataset = _without_roles(source, cfg, sample_seed)
            return dataset, split_dataset(dataset, cfg["split"], split_seed)
        sources = [source]
    dataset, roles = _combine(sources, cfg)
    assert roles is not None  # every source above carries its rows' roles
    limit = cfg["max_samples"]
    if limit is not None:
        keep = np.sort(np.concatenate([
            idx[_stratified_take(dataset.y[idx], limit, sample_seed, f"data.{role}")] if len(idx) > limit else idx
            for role in SPLIT_NAMES for idx in [np.flatnonzero(roles == role)]
        ]))
        dataset.x, dataset.y, roles = dataset.x[keep], dataset.y[keep], roles[keep]
    return dataset, Splits(*(np.flatnonzero(roles == role) for role in SPLIT_NAMES), declared=True)


def stratified_subset(index: np.ndarray, y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` of `index` with every class in proportion (largest remainder), drawn with `seed`; sorted. Never fails on rare classes."""
    if size >= len(index):
        return index
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y[index], return_counts=True)
    quota = counts * size / len(index)
    take = np.floor(quota).astype(int)
    take[np.argsort(take - quota, kind="stable")[: size - int(take.sum())]] += 1
    chosen = [rng.choice(index[y[index] == c], k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


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
        message = (f"{shared} distinct inputs appear in both {a} and {b}"
                   + (f": leakage between the declared {a} and {b} data" if splits.declared else "")) if shared else ""
        rows.append(count_row("duplicates_across_splits", shared, subset=f"split={a}~{b}", message=message, **where))
    return rows
