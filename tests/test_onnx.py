"""ONNX import: the torch conversion computes the original's function and gradients, and bad files fail on one line.

Every model is built here with plain torch (most trained briefly on scikit-learn's digits, 8x8, /16) and
exported with `torch.onnx.export(..., dynamo=False)`, torch 2.13's TorchScript-based exporter, which
needs only the `onnx` package (it warns that it is deprecated; the warning is silenced). The default
dynamo exporter also needs `onnxscript` (in the onnx extra) and takes seconds, so only one slow test
uses it. Nothing downloads: digits ship with scikit-learn.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from audit import onnx_import  # noqa: E402
from audit.errors import ModelError  # noqa: E402
from audit.onnx_import import load_onnx  # noqa: E402

SHAPE = (1, 8, 8)
REPO = Path(__file__).resolve().parents[1]


class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.2),
        )
        self.head = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ResidualCnn(nn.Module):
    """The second BatchNorm follows an Add, so the exporter cannot fold it into a Conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(h + F.relu(self.conv2(h)))
        h = F.adaptive_avg_pool2d(self.pool(h), 1)
        return self.fc(h.view(h.size(0), -1))  # Shape, Gather, Unsqueeze, Concat, Reshape in the graph


class SoftmaxMlp(nn.Module):
    """A linear layer on a 3-d tensor exports as MatMul + Add; the outputs are probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.rows, self.out = nn.Linear(8, 16), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.rows(x.reshape(-1, 8, 8))).flatten(1)
        return torch.softmax(self.out(h), dim=1)


class ManyOps(nn.Module):
    """The shape, slicing, reduction and activation ops, whose attributes moved to inputs over the opsets."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = nn.Conv1d(8, 4, 3, padding=1)
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.leaky_relu(torch.sigmoid(self.rows(x.squeeze(1))), 0.1).transpose(1, 2)[:, 1:7:2].reshape(x.shape[0], -1)
        b = F.gelu(self.conv(x)).clamp(-0.5, 2.0)
        b = F.adaptive_max_pool2d(b, 1).flatten(1) + b.sum(dim=(2, 3)) / 16
        c = (x.mean(dim=(2, 3)) - 0.5) / 2 + torch.tanh(x).amax(dim=(2, 3)) ** 2
        h = torch.cat([a, b, c, c, c, c], dim=1)
        return F.softmax(self.fc(h), dim=-1).unsqueeze(1).squeeze(1)


class Warped(nn.Module):
    """grid_sample exports as GridSample, an op the converter lacks (onnxruntime runs it)."""

    def __init__(self) -> None:
        super().__init__()
        self.grid, self.fc = nn.Linear(64, 8 * 8 * 2), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = torch.tanh(self.grid(x.flatten(1))).reshape(-1, 8, 8, 2)
        return self.fc(F.grid_sample(x, grid, align_corners=False).flatten(1))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train on all but the last 300 digits, audit those 300."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = (data.images / 16.0).astype(np.float32)[:, None], data.target.astype(np.int64)
    return x[:-300], y[:-300], x[-300:], y[-300:]


def trained(model: nn.Module, digits: tuple[np.ndarray, ...], epochs: int = 5) -> nn.Module:
    torch.manual_seed(0)
    for layer in model.modules():  # a seeded initialisation too, so every run tests the same model
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    x, y = torch.from_numpy(digits[0]), torch.from_numpy(digits[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            optimizer.zero_grad()
            out = model(x[idx])
            loss = F.nll_loss(torch.log(out), y[idx]) if isinstance(model, SoftmaxMlp) else F.cross_entropy(out, y[idx])
            loss.backward()
            optimizer.step()
    return model.eval()


def export(model: nn.Module, path: Path, batch: int = 2, dynamic: bool = True, shape: tuple[int, ...] = SHAPE) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model.eval(), (torch.zeros(batch, *shape),), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}} if dynamic else None, dynamo=False)
    return path


