"""One battery of checks over every registered attack and defense, as scikit-learn's `parametrize_with_checks`.

A piece registered later (a plugin's too) joins by itself. On a tiny model and a few samples, with
the budgets its parameters declare as `quick`: its declarations are well formed and validate, its
rows carry only the metrics it declares (each registered), its per-sample arrays line up, the same
seed gives the same numbers, and whatever an evasion attack returns stays inside its ball (the base
refuses it otherwise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attacks import registry as attack_registry
from attacks.base import Access, AttackKind
from audit.cells import Task, run_attack_cell
from audit.config import load_config
from audit.errors import ConfigError
from audit.metrics import metric_info
from audit.params import Choice, Location, Number, ParamSet, quick_values
from audit.plugins import DATA_KINDS
from audit.session import AuditSession, Progress
from defenses import registry as defense_registry
from defenses.base import STAGES
from tests.conftest import write

ATTACKS = attack_registry()
DEFENSES = defense_registry()
DATA = {
    "tabular": 'source = "csv"\npath = "tabular.csv"\nlabel_column = "label"\nscale = "minmax"\n',
    "image": 'source = "digits"\nmax_samples = 300\n',
}
# Beside the built-in model, one each attack can reach: a scikit-learn tree for attacks that read its nodes.
MODELS = {
    "tabular": '[[models]]\nname = "tree"\nkind = "skops"\npath = "tree.skops"\ntrusted_types = ["sklearn.tree._tree.Tree"]\n',
    "image": "",
}
# Rows the runner adds to every cell, whatever the attack.
RUNNER_METRICS = {"attack_seconds", "error"}


def _invalid(constraint: Any) -> list[Any]:
    """Values the declaration itself says are invalid, as scikit-learn derives them from its constraints."""
    if isinstance(constraint, Choice):
        return ["surely-not-a-choice"]
    if isinstance(constraint, Number):
        out: list[Any] = ["a word"]
        if constraint.low is not None:
            out.append(constraint.low - 1)
        if constraint.high is not None:
            out.append(constraint.high + 1)
        if constraint.integer:
            out.append(1.5 + (constraint.low or 0))
        return out
    return []


def _session(tmp_path: Path, kind: str, pieces: str) -> AuditSession:
    if kind == "tabular":
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 1, (300, 5))
        x[:, 0] = rng.integers(0, 3, 300)  # a categorical feature, for attribute inference
        y = (x[:, 1] + 0.3 * x[:, 0] > 0.9).astype(int)
        lines = ["f0,f1,f2,f3,f4,label"] + [",".join(f"{v:.6f}" for v in row) + f",{label}" for row, label in zip(x, y)]
        write(tmp_path / "tabular.csv", "\n".join(lines) + "\n")
        _save_tree(x, y, tmp_path / "tree.skops")
    text = (f"seed = 0\n[data]\n{DATA[kind]}\n[[models]]\nname = \"model\"\nepochs = 3\n{MODELS[kind]}[evaluation]\nsamples = 8\n"
            f"[cache]\nenabled = false\n{pieces}")
    return AuditSession(load_config(write(tmp_path / "audit.toml", text)), None, Progress(True))


def _save_tree(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """A decision tree on the features as Kansa scales them, for attacks that read a tree's structure."""
    skops = pytest.importorskip("skops.io")
    from sklearn.tree import DecisionTreeClassifier

    x = np.round(x, 6)  # as the CSV holds them
    scaled = ((x - x.min(axis=0)) / (x.max(axis=0) - x.min(axis=0))).astype(np.float32)
    skops.dump(DecisionTreeClassifier(max_depth=4, random_state=0).fit(scaled, y), path)


def _table(header: str, name: str, cls: Any) -> str:
    values = quick_values(cls.params)
    return f'[[{header}]]\nname = "{name}"\n' + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in values.items())


def _kinds(cls: Any) -> list[str]:
    return [kind for kind in DATA_KINDS if kind in cls.data_kinds]


