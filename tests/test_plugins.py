"""A third-party attack installed through the entry-point group is a peer of the built-in ones.

The plugin (`tests/plugin/kansa_confidence_gap.py`) subclasses `Attack` directly and declares one
new metric; nothing in Kansa knows its name. It is installed as a distribution would install it
(an `entry_points.txt` on the path), and `kansa` runs in a fresh process that discovers it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import write

KANSA = Path(sys.executable).parent / "kansa"
PLUGIN = Path(__file__).parent / "plugin"

AUDIT = """
title = "plugin audit"
seed = 1

[data]
source = "digits"

[[models]]
name = "mlp"
architecture = "mlp"
epochs = 3

[evaluation]
samples = 40

[[attacks]]
name = "confidence_gap"
samples = 150

[[gates]]
id = "gap-ceiling"
metric = "confidence_gap"
op = "<="
threshold = 0.9

[[gates]]
id = "gap-impossible"
metric = "confidence_gap"
op = "<="
threshold = -0.9
"""


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("site")
    info = site / "kansa_confidence_gap-1.0.dist-info"
    write(info / "METADATA", "Metadata-Version: 2.1\nName: kansa-confidence-gap\nVersion: 1.0\n")
    write(info / "entry_points.txt", "[kansa.attacks]\nconfidence_gap = kansa_confidence_gap:ConfidenceGap\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(PLUGIN), os.environ.get("PYTHONPATH", "")])}


def kansa(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KANSA), *args], capture_output=True, text=True, env=env)


def test_plugin_attack_and_its_metric_are_listed(plugin_env):
    listed = kansa(plugin_env, "list")
    assert listed.returncode == 0, listed.stderr
    assert "confidence_gap" in listed.stdout and "(a plugin)" in listed.stdout
    assert "  decision_tree  [integrity, structure]  " in listed.stdout and "  square  [integrity, scores, randomised]  " in listed.stdout
    metrics = kansa(plugin_env, "list", "--metrics")
    assert "| `confidence_gap` |" in metrics.stdout and "mean top-1 confidence on members minus on non-members" in metrics.stdout


def test_plugin_attack_runs_in_an_audit_is_reported_and_gated(plugin_env, tmp_path):
    config = write(tmp_path / "audit.toml", AUDIT)
    done = kansa(plugin_env, "run", str(config), "--out", str(tmp_path / "o"), "--quiet")
    assert done.returncode == 1, done.stderr  # one gate fails
    table = pd.read_csv(tmp_path / "o" / "results.csv", keep_default_na=False)
    rows = table[table["metric"] == "confidence_gap"]
    assert list(rows["attack"]) == ["confidence_gap"] and list(rows["category"]) == ["confidentiality"]
    gap = float(rows["value"].iloc[0])
    assert -1.0 <= gap <= 1.0 and float(rows["ci_low"].iloc[0]) < gap < float(rows["ci_high"].iloc[0])
    assert int(rows["n"].iloc[0]) == 300

    checks = {c["gate"]: c["verdict"] for c in json.loads((tmp_path / "o" / "gates.json").read_text())["checks"]}
    assert checks == {"gap-ceiling": "pass", "gap-impossible": "fail"}

    html = (tmp_path / "o" / "report.html").read_text()
    panel = html[html.index('<section id="S">'):]
    panel = panel[:panel.index('</section>')]
    assert "confidence_gap" in panel and "mean top-1 confidence on members minus on non-members" in panel
    assert f"{gap:.3f}" in panel
