"""A model behind an HTTP inference endpoint, queried as an attacker would: through its outputs, within a budget.

The endpoint is a gradient-free target (`audit.models`); what it reveals (scores, or labels only)
decides which attacks apply. Every query goes through `Endpoint.scores`, which

- answers repeated inputs from a per-input query cache (SQLite in the run folder, shared by every
  process of the run), so a resumed run, and every attack that queries the clean samples again,
  never pays twice for the same input;
- keeps to the budgets: `max_queries` inputs sent in the whole audit (across processes: the count
  lives in the same database), `max_queries_per_attack` inputs one attack asks (cached or not, so
  that an attack behaves the same on a resumed run); a query that would overrun a budget is not
  sent, and the cell becomes an error row;
- keeps to `rate_limit`, and retries 429, 5xx, timeouts, resets and malformed answers with
  exponential backoff (Retry-After wins), then fails with one line naming the endpoint and the fault.

Header values in `secret_headers` name environment variables (`${VAR}`); only the names are in the
config, so no secret reaches results, reports or logs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from audit.errors import KansaError
from audit.params import AnyTable, Choice, Location, Number, Param, Text

HTTP_PARAMS = (
    Param("url", Text(), doc="the endpoint to POST to, e.g. http://host:8080/v2/models/NAME/infer"),
    Param("protocol", Choice(("v2", "json")), "v2",
          "v2: the Open Inference Protocol (KServe, Triton, TorchServe); json: a plain JSON body, shaped by input_path and output_path"),
    Param("input_name", Text(), "input-0", "v2: the name of the input tensor"),
    Param("input_path", Text(), "instances", "json: the dotted path in the request body where the batch of inputs goes (nested lists)"),
    Param("output_path", Text(), "predictions", "json: the dotted path in the response to the batch's scores (one list per input) or labels"),
    Param("returns", Choice(("scores", "labels")), "scores",
          "what the endpoint answers: scores (logits or probabilities, see output) or labels only; labels-only endpoints get decision-based attacks"),
    Param("output", Choice(("auto", "logits", "probabilities")), "auto", "for scores: what they are; auto detects it"),
    Param("headers", AnyTable(), None, "headers sent with every request; not for secrets (they are recorded with the config)"),
    Param("secret_headers", AnyTable(), None,
          'headers whose values name environment variables, e.g. { Authorization = "Bearer ${API_TOKEN}" }; read when a request is sent, '
          "never written anywhere"),
    Param("batch_size", Number(1, 1_000_000, integer=True), 64, "inputs per request"),
    Param("timeout", Number(0, None, closed="neither"), 30, "seconds one request may take"),
    Param("retries", Number(0, 100, integer=True), 5, "attempts after the first for a 429, 5xx, timeout, reset or malformed answer"),
    Param("backoff", Number(0, None), 0.5, "seconds before the first retry, doubled for each next one (a Retry-After header wins)"),
    Param("rate_limit", Number(0, None, closed="neither"), None, "requests per second at most (per process)"),
    Param("max_queries", Number(1, None, integer=True), None, "inputs the whole audit may send to the endpoint (cached answers are free)"),
    Param("max_queries_per_attack", Number(1, None, integer=True), None,
          "inputs one attack cell may ask (cached answers count, so an attack behaves the same on a resumed run)"),
)
QUERY_STORE = "queries.sqlite"  # in the run folder
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RETRIED_STATUS = {429, 500, 502, 503, 504}
_MAX_WAIT = 60.0


class EndpointError(KansaError):
    """The endpoint could not answer (after retries), or a query would overrun a budget."""


def validate_http_config(values: dict[str, Any], where: Location) -> None:
    if not re.match(r"^https?://", values["url"]):
        raise where.child("url").error(f"expected an http:// or https:// URL, got {values['url']!r}")
    for key in ("headers", "secret_headers"):
        for name, value in (values[key] or {}).items():
            if not isinstance(value, str):
                raise where.child(key).child(name).error(f"a header value must be a string, got {type(value).__name__}")
    for name, value in (values["secret_headers"] or {}).items():
        if not _VARIABLE.search(value):
            raise where.child("secret_headers").child(name).error(
                "name the environment variable that holds the secret, e.g. \"Bearer ${API_TOKEN}\"; a secret written into the config "
                "would be recorded with it")


@dataclass
class QueryCount:
    """Queries of one endpoint within a scope: inputs asked, inputs sent (every attempt), inputs the cache answered, requests, retries."""

    asked: int = 0
    sent: int = 0
    cached: int = 0
    requests: int = 0
    retries: int = 0


@dataclass
class _Scope:
    counts: dict[str, QueryCount] = field(default_factory=dict)


_SCOPES: list[_Scope] = []


@contextmanager
def query_scope() -> Iterator[dict[str, QueryCount]]:
    """Count every endpoint query made inside (per endpoint name): an attack cell's queries, and its per-attack budget."""
    scope = _Scope()
    _SCOPES.append(scope)
    try:
        yield scope.counts
    finally:
        _SCOPES.remove(scope)