@pytest.mark.parametrize("cls", [*ATTACKS.values(), *DEFENSES.values()], ids=[*ATTACKS, *DEFENSES])
def test_declarations_are_well_formed_and_validate(cls):
    assert cls.summary and cls.name and set(cls.data_kinds) <= set(DATA_KINDS) and cls.data_kinds
    params = ParamSet(cls.params)
    where = Location("conformance")
    params.validate(quick_values(cls.params), where)
    for p in cls.params:
        for bad in _invalid(p.constraint):
            with pytest.raises(ConfigError, match=p.name):
                params.validate({**quick_values(cls.params), p.name: bad}, where)
    if cls in ATTACKS.values():
        assert isinstance(cls.kind, AttackKind) and isinstance(cls.access, Access) and cls.emits
        unregistered = [m for m in cls.emits if metric_info(m) is None]
        assert not unregistered, f"{cls.name} emits metrics no one registered: {unregistered}"
    else:
        assert cls.stage in STAGES


def _attack_cases() -> list[Any]:
    return [pytest.param(name, kind, id=f"{name}-{kind}") for name, cls in ATTACKS.items() for kind in _kinds(cls)]


@pytest.mark.parametrize("name, kind", _attack_cases())
def test_every_attack_emits_what_it_declares_aligned_and_reproducible(tmp_path, name, kind):
    cls = ATTACKS[name]
    session = _session(tmp_path, kind, _table("attacks", name, cls))
    attack = cls(**quick_values(cls.params))
    model = next((m["name"] for m in session.config.models if attack.inapplicable(session.variant(m["name"], "none").target) is None), None)
    assert model is not None, f"{name} applies to none of the battery's models"
    task = Task("attack", session.config, None, model, defense="none", attack=name, key="conformance")
    first, second = run_attack_cell(session, task), run_attack_cell(session, task)
    assert first.record.status == "ok", first.rows
    emitted = {row["metric"] for row in first.rows} - RUNNER_METRICS
    assert emitted <= set(cls.emits), f"{name} emits undeclared metrics: {sorted(emitted - set(cls.emits))}"
    assert {row["category"] for row in first.rows} <= {cls.kind.category, "cost"}
    lengths = {len(v) for v in first.per_sample.values()}
    assert len(lengths) <= 1, {k: len(v) for k, v in first.per_sample.items()}
    if cls.kind in (AttackKind.EVASION, AttackKind.MINIMIZATION):
        assert lengths == {len(session.y_eval)}
    def measured(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(r["metric"], r.get("subset"), r.get("param_value"), r.get("value")) for r in rows if r["category"] != "cost"]

    assert measured(first.rows) == measured(second.rows)


def _defense_cases() -> list[Any]:
    return [pytest.param(name, kind, id=f"{name}-{kind}") for name, cls in DEFENSES.items() for kind in _kinds(cls)]


@pytest.mark.parametrize("name, kind", _defense_cases())
def test_every_defense_gives_a_working_variant_the_same_for_the_same_seed(tmp_path, name, kind):
    cls = DEFENSES[name]
    pieces = _table("defenses", name, cls) + '[[attacks]]\nname = "fgsm"\neps = [0.1]\n'
    variants = [_session(tmp_path / run, kind, pieces).variant("model", name) for run in ("a", "b")]
    assert all(v.target is not None for v in variants), variants[0].rows
    x = np.random.default_rng(1).uniform(0, 1, (8, *variants[0].target.input_shape)).astype(np.float32)
    for variant in variants:
        logits = variant.target.logits(x)
        assert logits.shape == (len(x), variant.target.n_classes) and np.isfinite(logits).all()
        assert {row["category"] for row in variant.rows} <= {"defense", "cost", "performance", "model"}
    assert variants[0].target.digest == variants[1].target.digest
    np.testing.assert_array_equal(variants[0].target.predict(x), variants[1].target.predict(x))
