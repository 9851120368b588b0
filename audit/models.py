"""Models: train with the built-in pipeline or load the user's, then wrap once as an attack target.

Loading never unpickles arbitrary objects: state_dicts go through `torch.load(weights_only=True)`,
safetensors files hold only tensors, and whole pickled models and torch.export programs (whose
loader unpickles and evaluates parts of the file) are refused unless the user vouches for the file.
Tree models and scikit-learn classifiers (audit/tree_models.py) are plain data or skops files, and
ONNX models (audit/onnx_import.py) protobufs.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import sys
import time
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from audit.endpoints import HTTP_PARAMS, Endpoint, EndpointError, validate_http_config
from audit.errors import ModelError, describe_exception
from audit.metrics import Category
from audit.onnx_import import load_onnx
from audit.params import AnyOf, AnyTable, Choice, Flag, ListOf, Location, Number, Param, ParamSet, Text, validate_tagged
from audit.results import UNDEFENDED, count_row
from audit.training import shuffled_batches, train_epochs
from audit.tree_models import TREE_KINDS, load_tree_model

if TYPE_CHECKING:
    import torch

    from audit.data import Dataset

_OUTPUT = Param(
    "output",
    Choice(("auto", "logits", "probabilities")),
    "auto",
    "what the model returns; auto detects it from the outputs and records what it found",
)
# A file of tensors only: the user's own code (the factory) builds the architecture they fill.
_FACTORY_PARAMS = (
    Param("factory", Text(), doc='"package.module:function" that builds the architecture'),
    Param("factory_args", AnyTable(), None, "keyword arguments for the factory"),
    Param("strict", Flag(), True, "require the state_dict keys to match the architecture exactly"),
    _OUTPUT,
)
_ALLOW_UNSAFE = Param("allow_unsafe_pickle", Flag(), False, "must be true: you trust the file's author (the report says so)")
TRAINING_PARAMS = (
    Param("epochs", Number(1, 10_000, integer=True), 20, "passes over the training split"),
    Param("batch_size", Number(1, 1_000_000, integer=True), 64, "training batch size"),
    Param("learning_rate", Number(0, 10, closed="right"), 1e-3, "optimiser step size"),
    Param("weight_decay", Number(0, 1), 0.0, "L2 regularisation"),
    Param("optimizer", Choice(("adam", "sgd")), "adam", "adam, or sgd with momentum 0.9"),
)
KIND_PARAMS: dict[str, tuple[Param, ...]] = {
    "builtin": (
        Param("architecture", Choice(("auto", "cnn", "mlp")), "auto", "auto: cnn for images, mlp for tabular data"),
        Param("hidden", ListOf(Number(1, 100_000, integer=True), max_len=8), [128, 64], "MLP hidden layer widths"),
        Param("channels", ListOf(Number(1, 4096, integer=True), length=2), [16, 32], "CNN channels of its two conv blocks"),
        *TRAINING_PARAMS,
    ),
    "torchscript": (
        Param("path", Text(), doc="TorchScript file (torch.jit.save), relative to the config file"),
        _OUTPUT,
    ),
    "state_dict": (
        Param("path", Text(), doc="state_dict file (torch.save(model.state_dict())), relative to the config file"),
        *_FACTORY_PARAMS,
    ),
    "safetensors": (
        Param("path", Text(), doc="safetensors file (safetensors.torch.save_file(model.state_dict(), PATH)), relative to the config file"),
        *_FACTORY_PARAMS,
    ),
    "exported": (
        Param("path", Text(), doc="torch.export program (torch.export.save), exported in eval mode with a dynamic batch dimension; "
                                  "loading it can run code from the file"),
        _ALLOW_UNSAFE,
        _OUTPUT,
    ),
    "onnx": (
        Param("path", Text(), doc="ONNX file with a dynamic batch axis (pip install 'kansa[onnx]'); converted to torch for gradients "
                                  "when every op converts and the outputs agree with onnxruntime, else gradient-free attacks only"),
        _OUTPUT,
    ),
    "pickle": (
        Param("path", Text(), doc="a whole model saved with torch.save(model); loading it runs code from the file"),
        _ALLOW_UNSAFE,
        _OUTPUT,
    ),
    "skops": (
        Param("path", Text(), doc="scikit-learn classifier saved with skops.io.dump (pip install 'kansa[trees]'); gradient-free attacks only"),
        Param("trusted_types", ListOf(Text()), [], "types beyond skops' defaults the file may hold (skops.io.get_untrusted_types names them); "
                                                   "only for a file you trust"),
        _OUTPUT,
    ),
    "xgboost": (
        Param("path", Text(), doc="XGBoost classifier saved as JSON or UBJ (Booster.save_model or XGBClassifier.save_model; "
                                  "pip install 'kansa[trees]'); gradient-free attacks only"),
        _OUTPUT,
    ),
    "lightgbm": (
        Param("path", Text(), doc="LightGBM classifier saved as text (Booster.save_model; pip install 'kansa[trees]'); gradient-free attacks only"),
        _OUTPUT,
    ),
    "http": HTTP_PARAMS,
}
_POSITIVE = Number(0, closed="neither")
_NORMALIZE = ParamSet((
    Param("mean", AnyOf((Number(), ListOf(Number()))), doc="subtracted from the inputs: one value per channel (or feature), or one for all"),
    Param("std", AnyOf((_POSITIVE, ListOf(_POSITIVE))), doc="then divided by: one value per channel (or feature), or one for all"),
))
COMMON_PARAMS = (
    Param("name", Text(), None, "label in results and reports (default: the kind or architecture)"),
    Param("normalize", AnyTable(), None, "{ mean = [...], std = [...] }: the model expects (x - mean) / std, per channel or feature; "
                                         "attacks and eps stay in the data's input range (not for builtin)"),
    Param("reference_recipe", AnyTable(), None, "keys of a builtin model (architecture, epochs, ...): how shadow, reference and surrogate "
                                                "models of a loaded model are trained, an approximation of its own recipe (default: the built-in one)"),
)
# Why a kind needs allow_unsafe_pickle. torch.export.load (torch 2.13) falls back to torch.load(weights_only=False) when
# the archive's sample inputs are not plain tensors, unpickles payloads the archive marks as pickled, and sympify()s
# (evaluates) the shape expressions it stores.
_UNSAFE_KINDS = {
    "pickle": "a pickled model runs arbitrary code when loaded",
    "exported": "torch.export.load can run arbitrary code from the file (it unpickles parts of it and evaluates its shape expressions)",
}


def validate_model_config(table: Any, where: Location) -> dict[str, Any]:
    values = validate_tagged(table, where, "kind", KIND_PARAMS, COMMON_PARAMS, default_tag="builtin")
    if values["kind"] in _UNSAFE_KINDS and not values["allow_unsafe_pickle"]:
        raise where.child("allow_unsafe_pickle").error(
            f"{_UNSAFE_KINDS[values['kind']]}; set allow_unsafe_pickle = true only for a file you trust, "
            'or use kind = "safetensors", "state_dict" or "torchscript"'
        )
    if values["kind"] == "http":
        validate_http_config(values, where)
    if "factory" in values and ":" not in values["factory"]:
        raise where.child("factory").error(f'expected "package.module:function", got "{values["factory"]}"')
    if values["normalize"] is not None:
        if values["kind"] == "builtin":
            raise where.child("normalize").error(
                "a built-in model is trained by Kansa on the data's input range and needs no normalisation; remove normalize"
            )
        values["normalize"] = _NORMALIZE.validate(values["normalize"], where.child("normalize"))
    if values["kind"] == "builtin" and values["reference_recipe"] is not None:
        raise where.child("reference_recipe").error("a built-in model's shadow and reference models use its own recipe; remove reference_recipe")
    if values["kind"] != "builtin":
        values["reference_recipe"] = ParamSet(KIND_PARAMS["builtin"]).validate(values["reference_recipe"] or {}, where.child("reference_recipe"))
    if values["name"] is None:
        values["name"] = values.get("architecture", values["kind"])
    return values


def build_builtin(cfg: dict[str, Any], input_shape: tuple[int, ...], n_classes: int, is_image: bool) -> "torch.nn.Module":
    """A small CNN (two conv blocks + linear) for images, an MLP for tabular data."""
    import torch
    from torch import nn

    architecture = cfg["architecture"]
    if architecture == "auto":
        architecture = "cnn" if is_image else "mlp"
    if architecture == "cnn":
        if len(input_shape) != 3:
            raise ModelError(f"architecture cnn needs image inputs (C, H, W); the data has shape {input_shape}")
        c1, c2 = cfg["channels"]
        features = nn.Sequential(
            nn.Conv2d(input_shape[0], c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Flatten(),
        )
        with torch.no_grad():
            width = features(torch.zeros(1, *input_shape)).shape[1]
        return nn.Sequential(features, nn.Linear(width, n_classes))
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(np.prod(input_shape))
    for hidden in cfg["hidden"]:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def train(
    module: "torch.nn.Module",
    x: np.ndarray,
    y: np.ndarray,
    cfg: dict[str, Any],
    seed: int,
    progress: bool,
    label: str,
    label_smoothing: float = 0.0,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    patience: int | None = None,
    device: str = "cpu",
) -> float:
    """Seeded mini-batch training with cross-entropy on `device`; returns wall seconds.

    With `validation` and `patience`, training stops once validation loss has not improved for
    `patience` epochs and the best epoch's weights are restored (early stopping).
    """
    import torch

    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    module.to(device)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    if cfg["optimizer"] == "adam":
        optimizer = torch.optim.Adam(module.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    else:
        optimizer = torch.optim.SGD(
            module.parameters(), lr=cfg["learning_rate"], momentum=0.9, weight_decay=cfg["weight_decay"]
        )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    best: dict[str, Any] = {"loss": float("inf"), "state": None, "stale": 0}

    def stop_early() -> bool:
        if validation is None or patience is None:
            return False
        module.eval()
        with torch.no_grad():
            val_x, val_y = (torch.from_numpy(a).to(device) for a in validation)
            val_loss = float(torch.nn.functional.cross_entropy(module(val_x), val_y))
        if val_loss < best["loss"]:
            best.update(loss=val_loss, stale=0, state={k: v.detach().clone() for k, v in module.state_dict().items()})
            return False
        best["stale"] += 1
        return best["stale"] >= patience

    train_epochs(module, optimizer, cfg["epochs"], shuffled_batches(len(yt), cfg["batch_size"], generator),
                 lambda idx: loss_fn(module(xt[idx]), yt[idx]), stop_early, progress, label)
    if best["state"] is not None:
        module.load_state_dict(best["state"])
    module.eval()
    return time.perf_counter() - start


def _import_factory(spec: str, base_dir: Path) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    added = str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f'factory "{spec}": cannot import {module_name!r} ({exc})') from None
    finally:
        if added:
            sys.path.remove(str(base_dir))
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f'factory "{spec}": {module_name} has no callable {attr!r}')
    return factory


def _model_file(path: str, base_dir: Path) -> Path:
    resolved = (base_dir / path).expanduser()
    if not resolved.is_file():
        raise ModelError(f"model file not found: {resolved}")
    return resolved


SAFE_FORMATS = (
    "save the weights with torch.save(model.state_dict(), PATH) and set kind = \"state_dict\" with a factory, "
    "or export TorchScript with torch.jit.save(torch.jit.script(model), PATH) and set kind = \"torchscript\" "
    "(for a file you trust: kind = \"pickle\" with allow_unsafe_pickle = true)"
)


@dataclass
class LoadedModel:
    """A user's model file as Kansa audits it, and the facts about its loading the report shows (model rows)."""

    module: "torch.nn.Module"
    rows: list[dict[str, Any]]


