"""Headlines a reader can use: robust accuracy at the threat model's eps, everywhere, and saying why that eps."""

from __future__ import annotations

import pandas as pd
import pytest

from audit.cli import main
from audit.config import load_config
from audit.errors import ConfigError
from reports.queries import headline_eps
from tests.conftest import write

AUDIT = """
title = "headline"
seed = 2
[data]
source = "digits"
[[models]]
name = "cnn"
epochs = 3
[evaluation]
samples = 120
threat_linf_eps = 0.1
[history]
enabled = false
[[attacks]]
name = "fgsm"
eps = [0.05, 0.1, 0.2, 0.3]
"""


def config_dict(tmp_path, text: str) -> dict:
    return load_config(write(tmp_path / "audit.toml", text)).validated()


@pytest.fixture(scope="module")
def declared_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("headline")
    config = write(folder / "audit.toml", AUDIT)
    return folder, config


def test_every_headline_reads_robust_accuracy_at_the_declared_eps_not_the_largest(declared_run, capsys):
    folder, config = declared_run
    assert main(["run", str(config), "--out", str(folder / "out"), "--quiet"]) == 0
    terminal = capsys.readouterr().out
    table = pd.read_csv(folder / "out" / "results.csv")
    at = table[(table["attack"] == "ensemble") & (table["metric"] == "robust_accuracy") & (table["subset"] == "all")].set_index("param_value")
    expected = at.loc[0.1]
    shown = f"{expected['value']:.3f} [{expected['ci_low']:.3f}, {expected['ci_high']:.3f}]"
    assert at.loc[0.3, "value"] < expected["value"]  # the largest eps would tell less

    summary = (folder / "out" / "summary.md").read_text(encoding="utf-8")
    assert "Robust accuracy at eps 0.1 \\(L∞\\)" in summary and shown in summary and "worst case over fgsm" in summary
    assert "the threat model declared in \\[evaluation\\] threat\\_linf\\_eps" in summary
    html = (folder / "out" / "report.html").read_text(encoding="utf-8")
    assert "Robust accuracy at eps 0.1 (L∞)" in html and shown in html and "threat model declared in [evaluation] threat_linf_eps" in html
    assert "robust @ eps 0.1 (L∞, over fgsm)" in terminal and shown in terminal and "report:  " in terminal


def test_without_a_declaration_the_headline_takes_a_gates_eps_or_the_middle_of_the_sweep_and_says_so(tmp_path):
    plain = AUDIT.replace("threat_linf_eps = 0.1\n", "")
    (middle,) = headline_eps(config_dict(tmp_path, plain))
    assert (middle.eps, middle.why) == (0.1, "middle") and middle.sweep == (0.05, 0.1, 0.2, 0.3)
    gated = plain + '[[gates]]\nid = "floor"\nmetric = "robust_accuracy"\nat = 0.2\nthreshold = 0.3\n'
    (gate,) = headline_eps(config_dict(tmp_path, gated))
    assert (gate.eps, gate.why, gate.source) == (0.2, "gate", "floor")
    from reports.i18n import translator

    assert "the eps gate floor judges; no threat model is declared" in gate.text(translator("en"))


def test_a_declared_eps_no_attack_measures_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path / "audit.toml", AUDIT.replace("threat_linf_eps = 0.1", "threat_linf_eps = 0.15")))
    message = str(error.value)
    assert "evaluation.threat_linf_eps" in message and "0.15 is not among the eps the L-inf attacks sweep (0.05, 0.1, 0.2, 0.3)" in message
