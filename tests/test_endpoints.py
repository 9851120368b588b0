"""A model behind an HTTP endpoint, audited through a real local server: same numbers as in process, budgets kept, faults survived."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from audit.endpoints import Endpoint, EndpointError, QueryCount, query_scope
from audit.errors import ConfigError
from audit.models import validate_model_config
from audit.params import Location
from tests.conftest import write
from tests.endpoint_server import InferenceServer

TOKEN = "s3cret-token-4f1b9e"


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A softmax regression on digits, trained outside Kansa, and its TorchScript file (the in-process twin of the served model)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy((digits.images[:, None] / 16.0).astype(np.float32))
    y = torch.from_numpy(digits.target)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.eval()
    path = tmp_path_factory.mktemp("model") / "model.ts"
    torch.jit.script(model).save(str(path))
    return model, path


def endpoint_cfg(url: str, **overrides) -> dict:
    table = {"kind": "http", "name": "served", "url": url, "backoff": 0.01, **overrides}
    return validate_model_config(table, Location("audit.toml", "models[0]"))


AUDIT = """
seed = 5
[data]
source = "digits"
[evaluation]
samples = 30
strong_l2_attacks = false
[[attacks]]
name = "square"
eps = [0.1]
queries = 30
[[attacks]]
name = "hopskipjump"
eps = [0.5, 1.0]
steps = 2
max_queries = 20
[[models]]
name = "digits"
"""
SERVED = {
    "local": 'kind = "torchscript"\npath = "{path}"',
    "v2": 'kind = "http"\nurl = "{url}/v2/models/digits/infer"\nbackoff = 0.01\nsecret_headers = {{ Authorization = "Bearer ${{KANSA_TEST_TOKEN}}" }}',
    "json": 'kind = "http"\nprotocol = "json"\nurl = "{url}/predict"',
    "labels": 'kind = "http"\nurl = "{url}/v2/models/digits-labels/infer"\nreturns = "labels"',
}


def robust(table):
    rows = table[(table.metric == "robust_accuracy") & (table.subset == "all") & ~table.attack.str.startswith("ensemble")]
    return {(r.attack, r.param_value): r.value for r in rows.itertuples()}


def test_attacks_through_the_endpoint_give_the_in_process_numbers_and_no_secret_is_written(digits_model, tmp_path, monkeypatch):
    """The same model, seed and budgets, in process and behind the server: the same robust accuracy."""
    from audit import run_audit

    model, path = digits_model
    monkeypatch.setenv("KANSA_TEST_TOKEN", TOKEN)
    tables = {}
    with InferenceServer(model, (1, 8, 8)) as server:
        for how, model_keys in SERVED.items():
            text = AUDIT + model_keys.format(path=path, url=server.url) + "\n"
            tables[how] = run_audit(write(tmp_path / how / "audit.toml", text), tmp_path / how / "run", history=False).table
    local = robust(tables["local"])
    assert set(local) == {("square", 0.1), ("hopskipjump", 0.5), ("hopskipjump", 1.0)}
    assert robust(tables["v2"]) == local and robust(tables["json"]) == local
    # labels only: the score-based attack does not apply, the decision-based one gives the same numbers
    labels = tables["labels"]
    (square,) = labels[labels.attack == "square"].itertuples()
    assert square.status == "not_applicable" and "answers with labels only" in square.message
    assert robust(labels) == {k: v for k, v in local.items() if k[0] == "hopskipjump"}
    queries = tables["v2"][tables["v2"].metric == "queries"]
    assert set(queries.attack) == {"square", "hopskipjump"} and (queries.value > 0).all()
    assert "answered from the query cache" in queries.message.iloc[0]
    authorised = [h["Authorization"] for h in server.headers if "Authorization" in h]
    assert authorised and set(authorised) == {f"Bearer {TOKEN}"}
    for file in (tmp_path / "v2" / "run").rglob("*"):
        if file.is_file():
            assert TOKEN.encode() not in file.read_bytes(), file


def test_every_injected_fault_is_retried_until_the_answer_is_right(digits_model):
    model, _ = digits_model
    x = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    with InferenceServer(model, (1, 8, 8), slow_seconds=1.5) as server:
        endpoint = Endpoint(endpoint_cfg(f"{server.url}/v2/models/digits/infer", timeout=0.5, retries=6), 10, None)
        server.faults.extend(["500", "429", "slow", "malformed", "wrong_count", "reset"])
        with query_scope() as queried:
            answer = endpoint.scores(x)
        np.testing.assert_allclose(answer, expected, rtol=1e-6)
        assert queried["served"] == QueryCount(asked=20, sent=140, cached=0, requests=7, retries=6)
        assert server.requests == 7 and not server.faults
        again = endpoint.scores(x)  # from the cache: nothing sent
        assert server.requests == 7 and np.array_equal(again, answer)


def test_a_fault_that_outlasts_the_retries_is_one_line_naming_the_endpoint(digits_model):
    model, _ = digits_model
    with InferenceServer(model, (1, 8, 8)) as server:
        endpoint = Endpoint(endpoint_cfg(f"{server.url}/v2/models/digits/infer", retries=2), 10, None)
        server.faults.extend(["500"] * 3)
        with pytest.raises(EndpointError, match=r"served: http://127.0.0.1:\d+/v2/models/digits/infer failed 3 times; last: HTTP 500"):
            endpoint.scores(np.zeros((2, 1, 8, 8), np.float32))
        server.faults.extend(["wrong_count"] * 3)
        with pytest.raises(EndpointError, match=r"shape \(1, 10\) for 2 inputs; expected 10 scores per input"):
            endpoint.scores(np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32))


def test_query_budgets_are_never_exceeded(digits_model, tmp_path):
    model, _ = digits_model
    x = np.random.default_rng(1).random((100, 1, 8, 8), dtype=np.float32)
    with InferenceServer(model, (1, 8, 8)) as server:
        url = f"{server.url}/v2/models/digits/infer"
        audit_budget = Endpoint(endpoint_cfg(url, max_queries=60, batch_size=16), 10, tmp_path / "q.sqlite")
        audit_budget.scores(x[:40])
        with pytest.raises(EndpointError, match=r"max_queries = 60\) is spent: 56 inputs sent, 16 more asked"):
            audit_budget.scores(x[30:80])  # 10 cached, 40 to send: 16 fit, the next 16 would not
        assert server.inputs == 56 <= 60
        # another process of the same run shares the count
        assert Endpoint(endpoint_cfg(url, max_queries=60), 10, tmp_path / "q.sqlite").spent() == 56
        per_attack = Endpoint(endpoint_cfg(url, max_queries_per_attack=30), 10, None)
        with query_scope():
            per_attack.scores(x[:30])
            with pytest.raises(EndpointError, match="max_queries_per_attack = 30"):
                per_attack.scores(x[:1])  # cached, but the attack asked: its own budget counts it


def test_a_killed_server_leaves_error_rows_and_the_resumed_run_sends_no_input_twice(digits_model, tmp_path):
    from audit import run_audit

    model, _ = digits_model
    text = """