def load_model(cfg: dict[str, Any], base_dir: Path, audited: np.ndarray) -> LoadedModel:
    """Any supported file; `audited` (the samples the audit attacks) gives the features a tree model must take and checks an ONNX conversion."""
    rows = []
    if cfg.get("allow_unsafe_pickle"):
        rows.append(count_row("unsafe_pickle_loaded", 1, category=Category.MODEL, message=(
            f"{cfg['path']} was {'unpickled' if cfg['kind'] == 'pickle' else 'loaded'} with allow_unsafe_pickle = true: "
            "loading it could run any code it holds")))
    if cfg["kind"] in TREE_KINDS:
        tree = load_tree_model(cfg["kind"], _model_file(cfg["path"], base_dir), tuple(audited.shape[1:]), cfg.get("trusted_types", ()))
        return _gradient_free(tree.scores, tree.digest, tree.description, rows, tree.native)
    if cfg["kind"] != "onnx":
        return LoadedModel(load_user_model(cfg, base_dir), rows)
    path = _model_file(cfg["path"], base_dir)
    onnx = load_onnx(path, tuple(audited.shape[1:]), audited)
    if onnx.module is not None:
        rows.append(count_row("conversion_max_abs_diff", onnx.max_abs_diff, category=Category.MODEL, message=(
            f"converted to torch for gradients: its outputs differ from onnxruntime's by at most {onnx.max_abs_diff:.2g} "
            f"on the {len(audited)} audited samples (tolerance {onnx.tolerance:.2g})")))
        return LoadedModel(onnx.module, rows)
    return _gradient_free(onnx.scores, hashlib.sha256(path.read_bytes()).digest(), f"{onnx.reason}: the model runs through onnxruntime", rows)


