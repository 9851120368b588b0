"""Outputs: the table's schema, JSON/CSV round trips, a self-contained escaped report, the CLI end to end."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit import run_audit
from audit.cli import main
from audit.results import COLUMNS, SCHEMA_VERSION, TIMING_CATEGORIES
from tests.conftest import SMALL_AUDIT, write

KANSA = Path(sys.executable).parent / "kansa"


def test_table_is_tidy_and_covers_every_cell(small_run):
    table = small_run.table
    assert list(table.columns) == COLUMNS
    assert set(table["category"]) == {"data_quality", "performance", "integrity", "sanity", "cost"}
    robust = small_run.metric("robust_accuracy", subset="all")
    assert sorted(zip(robust["attack"], robust["param_value"])) == [
        ("ensemble", 0.05), ("ensemble", 0.1), ("ensemble", 0.2),
        ("fgsm", 0.05), ("fgsm", 0.1), ("fgsm", 0.2), ("pgd", 0.05), ("pgd", 0.1), ("pgd", 0.2)
    ]
    assert (robust["n"] == 200).all() and (robust["defense"] == "none").all()
    assert not table.duplicated(["model", "defense", "attack", "param_value", "subset", "metric"]).any()


def test_results_json_and_csv_round_trip(small_run):
    out = small_run.out_dir
    document = json.loads((out / "results.json").read_text())
    assert document["schema"] == SCHEMA_VERSION
    assert len(document["results"]) == len(small_run.table)
    meta = document["metadata"]
    for key in ("config_sha256", "seed", "versions", "cells", "run_id"):
        assert key in meta
    assert re.fullmatch(r"[0-9a-f]{64}", meta["data"]["sha256"]) and re.fullmatch(r"[0-9a-f]{64}", meta["models"][0]["sha256"])
    assert {"python", "torch", "adversarial-robustness-toolbox", "numpy", "kansa"} <= set(meta["versions"])
    csv = pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""])
    assert list(csv.columns) == COLUMNS
    np.testing.assert_allclose(csv["value"].to_numpy(), small_run.table["value"].to_numpy(), equal_nan=True)
    assert not list(out.glob(".*.tmp")) and not list((out / "artifacts").glob(".*.tmp"))


REPORT_SECTIONS = ("scorecard", "A-1", "A-2", "B-1", "B-2", "B-3", "C-1", "C-2", "D-1", "E-1", "S", "diagnostics", "appendix")


@pytest.mark.parametrize("lang, phrase, foreign", [("en", "Evidence checklist", "証拠チェックリスト"), ("ja", "証拠チェックリスト", "Evidence checklist")])
def test_report_is_self_contained_in_both_languages(small_run, lang, phrase, foreign):
    assert main(["report", str(small_run.out_dir), "--lang", lang]) == 0
    html = (small_run.out_dir / ("report.html" if lang == "en" else "report.ja.html")).read_text()
    assert not re.search(r"(?:https?:|ftp:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.IGNORECASE)
    assert not re.search(r"<(script|link|iframe)\b", html, re.IGNORECASE)
    sources = re.findall(r'<img [^>]*src="([^"]*)"', html)
    assert len(sources) == 4  # robustness curve, per-class heatmap, one gallery per attack cell
    assert all(s.startswith("data:image/png;base64,") and len(s) > 1000 for s in sources)
    for section in REPORT_SECTIONS:
        assert f'<section id="{section}">' in html
    assert html.count("class=\"light light-") >= 2 * 10  # a light per characteristic, on the scorecard and in its section
    assert phrase in html and foreign not in html
    assert f'<html lang="{lang}">' in html


def test_re_rendering_a_run_reproduces_its_report(small_run, tmp_path):
    original = (small_run.out_dir / "report.html").read_text()
    copy = tmp_path / "copy"
    shutil.copytree(small_run.out_dir, copy)
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.html").read_text() == original


def test_user_text_cannot_inject_markup(tmp_path):
    hostile_class = "<script>alert(1)</script>"
    hostile_model = "<img src=x onerror=alert(2)>"
    classes = json.dumps([hostile_class] + [str(i) for i in range(1, 10)])
    text = (
        SMALL_AUDIT.replace('source = "digits"', f'source = "digits"\nclasses = {classes}')
        .replace('name = "cnn"', f'name = "{hostile_model}"')
        .replace("epochs = 15", "epochs = 1")
        .replace("samples = 200", "samples = 30")
        .replace('title = "test audit"', 'title = "</title><script>x()</script>"')
    )
    text += (
        '\n[component]\nname = "<svg onload=alert(3)>"\nintended_use = "<iframe src=javascript:alert(4)>"\n'
        '\n[[attestations]]\ncharacteristic = "A-1"\nstatement = "<script>alert(5)</script>"\nowner = "<b>me</b>"\n'
    )
    result = run_audit(write(tmp_path / "audit.toml", text), out_dir=tmp_path / "out")
    assert main(["report", str(result.out_dir), "--lang", "ja"]) == 0
    for name in ("report.html", "report.ja.html"):
        html = (result.out_dir / name).read_text()
        assert "<script" not in html and "<img src=x" not in html and "<svg" not in html and "<iframe" not in html and "<b>me" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "&lt;img src=x onerror=alert(2)&gt;" in html
        assert "&lt;svg onload=alert(3)&gt;" in html and "&lt;script&gt;alert(5)&lt;/script&gt;" in html
    summary = (result.out_dir / "summary.md").read_text()
    assert "<img" not in summary and "&lt;img src=x onerror=alert\\(2\\)&gt;" in summary


def test_same_config_and_seed_give_identical_numbers(small_config, small_run):
    again = run_audit(small_config)
    measured = ~small_run.table["category"].isin(TIMING_CATEGORIES)
    pd.testing.assert_frame_equal(
        small_run.table[measured].reset_index(drop=True), again.table[~again.table["category"].isin(TIMING_CATEGORIES)].reset_index(drop=True)
    )
    assert again.metadata.models[0].sha256 == small_run.metadata.models[0].sha256


def test_cli_run_end_to_end_and_input_errors(tmp_path):
    config = write(tmp_path / "audit.toml", SMALL_AUDIT.replace("epochs = 15", "epochs = 1").replace("samples = 200", "samples = 20"))
    done = subprocess.run([str(KANSA), "run", str(config), "--out", str(tmp_path / "o"), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"report:  {tmp_path / 'o' / 'report.html'}" in done.stdout
    assert done.stderr == ""
    bad = write(tmp_path / "bad.toml", SMALL_AUDIT.replace("steps = 10", "steps = -1"))
    done = subprocess.run([str(KANSA), "run", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == f"kansa: error: {bad}: attacks[1].steps: expected an integer in [1, 10000], got -1\n"
    done = subprocess.run([str(KANSA), "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and re.fullmatch(r"kansa \d+\.\d+\.\d+\n", done.stdout)