def ops_of(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def outputs(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def assert_matches(loaded: onnx_import.OnnxModel, original: nn.Module, x: np.ndarray) -> None:
    assert loaded.reason is None and loaded.module is not None
    assert loaded.max_abs_diff is not None and loaded.max_abs_diff <= min(loaded.tolerance, 1e-4)
    converted = outputs(loaded.module, x)
    np.testing.assert_allclose(converted, outputs(original, x), rtol=0, atol=1e-4)
    np.testing.assert_allclose(converted, loaded.scores(x), rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def small_cnn(digits, tmp_path_factory) -> tuple[nn.Module, onnx_import.OnnxModel]:
    model = trained(SmallCnn(), digits)
    path = export(model, tmp_path_factory.mktemp("cnn") / "cnn.onnx")
    assert {"Conv", "Relu", "MaxPool", "AveragePool", "Flatten", "Gemm"} <= ops_of(path)
    return model, load_onnx(path, SHAPE, digits[2])


def test_cnn_logits_match_torch_and_onnxruntime(small_cnn, digits):
    model, loaded = small_cnn
    assert_matches(loaded, model, digits[2])
    assert not loaded.fixed_batch and loaded.output_shape == (10,)
    assert {type(layer) for layer in loaded.module.layers.values()} == {nn.Conv2d, nn.Linear}  # what pruning and quantization look for
    np.testing.assert_array_equal(outputs(copy.deepcopy(loaded.module), digits[2]), outputs(loaded.module, digits[2]))


def test_fgsm_robust_accuracy_equals_the_originals(small_cnn, digits):
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import PyTorchClassifier

    def correct(module: nn.Module) -> tuple[int, int]:
        classifier = PyTorchClassifier(model=module, loss=nn.CrossEntropyLoss(), input_shape=SHAPE, nb_classes=10,
                                       clip_values=(0.0, 1.0), device_type="cpu")
        x, y = digits[2], digits[3]
        adversarial = FastGradientMethod(classifier, eps=0.1).generate(x)
        return int((classifier.predict(x).argmax(1) == y).sum()), int((classifier.predict(adversarial).argmax(1) == y).sum())

    model, loaded = small_cnn
    clean, robust = correct(model)
    assert correct(loaded.module) == (clean, robust)
    assert robust < clean


def test_input_gradients_match_the_originals(small_cnn, digits):
    model, loaded = small_cnn
    grads = []
    for module in (model, loaded.module):
        x = torch.from_numpy(digits[2][:100]).requires_grad_()
        F.cross_entropy(module(x), torch.from_numpy(digits[3][:100])).backward()
        grads.append(x.grad.numpy())
    assert np.abs(grads[0]).max() > 0
    np.testing.assert_allclose(grads[1], grads[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("epochs", [0, 3], ids=["untrained", "trained"])
def test_residual_cnn_with_batch_norm_converts_and_matches(digits, tmp_path, epochs):
    """Untrained, the exporter shares one initializer between batch norm's statistics and its weights (0s and 1s)."""
    model = trained(ResidualCnn(), digits, epochs)
    path = export(model, tmp_path / "residual.onnx")
    assert {"BatchNormalization", "Add", "GlobalAveragePool", "MaxPool", "Shape", "Gather", "Concat", "Reshape"} <= ops_of(path)
    loaded = load_onnx(path, SHAPE, digits[2])
    assert_matches(loaded, model, digits[2])
    x = torch.from_numpy(digits[2][:20]).requires_grad_()
    loaded.module(x).sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


def test_softmax_mlp_with_matmul_converts_and_matches(digits, tmp_path):
    model = trained(SoftmaxMlp(), digits)
    path = export(model, tmp_path / "mlp.onnx")
    assert {"MatMul", "Add", "Softmax"} <= ops_of(path)
    loaded = load_onnx(path, SHAPE, digits[2])
    assert_matches(loaded, model, digits[2])
    np.testing.assert_allclose(loaded.scores(digits[2]).sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("opset", [11, 17])
def test_shape_and_reduction_ops_convert_at_old_and_new_opsets(digits, tmp_path, opset):
    model = ManyOps().eval()
    path = tmp_path / "ops.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, *SHAPE),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}}, opset_version=opset, dynamo=False)
    assert {"Squeeze", "Unsqueeze", "Transpose", "Slice", "Concat", "Clip", "Erf", "LeakyRelu", "Sigmoid", "Tanh",
            "ReduceMean", "ReduceSum", "ReduceMax", "Sub", "Div", "Pow", "Softmax"} <= ops_of(path)
    assert_matches(load_onnx(path, SHAPE, digits[2]), model, digits[2])


@pytest.mark.slow
def test_default_dynamo_export_with_external_data(digits, tmp_path):
    pytest.importorskip("onnxscript")
    model = trained(ResidualCnn(), digits, epochs=1)
    path = tmp_path / "dynamo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's deprecation notices
        torch.onnx.export(model, (torch.zeros(2, *SHAPE),), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
    assert (tmp_path / "dynamo.onnx.data").is_file()  # the weights beside the graph
    assert_matches(load_onnx(path, SHAPE, digits[2]), model, digits[2])


def assert_one_line(error: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_corrupt_files_fail_on_one_line_naming_the_file(small_cnn, digits, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(Path(small_cnn[1].path).read_bytes()[:3000])
    text = tmp_path / "text.onnx"
    text.write_bytes((REPO / "pyproject.toml").read_bytes())
    for path in (junk, cut, text):
        with pytest.raises(ModelError) as error:
            load_onnx(path, SHAPE, digits[2][:5])
        assert_one_line(error, path, "not a readable ONNX model (")
    with pytest.raises(ModelError, match="model file not found"):
        load_onnx(tmp_path / "missing.onnx", SHAPE, digits[2][:5])


def test_a_model_for_other_inputs_names_both_shapes(digits, tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    path = export(model, tmp_path / "cifar.onnx", shape=(3, 32, 32))
    with pytest.raises(ModelError) as error:
        load_onnx(path, SHAPE, digits[2][:5])
    assert_one_line(error, path, "expects inputs of shape [batch, 3, 32, 32] but the data has samples of shape (1, 8, 8)")


def test_a_batch_of_one_runs_sample_by_sample(digits, tmp_path):
    model = trained(ResidualCnn(), digits, epochs=1)
    path = export(model, tmp_path / "single.onnx", batch=1, dynamic=False)
    loaded = load_onnx(path, SHAPE, digits[2])
    assert loaded.fixed_batch
    assert_matches(loaded, model, digits[2])
    x = torch.from_numpy(digits[2][:3]).requires_grad_()
    loaded.module(x).sum().backward()
    assert x.grad.shape == x.shape


def test_a_fixed_batch_above_one_asks_for_a_dynamic_axis(digits, tmp_path):
    path = export(SmallCnn(), tmp_path / "four.onnx", batch=4, dynamic=False)
    with pytest.raises(ModelError) as error:
        load_onnx(path, SHAPE, digits[2][:5])
    assert_one_line(error, path, "fixes the batch to 4", "dynamic_axes", "dynamic_shapes")


def test_two_inputs_are_refused(digits, tmp_path):
    class Pair(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a + b).flatten(1)

    path = tmp_path / "pair.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pair(), (torch.zeros(2, *SHAPE), torch.zeros(2, *SHAPE)), str(path), input_names=["a", "b"], dynamo=False)
    with pytest.raises(ModelError) as error:
        load_onnx(path, SHAPE, digits[2][:5])
    assert_one_line(error, path, "takes 2 inputs (a, b)")


def test_an_unsupported_op_leaves_scores_through_onnxruntime(digits, tmp_path):
    model = trained(Warped(), digits, epochs=1)
    path = export(model, tmp_path / "warped.onnx")
    loaded = load_onnx(path, SHAPE, digits[2])
    assert loaded.module is None and loaded.max_abs_diff is None
    assert loaded.reason == "the ONNX graph uses GridSample, which Kansa cannot convert to torch"
    np.testing.assert_allclose(loaded.scores(digits[2], batch_size=64), outputs(model, digits[2]), rtol=0, atol=1e-4)
    assert loaded.scores(digits[2][:0]).shape == (0, 10)


def test_disagreement_beyond_tolerance_drops_the_module(small_cnn, digits, monkeypatch):
    real = onnx_import._torch_outputs
    monkeypatch.setattr(onnx_import, "_torch_outputs", lambda module, x: real(module, x) + 0.01)
    loaded = load_onnx(Path(small_cnn[1].path), SHAPE, digits[2])
    assert loaded.module is None and loaded.max_abs_diff == pytest.approx(0.01, abs=1e-5)
    assert loaded.reason.startswith("the torch conversion differs from onnxruntime by up to 0.01 on the samples (tolerance ")


def external(path: Path, location: str, constants_only: bool = False) -> Path:
    """Point the model's external tensors (or only its Constant nodes') at `location`."""
    model = onnx.load(str(path), load_external_data=False)
    nodes = [node.attribute[0].t for node in model.graph.node if node.op_type == "Constant" and node.attribute[0].HasField("t")]
    for tensor in nodes if constants_only else [*model.graph.initializer, *nodes]:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_is_read_only_from_the_models_folder(small_cnn, digits, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    model = onnx.load(str(small_cnn[1].path))
    path = folder / "cnn.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert_matches(load_onnx(path, SHAPE, digits[2]), small_cnn[0], digits[2])

    (tmp_path / "weights.bin").write_bytes((folder / "weights.bin").read_bytes())  # readable, but outside the folder
    (folder / "link.bin").symlink_to(tmp_path / "weights.bin")
    for location in ("../weights.bin", str(tmp_path / "weights.bin"), "link.bin", "missing.bin"):
        with pytest.raises(ModelError) as error:
            load_onnx(external(path, location), SHAPE, digits[2][:5])
        assert_one_line(error, path, f"keeps its data in {location!r}, which is not a file in the model's folder")


def test_external_data_of_constant_nodes_is_checked_too(digits, tmp_path):
    """onnxruntime would resolve a tensor left external against the working directory."""
    model = ManyOps().eval()
    (tmp_path / "model").mkdir()
    path = export(model, tmp_path / "model" / "ops.onnx")
    assert "Constant" in ops_of(path)
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, location="weights.bin", size_threshold=0,
                    convert_attribute=True)
    assert_matches(load_onnx(path, SHAPE, digits[2]), model, digits[2])
    (tmp_path / "weights.bin").write_bytes((tmp_path / "model" / "weights.bin").read_bytes())
    with pytest.raises(ModelError) as error:
        load_onnx(external(path, "../weights.bin", constants_only=True), SHAPE, digits[2][:5])
    assert_one_line(error, path, "keeps its data in '../weights.bin'")


def test_without_the_extra_the_error_says_how_to_install_it(small_cnn, digits, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelError, match=r"pip install 'kansa\[onnx\]' \(onnxruntime is not installed\)"):
        load_onnx(Path(small_cnn[1].path), SHAPE, digits[2][:5])


def test_the_module_imports_without_onnx_or_torch():
    blocked = "import sys; sys.modules.update(dict.fromkeys(['onnx', 'onnxruntime', 'torch'])); import audit.onnx_import"
    subprocess.run([sys.executable, "-c", blocked], cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


# --- end to end: `kansa run` on the ONNX file a team ships ----------------------------------------

RUN = """
[data]
source = "digits"
[evaluation]
samples = 120
[history]
enabled = false
"""


def _run(folder: Path, models: str, attacks: str, gates: str = "") -> Any:
    from audit import run_audit

    config = folder / "audit.toml"
    config.write_text(RUN + models + attacks + gates, encoding="utf-8")
    return run_audit(config, out_dir=folder / "run")


def _robust(result: Any, model: str, attack: str) -> pd.Series:
    table = result.table
    return table[(table["model"] == model) & (table["attack"] == attack) & (table["metric"] == "robust_accuracy") & (table["subset"] == "all")]


def test_kansa_audits_an_onnx_file_exactly_like_the_torch_original(digits, tmp_path):
    model = trained(SmallCnn(), digits)
    torch.jit.save(torch.jit.script(model), str(tmp_path / "cnn.pt"))
    export(model, tmp_path / "cnn.onnx")
    result = _run(tmp_path, '[[models]]\nname = "torch"\nkind = "torchscript"\npath = "cnn.pt"\n'
                            '[[models]]\nname = "onnx"\nkind = "onnx"\npath = "cnn.onnx"\n',
                  '[[attacks]]\nname = "fgsm"\neps = [0.05, 0.1]\n[[attacks]]\nname = "pgd"\neps = [0.1]\nsteps = 5\nrandom_starts = 0\n')
    table = result.table
    for attack in ("fgsm", "pgd"):
        torch_rows, onnx_rows = _robust(result, "torch", attack), _robust(result, "onnx", attack)
        assert len(onnx_rows) and (onnx_rows["status"] == "ok").all()
        assert onnx_rows["value"].tolist() == torch_rows["value"].tolist(), attack  # the same samples stay robust (no random start)
    assert _robust(result, "onnx", "fgsm")["value"].max() < table.query("model == 'onnx' and metric == 'accuracy' and subset == 'split=test'")["value"].iloc[0]
    diff = table[(table["model"] == "onnx") & (table["metric"] == "conversion_max_abs_diff")].iloc[0]
    assert diff["value"] <= 1e-4 and "on the 120 audited samples" in diff["message"]


def test_a_gradient_free_onnx_model_gets_black_box_attacks_and_not_applicable_rows(digits, tmp_path):
    export(trained(Warped(), digits, epochs=3), tmp_path / "warped.onnx")
    result = _run(tmp_path, '[[models]]\nname = "warped"\nkind = "onnx"\npath = "warped.onnx"\n',
                  '[[attacks]]\nname = "fgsm"\neps = [0.1]\n[[attacks]]\nname = "square"\neps = [0.1]\nqueries = 50\n',
                  '[[gates]]\nmetric = "robust_accuracy"\nop = ">="\nthreshold = 0.0\n')
    table = result.table
    fgsm = table[table["attack"] == "fgsm"]
    assert (fgsm["status"] == "not_applicable").all() and "needs the model's gradients, and warped gives none" in fgsm.iloc[0]["message"]
    assert (_robust(result, "warped", "square")["status"] == "ok").all()
    free = table[table["metric"] == "gradient_free"].iloc[0]
    assert free["value"] == 1 and "GridSample" in free["message"]
    ensemble = _robust(result, "warped", "ensemble").iloc[0]
    assert "square" in ensemble["message"] and "fgsm" not in ensemble["message"]  # the gate says which attacks applied
    assert set(result.gates["verdict"]) == {"pass"}  # not applicable is no error: the gate decides on what ran
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "Attacks that do not apply to a model" in html and "GridSample" in html


def test_a_corrupt_onnx_file_exits_2_on_one_line(tmp_path, capsys):
    from audit.cli import main

    (tmp_path / "bad.onnx").write_bytes(os.urandom(256))
    config = tmp_path / "audit.toml"
    config.write_text(RUN + '[[models]]\nname = "m"\nkind = "onnx"\npath = "bad.onnx"\n[[attacks]]\nname = "fgsm"\n', encoding="utf-8")
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.onnx: not a readable ONNX model" in err[0], err
