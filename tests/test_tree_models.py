"""Tabular models a team ships (skops, XGBoost, LightGBM): the library's own probabilities, one-line refusals, a full audit.

Every model is built here with plain scikit-learn, xgboost or lightgbm code on scikit-learn's bundled
breast_cancer (iris for multiclass), min-max scaled the way Kansa scales `scale = "minmax"` data.
Nothing downloads.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from audit.errors import ModelError
from audit.models import detect_output, load_model, module_digest
from audit.params import Location
from audit.tree_models import load_tree_model

TREE_KINDS = ("skops", "xgboost", "lightgbm")
LIBRARIES = {"skops": "skops.io", "xgboost": "xgboost", "lightgbm": "lightgbm"}
SUFFIX = {"skops": "skops", "xgboost": "json", "lightgbm": "txt"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def minmax(x: np.ndarray) -> np.ndarray:
    """What Kansa's `scale = "minmax"` computes over all roles: per feature, in float64, then float32."""
    lo, hi = x.min(axis=0), x.max(axis=0)
    return ((x - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return minmax(x), y.astype(np.int64)


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return minmax(x), y.astype(np.int64)


def library(kind: str) -> Any:
    return pytest.importorskip(LIBRARIES[kind])


def save(kind: str, model: Any, path: Path) -> Path:
    """The file a team ships: skops.io.dump for scikit-learn, the library's own save_model otherwise."""
    if kind == "skops":
        library("skops").dump(model, path)
    elif kind == "lightgbm":
        getattr(model, "booster_", model).save_model(str(path))
    else:
        model.save_model(str(path))
    return path


def small_model(kind: str, x: np.ndarray, y: np.ndarray) -> Any:
    """A fitted classifier of each kind, with a probability interface to compare against."""
    if kind == "skops":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    if kind == "xgboost":
        return library("xgboost").XGBClassifier(n_estimators=10, max_depth=3, nthread=1).fit(x, y)
    return library("lightgbm").LGBMClassifier(n_estimators=10, num_leaves=7, verbose=-1, n_jobs=1).fit(x, y)


def assert_one_line(error: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message


def assert_same_probabilities(kind: str, path: Path, x: np.ndarray, expected: np.ndarray, trusted: tuple[str, ...] = ()) -> None:
    got = load_tree_model(kind, path, x.shape[1:], trusted).scores(x)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


# --- each loader computes what the library computes ---------------------------------------------


@pytest.mark.parametrize("kind", TREE_KINDS)
def test_binary_probabilities_are_the_librarys_own(kind, cancer, tmp_path):
    x, y = cancer
    model = small_model(kind, x, y)
    assert_same_probabilities(kind, save(kind, model, tmp_path / f"model.{SUFFIX[kind]}"), x, model.predict_proba(x))


@pytest.mark.parametrize("kind", TREE_KINDS)
def test_multiclass_probabilities_are_the_librarys_own(kind, iris, tmp_path):
    x, y = iris
    model = small_model(kind, x, y)
    assert_same_probabilities(kind, save(kind, model, tmp_path / f"model.{SUFFIX[kind]}"), x, model.predict_proba(x))


@pytest.mark.parametrize("objective", ["binary:logistic", "binary:logitraw", "multi:softprob", "multi:softmax"])
def test_a_raw_xgboost_booster_gives_softmax_of_its_margins(objective, cancer, iris, tmp_path):
    """Booster.save_model (here UBJ, named .bin: the format is read from the bytes) of every classification objective."""
    xgb = library("xgboost")
    x, y = iris if objective.startswith("multi") else cancer
    params = {"objective": objective, "max_depth": 3, "nthread": 1, **({"num_class": 3} if objective.startswith("multi") else {})}
    booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=8)
    booster.save_model(str(tmp_path / "booster.ubj"))
    (tmp_path / "booster.bin").write_bytes((tmp_path / "booster.ubj").read_bytes())
    margin = booster.predict(xgb.DMatrix(x), output_margin=True).astype(np.float64)
    logits = margin if margin.ndim == 2 else np.stack([np.zeros_like(margin), margin], axis=1)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    assert_same_probabilities("xgboost", tmp_path / "booster.bin", x, expected / expected.sum(1, keepdims=True))


def test_xgboost_evaluates_the_trees_early_stopping_kept_as_predict_proba_does(cancer, tmp_path):
    xgb = library("xgboost")
    x, y = cancer
    model = xgb.XGBClassifier(n_estimators=300, learning_rate=0.5, early_stopping_rounds=3, eval_metric="logloss", nthread=1)
    model.fit(x[:300], y[:300], eval_set=[(x[300:], y[300:])], verbose=False)
    assert model.best_iteration + 1 < model.get_booster().num_boosted_rounds()  # trees beyond the best one exist
    path = save("xgboost", model, tmp_path / "stopped.json")
    assert_same_probabilities("xgboost", path, x, model.predict_proba(x))
    assert f"{model.best_iteration + 1} rounds" in load_tree_model("xgboost", path, x.shape[1:]).description


def test_a_scikit_learn_pipeline_fitted_on_a_data_frame_gets_its_column_names(cancer, tmp_path):
    """A column transformer selects by name, so the features reach it as a DataFrame with the fitted names."""
    library("skops")
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = cancer
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    model = make_pipeline(ColumnTransformer([("scaled", StandardScaler(), ["f3", "f0"])], remainder="drop"), LogisticRegression())
    model.fit(frame, y)
    assert_same_probabilities("skops", save("skops", model, tmp_path / "named.skops"), x, model.predict_proba(frame))


# --- refusals, each on one line naming the file -------------------------------------------------


@pytest.mark.parametrize("kind", TREE_KINDS)
def test_a_model_for_other_features_is_refused_at_load_naming_both_counts(kind, cancer, tmp_path):
    x, y = cancer
    path = save(kind, small_model(kind, x, y), tmp_path / f"model.{SUFFIX[kind]}")
    with pytest.raises(ModelError) as error:
        load_tree_model(kind, path, (29,))
    assert_one_line(error, path, "the model expects 30 features, but the data has 29")


@pytest.mark.parametrize("kind", TREE_KINDS)
def test_image_data_is_refused_because_tree_models_take_feature_vectors(kind, cancer, tmp_path):
    x, y = cancer
    path = save(kind, small_model(kind, x, y), tmp_path / f"model.{SUFFIX[kind]}")
    with pytest.raises(ModelError) as error:
        load_tree_model(kind, path, (1, 5, 6))
    assert_one_line(error, path, f'kind = "{kind}" models take feature vectors', "(1, 5, 6)")


@pytest.mark.parametrize("kind", TREE_KINDS)
@pytest.mark.parametrize("content", [os.urandom(256), b'{"learner": 1}', b"PK\x03\x04" + os.urandom(64)], ids=["random", "json", "zip"])
def test_a_corrupt_file_fails_on_one_line_naming_the_file(kind, content, tmp_path):
    library(kind)
    path = tmp_path / f"broken.{SUFFIX[kind]}"
    path.write_bytes(content)
    with pytest.raises(ModelError) as error:
        load_tree_model(kind, path, (30,))
    assert_one_line(error, path)
    assert "Stack trace" not in str(error.value) and "[bt]" not in str(error.value)


def test_a_random_forest_is_refused_until_its_tree_type_is_trusted(cancer, tmp_path):
    """skops does not trust sklearn's Tree by default: crafted node indices make predict read out of bounds."""
    library("skops")
    from sklearn.ensemble import RandomForestClassifier

    x, y = cancer
    model = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, y)
    path = save("skops", model, tmp_path / "forest.skops")
    with pytest.raises(ModelError) as error:
        load_tree_model("skops", path, x.shape[1:])
    assert_one_line(error, path, "sklearn.tree._tree.Tree", 'trusted_types = ["sklearn.tree._tree.Tree"]', "only for a file you trust")
    with pytest.raises(ModelError, match="sklearn.tree._tree.Tree"):  # trusting another type does not trust this one
        load_tree_model("skops", path, x.shape[1:], ["numpy.float64"])
    assert_same_probabilities("skops", path, x, model.predict_proba(x), ("sklearn.tree._tree.Tree",))


def test_skops_files_that_are_no_classifier_or_unfitted_are_refused(cancer, tmp_path):
    library("skops")
    from sklearn.linear_model import LinearRegression, LogisticRegression

    x, y = cancer
    regressor = save("skops", LinearRegression().fit(x, y), tmp_path / "regressor.skops")
    with pytest.raises(ModelError) as error:
        load_tree_model("skops", regressor, x.shape[1:])
    assert_one_line(error, regressor, "holds a LinearRegression, which has no predict_proba")
    unfitted = save("skops", LogisticRegression(), tmp_path / "unfitted.skops")
    with pytest.raises(ModelError) as error:
        load_tree_model("skops", unfitted, x.shape[1:])
    assert_one_line(error, unfitted, "unfitted LogisticRegression")


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_a_regression_booster_is_refused_naming_its_objective(kind, cancer, tmp_path):
    lib = library(kind)
    x, y = cancer
    regressor = lib.XGBRegressor(n_estimators=3, nthread=1) if kind == "xgboost" else lib.LGBMRegressor(n_estimators=3, verbose=-1)
    path = save(kind, regressor.fit(x, y.astype(float)), tmp_path / f"regressor.{SUFFIX[kind]}")
    with pytest.raises(ModelError) as error:
        load_tree_model(kind, path, x.shape[1:])
    objective = "reg:squarederror" if kind == "xgboost" else "regression"
    assert_one_line(error, path, f"with objective {objective} gives no class probabilities")


@pytest.mark.parametrize("kind", TREE_KINDS)
def test_without_the_extra_the_error_says_how_to_install_it(kind, tmp_path, monkeypatch):
    path = tmp_path / "model.bin"
    path.write_bytes(b"{}")
    monkeypatch.setitem(sys.modules, LIBRARIES[kind], None)
    with pytest.raises(ModelError, match=rf"kind = \"{kind}\" needs the trees extra: pip install 'kansa\[trees\]'"):
        load_tree_model(kind, path, (30,))


def test_a_model_for_other_classes_is_refused_by_the_output_check(iris, cancer, tmp_path):
    """A 3-class booster on 2-class data with the same feature count: the shape check before any attack names both."""
    x, y = iris
    save("lightgbm", small_model("lightgbm", x, y), tmp_path / "iris.txt")
    loaded = load_model({"kind": "lightgbm", "path": "iris.txt"}, tmp_path, x[:8])
    with pytest.raises(ModelError, match=r"returns \(8, 3\) for a batch of 8; expected \(8, 2\) for 2 classes"):
        detect_output(loaded.module, x[:8], 2, "auto", "team")


# --- as Kansa wraps it ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TREE_KINDS)
def test_kansa_wraps_each_kind_as_a_gradient_free_probability_module(kind, cancer, tmp_path):
    from audit.models import validate_model_config

    x, y = cancer
    save(kind, small_model(kind, x[:300], y[:300]), tmp_path / f"a.{SUFFIX[kind]}")
    save(kind, small_model(kind, x[300:], y[300:]), tmp_path / f"b.{SUFFIX[kind]}")
    cfg = validate_model_config({"kind": kind, "path": f"a.{SUFFIX[kind]}"}, Location("audit.toml", "models[0]"))
    loaded = load_model(cfg, tmp_path, x[:50])
    assert detect_output(loaded.module, x[:8], 2, "probabilities", "team") == "probabilities"
    probe = torch.from_numpy(x[:4]).requires_grad_()
    with torch.enable_grad():
        assert not loaded.module(probe).requires_grad  # so Kansa marks gradient attacks not applicable
    (row,) = loaded.rows
    assert row["metric"] == "gradient_free" and row["value"] == 1
    assert f"runs through {'scikit-learn' if kind == 'skops' else kind}" in row["message"]
    assert row["message"].endswith("so attacks that need gradients do not apply to it")
    other = load_model({**cfg, "path": f"b.{SUFFIX[kind]}"}, tmp_path, x[:50])
    assert module_digest(loaded.module) != module_digest(other.module)  # every cache key differs between files


def test_trusted_types_belong_to_skops_only():
    from audit.errors import ConfigError
    from audit.models import validate_model_config

    where = Location("audit.toml", "models[0]")
    assert validate_model_config({"kind": "skops", "path": "m.skops"}, where)["trusted_types"] == []
    with pytest.raises(ConfigError, match="trusted_types"):
        validate_model_config({"kind": "xgboost", "path": "m.json", "trusted_types": ["x"]}, where)


# --- the exact attack on a decision tree ---------------------------------------------------------

TREE_TYPE = ("sklearn.tree._tree.Tree",)


def tree_target(model: Any, x: np.ndarray, tmp_path: Path, n_classes: int = 2) -> Any:
    """A skops file of `model`, loaded and wrapped as Kansa audits it."""
    save("skops", model, tmp_path / "model.skops")
    loaded = load_model({"kind": "skops", "path": "model.skops", "trusted_types": list(TREE_TYPE)}, tmp_path, x[:8])
    return as_target(loaded.module, x, n_classes)


def as_target(module: torch.nn.Module, x: np.ndarray, n_classes: int) -> Any:
    from audit.models import make_target

    data = SimpleNamespace(input_shape=x.shape[1:], n_classes=n_classes, input_range=(0.0, 1.0))
    return make_target(module, data, "probabilities", "team")


def exact_flips(norm: str, target: Any, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kansa's attack: whether each correctly classified sample is flipped, and by how much in `norm`."""
    from attacks.minimum_norm import DecisionTree

    x_adv = DecisionTree(norm=norm).minimize(target, x, y)
    size = np.abs(x_adv - x).max(axis=1) if norm == "inf" else np.linalg.norm(x_adv - x, axis=1)
    return target.predict(x) == y, target.predict(x_adv) != y, size


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_no_point_of_a_dense_grid_flips_a_tree_closer_than_the_decision_tree_attack(norm, iris, tmp_path):
    """On two features the whole input square can be searched: the attack's point flips the tree, and no grid point nearer does."""
    from sklearn.tree import DecisionTreeClassifier

    x, y = iris[0][:, 2:], iris[1]
    target = tree_target(DecisionTreeClassifier(max_depth=5, random_state=0).fit(x, y), x, tmp_path, n_classes=3)
    correct, flipped, size = exact_flips(norm, target, x, y)
    assert flipped[correct].all()
    axis = np.linspace(0, 1, 301, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    grid_class = target.predict(grid)
    for sample in np.flatnonzero(correct):
        other = grid[grid_class != y[sample]] - x[sample]
        nearest = (np.abs(other).max(axis=1) if norm == "inf" else np.linalg.norm(other, axis=1)).min()
        assert size[sample] <= nearest + 1e-6, (sample, size[sample], nearest)


def test_the_decision_tree_attack_is_at_least_as_strong_as_arts_on_every_sample(cancer, tmp_path):
    """ART's DecisionTreeAttack (Papernot et al.) is the independent implementation: each of its flips is one the exact attack beats or ties."""
    from art.attacks.evasion import DecisionTreeAttack
    from art.estimators.classification.scikitlearn import ScikitlearnDecisionTreeClassifier
    from sklearn.tree import DecisionTreeClassifier

    x, y = cancer
    tree = DecisionTreeClassifier(max_depth=6, random_state=0).fit(x[:400], y[:400])
    target = tree_target(tree, x, tmp_path)
    correct, flipped, size = exact_flips("inf", target, x[400:], y[400:])
    art_adv = DecisionTreeAttack(ScikitlearnDecisionTreeClassifier(tree, clip_values=(0, 1)), verbose=False).generate(x[400:])
    art_flipped = correct & (tree.predict(art_adv) != y[400:])
    art_size = np.abs(art_adv - x[400:]).max(axis=1)
    assert art_flipped.sum() > 100 and flipped[art_flipped].all()
    assert (size[art_flipped] <= art_size[art_flipped] + 1e-6).all()
    assert np.median(size[art_flipped]) < np.median(art_size[art_flipped])


def test_the_decision_tree_attack_applies_only_where_it_reads_one_tree(cancer, tmp_path):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    from attacks.minimum_norm import DecisionTree
    from audit.models import normalized

    x, y = cancer
    attack = DecisionTree()
    tree = tree_target(DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y), x, tmp_path)
    assert attack.inapplicable(tree) is None
    forest = tree_target(RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(x, y), x, tmp_path)
    assert "team is a RandomForestClassifier" in attack.inapplicable(forest)
    wrapped = normalized(tree.module.inner, {"mean": 0.5, "std": 2.0}, (30,), "team")  # a model that is no longer the tree
    assert "has none to read" in attack.inapplicable(as_target(wrapped, x, 2))


# --- end to end: the audit of an overfit XGBoost model with declared roles -----------------------

# The 8 breast_cancer features that tell the classes apart least. On all 30, boosting is as confident on
# non-members as on members and the loss attack's AUC stays near 0.5; here the deep trees memorise.
WEAK_FEATURES = ["texture error", "mean fractal dimension", "smoothness error", "symmetry error",
                 "fractal dimension error", "worst fractal dimension", "mean symmetry", "mean smoothness"]
RUN = """
[data]
scale = "minmax"
[data.train]
source = "csv"
path = "train.csv"
label_column = "diagnosis"
[data.holdout]
source = "csv"
path = "holdout.csv"
label_column = "diagnosis"
[data.test]
source = "csv"
path = "test.csv"
label_column = "diagnosis"
[evaluation]
samples = 60
[history]
enabled = false
[[models]]
name = "team"
kind = "xgboost"
path = "booster.json"
[[attacks]]
name = "hopskipjump"
eps = [0.1, 0.3]
steps = 3
max_queries = 50
[[attacks]]
name = "transfer"
eps = [0.1]
steps = 5
[[attacks]]
name = "fgsm"
eps = [0.1]
[[attacks]]
name = "mia_loss"
bootstrap = 20
[[attacks]]
name = "mia_confidence"
bootstrap = 20
[[attacks]]
name = "mia_black_box"
bootstrap = 20
"""


def _rows(table: pd.DataFrame, attack: str, metric: str) -> pd.DataFrame:
    return table[(table["attack"] == attack) & (table["metric"] == metric) & (table["subset"] == "all")]


def test_kansa_audits_an_overfit_xgboost_model_with_declared_roles(tmp_path):
    xgb = library("xgboost")
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    from audit import run_audit

    data = load_breast_cancer(as_frame=True)
    frame = data.data[WEAK_FEATURES].assign(diagnosis=data.target)
    train, rest = train_test_split(frame, train_size=250, stratify=frame["diagnosis"], random_state=0)
    holdout, test = train_test_split(rest, train_size=160, stratify=rest["diagnosis"], random_state=0)
    for name, part in (("train", train), ("holdout", holdout), ("test", test)):
        part.to_csv(tmp_path / f"{name}.csv", index=False)
    scaled = minmax(pd.concat([train, holdout, test])[WEAK_FEATURES].to_numpy())  # Kansa's scale, over all roles
    model = xgb.XGBClassifier(n_estimators=60, max_depth=10, learning_rate=0.3, nthread=1, random_state=0)
    model.fit(scaled[: len(train)], train["diagnosis"].to_numpy())
    model.save_model(str(tmp_path / "booster.json"))
    (tmp_path / "audit.toml").write_text(RUN, encoding="utf-8")

    start = time.perf_counter()
    result = run_audit(tmp_path / "audit.toml", out_dir=tmp_path / "run")
    seconds = time.perf_counter() - start
    table = result.table
    errors = table[table["status"] == "error"]
    assert errors.empty, errors[["attack", "metric", "message"]].to_string()

    test_x = scaled[len(train) + len(holdout):]
    accuracy = table.query("metric == 'accuracy' and subset == 'split=test'")["value"].iloc[0]
    assert accuracy == pytest.approx((model.predict(test_x) == test["diagnosis"].to_numpy()).mean())  # the scales agree
    for attack in ("hopskipjump", "transfer"):
        robust = _rows(table, attack, "robust_accuracy")
        assert len(robust) and (robust["status"] == "ok").all(), attack
    fgsm = table[table["attack"] == "fgsm"]
    assert (fgsm["status"] == "not_applicable").all() and "needs the model's gradients" in fgsm.iloc[0]["message"]
    for attack in ("mia_loss", "mia_confidence", "mia_black_box"):
        auc = _rows(table, attack, "auc")
        assert len(auc) == 1 and auc["status"].iloc[0] == "ok", attack
    assert _rows(table, "mia_loss", "auc")["value"].iloc[0] >= 0.55  # the deep trees memorised their members
    free = table[table["metric"] == "gradient_free"].iloc[0]
    assert free["value"] == 1 and "runs through xgboost" in free["message"] and "binary:logistic, 60 rounds" in free["message"]
    print(f"audit of the XGBoost model: {seconds:.1f} s")


TREE_RUN = """
[data]
source = "csv"
path = "cancer.csv"
label_column = "diagnosis"
scale = "minmax"
[evaluation]
samples = 80
[history]
enabled = false
[[models]]
name = "tree"
kind = "skops"
path = "tree.skops"
trusted_types = ["sklearn.tree._tree.Tree"]
[[models]]
name = "forest"
kind = "skops"
path = "forest.skops"
trusted_types = ["sklearn.tree._tree.Tree"]
[[attacks]]
name = "decision_tree"
eps = [0.05, 0.1, 0.2]
[[attacks]]
name = "hopskipjump"
norm = "inf"
eps = [0.05, 0.1, 0.2]
steps = 3
max_queries = 50
"""


def test_kansa_audits_a_decision_tree_exactly_and_a_forest_without_the_tree_attack(tmp_path):
    """The exact attack is the worst case: the ensemble equals it, and HopSkipJump never beats it."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    from audit import run_audit

    data = load_breast_cancer(as_frame=True)
    data.data.assign(diagnosis=data.target).to_csv(tmp_path / "cancer.csv", index=False)
    x, y = minmax(data.data.to_numpy()), data.target.to_numpy()
    save("skops", DecisionTreeClassifier(max_depth=6, random_state=0).fit(x, y), tmp_path / "tree.skops")
    save("skops", RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, y), tmp_path / "forest.skops")
    (tmp_path / "audit.toml").write_text(TREE_RUN, encoding="utf-8")
    table = run_audit(tmp_path / "audit.toml", out_dir=tmp_path / "run").table
    assert table[table["status"] == "error"].empty

    def robust(model: str, attack: str) -> pd.Series:
        rows = _rows(table[table["model"] == model], attack, "robust_accuracy")
        return rows.set_index("param_value")["value"]

    exact, hop, ensemble = robust("tree", "decision_tree"), robust("tree", "hopskipjump"), robust("tree", "ensemble")
    assert list(exact.index) == [0.05, 0.1, 0.2] and (exact <= hop).all()
    pd.testing.assert_series_equal(ensemble, exact, check_names=False)
    assert exact.loc[0.2] < exact.loc[0.05]
    forest = table[(table["model"] == "forest") & (table["attack"] == "decision_tree")]
    assert (forest["status"] == "not_applicable").all() and "forest is a RandomForestClassifier" in forest.iloc[0]["message"]
    assert len(robust("forest", "ensemble")) == 3  # the forest's gates rest on the attack that did apply
    assert "decision_tree" in (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
