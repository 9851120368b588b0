"""A user's own model in the formats they ship: safetensors weights, torch.export programs, declared input normalisation.

Every model is built and saved with plain torch here, outside Kansa, as a user would.
"""

from __future__ import annotations

import copy
import io
import re
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from audit.errors import ConfigError, ModelError
from audit.models import load_user_model, logits_view, normalized, validate_model_config
from audit.params import Location

FACTORY = "tests.test_model_formats:cnn"
DYNAMIC_BATCH = ({0: torch.export.Dim("batch")},)  # what Kansa's error message tells users to pass


def cnn(channels: int = 8, dropout: float = 0.0) -> torch.nn.Sequential:
    """The architecture the factory builds; the tests build the same one directly."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, channels, 3, padding=1), torch.nn.BatchNorm2d(channels), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Dropout(dropout), torch.nn.Linear(channels * 16, 10),
    )


class Standardized(torch.nn.Module):
    """A model that normalises its inputs itself, as many shipped models do."""

    def __init__(self, body: torch.nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.body = body
        self.register_buffer("mean", torch.tensor([mean]).reshape(1, 1, 1))
        self.register_buffer("std", torch.tensor([std]).reshape(1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)


def model_cfg(**table):
    return validate_model_config(table, Location("test"))


def one_line_naming(exc: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8x8 digits in [0, 1], split into train and test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1200], order[1200:]
    return x[train], y[train], x[test], y[test]


@pytest.fixture(scope="module")
def trained(digits):
    """A small CNN that standardises its own inputs, trained to a meaningful accuracy."""
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(0)
    model = Standardized(cnn(dropout=0.3), float(x_train.mean()), float(x_train.std()))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    model.train()
    for _ in range(8):
        for idx in torch.randperm(len(yt)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    assert accuracy > 0.8, accuracy
    return model


def test_safetensors_weights_give_the_original_logits(tmp_path, digits, trained):
    x = torch.from_numpy(digits[2][:50])
    save_file(trained.body.state_dict(), tmp_path / "w.safetensors")
    loaded = load_user_model(model_cfg(kind="safetensors", path="w.safetensors", factory=FACTORY, factory_args={"dropout": 0.3}), tmp_path)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained.body(x), atol=1e-6, rtol=0)


def test_a_file_that_is_not_safetensors_is_a_model_error_naming_it(tmp_path, trained):
    save_file(trained.body.state_dict(), tmp_path / "good.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "good.safetensors").read_bytes()[:-10])
    (tmp_path / "junk.safetensors").write_bytes(b"not a model at all")
    torch.save(trained.body.state_dict(), tmp_path / "torch.safetensors")
    for name in ("cut", "junk", "torch"):
        with pytest.raises(ModelError) as info:
            load_user_model(model_cfg(kind="safetensors", path=f"{name}.safetensors", factory=FACTORY), tmp_path)
        one_line_naming(info, str(tmp_path / f"{name}.safetensors"), "not a safetensors file")
    assert 'set kind = "state_dict"' in str(info.value)


def test_safetensors_weights_that_do_not_fit_the_factory_are_a_model_error(tmp_path, trained):
    renamed = {f"layer{key}": value for key, value in trained.body.state_dict().items()}
    save_file(renamed, tmp_path / "renamed.safetensors")
    with pytest.raises(ModelError) as info:
        load_user_model(model_cfg(kind="safetensors", path="renamed.safetensors", factory=FACTORY), tmp_path)
    one_line_naming(info, "renamed.safetensors", f"does not fit the architecture built by {FACTORY}")
    save_file(trained.body.state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(ModelError, match="does not fit"):  # 16 channels: every shape differs
        load_user_model(model_cfg(kind="safetensors", path="w.safetensors", factory=FACTORY, factory_args={"channels": 16}), tmp_path)
    with pytest.raises(ConfigError, match='test: factory: expected "package.module:function"'):
        model_cfg(kind="safetensors", path="w.safetensors", factory="tests.test_model_formats.cnn")


def export(model: torch.nn.Module, path, example: torch.Tensor, dynamic_shapes=DYNAMIC_BATCH) -> None:
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes), path)


def exported_cfg(path: str) -> dict:
    return model_cfg(kind="exported", path=path, allow_unsafe_pickle=True)


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # torch's own, on deepcopy
def test_an_exported_program_runs_like_the_original_on_any_batch(tmp_path, digits, trained):
    """Batch norm and dropout stay in eval mode whatever Kansa's wrappers call; copies and input gradients work."""
    x_test = torch.from_numpy(digits[2])
    export(trained, tmp_path / "m.pt2", x_test[:4])
    loaded = load_user_model(exported_cfg("m.pt2"), tmp_path)
    x = x_test[:37]
    with torch.no_grad():
        reference = trained(x)
        torch.testing.assert_close(loaded(x), reference, atol=1e-5, rtol=0)
        loaded.train()  # a defense that fine-tunes the copy does this
        assert torch.equal(loaded(x), loaded(x))
        torch.testing.assert_close(loaded(x), reference, atol=1e-5, rtol=0)
        copied = copy.deepcopy(logits_view(loaded, False)).eval()  # what the session does to build variants
        torch.testing.assert_close(copied(x), reference, atol=1e-5, rtol=0)
    grad_input = x.clone().requires_grad_()
    loaded(grad_input).sum().backward()
    assert grad_input.grad is not None and grad_input.grad.abs().sum() > 0