class _Store:
    """The run's query cache and the audit's count of inputs sent, in one SQLite file every process of the run shares."""

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path is not None else ":memory:", timeout=60, check_same_thread=False)
        with self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value BLOB)")
            self._db.execute("CREATE TABLE IF NOT EXISTS spent (endpoint TEXT PRIMARY KEY, inputs INTEGER)")
        self._lock = threading.Lock()

    def answers(self, keys: list[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(self._db.execute(f"SELECT key, value FROM answers WHERE key IN ({marks})", chunk).fetchall())
        return found

    def keep(self, pairs: list[tuple[str, bytes]]) -> None:
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?)", pairs)

    def reserve(self, endpoint: str, inputs: int, limit: int | None) -> None:
        """Count `inputs` as sent, or raise without counting them when they would overrun `limit`."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")  # one process at a time reads and raises the count
            row = self._db.execute("SELECT inputs FROM spent WHERE endpoint = ?", (endpoint,)).fetchone()
            spent = row[0] if row else 0
            if limit is not None and spent + inputs > limit:
                raise EndpointError(f"the audit's query budget for {endpoint} (max_queries = {limit}) is spent: {spent} inputs sent, "
                                    f"{inputs} more asked")
            self._db.execute("INSERT OR REPLACE INTO spent VALUES (?, ?)", (endpoint, spent + inputs))

    def reset(self) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM spent")

    def spent(self, endpoint: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT inputs FROM spent WHERE endpoint = ?", (endpoint,)).fetchone()
        return row[0] if row else 0


def forget_spent(path: Path) -> None:
    """Start the audit's budget count afresh (a fresh run), keeping the cached answers."""
    if path.exists():
        _Store(path).reset()


class Endpoint:
    """One configured endpoint: `scores(x)` answers a batch of inputs as a (n, n_classes) array (one-hot for labels-only)."""

    def __init__(self, cfg: dict[str, Any], n_classes: int, store_path: Path | None, where: Location | None = None) -> None:
        self.cfg, self.name, self.n_classes = cfg, cfg["name"], n_classes
        self.labels_only = cfg["returns"] == "labels"
        self.where = where or Location("config", "models")
        identity = {k: cfg[k] for k in ("url", "protocol", "input_name", "input_path", "output_path", "returns")}
        self.identity = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).digest()
        self._store = _Store(store_path)
        self._last_request = 0.0
        self.caches_answers = True
        self._secret_headers()  # a missing variable is a config error now, not a failed cell later

    def scores(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        keys = self._keys(x)
        counts = [scope.counts.setdefault(self.name, QueryCount()) for scope in _SCOPES]
        limit = self.cfg["max_queries_per_attack"]
        for count in counts:
            if limit is not None and count.asked + len(x) > limit:
                raise EndpointError(f"the attack's query budget for {self.name} (max_queries_per_attack = {limit}) is spent: "
                                    f"{count.asked} inputs asked, {len(x)} more wanted")
            count.asked += len(x)
        cached = self._store.answers(keys) if self.caches_answers else {}
        first_of: dict[str, int] = {}  # each input not yet answered, once (a batch may repeat one)
        for i, key in enumerate(keys):
            if key not in cached:
                first_of.setdefault(key, i)
        missing = list(first_of.values())
        for count in counts:
            count.cached += len(x) - len(missing)
        width = 1 if self.labels_only else self.n_classes
        for start in range(0, len(missing), self.cfg["batch_size"]):
            chunk = missing[start : start + self.cfg["batch_size"]]
            answers = {keys[i]: answer.tobytes() for i, answer in zip(chunk, self._query(x[chunk], counts))}
            if self.caches_answers:
                self._store.keep(list(answers.items()))
            cached.update(answers)
        out = np.stack([np.frombuffer(cached[key], dtype=np.float32, count=width) for key in keys]) if len(keys) else np.zeros((0, width), np.float32)
        if not self.labels_only:
            return out
        return np.eye(self.n_classes, dtype=np.float32)[out[:, 0].astype(np.int64)]

    def check_determinism(self, x: np.ndarray) -> bool:
        """Ask `x` twice, past the cache, at every start: True when the answers agree.

        Answers that differ (a randomised model behind the endpoint) turn the cache off, which would
        otherwise hide the randomness from the audit's randomness probe, and with it the expectation
        over passes that attacks on a randomised model need. Answers that agree become part of the
        endpoint's identity: a model redeployed at the same URL answers differently, so neither its
        cached answers nor the journaled cells of the model before it are taken for its own.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        first, second = self._query(x, []), self._query(x, [])
        self.caches_answers = bool(np.array_equal(first, second))
        if self.caches_answers:
            self.identity = hashlib.sha256(self.identity + first.tobytes()).digest()
            self._store.keep([(key, answer.tobytes()) for key, answer in zip(self._keys(x), first)])
        return self.caches_answers

    def _keys(self, x: np.ndarray) -> list[str]:
        return [hashlib.sha256(self.identity + row.tobytes()).hexdigest() for row in x]

    def spent(self) -> int:
        """Inputs this audit sent to the endpoint so far, in every process."""
        return self._store.spent(self.name)

    def _query(self, x: np.ndarray, counts: list[QueryCount]) -> np.ndarray:
        body = json.dumps(self._request(x)).encode()
        headers = {"Content-Type": "application/json", **(self.cfg["headers"] or {}), **self._secret_headers()}
        fault = ""
        for attempt in range(self.cfg["retries"] + 1):
            self._store.reserve(self.name, len(x), self.cfg["max_queries"])
            for count in counts:
                count.sent += len(x)
                count.requests += 1
                count.retries += attempt > 0
            self._pace()
            wait = self.cfg["backoff"] * 2**attempt
            try:
                request = urllib.request.Request(self.cfg["url"], data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.cfg["timeout"]) as response:
                    return self._answer(response.read(), len(x))
            except urllib.error.HTTPError as exc:
                if exc.code not in _RETRIED_STATUS:
                    raise EndpointError(f"{self.name}: the endpoint answered HTTP {exc.code} {exc.reason}, which a retry would not change") from None
                fault = f"HTTP {exc.code} {exc.reason}"
                wait = max(wait, _retry_after(exc.headers.get("Retry-After")))
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # refused, reset, timed out, cut short
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                fault = f"no answer ({type(reason).__name__}: {reason})" if str(reason) else f"no answer ({type(reason).__name__})"
            except _Malformed as exc:
                fault = str(exc)
            if attempt < self.cfg["retries"]:
                time.sleep(min(wait, _MAX_WAIT))
        raise EndpointError(f"{self.name}: {self.cfg['url']} failed {self.cfg['retries'] + 1} times; last: {fault}")

    def _secret_headers(self) -> dict[str, str]:
        values = {}
        for header, template in (self.cfg["secret_headers"] or {}).items():
            def value(match: re.Match[str]) -> str:
                variable = match.group(1)
                if variable not in os.environ:
                    raise self.where.child("secret_headers").child(header).error(f"environment variable {variable} is not set")
                return os.environ[variable]

            values[header] = _VARIABLE.sub(value, template)
        return values

    def _pace(self) -> None:
        if self.cfg["rate_limit"]:
            wait = self._last_request + 1.0 / self.cfg["rate_limit"] - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._last_request = time.monotonic()

    def _request(self, x: np.ndarray) -> dict[str, Any]:
        if self.cfg["protocol"] == "v2":
            return {"inputs": [{"name": self.cfg["input_name"], "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        body: dict[str, Any] = {}
        *parents, leaf = self.cfg["input_path"].split(".")
        node = body
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = x.tolist()
        return body

    def _answer(self, raw: bytes, n: int) -> np.ndarray:
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _Malformed(f"the answer is not JSON ({raw[:60]!r})") from None
        try:
            if self.cfg["protocol"] == "v2":
                output = payload["outputs"][0]
                values = np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])
            else:
                node = payload
                for part in self.cfg["output_path"].split("."):
                    node = node[part]
                values = np.asarray(node, dtype=np.float64)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise _Malformed(f"the answer does not have the declared shape ({type(exc).__name__}: {exc})") from None
        width = 1 if self.labels_only else self.n_classes
        values = values.reshape(n, -1) if values.size == n * width else values
        if values.shape != (n, width):
            what = "one label" if self.labels_only else f"{self.n_classes} scores"
            raise _Malformed(f"the answer has shape {values.shape} for {n} inputs; expected {what} per input")
        if not np.isfinite(values).all() or (self.labels_only and not np.isin(values, np.arange(self.n_classes)).all()):
            raise _Malformed("the answer holds " + ("labels outside 0..n_classes-1" if self.labels_only else "NaN or infinite scores"))
        return values.astype(np.float32)


class _Malformed(Exception):
    """An answer that does not parse or has the wrong shape: retried, as a truncated answer may be transient."""


def _retry_after(header: str | None) -> float:
    try:
        return max(0.0, float(header)) if header is not None else 0.0
    except ValueError:
        return 0.0  # an HTTP date: the backoff decides
