"""Loading a user's model: TorchScript and state_dict + factory work; pickles are refused; outputs are checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.errors import ModelError
from audit.models import detect_output, load_user_model, validate_model_config
from audit.params import Location
from tests.conftest import write

FACTORY_MODULE = """
import torch

def build(hidden=16, softmax=False):
    layers = [torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)]
    if softmax:
        layers.append(torch.nn.Softmax(dim=1))
    return torch.nn.Sequential(*layers)
"""


def model_cfg(**table):
    return validate_model_config(table, Location("test.toml", "models[0]"))


def reference_module(digits):
    _, _, target = digits
    return target.module


def test_torchscript_model_gives_identical_logits(tmp_path, digits):
    dataset, splits, target = digits
    torch.jit.save(torch.jit.script(target.module.inner), tmp_path / "m.ts")  # the model itself, as a team would export it
    loaded = load_user_model(model_cfg(kind="torchscript", path="m.ts"), tmp_path)
    x = torch.from_numpy(dataset.x[splits.test[:32]])
    with torch.no_grad():
        assert torch.equal(loaded(x), target.module(x))


def test_state_dict_with_factory_and_arguments(tmp_path, digits):
    dataset, splits, _ = digits
    write(tmp_path / "netmod.py", FACTORY_MODULE)
    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 24), torch.nn.ReLU(), torch.nn.Linear(24, 10))
    torch.save(source.state_dict(), tmp_path / "w.pt")
    cfg = model_cfg(kind="state_dict", path="w.pt", factory="netmod:build", factory_args={"hidden": 24})
    loaded = load_user_model(cfg, tmp_path)
    x = torch.from_numpy(dataset.x[splits.test[:8]])
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
    wrong = model_cfg(kind="state_dict", path="w.pt", factory="netmod:build")  # hidden=16 does not fit
    with pytest.raises(ModelError, match="does not fit the architecture built by netmod:build"):
        load_user_model(wrong, tmp_path)


def test_a_pickled_whole_model_is_refused_and_never_executed(tmp_path):
    write(tmp_path / "netmod.py", FACTORY_MODULE)
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"weight": torch.zeros(1), "payload": Payload()}, tmp_path / "evil.pt")
    cfg = model_cfg(kind="state_dict", path="evil.pt", factory="netmod:build")
    with pytest.raises(ModelError, match="does not load because unpickling can run arbitrary code") as info:
        load_user_model(cfg, tmp_path)
    assert "torch.save(model.state_dict()" in str(info.value) and "torch.jit.save" in str(info.value)
    assert not marker.exists()


def test_a_whole_model_given_as_torchscript_is_named_as_a_pickle(tmp_path):
    torch.save(torch.nn.Linear(64, 10), tmp_path / "whole.pt")
    with pytest.raises(ModelError, match="looks like a torch.save pickle"):
        load_user_model(model_cfg(kind="torchscript", path="whole.pt"), tmp_path)


def test_missing_model_file_names_the_path(tmp_path):
    with pytest.raises(ModelError, match=f"model file not found: {tmp_path / 'gone.pt'}"):
        load_user_model(model_cfg(kind="torchscript", path="gone.pt"), tmp_path)


def test_output_kind_is_detected_and_declarations_are_checked(tmp_path, digits):
    dataset, splits, _ = digits
    write(tmp_path / "netmod.py", FACTORY_MODULE)
    import importlib
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        netmod = importlib.import_module("netmod")
    finally:
        sys.path.remove(str(tmp_path))
    sample = dataset.x[splits.train[:8]]
    assert detect_output(netmod.build(), sample, 10, "auto", "m") == "logits"
    assert detect_output(netmod.build(softmax=True), sample, 10, "auto", "m") == "probabilities"
    with pytest.raises(ModelError, match='declared output = "probabilities"'):
        detect_output(netmod.build(), sample, 10, "probabilities", "m")
    with pytest.raises(ModelError, match=r"returns \(8, 10\) for a batch of 8; expected \(8, 3\)"):
        detect_output(netmod.build(), sample, 3, "auto", "m")
    with pytest.raises(ModelError, match="fails on inputs of shape"):
        detect_output(netmod.build(), np.zeros((2, 1, 4, 4), np.float32), 10, "auto", "m")
    del sys.modules["netmod"]
