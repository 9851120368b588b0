"""The bad-input corpus: every file ends in exit 2 with one line naming the culprit, or in a recorded finding.

The corpus lives in tests/corpus (configs/, data/, models/; regenerate with tests/corpus/generate.py);
docs/bad-input.md is the user-facing table of the same cases.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from attacks.base import AttackContext
from attacks.evasion import FGSM
from audit.cli import main
from audit.files import write_bytes_atomic
from tests.conftest import SMALL_AUDIT, write

CONFIGS = Path(__file__).parent / "corpus" / "configs"

# corpus config -> the message fragment the one line on stderr must contain (exit code 2)
REFUSED = {
    "csv_ragged.toml": "ragged.csv: not a readable CSV file (Error tokenizing data",
    "csv_empty.toml": "empty.csv: not a readable CSV file (No columns to parse from file)",
    "csv_binary.toml": "binary.csv: not a readable CSV file",
    "csv_text_feature.toml": "text_feature.csv: feature column 'colour' is not numeric",
    "csv_missing_label.toml": "good.csv: no label column 'target' (columns: f1, f2, f3, f4, label)",
    "csv_missing_file.toml": "data file not found: ",
    "parquet_corrupt.toml": "corrupt.parquet: not a readable Parquet file",
    "parquet_truncated.toml": "truncated.parquet: not a readable Parquet file",
    "npz_truncated.toml": "truncated.npz: not a readable NPZ archive",
    "npz_object_array.toml": "object_array.npz: not a readable NPZ archive of numeric arrays (Object arrays cannot be loaded",
    "npz_missing_array.toml": "no_x.npz: no array 'x' (arrays: inputs, y)",
    "npz_length_mismatch.toml": "short_y.npz: arrays 'x' of shape (60, 4) and 'y' of shape (50,) must hold one label per sample",
    "idx_bad_magic.toml": "bad_magic.idx: not an IDX file (bad magic number 08030803)",
    "idx_wrong_count.toml": "wrong_count.idx: IDX header declares (60, 6, 6) (2160 bytes) but the file holds 2124",
    "idx_truncated_gzip.toml": "truncated.idx.gz: cannot read IDX file",
    "idx_label_count_mismatch.toml": "images.idx: 60 images but ",
    "shape_mismatch.toml": "good.csv: inputs of shape (4,) cannot be reshaped to image_shape [1, 3, 3]",
    "classes_mismatch.toml": "data.classes names 2 classes but the labels hold 3",
    "tiny_class.toml": "class '2' has 2 sample(s); a stratified train / hold-out / test split needs at least 3 per class",
    "single_class.toml": "the labels hold only one class",
    "all_nan.toml": "all_nan.csv: every sample holds a NaN or infinite value",
    "model_wrong_architecture.toml": "wrong_arch.pt: does not fit the architecture built by corpus_models:build",
    "model_whole_pickle_as_state_dict.toml": "whole_model.pt: holds pickled Python objects (a whole model?), which Kansa does not load",
    "model_pickle_not_allowed.toml": "models[0].allow_unsafe_pickle: a pickled model runs arbitrary code when loaded",
    "model_raises_in_forward.toml": "model 'user' fails on inputs of shape (1, 8, 8): ",
    "model_returns_nan.toml": "model 'user' returns NaN or infinite outputs",
    "model_wrong_output_shape.toml": "model 'user' returns (8, 3) for a batch of 8; expected (8, 10) for 10 classes",
    "model_wrong_input_shape.toml": "model 'user' fails on inputs of shape (1, 8, 8)",
    "model_garbage_file.toml": "garbage.pt: not a torch state_dict file",
    "model_pickle_as_torchscript.toml": "whole_model.pt: not a TorchScript file",
    "model_factory_module_missing.toml": "factory \"no_such_module:build\": cannot import 'no_such_module'",
    "model_missing_file.toml": "model file not found: ",
    "config_bad_syntax.toml": "config_bad_syntax.toml: invalid TOML",
    "config_duplicate_key.toml": "config_duplicate_key.toml: invalid TOML: Cannot overwrite a value",
    "config_bad.yaml": "config_bad.yaml: invalid YAML",
    "config_deeply_nested.toml": "config_deeply_nested.toml: invalid TOML: arrays or tables nested too deeply to parse",
    "config_deeply_nested.yaml": "config_deeply_nested.yaml: invalid YAML: nested too deeply to parse",
    "config_top_level_list.yaml": "config_top_level_list.yaml: expected a table of settings at the top level, got list",
    "config_not_utf8.toml": "config_not_utf8.toml: cannot read the file",
    "values_out_of_range.toml": "attacks[0]: attack fgsm cannot measure robustness on these inputs: 1 values of out_of_range.csv lie outside the declared input_range [0, 1]",
}
FINDINGS = {
    "nan_inf_rows.toml": ("nonfinite_rows_dropped", 2, "2 samples with NaN or infinite values were dropped"),
    "values_out_of_range_privacy.toml": ("values_outside_range", 1, "1 values lie outside the declared input_range [0, 1]; integrity attacks refuse such data"),
    "model_pickle_allowed.toml": ("unsafe_pickle_loaded", 1, "was unpickled with allow_unsafe_pickle = true"),
}


def test_every_corpus_file_has_a_case():
    configs = {p.name for p in CONFIGS.iterdir() if p.suffix in (".toml", ".yaml")}
    assert configs == set(REFUSED) | set(FINDINGS)
    referenced = " ".join((CONFIGS / name).read_text(encoding="latin-1") for name in configs)
    corpus_files = [p for folder in ("data", "models") for p in (CONFIGS.parent / folder).iterdir()]
    assert corpus_files and all(f"../{p.parent.name}/{p.name}" in referenced for p in corpus_files)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_bad_input_is_exit_2_with_one_line(name, tmp_path, capsys):
    code = main(["run", str(CONFIGS / name), "--out", str(tmp_path / "out"), "--quiet", "--no-history"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "internal error" not in err, err
    assert err.startswith("kansa: error: ") and REFUSED[name] in err, err
    assert not (tmp_path / "out" / "report.html").exists()


@pytest.mark.parametrize("name", sorted(FINDINGS))
def test_recoverable_input_is_a_recorded_finding(name, tmp_path, capsys):
    code = main(["run", str(CONFIGS / name), "--out", str(tmp_path / "out"), "--quiet", "--no-history"])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == "", captured.err
    metric, value, message = FINDINGS[name]
    rows = [r for r in json.loads((tmp_path / "out" / "results.json").read_text())["results"] if r["metric"] == metric]
    assert len(rows) == 1 and rows[0]["value"] == value and message in rows[0]["message"]
    assert message.split(";")[0] in (tmp_path / "out" / "report.html").read_text()


def test_an_output_folder_of_another_run_is_not_overwritten_without_force(tmp_path, capsys):
    fast = SMALL_AUDIT.replace("epochs = 15", "epochs = 1").replace("samples = 200", "samples = 10")
    out = str(tmp_path / "out")
    first = write(tmp_path / "a.toml", fast)
    assert main(["run", str(first), "--out", out, "--quiet", "--no-history"]) == 0
    assert main(["run", str(first), "--out", out, "--quiet", "--no-history"]) == 0  # same config: a re-run
    other = write(tmp_path / "b.toml", fast.replace("seed = 3", "seed = 4"))
    capsys.readouterr()
    assert main(["run", str(other), "--out", out, "--quiet", "--no-history"]) == 2
    assert "holds a run of a different config (or seed); choose another --out, or pass --force" in capsys.readouterr().err
    stranger = tmp_path / "stranger"
    write(stranger / "notes.txt", "mine")
    assert main(["run", str(first), "--out", str(stranger), "--quiet", "--no-history"]) == 2
    assert "holds files that are not a Kansa run" in capsys.readouterr().err
    assert main(["run", str(other), "--out", out, "--quiet", "--no-history", "--force"]) == 0


def test_an_interrupted_write_leaves_the_previous_file_and_no_debris(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    write_bytes_atomic(target, b"complete report")

    def crash(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(target, b"half")
    assert target.read_bytes() == b"complete report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_nan_outputs_on_adversarial_inputs_fail_the_cell_instead_of_counting_as_class_0(digits):
    dataset, splits, target = digits

    class NaNWhenPerturbed(torch.nn.Module):
        def __init__(self, inner, clean):
            super().__init__()
            self.inner, self.clean = inner, clean

        def forward(self, x):
            out = self.inner(x)
            perturbed = ~(x.flatten(1)[:, None, :] == self.clean.flatten(1)[None]).all(-1).any(-1)
            return torch.where(perturbed[:, None], torch.full_like(out, float("nan")), out)

    x, y = dataset.x[splits.test[:16]], dataset.y[splits.test[:16]]
    broken = type(target)(**{**target.__dict__, "module": NaNWhenPerturbed(target.module, torch.from_numpy(x)), "_classifier": None})
    with pytest.raises(ValueError, match=r"NaN or infinite outputs for \d+ of 16 adversarial \(eps=0.1\) inputs"):
        FGSM(eps=0.1).run(broken, x, y, AttackContext(0, dataset.class_names))
    assert np.isfinite(target.logits(x)).all()
