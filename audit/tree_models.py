"""Tabular classifiers a team ships from scikit-learn (skops), XGBoost or LightGBM, evaluated by their own library.

Loading unpickles nothing. An XGBoost JSON / UBJ model and a LightGBM text model are plain data
the library parses. A skops file is a zip of JSON from which `skops.io.load` builds only the types
it trusts, plus those the user lists in `trusted_types`; every other type is refused before
anything is built. Some types are untrusted by default for a reason: skops 0.16 does not trust
scikit-learn's `Tree` (every random forest and gradient-boosted tree holds one), because a crafted
node index can make `predict` read out of bounds.

The file is read once: its bytes are what the library loads and what `digest` (the cache
identity) hashes. None of these models gives gradients, so Kansa wraps `scores` as a gradient-free
module, and attacks that need gradients become not-applicable rows.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from audit.errors import ModelError, describe_exception
from audit.stats import softmax

TREE_KINDS = ("skops", "xgboost", "lightgbm")
# XGBoost objectives whose margins are class logits; the binary ones have one margin per sample.
_XGBOOST_CLASSIFIERS = {"binary:logistic": "binary", "binary:logitraw": "binary", "multi:softprob": "multi", "multi:softmax": "multi"}
_LIGHTGBM_CLASSIFIERS = ("binary", "multiclass")


@dataclass
class TreeModel:
    """A loaded model file: `scores` maps float32 features (n, f) to float32 class probabilities (n, classes)."""

    scores: Callable[[np.ndarray], np.ndarray]
    description: str  # what the file holds and which library evaluates it, for the report's model row
    digest: bytes  # sha256 of the bytes the library loaded
    native: Any  # the library's own model object, for attacks that read its structure (a decision tree's nodes)


class _Fitted(NamedTuple):
    predict: Callable[[np.ndarray], np.ndarray]  # probabilities (n, classes), or the positive class's (n,)
    n_features: int
    n_classes: int
    description: str
    native: Any


def load_tree_model(kind: str, path: Path, input_shape: tuple[int, ...], trusted_types: Sequence[str] = ()) -> TreeModel:
    """`path` for samples of `input_shape`: refused at load, on one line, when the file is unreadable or does not fit the data."""
    if len(input_shape) != 1:
        raise ModelError(
            f'{path}: kind = "{kind}" models take feature vectors, but the data\'s samples have shape {input_shape}; '
            "audit them on tabular data (CSV, Parquet or NPZ of shape (n, features))"
        )
    content = Path(path).read_bytes()
    fitted = _skops(content, path, list(trusted_types)) if kind == "skops" else {"xgboost": _xgboost, "lightgbm": _lightgbm}[kind](content, path)
    if fitted.n_features != input_shape[0]:
        raise ModelError(f"{path}: the model expects {fitted.n_features} features, but the data has {input_shape[0]}")
    return TreeModel(_probabilities(fitted.predict, fitted.n_classes), fitted.description, hashlib.sha256(content).digest(), fitted.native)


def _probabilities(predict: Callable[[np.ndarray], np.ndarray], n_classes: int) -> Callable[[np.ndarray], np.ndarray]:
    """Every library's predictions in the one form Kansa reads: float32 (n, classes), also for an empty batch."""

    def scores(x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, n_classes), dtype=np.float32)
        p = np.asarray(predict(x), dtype=np.float64)
        return (np.stack([1 - p, p], axis=1) if p.ndim == 1 else p).astype(np.float32)

    return scores


