"""Gates fail closed: every verdict path, the exit codes end to end, junit.xml, history and the pytest helper."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from audit.cli import main
from audit.config import load_config
from audit.gates import evaluate_gates, validate_gates_config
from audit.params import Location
from audit.results import error_row, make_table, rate_row
from audit.testing import assert_gates_pass
from tests.conftest import SMALL_AUDIT, write


def gates(*tables):
    return validate_gates_config(list(tables), Location("t.toml", "gates"))


def table(successes=60, n=100, baseline_shift=0.0, error=False):
    where = {"model": "m", "defense": "none", "attack": "pgd", "category": "integrity", "param": "eps", "param_value": 0.1}
    rows = [rate_row("robust_accuracy", successes, n, **where), rate_row("accuracy", 95, 100, model="m", category="performance", subset="split=test")]
    if error:
        rows.append(error_row("RuntimeError: boom", model="m", attack="square", category="integrity"))
    result = make_table(rows)
    result.loc[result["metric"] == "robust_accuracy", ["value", "ci_low", "ci_high"]] += baseline_shift
    return result


def verdicts(spec, data, baseline=None):
    out = evaluate_gates(gates(spec), data, baseline)
    return list(out["verdict"]), list(out["reason"])


FLOOR = {"metric": "robust_accuracy", "attack": "pgd", "at": 0.1, "op": ">=", "threshold": 0.5}


def test_threshold_pass_and_fail_on_the_estimate():
    assert verdicts(FLOOR, table(60))[0] == ["pass"]
    verdict, reason = verdicts(FLOOR, table(40))
    assert verdict == ["fail"] and reason[0].startswith("robust_accuracy = 0.4 [") and "misses >= 0.5" in reason[0]


def test_confidence_gate_is_inconclusive_when_the_interval_straddles_the_threshold():
    spec = {**FLOOR, "confidence": True}
    verdict, reason = verdicts(spec, table(55, 100))  # 0.55 [0.45, 0.64]
    assert verdict == ["inconclusive"] and "straddles 0.5" in reason[0]
    assert verdicts(spec, table(550, 1000))[0] == ["pass"]  # 0.55 [0.52, 0.58]
    assert verdicts(spec, table(400, 1000))[0] == ["fail"]


def test_errored_attack_makes_its_gates_inconclusive_but_not_unrelated_ones():
    spec = {"metric": "robust_accuracy", "attack": "*", "op": ">=", "threshold": 0.5}
    verdict, reason = verdicts(spec, table(90, error=True))
    assert sorted(verdict) == ["inconclusive", "pass"] and any("attack square on m errored" in r for r in reason)
    clean = {"metric": "accuracy", "subset": "split=test", "op": ">=", "threshold": 0.9}
    assert verdicts(clean, table(90, error=True))[0] == ["pass"]


def test_a_variant_that_failed_makes_every_gate_selecting_it_inconclusive():
    """A failed defense (or a variant whose evaluation was ended) has no rows: its gates must not simply skip it."""
    failed = make_table([*table(90).to_dict("records"),
                         error_row("ValueError: no gradients", model="m", defense="adv", category="defense"),
                         error_row("evaluating n did not finish within cell_timeout = 4 s", model="n", defense="none", category="performance")])
    for spec in (FLOOR, {"metric": "accuracy", "subset": "split=test", "op": ">=", "threshold": 0.9}):
        out = evaluate_gates(gates(spec), failed)
        by_variant = {(r.model, r.defense): (r.verdict, r.reason) for r in out.itertuples()}
        assert by_variant[("m", "none")][0] == "pass"
        assert by_variant[("m", "adv")] == ("inconclusive", "m / adv has no results: ValueError: no gradients")
        assert by_variant[("n", "none")][0] == "inconclusive" and "cell_timeout" in by_variant[("n", "none")][1]
    assert verdicts({**FLOOR, "model": "m", "defense": "none"}, failed)[0] == ["pass"]  # other variants' failures are not its own


def test_missing_metric_and_small_n_are_inconclusive():
    verdict, reason = verdicts({**FLOOR, "at": 0.3}, table())
    assert verdict == ["inconclusive"] and "no result row matches robust_accuracy" in reason[0]
    verdict, reason = verdicts(FLOOR, table(15, 20))
    assert verdict == ["inconclusive"] and "n = 20 < min_n = 30" in reason[0]


def test_regression_within_beyond_and_inside_noise():
    spec = {"kind": "regression", "metric": "robust_accuracy", "attack": "pgd", "tolerance": 0.02}
    assert verdicts(spec, table(600, 1000), table(600, 1000))[0] == ["pass"]
    verdict, reason = verdicts(spec, table(500, 1000), table(600, 1000))
    assert verdict == ["fail"] and "beyond tolerance 0.02" in reason[0]
    verdict, reason = verdicts(spec, table(57, 100), table(60, 100))
    assert verdict == ["inconclusive"] and "only within noise" in reason[0]
    assert verdicts(spec, table(600, 1000))[0] == ["inconclusive"]  # no baseline given
    relative = {**spec, "tolerance": 0.2, "relative": True}
    assert verdicts(relative, table(500, 1000), table(600, 1000))[0] == ["pass"]  # 0.1 <= 20% of 0.6


def test_presets_and_gate_config_errors():
    (floor,) = gates({"preset": "robustness_floor", "attack": "pgd", "at": 0.1, "threshold": 0.7})
    assert floor["metric"] == "robust_accuracy" and floor["confidence"] is True and floor["threshold"] == 0.7
    with pytest.raises(Exception, match=r'gates\[0\].preset: expected one of .* \(did you mean "robustness_floor"\?\)'):
        gates({"preset": "robustness_flor"})
    with pytest.raises(Exception, match=r"gates\[0\].threshold: missing"):
        gates({"metric": "robust_accuracy"})
    with pytest.raises(Exception, match=r'gates\[0\].direction: metric "loss" has no known direction'):
        gates({"kind": "regression", "metric": "loss"})


def gate_config(tmp_path, name, *tables):
    body = "\n".join("[[gates]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in t.items()) for t in tables)
    return write(tmp_path / f"{name}.toml", SMALL_AUDIT + "\n" + body + "\n")


def test_cli_exit_codes_for_every_verdict_on_a_finished_run(small_run, tmp_path, capsys):
    run_dir = str(small_run.out_dir)
    robust = small_run.metric("robust_accuracy", attack="pgd", param_value=0.1, subset="all").iloc[0]
    cases = {
        "pass": (0, {**FLOOR, "threshold": 0.0}),
        "fail": (1, {**FLOOR, "threshold": 0.99}),
        "straddle": (3, {**FLOOR, "threshold": round(float(robust["value"]), 4), "confidence": True}),
        "missing": (3, {**FLOOR, "attack": "square"}),
    }
    for name, (code, spec) in cases.items():
        assert main(["gate", run_dir, "--config", str(gate_config(tmp_path, name, spec))]) == code, name
    out = capsys.readouterr().out
    assert "verdict: fail" in out and "verdict: inconclusive" in out and "verdict: pass" in out


def test_cli_regression_against_a_baseline_file(small_run, tmp_path):
    spec = {"kind": "regression", "metric": "robust_accuracy", "attack": "*", "subset": "all", "tolerance": 0.02}
    config = str(gate_config(tmp_path, "regression", spec))
    run_dir = tmp_path / "run"
    shutil.copytree(small_run.out_dir, run_dir)
    assert main(["gate", str(run_dir), "--config", config, "--baseline", str(run_dir)]) == 0
    better = json.loads((run_dir / "results.json").read_text())
    for row in better["results"]:
        if row["metric"] == "robust_accuracy" and row["attack"] == "fgsm" and row["param_value"] == 0.1 and row["subset"] == "all":
            row.update(value=row["value"] + 0.3, ci_low=row["ci_low"] + 0.3, ci_high=row["ci_high"] + 0.3)
    write(tmp_path / "better.json", json.dumps(better))
    assert main(["gate", str(run_dir), "--config", config, "--baseline", str(tmp_path / "better.json")]) == 1


def test_junit_xml_parses_with_the_expected_cases(small_run, tmp_path):
    from junitparser import Error, Failure, JUnitXml

    run_dir = tmp_path / "run"
    shutil.copytree(small_run.out_dir, run_dir)
    config = gate_config(
        tmp_path, "mixed",
        {"id": "floor", "metric": "robust_accuracy", "attack": "*", "at": 0.05, "op": ">=", "threshold": 0.0},
        {"id": "ceiling", "metric": "success_rate", "attack": "pgd", "at": 0.2, "op": "<=", "threshold": 0.01},
        {"id": "absent", "metric": "robust_accuracy", "attack": "square", "op": ">=", "threshold": 0.5},
    )
    assert main(["gate", str(run_dir), "--config", str(config)]) == 1
    cases = {(c.classname, c.name): c for suite in JUnitXml.fromfile(str(run_dir / "junit.xml")) for c in suite}
    assert set(cases) == {
        ("kansa.floor", "cnn/none/fgsm at=0.05"), ("kansa.floor", "cnn/none/pgd at=0.05"), ("kansa.floor", "cnn/none/ensemble at=0.05"),
        ("kansa.ceiling", "cnn/none/pgd at=0.2"), ("kansa.absent", "(no matching row)"),
    }
    assert cases[("kansa.floor", "cnn/none/pgd at=0.05")].is_passed
    (failure,) = cases[("kansa.ceiling", "cnn/none/pgd at=0.2")].result
    assert isinstance(failure, Failure) and "misses <= 0.01" in failure.message and "success_rate = " in failure.message
    (error,) = cases[("kansa.absent", "(no matching row)")].result
    assert isinstance(error, Error) and error.type == "inconclusive"
    summary = (run_dir / "summary.md").read_text()
    assert summary.index("### Scorecard") < summary.index("| ❌ fail |") < summary.index("| ⚠️ inconclusive |") < summary.index("| ✅ pass |")


def test_an_errored_attack_run_exits_inconclusive(tmp_path, capsys):
    import attacks
    from tests.test_attacks import Exploding

    text = SMALL_AUDIT.replace("epochs = 15", "epochs = 2").replace("samples = 200", "samples = 40")
    text += '\n[[attacks]]\nname = "exploding-test-attack"\n\n[[gates]]\nmetric = "robust_accuracy"\nthreshold = 0.0\n'
    with attacks.ATTACKS.temporarily(Exploding):
        code = main(["run", str(write(tmp_path / "a.toml", text)), "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 3
    captured = capsys.readouterr()
    assert "INCONCLUSIVE" in captured.out and "exploding-test-attack on cnn errored" in captured.out
    assert "cnn/none/ensemble at=0.1" in captured.out  # the default gate target: the worst case over all attacks
    assert "1 failed (cnn/exploding-test-attack) of 3 attack cells" in captured.err


def test_history_survives_runs_and_supplies_the_last_passing_baseline(tmp_path, capsys):
    db = tmp_path / "h.sqlite"
    text = SMALL_AUDIT.replace("epochs = 15", "epochs = 2").replace("samples = 200", "samples = 40")
    text += f'\n[history]\npath = "{db}"\n\n[[gates]]\nkind = "regression"\nmetric = "robust_accuracy"\nsubset = "all"\ntolerance = 0.05\nmin_n = 10\n'
    config = write(tmp_path / "a.toml", text)
    first = main(["run", str(config), "--out", str(tmp_path / "1"), "--quiet", "--baseline", "last-pass"])
    assert first == 3  # no earlier passing run: regression gates cannot pass
    promote = text.replace("tolerance = 0.05", "tolerance = 1.0")
    main(["run", str(write(tmp_path / "a.toml", promote)), "--out", str(tmp_path / "2"), "--quiet", "--baseline", str(tmp_path / "1")])
    second_id = json.loads((tmp_path / "2" / "gates.json").read_text())["run_id"]
    write(tmp_path / "a.toml", text)
    assert main(["run", str(config), "--out", str(tmp_path / "3"), "--quiet", "--baseline", "last-pass"]) == 0
    gates_json = json.loads((tmp_path / "3" / "gates.json").read_text())
    assert gates_json["baseline"] == f"last passing run {second_id}"
    assert all(c["baseline"] is not None and math.isclose(c["value"], c["baseline"]) for c in gates_json["checks"])
    capsys.readouterr()
    assert main(["history", "--db", str(db)]) == 0
    listing = capsys.readouterr().out
    assert listing.count("inconclusive") == 1 and listing.count("pass") == 2
    assert main(["history", "--db", str(db), "--metric", "robust_accuracy", "--attack", "pgd", "--at", "0.1"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 3


def test_pytest_integration(kansa_audit, tmp_path):
    text = SMALL_AUDIT.replace("epochs = 15", "epochs = 2").replace("samples = 200", "samples = 40")
    passing = write(tmp_path / "p.toml", text + '\n[[gates]]\nmetric = "accuracy"\nsubset = "split=train"\nthreshold = 0.0\n')
    result = assert_gates_pass(kansa_audit(passing))
    assert (result.out_dir / "junit.xml").is_file()
    failing = write(tmp_path / "f.toml", text + '\n[[gates]]\nmetric = "accuracy"\nsubset = "split=train"\nthreshold = 1.01\n')
    with pytest.raises(AssertionError, match=r"1 of 1 Kansa gate checks did not pass:\n  fail: accuracy-1 \[cnn/none split=train\]"):
        assert_gates_pass(kansa_audit(failing, out_dir=tmp_path / "f"))
    with pytest.raises(AssertionError, match="has no \\[\\[gates\\]\\]"):
        assert_gates_pass(kansa_audit(write(tmp_path / "n.toml", text), out_dir=tmp_path / "n"))
    assert load_config(passing).gates[0]["id"] == "accuracy-1"


def test_a_sanity_flag_makes_only_its_own_variants_integrity_gates_inconclusive():
    """A flag raised on cnn / feature_squeezing says nothing about cnn as trained, and the reverse."""
    rows = []
    for defense in ("none", "feature_squeezing"):
        rows.append(rate_row("robust_accuracy", 80, 100, model="cnn", defense=defense, attack="ensemble", category="integrity",
                             param="eps", param_value=0.1))
    rows.append({"model": "cnn", "defense": "feature_squeezing", "category": "sanity", "metric": "vanishing_gradients", "value": 1.0,
                 "message": "zero gradient on 60% of samples"})
    out = evaluate_gates(gates({"metric": "robust_accuracy", "op": ">=", "threshold": 0.5}), make_table(rows))
    by_variant = dict(zip(out["defense"], zip(out["verdict"], out["reason"])))
    assert by_variant["none"][0] == "pass"
    assert by_variant["feature_squeezing"][0] == "inconclusive" and "flagged on cnn / feature_squeezing" in by_variant["feature_squeezing"][1]


def test_a_waiver_can_name_the_variant_it_excuses():
    from audit.checks import apply_waivers, validate_waivers

    waivers = validate_waivers([{"flag": "vanishing_gradients", "model": "cnn", "defense": "feature_squeezing", "reason": "BPDA agrees"}],
                               Location("t.toml", "waivers"))
    flag = {"metric": "vanishing_gradients", "value": 1.0, "message": "zero gradient"}
    (squeezed,) = apply_waivers([flag], "cnn", "feature_squeezing", waivers)
    (plain,) = apply_waivers([flag], "cnn", "none", waivers)
    assert squeezed["status"] == "waived" and squeezed["message"] == "zero gradient (waived: BPDA agrees)"
    assert "status" not in plain
    assert validate_waivers([{"flag": "vanishing_gradients", "reason": "r"}], Location("t.toml", "waivers"))[0]["defense"] == "*"