def test_an_exported_program_with_a_fixed_batch_is_refused_with_the_fix(tmp_path, digits, trained):
    export(trained, tmp_path / "fixed.pt2", torch.from_numpy(digits[2][:4]), dynamic_shapes=None)
    with pytest.raises(ModelError) as info:
        load_user_model(exported_cfg("fixed.pt2"), tmp_path)
    one_line_naming(info, str(tmp_path / "fixed.pt2"), "fixed batch size of 4", 'dynamic_shapes=({0: torch.export.Dim("batch")},)')


def test_an_exported_program_in_training_mode_is_refused(tmp_path, digits):
    torch.manual_seed(0)
    export(cnn(dropout=0.5).train(), tmp_path / "train.pt2", torch.from_numpy(digits[2][:4]))
    with pytest.raises(ModelError) as info:
        load_user_model(exported_cfg("train.pt2"), tmp_path)
    one_line_naming(info, "train.pt2", "exported in training mode", "aten.dropout", "aten.batch_norm", "model.eval()")


def test_a_file_that_is_not_an_exported_program_is_a_model_error_naming_it(tmp_path, trained):
    (tmp_path / "junk.pt2").write_bytes(b"not a model at all")
    torch.save(trained.state_dict(), tmp_path / "weights.pt2")
    for name in ("junk", "weights"):
        with pytest.raises(ModelError) as info:
            load_user_model(exported_cfg(f"{name}.pt2"), tmp_path)
        one_line_naming(info, str(tmp_path / f"{name}.pt2"), "not a torch.export file")
    assert "looks like a torch.save file" in str(info.value)


def test_an_exported_program_needs_the_users_trust(tmp_path):
    with pytest.raises(ConfigError, match="test: allow_unsafe_pickle: torch.export.load can run arbitrary code"):
        model_cfg(kind="exported", path="m.pt2")


def _tamper(path, member_suffix: str, edit) -> None:
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in members:
            archive.writestr(info, edit(data) if info.filename.endswith(member_suffix) else data)


@pytest.mark.parametrize("vector", ["sample inputs unpickled", "shape expression evaluated"])
def test_torch_export_load_runs_code_from_the_file(tmp_path, digits, vector):
    """Why kind = "exported" needs allow_unsafe_pickle: torch.export.load itself (torch 2.13) executes a tampered file.

    If this starts failing after a torch upgrade, the loader may have become safe: re-read torch/export and revisit the gate.
    """
    torch.manual_seed(0)
    export(cnn().eval(), tmp_path / "m.pt2", torch.from_numpy(digits[2][:4]))
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    if vector == "sample inputs unpickled":  # weights_only=True fails, then torch retries with weights_only=False
        buffer = io.BytesIO()
        torch.save((Payload(),), buffer)
        _tamper(tmp_path / "m.pt2", "data/sample_inputs/model.pt", lambda data: buffer.getvalue())
    else:  # the stored symbolic batch size goes through sympy.sympify, which evals
        code = f"__import__('pathlib').Path('{marker}').touch() or "
        _tamper(tmp_path / "m.pt2", "models/model.json",
                lambda data: re.sub(rb'"expr_str": "', b'"expr_str": "' + code.encode(), data, count=1))
    try:
        torch.export.load(str(tmp_path / "m.pt2"))
    except Exception:
        pass  # executed (or not) while loading; what the program does afterwards does not matter
    assert marker.exists()


