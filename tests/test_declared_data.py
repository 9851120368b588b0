"""A team's own model on its own data: declared roles are never re-split, and membership is measured only on known members.

The model is trained here with plain torch on MNIST (outside Kansa's pipeline) and saved as
TorchScript; its train, hold-out and test data are handed to Kansa as files, as a team would.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from markupsafe import escape as html_escape
from PIL import Image

from audit.cli import main
from audit.config import check_against_data, load_config
from audit.data import load_data, quality_rows, stratified_subset
from audit.errors import ConfigError, DataError
from audit.results import make_table
from audit.session import load_audit_data, members_origin, members_refusal
from tests.conftest import MNIST_DIR, write

TRAIN, HOLDOUT, TEST = 400, 400, 300


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    images = np.frombuffer(gzip.decompress((MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes()), np.uint8, offset=16)
    labels = np.frombuffer(gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()), np.uint8, offset=8)
    return images.reshape(-1, 1, 28, 28), labels.astype(np.int64)


def _pixels(raw: np.ndarray) -> np.ndarray:
    """What `scale = 255` makes of the raw bytes, exactly as Kansa computes it."""
    return (raw.astype(np.float64) / 255.0).astype(np.float32)


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A deliberately overfit MLP trained by the 'team' on 400 MNIST digits, its files, and its data."""
    root = tmp_path_factory.mktemp("team")
    images, labels = _mnist()
    order = np.random.default_rng(0).permutation(len(labels))
    parts = {"train": order[:TRAIN], "holdout": order[TRAIN:TRAIN + HOLDOUT], "test": order[TRAIN + HOLDOUT:TRAIN + HOLDOUT + TEST]}
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.from_numpy(_pixels(images[parts["train"]])), torch.from_numpy(labels[parts["train"]])
    for _ in range(150):  # full batch, no regularisation: it memorises its 400 samples
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    torch.jit.save(torch.jit.script(model), str(root / "model.pt"))
    for role in ("train", "holdout"):
        np.savez(root / f"{role}.npz", x=images[parts[role]], y=labels[parts[role]])
    for i, index in enumerate(parts["test"]):
        folder = root / "test" / str(labels[index])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index, 0]).save(folder / f"{i:04d}.png")
    everything = np.concatenate(list(parts.values()))
    np.savez(root / "all.npz", x=images[everything], y=labels[everything])
    return {"root": root, "model": model, "images": images, "labels": labels, "parts": parts}


MODEL_AND_ATTACKS = """
[[models]]
name = "team"
kind = "torchscript"
path = "model.pt"

[[attacks]]
name = "fgsm"
eps = [0.1]

[[attacks]]
name = "mia_loss"
members = 400
bootstrap = 50

[[gates]]
preset = "privacy_ceiling"

[history]
enabled = false
"""

DECLARED = """
title = "declared roles"
[data]
scale = 255
[data.train]
source = "npz"
path = "train.npz"
[data.holdout]
source = "npz"
path = "holdout.npz"
[data.test]
source = "image_folder"
path = "test"
image_shape = [1, 28, 28]
""" + MODEL_AND_ATTACKS

UNDECLARED = """
title = "one file, Kansa's split"
[data]
source = "npz"
path = "all.npz"
scale = 255
""" + MODEL_AND_ATTACKS.replace("members = 400", "members = 100")


@pytest.fixture(scope="module")
def declared_run(team: dict, tmp_path_factory: pytest.TempPathFactory):
    from audit import run_audit

    return run_audit(write(team["root"] / "declared.toml", DECLARED), out_dir=tmp_path_factory.mktemp("declared"))


@pytest.fixture(scope="module")
def undeclared_run(team: dict, tmp_path_factory: pytest.TempPathFactory):
    from audit import run_audit

    return run_audit(write(team["root"] / "undeclared.toml", UNDECLARED), out_dir=tmp_path_factory.mktemp("undeclared"))


