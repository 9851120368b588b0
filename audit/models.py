"""Models: train with the built-in pipeline or load the user's, then wrap once as an attack target.

Loading never unpickles arbitrary objects: state_dicts go through `torch.load(weights_only=True)`
and whole pickled models are refused with the safe alternatives named.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from audit.errors import ModelError, describe_exception
from audit.params import AnyTable, Choice, Flag, ListOf, Location, Number, Param, Text, validate_tagged
from audit.results import UNDEFENDED
from audit.training import shuffled_batches, train_epochs

if TYPE_CHECKING:
    import torch

    from audit.data import Dataset

_OUTPUT = Param(
    "output",
    Choice(("auto", "logits", "probabilities")),
    "auto",
    "what the model returns; auto detects it from the outputs and records what it found",
)
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
        Param("factory", Text(), doc='"package.module:function" that builds the architecture'),
        Param("factory_args", AnyTable(), None, "keyword arguments for the factory"),
        Param("strict", Flag(), True, "require the state_dict keys to match the architecture exactly"),
        _OUTPUT,
    ),
    "pickle": (
        Param("path", Text(), doc="a whole model saved with torch.save(model); loading it runs code from the file"),
        Param("allow_unsafe_pickle", Flag(), False, "must be true: you trust the file's author (the report says so)"),
        _OUTPUT,
    ),
}
COMMON_PARAMS = (Param("name", Text(), None, "label in results and reports (default: the kind or architecture)"),)


def validate_model_config(table: Any, where: Location) -> dict[str, Any]:
    values = validate_tagged(table, where, "kind", KIND_PARAMS, COMMON_PARAMS, default_tag="builtin")
    if values["kind"] == "pickle" and not values["allow_unsafe_pickle"]:
        raise where.child("allow_unsafe_pickle").error(
            "a pickled model runs arbitrary code when loaded; set allow_unsafe_pickle = true only for a file you trust, "
            'or use kind = "state_dict" or "torchscript"'
        )
    if values["kind"] == "state_dict" and ":" not in values["factory"]:
        raise where.child("factory").error(f'expected "package.module:function", got "{values["factory"]}"')
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
) -> float:
    """Seeded mini-batch training with cross-entropy; returns wall seconds.

    With `validation` and `patience`, training stops once validation loss has not improved for
    `patience` epochs and the best epoch's weights are restored (early stopping).
    """
    import torch

    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
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
            val_loss = float(torch.nn.functional.cross_entropy(module(torch.from_numpy(validation[0])), torch.from_numpy(validation[1])))
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


def load_user_model(cfg: dict[str, Any], base_dir: Path) -> "torch.nn.Module":
    import pickle

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


def detect_output(module: "torch.nn.Module", sample: np.ndarray, n_classes: int, declared: str, name: str) -> str:
    """Check the output shape against the data and decide logits vs probabilities, never silently."""
    import torch

    with torch.no_grad():
        try:
            out = module(torch.from_numpy(sample))
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
            out = self.inner(x.to(torch.float32))
            return torch.log(out.clamp_min(1e-12)) if self.log_of_probabilities else out

    return Logits(module, log_of_probabilities).eval()


@dataclass
class Target:
    """One model as attacks see it: a logits module plus its ART wrapper with the declared clip range.

    `gradient_module`, when set, is what white-box attacks differentiate instead of `module`: the
    raw model behind an output post-processor, or the float twin of a quantized model. Outputs and
    decisions are always measured on `module`.
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
    _classifier: Any = None

    @property
    def attack_module(self) -> "torch.nn.Module":
        return self.module if self.gradient_module is None else self.gradient_module

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
                device_type="cpu",
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
                gradient: "tuple[torch.nn.Module, str] | None" = None) -> Target:
    """`gradient` is (module, its output kind) for white-box attacks to differentiate, when not `module` itself."""
    return Target(
        name=name,
        defense=defense,
        module=logits_view(module.eval(), output_kind == "probabilities"),
        input_shape=dataset.input_shape,
        n_classes=dataset.n_classes,
        clip_values=dataset.input_range,
        output_kind=output_kind,
        digest=module_digest(module),
        gradient_module=None if gradient is None else logits_view(gradient[0].eval(), gradient[1] == "probabilities"),
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
        gradient_module=None if target.gradient_module is None else Expectation(target.gradient_module).eval(),
    )
