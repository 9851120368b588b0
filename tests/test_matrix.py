"""Every registered attack and every registered defense, end to end through `kansa run` and its report.

Parametrised over the registries, so a piece registered later joins by itself. Each runs with the
small budgets its parameters declare (`quick`) on a binary tabular CSV and on digits images, and
either writes report.html, summary.md and results.json with no error row, or ends before anything
is trained with exit 2 and one line: the refusal its own `check_data` declares for that data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from attacks import registry as attack_registry
from audit.cli import main
from audit.errors import ConfigError
from audit.params import quick_values
from defenses import registry as defense_registry
from tests.conftest import write

KINDS = ("tabular", "image")
ATTACKS = attack_registry()
DEFENSES = defense_registry()
# Beside every defense: one integrity and one confidentiality attack, so both halves of the audit read the variant.
COMPANIONS = ("fgsm", "mia_loss")


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _table(header: str, name: str, cls: Any) -> str:
    lines = [f"[[{header}]]", f'name = "{name}"'] + [f"{k} = {_toml(v)}" for k, v in quick_values(cls.params).items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def data_tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A team's own binary tabular CSV (breast_cancer, its first feature binned into a categorical one), and digits images."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.rename(columns=lambda c: c.replace(" ", "_"))
    first = frame.columns[0]
    frame[first] = np.digitize(frame[first], np.quantile(frame[first], [0.25, 0.5, 0.75])).astype(float)
    path = tmp_path_factory.mktemp("matrix-data") / "patients.csv"
    frame.to_csv(path, index=False)
    return {
        "tabular": f'source = "csv"\npath = "{path}"\nlabel_column = "target"\nscale = "minmax"\nmax_samples = 400\n',
        "image": 'source = "digits"\nmax_samples = 400\n',
    }


def _config(tmp_path: Path, data: str, pieces: str) -> Path:
    text = (f'title = "matrix"\nseed = 0\n[data]\n{data}\n[[models]]\nname = "model"\nepochs = 2\n\n'
            f"[evaluation]\nsamples = 30\n\n{pieces}")
    return write(tmp_path / "audit.toml", text)


def _declared_refusal(config: Path) -> str | None:
    """The one-line refusal the configured pieces declare for this data, or None when all of them apply."""
    from audit.config import check_against_data, load_config
    from audit.session import load_audit_data

    loaded = load_config(config)
    try:
        check_against_data(loaded, *load_audit_data(loaded))
    except ConfigError as refusal:
        return str(refusal)
    return None


def _run_case(tmp_path: Path, config: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    refusal = _declared_refusal(config)
    code = main(["run", str(config), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert "internal error" not in err, err
    if refusal is not None:
        assert code == 2, err
        assert err.splitlines() == [f"kansa: error: {refusal}"], err
        assert name in refusal and "data" in refusal
        assert not (out / "results.json").exists()
        return
    assert code == 0, err
    for output in ("report.html", "summary.md", "results.json"):
        assert (out / output).is_file(), output
    from audit.results import load_results

    table, _ = load_results(out)
    errors = table[table["status"] == "error"]
    assert errors.empty, errors[["model", "defense", "attack", "message"]].to_dict("records")
    assert name in (out / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_runs_through_the_report_or_is_refused_up_front(tmp_path, capsys, data_tables, name, kind):
    _run_case(tmp_path, _config(tmp_path, data_tables[kind], _table("attacks", name, ATTACKS[name])), name, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_every_defense_runs_through_the_report_or_is_refused_up_front(tmp_path, capsys, data_tables, name, kind):
    pieces = _table("defenses", name, DEFENSES[name]) + "".join(_table("attacks", a, ATTACKS[a]) for a in COMPANIONS)
    _run_case(tmp_path, _config(tmp_path, data_tables[kind], pieces), name, capsys)


@pytest.mark.parametrize("family", [ATTACKS, DEFENSES], ids=["attacks", "defenses"])
def test_every_piece_applies_to_at_least_one_kind_of_data_in_the_matrix(family):
    """Otherwise the matrix would only ever see it refused, and nothing would test that it works."""
    for name, cls in family.items():
        assert set(cls.data_kinds) & set(KINDS), name