def _row(table, **where):
    rows = table
    for column, value in where.items():
        rows = rows[rows[column] == value]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_declared_members_reveal_the_leak_and_match_a_hand_computed_auc(team: dict, declared_run) -> None:
    from sklearn.metrics import roc_auc_score

    auc = _row(declared_run.table, metric="auc", attack="mia_loss", defense="none")
    assert auc["status"] == "ok" and auc["value"] >= 0.6, auc
    members, non_members = (_pixels(team["images"][team["parts"][role]]) for role in ("train", "holdout"))
    with torch.no_grad():
        logits = team["model"](torch.from_numpy(np.concatenate([members, non_members]))).double()
    truth = torch.from_numpy(np.concatenate([team["labels"][team["parts"][role]] for role in ("train", "holdout")]))
    loss = torch.nn.functional.cross_entropy(logits, truth, reduction="none").numpy()
    is_member = np.r_[np.ones(TRAIN, bool), np.zeros(HOLDOUT, bool)]
    assert auc["value"] == pytest.approx(roc_auc_score(is_member, -loss), abs=1e-9)
    assert declared_run.metadata.models[0].members == "declared"
    gate = declared_run.gates.iloc[0]
    assert gate["verdict"] == "fail", gate  # the leak fails the privacy gate


def test_without_declared_members_no_membership_figure_and_the_privacy_gate_is_inconclusive(undeclared_run) -> None:
    table = undeclared_run.table
    mia = table[table["attack"] == "mia_loss"]
    assert (mia["status"] == "error").all() and mia["value"].isna().all(), mia
    assert "declare the model's training data as data.train" in mia.iloc[0]["message"]
    assert set(undeclared_run.gates["verdict"]) == {"inconclusive"}
    assert undeclared_run.metadata.models[0].members == "unknown"
    assert _row(table, metric="robust_accuracy", attack="fgsm", defense="none", subset="all")["status"] == "ok"  # integrity still audited
    html = (undeclared_run.out_dir / "report.html").read_text(encoding="utf-8")
    assert "<h4>Membership inference</h4>" not in html and "Training samples most exposed" not in html
    assert "declare the model&#39;s training data as data.train" in html or "declare the model's training data as data.train" in html


def test_declared_test_data_is_evaluated_once_and_never_among_members(team: dict, declared_run) -> None:
    metadata = declared_run.metadata
    assert metadata.data.split_sizes == {"train": TRAIN, "holdout": HOLDOUT, "test": TEST}
    assert metadata.data.evaluation_samples == TEST
    assert _row(declared_run.table, metric="accuracy", subset="split=test")["n"] == TEST
    dataset, splits = load_audit_data(load_config(team["root"] / "declared.toml"))
    assert splits.declared
    evaluated = dataset.x[splits.test].reshape(TEST, -1)
    expected = _pixels(team["images"][team["parts"]["test"]]).reshape(TEST, -1)
    assert sorted(map(bytes, evaluated)) == sorted(map(bytes, expected))  # every test image once, nothing else
    fgsm = next(a for k, a in declared_run.artifacts.items() if "fgsm" in k)
    assert len(fgsm["sample/robust_correct@eps=0.1"]) == TEST
    mia = next(a for k, a in declared_run.artifacts.items() if "mia_loss" in k)
    members = mia["sample/index"][mia["sample/is_member"]]
    assert set(members) == set(splits.train.tolist()) and not set(members) & set(splits.test.tolist())


def test_members_are_known_only_for_a_model_kansa_trained_or_declared_data(team: dict) -> None:
    undeclared = load_config(write(team["root"] / "undeclared.toml", UNDECLARED))
    _, kansa_split = load_audit_data(undeclared)
    loaded, builtin = undeclared.models[0], {"name": "mine", "kind": "builtin"}
    assert members_origin(builtin, kansa_split) == "kansa_split" and members_refusal(builtin, kansa_split) is None
    assert members_origin(loaded, kansa_split) == "unknown" and "trained outside Kansa" in members_refusal(loaded, kansa_split)
    _, declared = load_audit_data(load_config(write(team["root"] / "declared.toml", DECLARED)))
    assert members_origin(loaded, declared) == "declared" and members_refusal(loaded, declared) is None
    no_holdout = DECLARED.replace('[data.holdout]\nsource = "npz"\npath = "holdout.npz"\n', "")
    config = load_config(write(team["root"] / "no_holdout.toml", no_holdout))
    _, splits = load_audit_data(config)
    check_against_data(config, *load_audit_data(config))  # not a config error: the cells say it
    assert "declare data the model never saw as data.holdout" in members_refusal(loaded, splits)


