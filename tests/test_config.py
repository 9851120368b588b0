"""Config validation: every malformed config is exit 2 with one line naming the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from audit.cli import main
from audit.config import example_config, load_config
from tests.conftest import SMALL_AUDIT, write

MALFORMED = [
    # (what is wrong, config text, text (or texts) the one-line message must contain)
    ("eps is a word", SMALL_AUDIT.replace("eps = [0.05, 0.1, 0.2]\n\n", 'eps = "big"\n\n', 1),
     'attacks[0].eps: expected a number or a list of numbers > 0, got "big"'),
    ("negative eps in a list", SMALL_AUDIT.replace("eps = [0.05, 0.1, 0.2]\nsteps", "eps = [0.1, -0.2]\nsteps"),
     "attacks[1].eps: expected a number or a list of numbers > 0, got [0.1, -0.2]"),
    ("typo in an attack key", SMALL_AUDIT.replace("steps = 10", "stepz = 10"),
     'attacks[1].stepz: unknown key; did you mean "steps"?'),
    ("unknown attack", SMALL_AUDIT.replace('name = "fgsm"', 'name = "fgsn"'),
     ("attacks[0].name: expected one of ", 'got "fgsn" (did you mean "fgsm"?)')),
    ("unknown top-level key", "sed = 1\n" + SMALL_AUDIT.replace("seed = 3\n", ""),
     'sed: unknown key; did you mean "seed"?'),
    ("seed is text", SMALL_AUDIT.replace("seed = 3", 'seed = "three"'), 'seed: expected an integer in [0, 2147483647], got "three"'),
    ("split does not sum to 1", SMALL_AUDIT.replace('source = "digits"', 'source = "digits"\nsplit = [0.5, 0.2, 0.2]'),
     "data.split: expected fractions that sum to 1"),
    ("unknown data source", SMALL_AUDIT.replace('source = "digits"', 'source = "digitz"'),
     'data.source: expected one of'),
    ("csv without a path", SMALL_AUDIT.replace('source = "digits"', 'source = "csv"\nlabel_column = "y"'),
     "data.path: missing; expected a non-empty string"),
    ("epochs zero", SMALL_AUDIT.replace("epochs = 15", "epochs = 0"), "models[0].epochs: expected an integer in [1, 10000], got 0"),
    ("key of another model kind", SMALL_AUDIT.replace("epochs = 15", 'epochs = 15\nfactory = "m:f"'),
     'models[0].factory: unknown key'),
    ("state_dict factory without colon", SMALL_AUDIT.replace("epochs = 15", 'kind = "state_dict"\npath = "m.pt"\nfactory = "m.build"'),
     'models[0].factory: expected "package.module:function", got "m.build"'),
    ("duplicate attack ids", SMALL_AUDIT.replace('name = "pgd"', 'name = "fgsm"').replace("steps = 10", ""),
     'attacks[1].id: "fgsm" is already used by attacks[0]'),
    ("no attacks", SMALL_AUDIT.split("[[attacks]]")[0], "attacks: missing; add at least one [[attacks]] table"),
    ("no data table", SMALL_AUDIT.replace('[data]\nsource = "digits"\n', ""), "data: missing"),
    ("input range reversed", SMALL_AUDIT.replace('source = "digits"', 'source = "digits"\ninput_range = [1, 0]'),
     "data.input_range: expected [low, high] with low < high"),
    ("evaluation samples is a float", SMALL_AUDIT.replace("samples = 200", "samples = 2.5"),
     "evaluation.samples: expected an integer >= 1, got 2.5"),
    ("models is a string", 'models = "cnn"\n' + SMALL_AUDIT.replace('[[models]]\nname = "cnn"\nepochs = 15\n', ""),
     "models: expected one or more [[models]] tables"),
    ("TOML syntax error", SMALL_AUDIT.replace("seed = 3", "seed = = 3"), "invalid TOML"),
]


@pytest.mark.parametrize("label, text, expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_config_exits_2_with_one_line_naming_the_key(tmp_path, capsys, label, text, expected):
    path = write(tmp_path / "audit.toml", text)
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"kansa: error: {path}: "), lines[0]
    for fragment in (expected,) if isinstance(expected, str) else expected:
        assert fragment in lines[0]
    assert "Traceback" not in captured.err


def test_missing_config_file_names_the_path(tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    assert main(["run", str(missing)]) == 2
    assert f"config file not found: {missing}" in capsys.readouterr().err


def test_init_writes_the_commented_example_which_validates(tmp_path, capsys):
    path = tmp_path / "audit.toml"
    assert main(["init", str(path)]) == 0
    assert path.read_text() == example_config()
    assert "#" in path.read_text()
    assert main(["validate", str(path)]) == 0
    assert main(["init", str(path)]) == 2
    assert "exists; use --force" in capsys.readouterr().err


def test_defaults_are_filled_and_seed_override(small_config):
    config = load_config(small_config, seed=11)
    assert config.seed == 11
    assert config.data["split"] == [0.6, 0.2, 0.2]
    fgsm = config.attacks[0]
    assert fgsm == {"name": "fgsm", "id": "fgsm", "params": {"eps": [0.05, 0.1, 0.2], "norm": "inf", "batch_size": 128, "backend": "torch"}}
    assert config.attacks[1]["params"]["steps"] == 10


@pytest.mark.parametrize("listed, opted_out, added", [
    ('name = "deepfool"\neps = [1.0, 2.0]', False, ["apgd-l2", "fmn-l2"]),
    ('name = "apgd"\nnorm = "2"\neps = [1.0, 2.0]', False, ["fmn-l2"]),  # an APGD-L2 the user listed is not run twice
    ('name = "deepfool"\neps = [1.0, 2.0]', True, []),
    ('name = "pgd"\neps = [0.1]', False, []),  # no L2 threat model, nothing added
])
def test_an_l2_threat_model_runs_apgd_l2_and_fmn_l2_at_its_eps_unless_listed_or_opted_out(tmp_path, listed, opted_out, added):
    evaluation = "[evaluation]\nstrong_l2_attacks = false\n" if opted_out else ""
    config = load_config(write(tmp_path / "audit.toml", f'[data]\nsource = "digits"\n[[models]]\nname = "cnn"\n{evaluation}[[attacks]]\n{listed}\n'))
    extra = config.attacks[1:]
    assert [a["id"] for a in extra] == added
    assert all(a["params"]["norm"] == "2" and a["params"]["eps"] == [1.0, 2.0] for a in extra)


def test_yaml_config_is_validated_the_same_way(tmp_path, capsys):
    good = write(tmp_path / "audit.yaml", "data: {source: iris}\nmodels: [{name: mlp}]\nattacks: [{name: fgsm, eps: 0.1}]\n")
    assert load_config(good).attacks[0]["params"]["eps"] == [0.1]
    bad = write(tmp_path / "bad.yaml", "data: {source: iris}\nmodels: [{name: mlp}]\nattacks: [{name: fgsm, eps: big}]\n")
    assert main(["validate", str(bad)]) == 2
    assert 'attacks[0].eps: expected a number or a list of numbers > 0, got "big"' in capsys.readouterr().err


def test_help_and_list_do_not_import_torch():
    code = (
        "import sys; from audit.cli import main\n"
        "for argv in (['list'], ['--help']):\n"
        "    try: main(argv)\n"
        "    except SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'art', 'sklearn', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert "pgd" in done.stdout and "random_starts" in done.stdout


def test_schema_docs_match_the_declarations():
    from audit.config import schema_markdown

    doc = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    block = doc.split("<!-- schema:start -->\n", 1)[1].split("<!-- schema:end -->", 1)[0]
    assert block == schema_markdown(), "docs/config.md is stale: regenerate it with `make docs`"