seed = 5
[data]
source = "digits"
[evaluation]
samples = 30
[checks]
enabled = false
[[models]]
name = "served"
kind = "http"
url = "{url}/v2/models/digits/infer"
timeout = 2
retries = 1
backoff = 0.01
[[attacks]]
name = "square"
eps = [0.1]
queries = 20
[[attacks]]
name = "hopskipjump"
eps = [1.0]
steps = 2
max_queries = 20
"""
    with InferenceServer(model, (1, 8, 8), stop_after=45) as first:
        config = write(tmp_path / "audit.toml", text.format(url=first.url))
        port = int(first.url.rsplit(":", 1)[1])
        interrupted = run_audit(config, tmp_path / "run", history=False)
    failed = interrupted.table[interrupted.table.status == "error"]
    assert set(failed.attack) == {"square", "hopskipjump"} and all("failed 2 times; last: no answer" in m for m in failed.message)
    with InferenceServer(model, (1, 8, 8), port=port) as second:
        resumed = run_audit(config, tmp_path / "run", history=False)
    assert (resumed.table.status != "error").all()
    # what the first server answered was never asked again, but for the 8 inputs each start asks twice (deployed model's fingerprint)
    assert len(set(first.digests) & set(second.digests)) == 8
    assert len(second.digests) - len(set(second.digests)) == 8
    fresh_dir = tmp_path / "fresh"
    with InferenceServer(model, (1, 8, 8), port=port):
        fresh = run_audit(write(fresh_dir / "audit.toml", text.format(url=f"http://127.0.0.1:{port}")), fresh_dir / "run", history=False)
    assert robust(resumed.table) == robust(fresh.table)


def test_a_model_redeployed_at_the_same_url_is_not_answered_from_the_old_ones_cache(digits_model, tmp_path):
    model, _ = digits_model
    x = np.random.default_rng(2).random((10, 1, 8, 8), dtype=np.float32)
    retrained = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    store = tmp_path / "q.sqlite"
    answers, port = [], 0
    for deployed in (model, retrained):
        with InferenceServer(deployed, (1, 8, 8), port=port) as server:
            port = int(server.url.rsplit(":", 1)[1])
            endpoint = Endpoint(endpoint_cfg(f"{server.url}/v2/models/digits/infer"), 10, store)
            assert endpoint.check_determinism(x[:4])
            answers.append((endpoint.identity, endpoint.scores(x)))
            with torch.no_grad():
                np.testing.assert_allclose(answers[-1][1], deployed(torch.from_numpy(x)).numpy(), rtol=1e-6)
    assert answers[0][0] != answers[1][0]  # and with it the cells' journal keys


def test_endpoint_config_errors_name_the_key(monkeypatch):
    with pytest.raises(ConfigError, match=r"models\[0\].secret_headers.Authorization: name the environment variable"):
        endpoint_cfg("http://127.0.0.1:1/x", secret_headers={"Authorization": "Bearer abc"})
    with pytest.raises(ConfigError, match=r"models\[0\].url: expected an http:// or https:// URL"):
        endpoint_cfg("ftp://host/x")
    monkeypatch.delenv("KANSA_UNSET_TOKEN", raising=False)
    cfg = endpoint_cfg("http://127.0.0.1:1/x", secret_headers={"Authorization": "Bearer ${KANSA_UNSET_TOKEN}"})
    with pytest.raises(ConfigError, match=r"models\[0\].secret_headers.Authorization: environment variable KANSA_UNSET_TOKEN is not set"):
        Endpoint(cfg, 10, None, Location("audit.toml", "models[0]"))


MEMBERSHIP = """
seed = 2
[data]
scale = 16
[data.train]
source = "npz"
path = "train.npz"
[data.holdout]
source = "npz"
path = "holdout.npz"
[data.test]
source = "npz"
path = "test.npz"
[[attacks]]
name = "mia_label_only"
members = 40
calibration = 20
max_iter = 1
max_eval = 10
init_eval = 5
[[models]]
name = "team"
"""


def test_label_only_membership_inference_through_a_labels_only_endpoint(tmp_path):
    """The team's members declared as data.train; the attacker sees labels only, and finds what the in-process attack finds."""
    from sklearn.datasets import load_digits

    from audit import run_audit

    digits = load_digits()
    images, labels = digits.images[:, None].astype(np.float32), digits.target
    parts = {"train": slice(0, 200), "holdout": slice(200, 500), "test": slice(500, 700)}
    for name, part in parts.items():
        np.savez(tmp_path / f"{name}.npz", x=images[part], y=labels[part])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.from_numpy(images[parts["train"]] / 16), torch.from_numpy(labels[parts["train"]])
    for _ in range(200):  # overfit on the members
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.eval()
    torch.jit.script(model).save(str(tmp_path / "team.ts"))
    with InferenceServer(model, (1, 8, 8)) as server:
        served = run_audit(write(tmp_path / "served" / "audit.toml", MEMBERSHIP.replace('path = "', 'path = "../') + (
            f'kind = "http"\nurl = "{server.url}/v2/models/team-labels/infer"\nreturns = "labels"\n')), tmp_path / "served" / "run", history=False)
    local = run_audit(write(tmp_path / "local" / "audit.toml", MEMBERSHIP.replace('path = "', 'path = "../') + 'kind = "torchscript"\npath = "../team.ts"\n'),
                      tmp_path / "local" / "run", history=False)

    def membership(table):
        rows = table[(table.attack == "mia_label_only") & (table.category == "confidentiality") & (table.status == "ok")]
        return {(r.metric, r.subset, -1.0 if np.isnan(r.param_value) else r.param_value): r.value for r in rows.itertuples()}

    assert membership(served.table) == membership(local.table)
    assert membership(served.table)[("auc", "all", -1.0)] > 0.6  # the overfit model leaks, seen through labels alone
    assert served.table[(served.table.metric == "queries") & (served.table.attack == "mia_label_only")].value.iloc[0] > 0