def _config(tmp_path: Path, data: str, models: str = 'kind = "torchscript"\npath = "model.pt"') -> Path:
    return write(tmp_path / "audit.toml", f'{data}\n[[models]]\nname = "m"\n{models}\n[[attacks]]\nname = "fgsm"\neps = [0.1]\n')


def _table_csv(path: Path, rows: int = 60, split: list[str] | None = None) -> Path:
    rng = np.random.default_rng(1)
    lines = ["a,b,label" + (",role" if split else "")]
    for i in range(rows):
        lines.append(f"{rng.random():.4f},{rng.random():.4f},{i % 3}" + (f",{split[i % len(split)]}" if split else ""))
    return write(path, "\n".join(lines) + "\n")


def test_a_split_column_declares_the_roles(tmp_path: Path) -> None:
    _table_csv(tmp_path / "d.csv", split=["train", "train", "holdout", "test"])
    config = load_config(_config(tmp_path, '[data]\nsource = "csv"\npath = "d.csv"\nlabel_column = "label"\nsplit_column = "role"'))
    dataset, splits = load_audit_data(config)
    assert splits.declared and (len(splits.train), len(splits.holdout), len(splits.test)) == (30, 15, 15)
    assert dataset.input_shape == (2,)  # the split column is no feature
    assert np.array_equal(splits.train, np.flatnonzero(np.arange(60) % 4 < 2))


def test_a_split_file_declares_the_roles_and_rows_it_omits_take_no_part(tmp_path: Path) -> None:
    _table_csv(tmp_path / "d.csv")
    write(tmp_path / "roles.json", json.dumps({"train": list(range(0, 30)), "test": list(range(40, 60))}))
    config = load_config(_config(tmp_path, '[data]\nsource = "csv"\npath = "d.csv"\nlabel_column = "label"\nsplit_file = "roles.json"'))
    dataset, splits = load_audit_data(config)
    assert len(dataset.y) == 50 and (len(splits.train), len(splits.holdout), len(splits.test)) == (30, 0, 20)


@pytest.mark.parametrize("roles, message", [
    ({"train": [0, 1], "test": [1, 2]}, "row 1 is listed under both 'train' and 'test'"),
    ({"train": [0], "test": [99]}, "'test' lists row 99, but the data has rows 0-59"),
    ({"train": [0]}, 'test required'),
    ({"train": [0], "test": [1], "validation": [2]}, 'test required'),
])
def test_a_bad_split_file_is_refused_naming_the_file(tmp_path: Path, roles: dict, message: str) -> None:
    _table_csv(tmp_path / "d.csv")
    write(tmp_path / "roles.json", json.dumps(roles))
    config = load_config(_config(tmp_path, '[data]\nsource = "csv"\npath = "d.csv"\nlabel_column = "label"\nsplit_file = "roles.json"'))
    with pytest.raises(DataError, match="roles.json") as error:
        load_audit_data(config)
    assert message in str(error.value)


@pytest.mark.parametrize("data, key, message", [
    ('[data]\nsource = "digits"\n[data.test]\nsource = "digits"', "data.source", "not both"),
    ('[data]\nsplit = [0.5, 0.25, 0.25]\n[data.train]\nsource = "digits"\n[data.test]\nsource = "digits"', "data.split", "does not re-split"),
    ('[data]\n[data.train]\nsource = "digits"', "data.test", "missing"),
    ('[data]\n[data.test]\nsource = "image_folder"\npath = "x"\nimage_shape = [2, 8, 8]', "data.test.image_shape", "1 (grey) or 3 (RGB)"),
    ('[data]\n[data.test]\nsource = "csv"\npath = "d.csv"\nlabel_column = "label"\nsplit_column = "role"', "data.test.split_column", "every row of data.test has the role test"),
])
def test_contradictory_role_declarations_are_config_errors(tmp_path: Path, data: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        load_config(_config(tmp_path, data))
    assert message in str(error.value)


def test_a_builtin_model_without_declared_training_data_is_refused_before_training(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, '[data]\n[data.test]\nsource = "digits"', models='kind = "builtin"'))
    with pytest.raises(ConfigError, match=r"models\[0\].*trained by Kansa, on data.train, which is not declared"):
        check_against_data(config, *load_audit_data(config))