def test_declared_normalisation_equals_normalisation_inside_the_model(tmp_path, digits, trained):
    """Same logits and the same FGSM robust accuracy at eps 0.1 in pixel space, as with ART's preprocessing."""
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import PyTorchClassifier

    _, _, x_test, y_test = digits
    save_file(trained.body.state_dict(), tmp_path / "body.safetensors")
    mean, std = float(trained.mean), float(trained.std)
    cfg = model_cfg(kind="safetensors", path="body.safetensors", factory=FACTORY, factory_args={"dropout": 0.3},
                    normalize={"mean": [mean], "std": std})
    declared = normalized(load_user_model(cfg, tmp_path), cfg["normalize"], (1, 8, 8), "cnn")
    with torch.no_grad():
        torch.testing.assert_close(declared(torch.from_numpy(x_test)), trained(torch.from_numpy(x_test)), atol=1e-6, rtol=0)

    def robust_accuracy(model: torch.nn.Module) -> tuple[float, float]:
        classifier = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
                                       clip_values=(0.0, 1.0), device_type="cpu")
        adversarial = FastGradientMethod(classifier, eps=0.1).generate(x_test)
        assert np.abs(adversarial - x_test).max() <= 0.1 + 1e-6  # eps is in pixel space for both
        clean = float((classifier.predict(x_test).argmax(1) == y_test).mean())
        return clean, float((classifier.predict(adversarial).argmax(1) == y_test).mean())

    clean, robust = robust_accuracy(trained)
    assert robust < clean - 0.05, (clean, robust)  # the attack bites, so equality below says something
    assert robust_accuracy(declared) == (clean, robust)


def test_normalisation_values_must_fit_the_inputs(trained):
    with pytest.raises(ModelError) as info:
        normalized(trained.body, {"mean": [0.5, 0.4, 0.3], "std": 0.2}, (1, 8, 8), "cnn")
    one_line_naming(info, "model 'cnn': normalize.mean has 3 values but the inputs have 1 channel")
    with pytest.raises(ModelError) as info:
        normalized(torch.nn.Linear(4, 2), {"mean": 0.0, "std": [1.0, 2.0]}, (4,), "mlp")
    one_line_naming(info, "normalize.std has 2 values but the inputs have 4 features")
    linear = torch.nn.Linear(4, 2)
    x = torch.rand(5, 4)
    mean, std = [0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0]
    with torch.no_grad():  # per feature for tabular data; one number is broadcast
        assert torch.equal(normalized(linear, {"mean": mean, "std": std}, (4,), "mlp")(x), linear((x - torch.tensor(mean)) / torch.tensor(std)))
        assert torch.equal(normalized(linear, {"mean": 0.5, "std": 2.0}, (4,), "mlp")(x), linear((x - 0.5) / 2.0))


def test_normalize_is_validated_with_the_config():
    base = {"kind": "safetensors", "path": "w.safetensors", "factory": FACTORY}
    assert model_cfg(**base, normalize={"mean": 0.5, "std": [0.2]})["normalize"] == {"mean": 0.5, "std": [0.2]}
    assert model_cfg(**base)["normalize"] is None
    with pytest.raises(ConfigError, match="test: normalize: a built-in model is trained by Kansa"):
        model_cfg(kind="builtin", normalize={"mean": 0.5, "std": 0.2})
    for std in (0, [0.2, 0.0], -1.0):
        with pytest.raises(ConfigError, match=r"test: normalize.std: expected a number > 0 or a list of numbers > 0"):
            model_cfg(**base, normalize={"mean": 0.5, "std": std})
    with pytest.raises(ConfigError, match="test: normalize.mean: missing"):
        model_cfg(**base, normalize={"std": 0.2})
    with pytest.raises(ConfigError, match="test: normalize.scale: unknown key"):
        model_cfg(**base, normalize={"mean": 0.5, "std": 0.2, "scale": 2})
    with pytest.raises(ConfigError, match="test: normalize: expected a table"):
        model_cfg(**base, normalize=[0.5, 0.2])