def _library(kind: str, name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ModelError(f"kind = \"{kind}\" needs the trees extra: pip install 'kansa[trees]' ({name.partition('.')[0]} is not installed)") from None


def _threads() -> int:
    """The thread budget torch has (one per Ray task), so the libraries' OpenMP pools do not oversubscribe shared cores."""
    import torch

    return torch.get_num_threads()


def _skops(content: bytes, path: Path, trusted_types: list[str]) -> _Fitted:
    sio = _library("skops", "skops.io")
    try:
        untrusted = sio.get_untrusted_types(data=content)
    except Exception as exc:  # a zip without skops' schema raises KeyError, a broken one BadZipFile, bad JSON ValueError
        raise ModelError(f"{path}: not a readable skops file ({describe_exception(exc)})") from None
    refused = sorted(set(untrusted) - set(trusted_types))
    if refused:
        listed = ", ".join(f'"{name}"' for name in refused)
        raise ModelError(
            f"{path}: holds types skops does not trust: {', '.join(refused)}; "
            f"only for a file you trust, declare them: trusted_types = [{listed}]"
        )
    try:
        estimator = sio.load(io.BytesIO(content), trusted=trusted_types)
    except Exception as exc:  # building the objects raises whatever their constructors and setstate raise
        raise ModelError(f"{path}: skops cannot load it ({describe_exception(exc)})") from None
    name = type(estimator).__name__
    if not hasattr(estimator, "predict_proba"):
        raise ModelError(f"{path}: holds a {name}, which has no predict_proba; Kansa audits classifiers that give class probabilities")
    if not hasattr(estimator, "n_features_in_") or not hasattr(estimator, "classes_"):
        raise ModelError(f"{path}: holds an unfitted {name}; save it after fit()")
    columns = getattr(estimator, "feature_names_in_", None)

    def predict(x: np.ndarray) -> np.ndarray:
        features: Any = x.astype(np.float64)
        if columns is not None:  # fitted on a DataFrame: a column transformer selects by name
            import pandas as pd

            features = pd.DataFrame(features, columns=columns)
        return estimator.predict_proba(features)

    import sklearn
    import skops

    return _Fitted(predict, int(estimator.n_features_in_), len(estimator.classes_),
                   f"a scikit-learn {name} (read by skops {skops.__version__}) runs through scikit-learn {sklearn.__version__}", estimator)


def _xgboost(content: bytes, path: Path) -> _Fitted:
    """A Booster or XGBClassifier saved as JSON or UBJ; the format is detected from the bytes, not the file name."""
    import json

    xgb = _library("xgboost", "xgboost")
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(content))
    except (xgb.core.XGBoostError, UnicodeDecodeError) as exc:  # xgboost's message quotes the file's bytes, which may not decode
        message = exc.object.decode("utf-8", "replace") if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise ModelError(f"{path}: not an XGBoost JSON or UBJ model ({_xgboost_reason(message)})") from None
    learner = json.loads(booster.save_config())["learner"]
    objective = learner["objective"]["name"]
    if objective not in _XGBOOST_CLASSIFIERS:
        raise ModelError(
            f"{path}: an XGBoost model with objective {objective} gives no class probabilities; Kansa audits classifiers "
            f"(objective {', '.join(_XGBOOST_CLASSIFIERS)})"
        )
    binary = _XGBOOST_CLASSIFIERS[objective] == "binary"
    booster.set_param({"nthread": _threads()})
    # What XGBClassifier.predict_proba evaluates: the trees up to the best iteration when early stopping saved one.
    best = booster.attr("best_iteration")
    trees = (0, int(best) + 1) if best is not None else (0, 0)

    def predict(x: np.ndarray) -> np.ndarray:
        margin = booster.inplace_predict(x, predict_type="margin", iteration_range=trees, validate_features=False).astype(np.float64)
        return softmax(np.stack([np.zeros_like(margin), margin], axis=1) if binary else margin)

    return _Fitted(predict, booster.num_features(), 2 if binary else int(learner["learner_model_param"]["num_class"]),
                   f"an XGBoost booster ({objective}, {trees[1] or booster.num_boosted_rounds()} rounds) runs through xgboost {xgb.__version__}",
                   booster)


def _xgboost_reason(message: str) -> str:
    """XGBoost's first line without its timestamp and source location; the lines after it quote the file and a native stack trace."""
    first = message.strip().splitlines()[0] if message.strip() else "no reason given"
    first = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", first)
    return first if len(first) <= 300 else first[:297] + "..."


def _lightgbm(content: bytes, path: Path) -> _Fitted:
    """A Booster saved as text (Booster.save_model, or LGBMClassifier.booster_.save_model)."""
    lgb = _library("lightgbm", "lightgbm")
    try:
        booster = lgb.Booster(model_str=content.decode("utf-8"))
    except (lgb.basic.LightGBMError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a LightGBM text model ({describe_exception(exc)})") from None
    objective = booster.dump_model(num_iteration=1)["objective"].split(" ")[0]
    if objective not in _LIGHTGBM_CLASSIFIERS:
        raise ModelError(
            f"{path}: a LightGBM model with objective {objective} gives no class probabilities; Kansa audits classifiers "
            f"(objective {' or '.join(_LIGHTGBM_CLASSIFIERS)})"
        )
    threads = _threads()

    def predict(x: np.ndarray) -> np.ndarray:
        return booster.predict(x.astype(np.float64), num_threads=threads)

    n_classes = 2 if objective == "binary" else booster.num_model_per_iteration()
    return _Fitted(predict, booster.num_feature(), n_classes,
                   f"a LightGBM booster ({objective}, {booster.current_iteration()} iterations) runs through lightgbm {lgb.__version__}", booster)