def test_roles_share_one_label_map_and_one_scale(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", "a,label\n0,cat\n10,dog\n5,cat\n")
    write(tmp_path / "test.csv", "a,label\n20,dog\n")
    cfg = load_config(_config(tmp_path, '[data]\nscale = "minmax"\n[data.train]\nsource = "csv"\npath = "train.csv"\nlabel_column = "label"\n'
                                         '[data.test]\nsource = "csv"\npath = "test.csv"\nlabel_column = "label"')).data
    dataset, splits = load_data(cfg, tmp_path, 0, 0)
    assert dataset.class_names == ["cat", "dog"] and dataset.y[splits.test].tolist() == [1]
    assert dataset.x[:, 0].tolist() == [0.0, 0.5, 0.25, 1.0]  # min-max over every role at once


@pytest.mark.parametrize("train, test, scale, message", [
    ("a,b,label\n1,2,0\n", "a,label\n1,0\n", "none", "data.test (test.csv): inputs of shape (1,), but data.train (train.csv) has (2,)"),
    ("a,label\n1,0\n", "a,label\n1,x\n", "none", "labels are names but data.train (train.csv)'s are numbers"),
])
def test_roles_that_do_not_fit_together_are_refused(tmp_path: Path, train: str, test: str, scale: str, message: str) -> None:
    write(tmp_path / "train.csv", train)
    write(tmp_path / "test.csv", test)
    cfg = load_config(_config(tmp_path, f'[data]\nscale = "{scale}"\n[data.train]\nsource = "csv"\npath = "train.csv"\nlabel_column = "label"\n'
                                         '[data.test]\nsource = "csv"\npath = "test.csv"\nlabel_column = "label"')).data
    with pytest.raises(DataError) as error:
        load_data(cfg, tmp_path, 0, 0)
    assert message in str(error.value)


def test_auto_scale_that_differs_between_roles_must_be_declared(team: dict, tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "a.toml", DECLARED.replace("scale = 255\n", ""))).data
    with pytest.raises(DataError, match="set data.scale"):
        load_data(cfg, team["root"], 0, 0)


def test_an_unreadable_image_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / "a" / "ok.png")
    write(tmp_path / "imgs" / "b" / "broken.png", "not a png")
    cfg = load_config(_config(tmp_path, '[data]\n[data.test]\nsource = "image_folder"\npath = "imgs"\nimage_shape = [8, 8]')).data
    with pytest.raises(DataError, match=r"broken\.png: not a readable image"):
        load_data(cfg, tmp_path, 0, 0)


def test_rgb_images_are_resized_to_the_declared_shape(tmp_path: Path) -> None:
    for label, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        for i in range(2):
            (tmp_path / "imgs" / label).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 12), colour).save(tmp_path / "imgs" / label / f"{i}.jpg")
    cfg = load_config(_config(tmp_path, '[data]\n[data.test]\nsource = "image_folder"\npath = "imgs"\nimage_shape = [3, 6, 10]')).data
    dataset, splits = load_data(cfg, tmp_path, 0, 0)
    assert dataset.input_shape == (3, 6, 10) and dataset.class_names == ["blue", "red"] and dataset.is_image
    red = dataset.x[dataset.y == 1]
    assert red[:, 0].min() > 0.95 and red[:, 2].max() < 0.05  # channel order C, H, W; JPEG within a few levels