def load_endpoint(cfg: dict[str, Any], n_classes: int, query_store: Path | None, where: Location, probe: np.ndarray) -> LoadedModel:
    """A model behind an HTTP endpoint: queried as an attacker would, its outputs only (`audit.endpoints`); `probe` checks it is deterministic."""
    endpoint = Endpoint(cfg, n_classes, query_store, where)
    seen = "labels only" if endpoint.labels_only else "scores"
    try:
        deterministic = endpoint.check_determinism(probe)
    except EndpointError as exc:
        raise ModelError(f"model {cfg['name']!r}: {exc}") from None
    cache = ("the query cache answers repeated inputs" if deterministic else
             "identical inputs got different answers, so every query is sent (no cache would be honest)")
    rows = [count_row("labels_only", int(endpoint.labels_only), category=Category.MODEL, message=(
        f"the endpoint answers with {seen}: the attacker sees {seen}" + (", so attacks that need scores do not apply" if endpoint.labels_only else "")
        + f"; {cache}"))]
    module = _gradient_free(endpoint.scores, endpoint.identity, f"it answers through the endpoint {cfg['url']}", rows).module
    module.labels_only = endpoint.labels_only
    return LoadedModel(module, rows)


def _gradient_free(scores: Callable[[np.ndarray], np.ndarray], identity: bytes, runs: str, rows: list[dict[str, Any]],
                   native: Any = None) -> LoadedModel:
    """A model only its own runtime evaluates; the row says which runtime (`runs`), so the report explains the not-applicable cells."""
    rows.append(count_row("gradient_free", 1, category=Category.MODEL, message=f"{runs}, so attacks that need gradients do not apply to it"))
    return LoadedModel(_scores_module(scores, identity, native), rows)