def test_the_serve_and_audit_example_is_a_valid_config_and_script(tmp_path, monkeypatch):
    import re

    from audit.config import load_config

    guide = (Path(__file__).resolve().parents[1] / "examples" / "serve_and_audit.md").read_text()
    blocks = dict(re.findall(r"```(python|toml)\n(.*?)```", guide, re.S))
    compile(blocks["python"], "serve.py", "exec")
    monkeypatch.setenv("DIGITS_TOKEN", "demo-token")
    config = load_config(write(tmp_path / "endpoint-audit.toml", blocks["toml"]))
    (model,) = config.models
    assert model["kind"] == "http" and model["secret_headers"] == {"Authorization": "Bearer ${DIGITS_TOKEN}"}


def test_an_audit_that_would_overrun_its_query_budget_stops_at_it(digits_model, tmp_path):
    """The server's own count stays within max_queries; the cells that would have overrun it are error rows saying so."""
    from audit import run_audit

    model, _ = digits_model
    with InferenceServer(model, (1, 8, 8)) as server:
        text = AUDIT + f'kind = "http"\nurl = "{server.url}/v2/models/digits/infer"\nmax_queries = 2500\n' + (
            '[[gates]]\nmetric = "robust_accuracy"\nattack = "square"\nat = 0.1\nthreshold = 0.0\n')
        result = run_audit(write(tmp_path / "audit.toml", text), tmp_path / "run", history=False)
    assert server.inputs <= 2500
    failed = result.table[result.table.status == "error"]
    assert set(failed.attack) == {"square", "hopskipjump"}  # the clean evaluation fit in the budget, the attacks did not
    assert all("max_queries = 2500) is spent" in message for message in failed.message)
    assert list(result.gates.verdict) == ["inconclusive"]
