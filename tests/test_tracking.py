"""Each audit as an MLflow run, read back through MLflow's own client; an unreachable tracking server loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import write

pytest.importorskip("mlflow")

AUDIT = """
title = "tracked"
seed = 1
[data]
source = "digits"
[evaluation]
samples = 40
strong_l2_attacks = false
[checks]
enabled = false
[[models]]
name = "m"
kind = "torchscript"
path = "m.ts"
[[attacks]]
name = "fgsm"
eps = [0.1]
[component]
guideline_edition = "3rd"
"""
GATE = """
[[gates]]
id = "clean"
metric = "accuracy"
subset = "split=test"
threshold = 0.0
"""


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "m.ts"
    torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()).save(str(path))
    return path


def audit(tmp_path: Path, name: str, model_file: Path, text: str, **options):
    from audit import run_audit

    folder = tmp_path / name
    folder.mkdir()
    (folder / "m.ts").write_bytes(model_file.read_bytes())
    return run_audit(write(folder / "audit.toml", AUDIT + text), folder / "run", history=False, **options)


def test_each_audit_is_an_mlflow_run_and_the_gated_release_is_found_by_tag(tmp_path, model_file, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores behind this switch
    store = (tmp_path / "mlruns").as_uri()
    tracking = f'\n[tracking]\nmlflow = {{ uri = "{store}", experiment = "releases" }}\n'
    release = audit(tmp_path, "release", model_file, GATE + tracking)
    audit(tmp_path, "ungated", model_file, "", mlflow=store)  # --mlflow: into the default experiment "kansa"
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("releases")
    found = client.search_runs([experiment.experiment_id], "tags.`kansa.gated` = 'true' and tags.`kansa.verdict` = 'pass'")
    assert len(found) == 1
    run = found[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    tags = run.data.tags
    assert tags["kansa.models"] == "m" and tags["kansa.guideline_edition"] == "3rd" and tags["kansa.gate.clean"] == "pass"
    assert tags["kansa.run_id"] == release.metadata.run_id
    params = run.data.params
    assert params["config_sha256"] == release.metadata.config_sha256 and params["models.0.kind"] == "torchscript"
    assert params["attacks.0.params.eps"] == "[0.1]" and params["weights_sha256.m"] == release.metadata.variants[0].sha256
    table = release.table
    robust = table[(table.metric == "robust_accuracy") & (table.attack == "fgsm") & (table.subset == "all")].value.iloc[0]
    clean = table[(table.metric == "accuracy") & (table.subset == "split=test")].value.iloc[0]
    metrics = run.data.metrics
    assert metrics["m/robust_accuracy/fgsm/0.1"] == pytest.approx(robust) and metrics["m/accuracy"] == pytest.approx(clean)
    assert metrics["gates_pass"] == 1 and metrics["gates_fail"] == 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "results.json", "junit.xml", "summary.md"} <= artifacts
    ungated = client.search_runs([client.get_experiment_by_name("kansa").experiment_id])
    assert [r.data.tags["kansa.gated"] for r in ungated] == ["false"]
    assert (release.table.metric != "tracking_failed").all()


def test_an_unreachable_tracking_server_still_writes_every_output_and_says_why(tmp_path, model_file, capsys):
    tracking = '\n[tracking]\nmlflow = { uri = "http://127.0.0.1:9", retries = 0, timeout = 2 }\n'
    result = audit(tmp_path, "offline", model_file, GATE + tracking)
    run = tmp_path / "offline" / "run"
    assert all((run / name).is_file() for name in ("report.html", "results.json", "results.csv", "junit.xml", "summary.md"))
    (row,) = result.table[result.table.metric == "tracking_failed"].itertuples()
    assert row.value == 1.0 and "could not be logged to MLflow at http://127.0.0.1:9" in row.message
    rows = json.loads((run / "results.json").read_text())["results"]
    assert any(r["metric"] == "tracking_failed" for r in rows)
    assert "could not be logged to MLflow" in capsys.readouterr().err
    assert set(result.gates.verdict) == {"pass"}  # the audit's own verdict does not change


def test_a_tracking_uri_with_credentials_is_refused(tmp_path):
    from audit.config import load_config
    from audit.errors import ConfigError

    text = AUDIT + '\n[tracking]\nmlflow = { uri = "https://user:secret@mlflow.example.com" }\n'
    with pytest.raises(ConfigError, match=r"tracking.mlflow.uri: holds credentials.*MLFLOW_TRACKING_TOKEN"):
        load_config(write(tmp_path / "audit.toml", text))