def _scores_module(scores: Callable[[np.ndarray], np.ndarray], identity: bytes, native: Any = None) -> "torch.nn.Module":
    """A model only an external runtime can evaluate, as a module: outputs, and no gradients.

    `identity` (the file's digest) is its one buffer, so its `module_digest`, and with it every cache
    and journal key, differs between files. `native` is the runtime's own model object (see `Target.native`).
    """
    import torch

    class Scores(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("identity", torch.frombuffer(bytearray(identity), dtype=torch.uint8))
            self.native = native

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.asarray(scores(x.detach().cpu().numpy().astype(np.float32)))).to(x.device)

        def __deepcopy__(self, memo: dict[int, Any]) -> "Scores":
            return self  # it holds no state Kansa could change, and runtime sessions do not copy

    return Scores().eval()


def load_user_model(cfg: dict[str, Any], base_dir: Path) -> "torch.nn.Module":
    """A torch model file (every kind but onnx), loaded without unpickling unless the user vouches for the file."""
    import torch

    path = _model_file(cfg["path"], base_dir)
    if cfg["kind"] == "pickle":
        try:
            module = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:  # unpickling can raise anything the file's code raises
            raise ModelError(f"{path}: cannot unpickle the model ({describe_exception(exc)})") from None
        if not isinstance(module, torch.nn.Module):
            raise ModelError(f"{path}: unpickled a {type(module).__name__}, not a torch.nn.Module")
        return module.eval()
    if cfg["kind"] == "torchscript":
        try:
            with warnings.catch_warnings():  # torch deprecates TorchScript, but users still ship it
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as exc:
            hint = " It looks like a torch.save pickle, not TorchScript." if _is_zip_pickle(path) else ""
            raise ModelError(f"{path}: not a TorchScript file ({describe_exception(exc)}).{hint}") from None
        return module.eval()
    if cfg["kind"] == "exported":
        return _load_exported(path)
    state = _safetensors_state(path) if cfg["kind"] == "safetensors" else _torch_state(path)
    return _factory_module(state, cfg, path, base_dir)


