"""Property: any single mutation that breaks a valid config gives exit 2 and one line naming the key."""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.cli import main
from audit.params import Location

VALID = tomllib.loads(
    """
title = "fuzz"
seed = 1
[data]
source = "digits"
split = [0.6, 0.2, 0.2]
max_samples = 500
[[models]]
name = "cnn"
architecture = "cnn"
epochs = 2
batch_size = 32
learning_rate = 0.001
weight_decay = 0.0
optimizer = "adam"
channels = [8, 16]
[evaluation]
samples = 50
[[attacks]]
name = "fgsm"
eps = [0.1, 0.2]
norm = "inf"
[[attacks]]
name = "pgd"
eps = 0.1
steps = 5
random_starts = 1
[[gates]]
metric = "robust_accuracy"
op = ">="
threshold = 0.5
confidence = true
[history]
enabled = false
"""
)

Path_ = tuple[Any, ...]


def tables(config: dict[str, Any]) -> list[tuple[Path_, dict[str, Any]]]:
    """Every table of the config with its path: the top level, [data], models[0], attacks[1], ..."""
    found: list[tuple[Path_, dict[str, Any]]] = [((), config)]
    for key, value in config.items():
        if isinstance(value, dict):
            found.append(((key,), value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            found += [((key, i), v) for i, v in enumerate(value)]
    return found


def leaves(config: dict[str, Any]) -> list[tuple[Path_, Any]]:
    return [(path + (key,), value) for path, table in tables(config) for key, value in table.items() if path or not isinstance(value, (dict, list))]


def render(path: Path_) -> str:
    where = Location("f")
    for part in path:
        where = where.child(part)
    return where.path


def put(config: dict[str, Any], path: Path_, value: Any) -> None:
    target: Any = config
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


KNOWN_KEYS = {key for _, table in tables(VALID) for key in table} | {
    "input_range", "scale", "classes", "path", "label_column", "feature_columns", "image_shape", "x_key", "y_key",
    "images", "labels", "kind", "hidden", "factory", "factory_args", "strict", "output", "allow_unsafe_pickle",
    "id", "preset", "model", "defense", "attack", "at", "subset", "min_n", "tolerance", "relative", "direction",
    "characteristic", "level", "step_size", "batch_size", "data", "models", "attacks", "gates", "evaluation", "history",
}
ODD_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24)


@st.composite
def wrong_type(draw):
    config = copy.deepcopy(VALID)
    path, original = draw(st.sampled_from([(p, v) for p, v in leaves(VALID) if not isinstance(v, dict)]))
    if isinstance(original, bool):
        options = st.one_of(ODD_TEXT, st.integers(), st.fixed_dictionaries({"x": st.integers()}))
    elif isinstance(original, (int, float)):
        options = st.one_of(ODD_TEXT, st.booleans(), st.fixed_dictionaries({"x": st.integers()}), st.lists(ODD_TEXT, min_size=1, max_size=3))
    elif isinstance(original, str):
        options = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                            st.lists(st.fixed_dictionaries({"x": st.integers()}), min_size=1, max_size=2))
    else:  # a list of numbers
        options = st.one_of(ODD_TEXT, st.booleans(), st.lists(ODD_TEXT, min_size=1, max_size=4))
    put(config, path, draw(options))
    return config, render(path)


OUT_OF_RANGE = [
    (("seed",), st.one_of(st.integers(max_value=-1), st.integers(min_value=2**31))),
    (("data", "max_samples"), st.integers(max_value=29)),
    (("data", "split"), st.lists(st.floats(0.34, 0.99), min_size=3, max_size=3)),
    (("models", 0, "epochs"), st.one_of(st.integers(max_value=0), st.integers(min_value=10_001, max_value=10**9))),
    (("models", 0, "batch_size"), st.integers(max_value=0)),
    (("models", 0, "learning_rate"), st.one_of(st.floats(max_value=0.0, allow_nan=False, allow_infinity=False), st.floats(min_value=10.001, max_value=1e9))),
    (("models", 0, "weight_decay"), st.floats(min_value=1.0001, max_value=1e6)),
    (("models", 0, "channels"), st.lists(st.integers(1, 64), min_size=3, max_size=5)),
    (("evaluation", "samples"), st.integers(max_value=0)),
    (("attacks", 0, "eps"), st.one_of(st.floats(max_value=0.0, allow_nan=False, allow_infinity=False), st.lists(st.floats(max_value=0.0, allow_nan=False, allow_infinity=False), min_size=1, max_size=5))),
    (("attacks", 1, "steps"), st.integers(max_value=0)),
    (("attacks", 1, "random_starts"), st.integers(min_value=101)),
    (("gates", 0, "min_n"), st.integers(max_value=-1)),
]