def test_duplicates_across_declared_roles_are_a_leakage_finding(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", "a,label\n1,0\n2,1\n3,0\n")
    write(tmp_path / "test.csv", "a,label\n2,1\n4,0\n")
    cfg = load_config(_config(tmp_path, '[data]\nscale = "none"\ninput_range = [0, 5]\n[data.train]\nsource = "csv"\npath = "train.csv"\n'
                                         'label_column = "label"\n[data.test]\nsource = "csv"\npath = "test.csv"\nlabel_column = "label"')).data
    table = make_table(quality_rows(*load_data(cfg, tmp_path, 0, 0))).set_index(["metric", "subset"])
    finding = table.loc[("duplicates_across_splits", "split=train~test")]
    assert finding["value"] == 1 and "leakage between the declared train and test data" in finding["message"]


def test_evaluation_samples_are_a_stratified_draw_of_the_test_data() -> None:
    y = np.r_[np.zeros(90, int), np.ones(9, int), np.full(1, 2)]
    index = np.arange(100)
    drawn = stratified_subset(index, y, 20, seed=0)
    assert len(drawn) == 20 and len(set(drawn)) == 20
    assert np.bincount(y[drawn], minlength=3).tolist() == [18, 2, 0]
    assert np.array_equal(drawn, stratified_subset(index, y, 20, seed=0))


def test_a_builtin_model_without_training_data_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _config(tmp_path, '[data]\n[data.test]\nsource = "digits"', models='kind = "builtin"')
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "models[0]" in err[0] and "data.train" in err[0]


def test_the_report_says_where_members_and_reference_models_come_from(declared_run) -> None:
    html = (declared_run.out_dir / "report.html").read_text(encoding="utf-8")
    assert "Members (the samples judged as training data): declared by the user as data.train." in html
    reference = declared_run.metadata.models[0].reference
    assert reference.startswith("an approximation of the model's unknown recipe: Kansa's built-in recipe for the data (cnn architecture")
    assert html_escape(reference) in html


def test_a_declared_reference_recipe_and_normalisation_reach_the_loaded_model(team: dict, tmp_path: Path) -> None:
    from audit.session import AuditSession, Progress

    text = DECLARED.replace('path = "model.pt"\n', 'path = "model.pt"\nnormalize = { mean = 0.5, std = 0.25 }\n'
                            'reference_recipe = { architecture = "mlp", hidden = [32], epochs = 3 }\n')
    config = load_config(write(team["root"] / "recipe.toml", text))
    prepared = AuditSession(config, None, Progress(quiet=True)).model("team")
    assert prepared.recipe["hidden"] == [32] and prepared.recipe["epochs"] == 3
    assert "the declared reference_recipe (mlp architecture, 3 epochs" in prepared.reference
    x = torch.from_numpy(_pixels(team["images"][:16]))
    with torch.no_grad():
        assert torch.allclose(prepared.module(x), team["model"]((x - 0.5) / 0.25), atol=1e-6)


@pytest.mark.parametrize("recipe, key", [("{ epoch = 3 }", "reference_recipe.epoch"), ("{ architecture = \"rnn\" }", "reference_recipe.architecture")])
def test_a_bad_reference_recipe_is_refused_naming_its_key(tmp_path: Path, recipe: str, key: str) -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\." + key.replace(".", r"\.")):
        load_config(_config(tmp_path, '[data]\nsource = "digits"', models=f'kind = "torchscript"\npath = "m.pt"\nreference_recipe = {recipe}'))
    with pytest.raises(ConfigError, match=r"models\[0\]\.reference_recipe: a built-in model"):
        load_config(_config(tmp_path, '[data]\nsource = "digits"', models='kind = "builtin"\nreference_recipe = { epochs = 3 }'))


def test_validate_opens_the_model_file_and_checks_it_against_the_data(team: dict, capsys: pytest.CaptureFixture) -> None:
    assert main(["validate", str(write(team["root"] / "declared.toml", DECLARED))]) == 0
    out = capsys.readouterr().out
    assert "train / hold-out / test 400 / 400 / 300 (declared)" in out
    assert "model team: torchscript file opens and fits the data: inputs (1, 28, 28) -> 10 logits; members declared" in out
    wrong = DECLARED.replace('path = "model.pt"\n', 'path = "model.pt"\nnormalize = { mean = [0.5, 0.5, 0.5], std = [0.2, 0.2, 0.2] }\n')
    assert main(["validate", str(write(team["root"] / "wrong_channels.toml", wrong))]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "normalize.mean has 3 values but the inputs have 1 channel" in err[0], err
    assert "valid" not in captured.out  # nothing claims the config valid before its model failed
