"""Attack numbers a user can trust: FGSM matches a hand-written torch FGSM on either backend, PGD is at least as strong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks import register, registry
from attacks.base import Attack, AttackContext, AttackKind, AttackOutput
from attacks.evasion import FGSM, PGD
from audit import run_audit
from audit.errors import KansaError
from tests.conftest import SMALL_AUDIT, write


def hand_fgsm_correct(module: torch.nn.Module, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    xt = torch.from_numpy(x).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(module(xt), torch.from_numpy(y))
    (grad,) = torch.autograd.grad(loss, xt)
    x_adv = (xt + eps * grad.sign()).clamp(0.0, 1.0).detach()
    with torch.no_grad():
        return (module(x_adv).argmax(1) == torch.from_numpy(y)).numpy()


def robust(output: AttackOutput, eps: float) -> float:
    (row,) = [r for r in output.rows if r["metric"] == "robust_accuracy" and r.get("subset", "all") == "all" and r["param_value"] == eps]
    return row["value"]


@pytest.fixture(scope="module")
def eval_set(digits):
    dataset, splits, target = digits
    return target, dataset.x[splits.test], dataset.y[splits.test], AttackContext(0, dataset.class_names)


@pytest.mark.parametrize("backend", ["torch", "art"])
def test_fgsm_equals_a_hand_written_torch_fgsm(eval_set, backend):
    target, x, y, context = eval_set
    eps_list = [0.05, 0.1, 0.2]
    output = FGSM(eps=eps_list, backend=backend).run(target, x, y, context)
    for eps in eps_list:
        expected = hand_fgsm_correct(target.module, x, y, eps)
        assert np.array_equal(output.per_sample[f"robust_correct@eps={eps:g}"], expected)
        assert robust(output, eps) == expected.sum() / len(y)


def test_pgd_is_at_least_as_strong_as_fgsm_and_both_weaken_with_eps(eval_set):
    target, x, y, context = eval_set
    eps_list = [0.05, 0.1, 0.2]
    fgsm = FGSM(eps=eps_list).run(target, x, y, context)
    pgd = PGD(eps=eps_list, steps=10).run(target, x, y, context)
    for eps in eps_list:
        assert robust(pgd, eps) <= robust(fgsm, eps)
    curve = [robust(pgd, eps) for eps in eps_list]
    assert curve == sorted(curve, reverse=True) and curve[0] > curve[-1]


def test_perturbations_respect_the_ball_and_the_input_range(eval_set):
    target, x, y, context = eval_set
    for attack in (PGD(eps=0.1, steps=5), PGD(eps=0.5, norm="2", steps=5)):
        output = attack.run(target, x[:64], y[:64], context)
        by_metric = {r["metric"]: r for r in output.rows if r.get("subset", "all") == "all"}
        if attack.values["norm"] == "inf":
            assert by_metric["perturbation_linf"]["value"] <= 0.1 + 1e-6
        else:
            assert by_metric["perturbation_l2"]["value"] <= 0.5 + 1e-5
        adv = output.artifacts["x_adv"]
        assert adv.min() >= 0.0 and adv.max() <= 1.0


def test_metrics_carry_n_and_intervals_and_per_class_rows(eval_set):
    target, x, y, context = eval_set
    output = FGSM(eps=0.1).run(target, x, y, context)
    rows = {(r["metric"], r.get("subset", "all")): r for r in output.rows}
    acc = rows[("robust_accuracy", "all")]
    assert acc["n"] == len(y) and acc["ci_low"] <= acc["value"] <= acc["ci_high"]
    success = rows[("success_rate", "all")]
    assert success["n"] == int(rows[("clean_accuracy", "all")]["value"] * len(y) + 0.5)
    per_class = [r for (m, s), r in rows.items() if m == "robust_accuracy" and s.startswith("class=")]
    assert len(per_class) == 10 and sum(r["n"] for r in per_class) == len(y)


def test_a_linf_eps_wider_than_the_input_range_is_refused(eval_set):
    target, x, y, context = eval_set
    with pytest.raises(ValueError, match="exceeds the width of the input range"):
        FGSM(eps=1.5).run(target, x[:4], y[:4], context)


class Exploding(Attack):
    name = "exploding-test-attack"
    kind = AttackKind.EVASION
    summary = "raises, to show a failing attack is recorded and the audit goes on"

    def run(self, target, x, y, context):
        raise RuntimeError("boom <b>")


def test_a_failing_attack_is_an_error_row_and_the_run_completes(tmp_path):
    import attacks

    text = SMALL_AUDIT.replace("steps = 10", 'steps = 2\n\n[[attacks]]\nname = "exploding-test-attack"')
    text = text.replace("epochs = 15", "epochs = 2").replace("samples = 200", "samples = 40")
    with attacks.ATTACKS.temporarily(Exploding):
        result = run_audit(write(tmp_path / "audit.toml", text), out_dir=tmp_path / "out")
    errors = result.errors
    assert len(errors) == 1
    assert errors.iloc[0]["attack"] == "exploding-test-attack"
    assert errors.iloc[0]["message"] == "RuntimeError: boom <b>"
    assert len(result.metric("robust_accuracy", attack="pgd", subset="all")) == 3
    html = (tmp_path / "out" / "report.html").read_text()
    assert "RuntimeError: boom &lt;b&gt;" in html


def test_registering_two_attacks_under_one_name_is_refused():
    class Impostor(Exploding):
        pass

    Impostor.name = "fgsm"
    with pytest.raises(KansaError, match="two attacks are registered as 'fgsm'"):
        register(Impostor)
    assert registry()["fgsm"] is FGSM
