"""Tabular and binary tasks, the most common models in industry: the defects first found there stay fixed.

Each test failed before its fix: a tabular membership report crashed on a dict key named like a
dict method, AutoAttack crashed on two classes, Square and image-only defenses failed halfway
through a tabular run, and rounding changed decisions by resolving ties to the first class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from attacks.base import AttackContext
from audit.cli import main
from audit.config import check_against_data, load_config
from audit.data import load_dataset, split_dataset
from audit.errors import ConfigError
from audit.models import build_builtin, make_target, train
from tests.conftest import write
from tests.privacy_fixtures import MLP

TABULAR = """
seed = 0
[data]
source = "breast_cancer"
[[models]]
name = "mlp"
epochs = 40
[evaluation]
samples = 60
"""


@pytest.fixture(scope="module")
def cancer():
    """breast_cancer (binary, tabular) and an MLP trained on it outside Kansa's pipeline."""
    cfg = {"source": "breast_cancer", "input_range": [0.0, 1.0], "scale": "auto", "max_samples": None, "classes": None, "split": [0.6, 0.2, 0.2]}
    dataset = load_dataset(cfg, Path("."), seed=0)
    splits = split_dataset(dataset, cfg["split"], seed=0)
    model = {**MLP, "epochs": 40}
    torch.manual_seed(0)
    module = build_builtin(model, dataset.input_shape, dataset.n_classes, dataset.is_image)
    train(module, dataset.x[splits.train], dataset.y[splits.train], model, seed=0, progress=False, label="mlp")
    return dataset, splits, make_target(module, dataset, "logits", "mlp")


def test_a_tabular_membership_audit_renders_the_most_exposed_training_rows(tmp_path: Path):
    from audit import run_audit

    config = write(tmp_path / "audit.toml", TABULAR + '[[attacks]]\nname = "mia_loss"\nbootstrap = 50\n')
    result = run_audit(config, out_dir=tmp_path / "run")
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    (artifact,) = [a for a in result.artifacts.values() if "exposed_index" in a]
    rows = [int(i) for i in artifact["exposed_index"]]
    assert rows and "Dataset row" in html
    for index, score in zip(rows, artifact["exposed_score"]):
        assert f'<td class="num">#{index}</td>' in html and f"{score:.3g}" in html
    assert "built-in method" not in html


def test_template_keys_named_like_dict_methods_render_their_values():
    from reports.templating import template_environment

    template = template_environment().from_string("{{ a.items | join(',') }} {{ a.values }} {% for k, v in b.items() %}{{ k }}={{ v }}{% endfor %}")
    assert template.render(a={"items": ["#3", "#7"], "values": 12}, b={"x": 1}) == "#3,#7 12 x=1"


def test_autoattack_on_two_classes_runs_the_stages_defined_for_them_and_says_which_it_left_out(cancer):
    from attacks.autoattack import AutoAttack

    dataset, splits, target = cancer
    x, y = dataset.x[splits.test][:60], dataset.y[splits.test][:60]
    output = AutoAttack(eps=[0.1], steps=10).run(target, x, y, AttackContext(0, dataset.class_names))
    (row,) = [r for r in output.rows if r["metric"] == "robust_accuracy" and r.get("subset", "all") == "all"]
    clean = next(r for r in output.rows if r["metric"] == "clean_accuracy")
    assert row["value"] < clean["value"]  # the APGD-CE stage did attack
    assert "without APGD-T" in row["message"] and "without Square" in row["message"] and "overstated" in row["message"]


@pytest.mark.parametrize("extra, key, reason", [
    ('[[attacks]]\nname = "apgd"\nloss = "dlr"\n', "attacks[0].loss", "needs at least 3 classes"),
    ('[[attacks]]\nname = "square"\n', "attacks[0]", "attack square does not apply to tabular data"),
    ('[[attacks]]\nname = "fgsm"\n[[defenses]]\nname = "spatial_smoothing"\n', "defenses[0]", "defense spatial_smoothing does not apply to tabular data"),
    ('[[attacks]]\nname = "fgsm"\n[[defenses]]\nname = "jpeg_compression"\n', "defenses[0]", "defense jpeg_compression does not apply to tabular data"),
    ('[[attacks]]\nname = "mia_label_only"\nmembers = 500\n', "attacks[0].members", "attack mia_label_only: members = 500"),
])
def test_pieces_that_cannot_work_on_the_data_are_refused_by_validate_naming_the_key(tmp_path: Path, capsys, extra, key, reason):
    path = write(tmp_path / "audit.toml", TABULAR + extra)
    assert main(["validate", str(path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"kansa: error: {path}: {key}: ") and reason in line, line


def test_a_refused_piece_stops_the_run_before_anything_is_trained(tmp_path: Path, capsys):
    path = write(tmp_path / "audit.toml", TABULAR + '[[attacks]]\nname = "fgsm"\n[[defenses]]\nname = "spatial_smoothing"\n')
    with pytest.raises(ConfigError, match="spatial_smoothing"):
        config = load_config(path)
        dataset = load_dataset(config.data, config.base_dir, 0)
        check_against_data(config, dataset, split_dataset(dataset, config.data["split"], 0))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "spatial_smoothing" in capsys.readouterr().err
    assert not (tmp_path / "run" / "results.json").exists()


def test_rounding_keeps_every_decision_and_still_rounds_what_it_reveals():
    from art.defences.postprocessor import Rounded

    from defenses.postprocessing import output_transform, prediction_change

    logits = torch.from_numpy(np.random.default_rng(0).normal(0, 1.5, (1000, 10)).astype(np.float32))
    model = torch.nn.Identity()
    with torch.no_grad():
        first_tied = output_transform(model, "logits", Rounded(decimals=1))(logits).exp().numpy()
        kept = output_transform(model, "logits", Rounded(decimals=1), keep_decisions=True)(logits).exp().numpy()
    assert prediction_change(logits.numpy(), first_tied) > 0.05  # ties resolved to the first class: the shipped defect
    assert prediction_change(logits.numpy(), kept) == 0
    np.testing.assert_allclose(kept, first_tied, rtol=2e-4, atol=1e-12)


def test_integrity_attacks_refuse_inputs_outside_the_declared_range(tmp_path: Path, capsys):
    """An attack clips to input_range, so around inputs outside it every 'adversarial example' lies beyond its eps ball."""
    path = write(tmp_path / "audit.toml", TABULAR.replace('source = "breast_cancer"', 'source = "breast_cancer"\nscale = "none"')
                 + '[[attacks]]\nname = "mia_loss"\n[[attacks]]\nname = "fgsm"\n')
    assert main(["validate", str(path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{path}: attacks[1]: attack fgsm cannot measure robustness" in line and "outside the declared input_range [0, 1]" in line