def _torch_state(path: Path) -> dict[str, "torch.Tensor"]:
    import pickle

    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _looks_like_torch_save(path):
            raise ModelError(f"{path}: not a torch state_dict file ({describe_exception(exc)})") from None
        raise ModelError(
            f"{path}: holds pickled Python objects (a whole model?), which Kansa does not load because "
            f"unpickling can run arbitrary code; {SAFE_FORMATS}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ModelError(f"{path}: not a torch state_dict file ({describe_exception(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: expected a state_dict (a mapping of names to tensors), got {type(state).__name__}")
    return state


def _safetensors_state(path: Path) -> dict[str, "torch.Tensor"]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        hint = ' It looks like a torch.save file: set kind = "state_dict".' if _looks_like_torch_save(path) else ""
        raise ModelError(f"{path}: not a safetensors file ({describe_exception(exc)}).{hint}") from None


def _factory_module(state: dict[str, "torch.Tensor"], cfg: dict[str, Any], path: Path, base_dir: Path) -> "torch.nn.Module":
    """The file holds only tensors; the architecture comes from the user's own code, the factory."""
    import torch

    factory = _import_factory(cfg["factory"], base_dir)
    try:
        module = factory(**(cfg["factory_args"] or {}))
    except Exception as exc:
        raise ModelError(f'factory "{cfg["factory"]}" raised {describe_exception(exc)}') from None
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f'factory "{cfg["factory"]}" returned {type(module).__name__}, not a torch.nn.Module')
    try:
        module.load_state_dict(state, strict=cfg["strict"])
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise ModelError(f"{path}: does not fit the architecture built by {cfg['factory']}: {first}") from None
    return module.eval()


def _load_exported(path: Path) -> "torch.nn.Module":
    """A torch.export program as a module Kansa can call with any batch, put in eval mode and deep-copy.

    Its module is fixed in the mode it was exported in and refuses .train() / .eval() (torch 2.13),
    which Kansa and every wrapper around it call; so a program exported in training mode is refused
    and the module is shielded from mode switches.
    """
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # deserialising raises zip, JSON, schema and version errors of any type
        hint = " It looks like a torch.save file, not torch.export.save." if _is_zip_pickle(path) else ""
        raise ModelError(f"{path}: not a torch.export file ({describe_exception(exc)}).{hint}") from None
    inputs = [node for node in program.graph.nodes if node.op == "placeholder" and node.name in program.graph_signature.user_inputs]
    if len(inputs) != 1:
        raise ModelError(f"{path}: the exported program takes {len(inputs)} inputs; Kansa calls a model with one batch tensor")
    shape = getattr(inputs[0].meta.get("val"), "shape", ())
    if len(shape) and isinstance(shape[0], int):
        raise ModelError(
            f"{path}: exported with a fixed batch size of {shape[0]}, but Kansa calls the model with batches of any size; "
            'export it with a dynamic batch dimension: torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)) '
            "with an example batch of 2 or more"
        )
    training = sorted({str(node.target) for node in program.graph.nodes if _in_training_mode(node)})
    if training:
        raise ModelError(
            f"{path}: exported in training mode ({', '.join(training)} with train = True), so dropout or batch norm "
            "would act as in training at every call; call model.eval() before torch.export.export"
        )

    class Exported(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

        def train(self, mode: bool = True) -> "Exported":
            self.training = mode  # the inner module keeps the eval mode it was exported in
            return self

    return Exported(program.module()).eval()


def _in_training_mode(node: Any) -> bool:
    """An operator call whose `train` / `training` argument is True (dropout, batch norm exported in training mode)."""
    schema = getattr(node.target, "_schema", None)
    if node.op != "call_function" or schema is None:
        return False
    for i, argument in enumerate(schema.arguments):
        if argument.name in ("train", "training"):
            return (node.args[i] if i < len(node.args) else node.kwargs.get(argument.name)) is True
    return False


def _looks_like_torch_save(path: Path) -> bool:
    """torch.save writes a zip archive holding data.pkl (or, in old versions, a bare pickle)."""
    with path.open("rb") as handle:
        head = handle.read(2)
    return _is_zip_pickle(path) or head[:1] == b"\x80"


def _is_zip_pickle(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("data.pkl") for name in archive.namelist()) and not any(
            name.endswith("constants.pkl") for name in archive.namelist()
        )


def normalized(module: "torch.nn.Module", normalize: dict[str, Any], input_shape: tuple[int, ...], name: str) -> "torch.nn.Module":
    """The model behind `(x - mean) / std`, as ART's `preprocessing` does: attacks, eps and clipping stay in the data's input range.

    One value per channel for images (C, H, W), per feature for tabular data, or one for all.
    """
    import torch

    width, unit = input_shape[0], "channel" if len(input_shape) > 1 else "feature"
    stats = {}
    for key in ("mean", "std"):
        values = normalize[key] if isinstance(normalize[key], list) else [normalize[key]]
        if len(values) not in (1, width):
            raise ModelError(f"model {name!r}: normalize.{key} has {len(values)} values but the inputs have {width} {unit}{'s' * (width != 1)}")
        stats[key] = torch.tensor(values, dtype=torch.float32).reshape(-1, *[1] * (len(input_shape) - 1))

    class Normalized(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
            super().__init__()
            self.inner = inner
            self.register_buffer("mean", mean)  # buffers: part of the digest, so of every cache key
            self.register_buffer("std", std)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner((x - self.mean) / self.std)

    return Normalized(module, stats["mean"], stats["std"]).eval()


def detect_output(module: "torch.nn.Module", sample: np.ndarray, n_classes: int, declared: str, name: str) -> str:
    """Check the output shape against the data and decide logits vs probabilities, never silently."""
    import torch

    with torch.no_grad():
        try:
            out = module(torch.from_numpy(sample).to(device_of(module))).cpu()
        except Exception as exc:
            raise ModelError(f"model {name!r} fails on inputs of shape {tuple(sample.shape[1:])}: {describe_exception(exc)}") from None
    if not isinstance(out, torch.Tensor) or out.shape != (len(sample), n_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"model {name!r} returns {shape} for a batch of {len(sample)}; expected ({len(sample)}, {n_classes}) for {n_classes} classes")
    if not torch.isfinite(out).all():
        raise ModelError(f"model {name!r} returns NaN or infinite outputs")
    looks_like_probabilities = bool(((out >= 0) & (out <= 1)).all() and torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-4))
    if declared == "auto":
        return "probabilities" if looks_like_probabilities else "logits"
    if declared == "probabilities" and not looks_like_probabilities:
        raise ModelError(f"model {name!r} is declared output = \"probabilities\" but its outputs do not sum to 1 in [0, 1]")
    return declared


def logits_view(module: "torch.nn.Module", log_of_probabilities: bool) -> "torch.nn.Module":
    """The model as attacks need it: float32 inputs (ART hands float64 under numpy 2) and logit-like outputs.

    Log-probabilities behave as logits for every loss and attack, so a probability model is wrapped in log.
    """
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module, log_of_probabilities: bool) -> None:
            super().__init__()
            self.inner = inner
            self.log_of_probabilities = log_of_probabilities

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x.to(device_of(self.inner, x.device), torch.float32))
            out = torch.log(out.clamp_min(1e-12)) if self.log_of_probabilities else out
            return out.to(x.device)  # callers hand host tensors and get host tensors, wherever the model runs

    return Logits(module, log_of_probabilities).eval()


def resolve_device(choice: str, where: Location) -> str:
    """"cpu" or "cuda" for `[execution] device`: auto takes CUDA when torch sees a device; cuda without one is refused."""
    import torch

    available = torch.cuda.is_available()
    if choice == "cuda" and not available:
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise where.error(f'"cuda", but torch {torch.__version__} ({build}) sees no CUDA device; set device = "auto" or "cpu"')
    return "cuda" if choice == "cuda" or (choice == "auto" and available) else "cpu"


def device_of(module: "torch.nn.Module", default: "torch.device | None" = None) -> "torch.device":
    """Where the module's weights live (its first parameter or buffer); `default` for a module without any."""
    import torch

    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return default or torch.device("cpu")


def placed(module: "torch.nn.Module", device: str) -> "torch.nn.Module":
    """The module on `device`; a quantized one stays on the CPU, where its kernels are."""
    quantized = any(t.is_quantized for v in module.state_dict().values() for t in _tensors(v))
    return module if quantized else module.to(device)


def attack_layout(module: "torch.nn.Module") -> "torch.nn.Module":
    """The module as attacks run it: on the CPU, a copy with 2-d convolution weights stored channels-last.

    oneDNN's convolutions then run 1.5-3x faster on the same NCHW inputs (bench/RESULTS.md,
    "channels-last"). Outputs change only in float rounding, and ART and Kansa's torch path both call
    this one module, so they still agree per sample. A copy, because defenses rework the module itself
    (pruning views its weights as NCHW). Training stays NCHW: there channels-last was slower (5.6 s against 4.2 s
    for 2 epochs of the wide CNN on 6,000 MNIST-shaped images), the weight gradients costing more than the passes save.
    """
    import torch

    if device_of(module).type != "cpu" or not any(isinstance(m, torch.nn.Conv2d) for m in module.modules()):
        return module
    return copy.deepcopy(module).to(memory_format=torch.channels_last)


@dataclass
class Target:
    """One model as attacks see it: a logits module plus its ART wrapper with the declared clip range.

    `gradient_module`, when set, is what white-box attacks differentiate instead of `module`: the
    raw model behind an output post-processor, or the float twin of a quantized model. Outputs and
    decisions are always measured on `module`.

    `native` is the model's own library object (a scikit-learn estimator, a booster) when `module` is
    exactly that model, for attacks that read its structure; None for torch models and for any
    variant a defense wraps, whose decisions the library object no longer describes.
    """

    name: str
    defense: str
    module: "torch.nn.Module"
    input_shape: tuple[int, ...]
    n_classes: int
    clip_values: tuple[float, float]
    output_kind: str
    digest: str
    gradient_module: "torch.nn.Module | None" = None
    native: Any = None
    labels_only: bool = False  # it reveals its decisions only (an endpoint that returns labels): no score-based attack applies
    _classifier: Any = None

    @property
    def attack_module(self) -> "torch.nn.Module":
        return self.module if self.gradient_module is None else self.gradient_module

    @cached_property
    def differentiable(self) -> bool:
        """Whether white-box attacks can differentiate it (False for a model only an external runtime evaluates)."""
        import torch

        x = torch.zeros((1, *self.input_shape), requires_grad=True)
        with torch.enable_grad():
            return bool(self.attack_module(x).requires_grad)

    @property
    def art_device(self) -> str:
        """ART's `device_type` for this target, so that ART keeps the model where it is."""
        return "gpu" if device_of(self.attack_module).type == "cuda" else "cpu"

    @property
    def art_classifier(self) -> Any:
        if self._classifier is None:
            import torch
            from art.estimators.classification import PyTorchClassifier

            self._classifier = PyTorchClassifier(
                model=self.attack_module,
                loss=torch.nn.CrossEntropyLoss(),
                input_shape=self.input_shape,
                nb_classes=self.n_classes,
                clip_values=self.clip_values,
                device_type=self.art_device,
            )
        return self._classifier

    def logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out.append(self.module(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.n_classes), dtype=np.float32)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return self.logits(x, batch_size).argmax(axis=1)


def module_digest(module: "torch.nn.Module") -> str:
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        for tensor in _tensors(value):
            tensor = tensor.int_repr() if tensor.is_quantized else tensor
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _tensors(value: Any) -> list["torch.Tensor"]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def model_size(module: "torch.nn.Module") -> tuple[int, int, int]:
    """(serialized bytes, parameters, non-zero parameters) of the module as it would ship.

    Quantized weights count by their int8 entries, so a quantized model shows its real size.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    total = nonzero = 0
    for value in module.state_dict().values():
        for tensor in _tensors(value):
            if tensor.is_quantized:
                tensor = tensor.int_repr()
            elif not tensor.is_floating_point() or tensor.dim() == 0:
                continue
            total += tensor.numel()
            nonzero += int((tensor != 0).sum())
    return len(buffer.getvalue()), total, nonzero


def make_target(module: "torch.nn.Module", dataset: "Dataset", output_kind: str, name: str, defense: str = UNDEFENDED,
                gradient: "tuple[torch.nn.Module, str] | None" = None, device: str = "cpu") -> Target:
    """`gradient` is (module, its output kind) for white-box attacks to differentiate, when not `module` itself.

    The modules run on `device`; attacks hand host tensors and get host tensors back (`logits_view`).
    """
    return Target(
        name=name,
        defense=defense,
        module=logits_view(attack_layout(placed(module, device)).eval(), output_kind == "probabilities"),
        input_shape=dataset.input_shape,
        n_classes=dataset.n_classes,
        clip_values=dataset.input_range,
        output_kind=output_kind,
        digest=module_digest(module),
        gradient_module=None if gradient is None else logits_view(attack_layout(placed(gradient[0], device)).eval(), gradient[1] == "probabilities"),
        native=getattr(module, "native", None),
        labels_only=any(getattr(part, "labels_only", False) for part in module.modules()),
    )


def expectation(target: Target, samples: int) -> Target:
    """Expectation over transformation: average a randomised model's logits over `samples` passes.

    Attacks then follow the expected gradient instead of one random draw (Athalye et al. 2018).
    """
    import torch

    class Expectation(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([self.inner(x) for _ in range(samples)]).mean(0)

    return Target(
        name=target.name, defense=target.defense, module=Expectation(target.module).eval(), input_shape=target.input_shape,
        n_classes=target.n_classes, clip_values=target.clip_values, output_kind=target.output_kind, digest=target.digest,
        gradient_module=None if target.gradient_module is None else Expectation(target.gradient_module).eval(), labels_only=target.labels_only,
    )