@st.composite
def out_of_range(draw):
    config = copy.deepcopy(VALID)
    path, values = draw(st.sampled_from(OUT_OF_RANGE))
    put(config, path, draw(values))
    return config, render(path)


@st.composite
def unknown_key(draw):
    config = copy.deepcopy(VALID)
    path, _ = draw(st.sampled_from(tables(VALID)))
    key = draw(ODD_TEXT.filter(lambda k: k not in KNOWN_KEYS))
    value = draw(st.one_of(st.integers(), ODD_TEXT, st.booleans()))
    table = config
    for part in path:
        table = table[part]
    table[key] = value
    return config, render(path + (key,))


MISSING = [(("data",), "data"), (("models",), "models"), (("attacks",), "attacks"), (("attacks", 1, "name"), "attacks[1].name"),
           (("gates", 0, "metric"), "gates[0].metric"), (("gates", 0, "threshold"), "gates[0].threshold")]


@st.composite
def missing(draw):
    config = copy.deepcopy(VALID)
    path, shown = draw(st.sampled_from(MISSING))
    target: Any = config
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return config, shown


@st.composite
def empty_or_huge(draw):
    config = copy.deepcopy(VALID)
    case = draw(st.sampled_from(["models", "attacks", "eps", "split", "many_models", "many_attacks", "long_eps"]))
    size = draw(st.integers(2, 3000))
    if case in ("models", "attacks"):
        config[case] = []
        return config, case
    if case == "eps":
        config["attacks"][0]["eps"] = []
        return config, "attacks[0].eps"
    if case == "split":
        config["data"]["split"] = []
        return config, "data.split"
    if case == "many_models":
        config["models"] = [dict(VALID["models"][0]) for _ in range(size)]
        return config, "models[1].name"
    if case == "many_attacks":
        config["attacks"] = [dict(VALID["attacks"][0]) for _ in range(size)]
        return config, "attacks[1].id"
    eps = [0.0001 * (i + 1) for i in range(size)]
    eps[draw(st.integers(0, size - 1))] = draw(ODD_TEXT)
    config["attacks"][0]["eps"] = eps
    return config, "attacks[0].eps"


CHOICES = [("data", "source"), ("models", 0, "kind"), ("models", 0, "optimizer"), ("models", 0, "architecture"),
           ("attacks", 0, "name"), ("attacks", 0, "norm"), ("gates", 0, "op")]


@st.composite
def odd_choice(draw):
    config = copy.deepcopy(VALID)
    path = draw(st.sampled_from(CHOICES))
    put(config, path, draw(ODD_TEXT.filter(lambda t: t not in {"digits", "builtin", "adam", "sgd", "cnn", "mlp", "auto", "fgsm", "pgd", "inf", "2", ">=", ">", "<=", "<", "iris", "wine", "csv", "npz", "idx", "parquet", "torchscript", "state_dict", "pickle", "breast_cancer", "safetensors", "exported", "image_folder"})))
    return config, render(path)


MUTATIONS = st.one_of(wrong_type(), out_of_range(), unknown_key(), missing(), empty_or_huge(), odd_choice())


def test_the_unmutated_config_is_valid(capsys):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.toml"
        path.write_text(tomli_w.dumps(VALID), encoding="utf-8")
        assert main(["validate", str(path)]) == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(MUTATIONS)
def test_every_broken_config_is_exit_2_with_one_line_naming_the_key(mutation):
    config, key_path = mutation
    stderr = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        path = Path(tmp) / "audit.toml"
        path.write_text(tomli_w.dumps(config), encoding="utf-8")
        code = main(["validate", str(path)])
    err = stderr.getvalue()
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    shown = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in key_path)
    assert lines[0].startswith(f"kansa: error: {path}: {shown}"), (lines[0], key_path)
