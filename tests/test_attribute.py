"""Attribute inference counts as leakage only beyond what the record's other features already reveal."""

from __future__ import annotations

import pytest
import torch

from attacks.attribute import AttributeInference
from attacks.base import AttackContext
from audit.data import split_dataset
from audit.errors import KansaError
from audit.models import build_builtin, make_target, train
from tests.privacy_fixtures import MLP, row, synthetic_tabular


def _audit(s_drives_label: bool, **params):
    dataset = synthetic_tabular(s_drives_label=s_drives_label)
    splits = split_dataset(dataset, [0.4, 0.3, 0.3], seed=0)
    cfg = {**MLP, "hidden": [64], "epochs": 30, "learning_rate": 1e-2}
    torch.manual_seed(0)
    module = build_builtin(cfg, dataset.input_shape, dataset.n_classes, dataset.is_image)
    train(module, dataset.x[splits.train], dataset.y[splits.train], cfg, seed=0, progress=False, label="mlp")
    target = make_target(module, dataset, "logits", "mlp")
    context = AttackContext(3, dataset.class_names, dataset, splits, None)
    return AttributeInference(**{"feature": 2, **params}).run(target, None, None, context), target, context


@pytest.fixture(scope="module")
def leaky():
    return _audit(True)


@pytest.mark.parametrize("split", ["train", "holdout"])
def test_a_model_whose_label_depends_on_the_feature_gives_it_away(leaky, split):
    output, _, _ = leaky
    subset = f"split={split}"
    attack = row(output.rows, "attribute_accuracy", subset=subset)["value"]
    assert attack > row(output.rows, "attribute_accuracy_baseline", subset=subset)["value"] + 0.15
    assert attack > row(output.rows, "attribute_accuracy_majority", subset=subset)["value"] + 0.15
    assert row(output.rows, "attribute_gain", subset=subset)["ci_low"] > 0
    assert row(output.rows, "feature_values")["value"] == 2


def test_no_gain_when_the_model_does_not_use_the_feature():
    output, _, _ = _audit(False)
    gain = row(output.rows, "attribute_gain", subset="split=train")
    assert gain["ci_low"] < 0.05 and gain["value"] < 0.1


def test_unusable_features_are_refused_with_the_reason(leaky, digits):
    _, target, context = leaky
    with pytest.raises(KansaError, match="out of range"):
        AttributeInference(feature=6).run(target, None, None, context)
    with pytest.raises(KansaError, match="categorical"):
        AttributeInference(feature=0).run(target, None, None, context)
    dataset, splits, image_target = digits
    with pytest.raises(KansaError, match="tabular"):
        AttributeInference(feature=0).run(image_target, None, None, AttackContext(0, dataset.class_names, dataset, splits, None))


TABULAR_AUDIT = """
title = "attribute by name"
seed = 1

[data]
source = "csv"
path = "records.csv"
label_column = "label"

[[models]]
name = "mlp"
architecture = "mlp"
hidden = [64]
epochs = 20

[checks]
enabled = false

[[attacks]]
name = "attribute_inference"
feature = {feature}
members = 200
"""


def test_the_sensitive_feature_is_named_by_its_column_in_a_csv_source(tmp_path):
    import pandas as pd

    from audit import run_audit
    from audit.errors import ConfigError
    from tests.conftest import write

    dataset = synthetic_tabular(n=1200)
    columns = ["income", "age", "sex", "tenure", "score", "visits"]
    pd.DataFrame(dataset.x, columns=columns).assign(label=dataset.y).to_csv(tmp_path / "records.csv", index=False)

    def attribute_rows(feature: str):
        result = run_audit(write(tmp_path / "audit.toml", TABULAR_AUDIT.format(feature=feature)), history=False)
        rows = result.table[result.table.attack == "attribute_inference"]
        return rows[rows.category == "confidentiality"][["metric", "subset", "value"]].reset_index(drop=True)

    by_name = attribute_rows('"sex"')
    assert len(by_name) and by_name.value.notna().all()
    pd.testing.assert_frame_equal(by_name, attribute_rows("2"))  # the same column by index
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.feature.*no feature 'gender'.*income, age, sex"):
        run_audit(write(tmp_path / "audit.toml", TABULAR_AUDIT.format(feature='"gender"')), history=False)
