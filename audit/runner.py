"""The one place that knows the order of an audit: data, models, attacks, results, outputs."""

from __future__ import annotations

import hashlib
import json
import platform
import random
import re
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from audit.checks import (
    RANDOMIZED,
    apply_waivers,
    flag,
    probe_convergence,
    probe_gradients,
    probe_large_eps,
    probe_noise,
    probe_randomness,
    table_checks,
)
from audit.config import Config, load_config
from audit.data import Dataset, Splits, load_dataset, quality_rows, split_dataset
from audit.errors import KansaError, describe_exception
from audit.gates import evaluate_gates, overall_verdict, validate_gates_config
from audit.history import History, default_path, git_state, resolve_baseline
from audit.models import (
    Target,
    build_builtin,
    count_parameters,
    detect_output,
    expectation,
    load_user_model,
    make_target,
    train,
    validate_model_config,
)
from audit.params import Location
from audit.results import AuditResult, count_row, error_row, load_results, make_table, rate_row


def derive_seed(seed: int, *labels: str) -> int:
    """A stable per-component seed, so adding a model or attack does not reshuffle the others."""
    digest = hashlib.sha256("/".join([str(seed), *labels]).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bars = not quiet and sys.stderr.isatty()

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"kansa: {message}", file=sys.stderr, flush=True)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("kansa", "torch", "adversarial-robustness-toolbox", "numpy", "pandas", "scikit-learn"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def _performance_rows(target: Target, dataset: Dataset, splits: Splits) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for split_name, idx in splits.items():
        pred = target.predict(dataset.x[idx])
        correct = int((pred == dataset.y[idx]).sum())
        rows.append(rate_row("accuracy", correct, len(idx), subset=f"split={split_name}"))
        if split_name != "test":
            continue
        truth = dataset.y[idx]
        for label, name in enumerate(dataset.class_names):
            predicted, actual = pred == label, truth == label
            hits = int((predicted & actual).sum())
            rows.append(rate_row("precision", hits, int(predicted.sum()), subset=f"class={name}"))
            rows.append(rate_row("recall", hits, int(actual.sum()), subset=f"class={name}"))
            for other, other_name in enumerate(dataset.class_names):
                count = int((actual & (pred == other)).sum())
                rows.append(count_row("confusion", count, subset=f"true={name};pred={other_name}"))
    return [{**row, "category": "performance"} for row in rows]


def _prepare_model(
    cfg: dict[str, Any], dataset: Dataset, splits: Splits, config: Config, progress: Progress
) -> tuple[Target, list[dict[str, Any]]]:
    name = cfg["name"]
    cost: list[dict[str, Any]] = []
    if cfg["kind"] == "builtin":
        import torch

        torch.manual_seed(derive_seed(config.seed, "init", name))
        module = build_builtin(cfg, dataset.input_shape, dataset.n_classes, dataset.is_image)
        progress.say(f"training {name} on {len(splits.train)} samples ({cfg['epochs']} epochs)")
        seconds = train(
            module, dataset.x[splits.train], dataset.y[splits.train], cfg,
            derive_seed(config.seed, "train", name), progress.bars, name,
        )
        cost.append(count_row("training_seconds", seconds, category="cost"))
        output_kind = "logits"
    else:
        module = load_user_model(cfg, config.base_dir)
        output_kind = cfg["output"]
        if cfg["kind"] == "pickle":
            cost.append(count_row("unsafe_pickle_loaded", 1, category="model", message=(
                f"{cfg['path']} was unpickled with allow_unsafe_pickle = true: loading it could run any code it holds"
            )))
    output_kind = detect_output(module, dataset.x[splits.train[:8]], dataset.n_classes, output_kind, name)
    total, nonzero = count_parameters(module)
    cost += [count_row("parameters", total, category="cost"), count_row("nonzero_parameters", nonzero, category="cost")]
    return make_target(module, dataset, output_kind, name), cost


def trainer_for(cfg: dict[str, Any], dataset: Dataset) -> Callable[[np.ndarray, np.ndarray, int], Target]:
    """Train models like the target (shadow, reference and surrogate models).

    A built-in model is retrained with its own recipe; a loaded model, whose recipe Kansa cannot
    know, is approximated by the built-in architecture and recipe for the data.
    """
    if cfg["kind"] != "builtin":
        cfg = {**validate_model_config({"kind": "builtin"}, Location("(surrogate)")), "name": cfg["name"]}

    def train_like_target(x: np.ndarray, y: np.ndarray, seed: int) -> Target:
        import torch

        torch.manual_seed(seed)
        module = build_builtin(cfg, dataset.input_shape, dataset.n_classes, dataset.is_image)
        train(module, x, y, cfg, seed, progress=False, label=f"{cfg['name']} (reference)")
        return make_target(module, dataset, "logits", f"{cfg['name']}-reference")

    return train_like_target


class _ModelAudit:
    """Every attack cell of one model, the per-sample ensemble over them, and the sanity checks."""

    def __init__(self, config: Config, target: Target, trainer: Callable[..., Target], dataset: Dataset, splits: Splits,
                 x: np.ndarray, y: np.ndarray, progress: Progress) -> None:
        self.config, self.target, self.trainer = config, target, trainer
        self.dataset, self.splits, self.x, self.y, self.progress = dataset, splits, x, y, progress
        self.where = {"model": target.name, "defense": target.defense}

    def run(self, cells: list[dict[str, Any]], artifacts: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        from attacks import registry

        checks_on = self.config.checks["enabled"]
        sanity = self._probe_model() if checks_on else []
        rows: list[dict[str, Any]] = []
        integrity: dict[str, Any] = {}
        outputs = {}
        for attack_cfg in self.config.attacks:
            attack = registry()[attack_cfg["name"]](**attack_cfg["params"])
            cell_rows, output = self._cell(attack, attack_cfg["id"], cells, artifacts)
            rows += cell_rows
            if output is not None and attack.category == "integrity":
                integrity[attack_cfg["id"]] = attack
                outputs[attack_cfg["id"]] = (attack.norm, output)
        if outputs:
            from attacks.base import ensemble_rows

            rows += [{**row, "category": "integrity"} for row in ensemble_rows(outputs, self.y, self.dataset.class_names)]
            if checks_on:
                sanity += self._probe_results(make_table([{**r, **self.where} for r in rows]), integrity)
        if not integrity:
            sanity = []  # the checks judge robustness numbers; without any there is nothing to judge
        sanity = apply_waivers(sanity, self.target.name, self.config.waivers)
        return [{**row, **self.where} for row in rows + sanity]

    def _probe_model(self) -> list[dict[str, Any]]:
        seed_everything(derive_seed(self.config.seed, "checks", self.target.name))
        if probe_randomness(self.target, self.x):
            samples = self.config.checks["eot_samples"]
            self.target = expectation(self.target, samples)
            note = flag(RANDOMIZED, True, f"identical calls gave different outputs; every attack used the expectation over {samples} passes")
        else:
            note = flag(RANDOMIZED, False, "identical calls gave identical outputs")
        return [note, probe_gradients(self.target, self.x, self.y)]

    def _probe_results(self, table: pd.DataFrame, attacks: dict[str, Any]) -> list[dict[str, Any]]:
        self.progress.say(f"sanity checks on {self.target.name}")
        seed = derive_seed(self.config.seed, "checks", self.target.name, "results")
        seed_everything(seed)
        return [
            *table_checks(table, attacks),
            *probe_noise(self.target, self.x, self.y, table, attacks, seed),
            probe_large_eps(self.target, self.x, self.y, self.dataset.n_classes),
            *probe_convergence(self.target, self.x, self.y, table, attacks),
        ]

    def _cell(self, attack: Any, attack_id: str, cells: list[dict[str, Any]],
              artifacts: dict[str, dict[str, np.ndarray]]) -> tuple[list[dict[str, Any]], Any]:
        """One attack on this model, repeated with other seeds when it is randomised; errors become a row."""
        from attacks.base import AttackContext

        name, defense = self.target.name, self.target.defense
        where = {"attack": attack_id, "category": attack.category}
        cell_seed = derive_seed(self.config.seed, "attack", name, defense, attack_id)
        repeats = self.config.evaluation["repeats"] if attack.randomized else 1
        self.progress.say(f"attacking {name} with {attack_id} on {len(self.y)} samples" + (f" ({repeats} repeats)" if repeats > 1 else ""))
        start = time.perf_counter()
        runs = []
        try:
            for repeat in range(repeats):
                seed = cell_seed if repeat == 0 else derive_seed(cell_seed, f"repeat{repeat}")
                seed_everything(seed)
                context = AttackContext(seed, self.dataset.class_names, self.dataset, self.splits, self.trainer)
                runs.append(attack.run(self.target, self.x, self.y, context))
        except Exception as exc:  # one failing attack must not lose the rest of the audit
            message = describe_exception(exc, limit=500)
            cells.append({**self.where, "attack": attack_id, "seed": cell_seed, "seconds": time.perf_counter() - start, "status": "error", "message": message})
            self.progress.say(f"attack {attack_id} on {name} failed: {message}")
            return [error_row(message, **where)], None
        seconds = time.perf_counter() - start
        output = runs[0]
        metric_rows = output.rows if repeats == 1 else mean_over_repeats([run.rows for run in runs])
        key = f"{len(artifacts):02d}-{_slug(name)}-{_slug(defense)}-{_slug(attack_id)}"
        artifacts[key] = {**output.artifacts, **{f"sample/{k}": v for k, v in output.per_sample.items()}}
        cells.append({**self.where, "attack": attack_id, "seed": cell_seed, "repeats": repeats, "seconds": seconds,
                      "status": "ok", "artifact": f"artifacts/{key}.npz"})
        cost = count_row("attack_seconds", seconds, category="cost", attack=attack_id)
        return [{**row, **where} for row in metric_rows] + [cost], output


def mean_over_repeats(repeats: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of several seeds of one attack: the mean value and interval, and the standard deviation across seeds."""
    merged = []
    for versions in zip(*repeats, strict=True):
        values = np.array([v.get("value", np.nan) for v in versions], dtype=np.float64)
        merged.append({
            **versions[0],
            "value": float(values.mean()),
            "ci_low": float(np.mean([v.get("ci_low", np.nan) for v in versions])),
            "ci_high": float(np.mean([v.get("ci_high", np.nan) for v in versions])),
            "std": float(values.std(ddof=1)),
        })
    return merged


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:40] or "x"


def _seed_manifest(config: Config) -> dict[str, Any]:
    """Every derived seed, so a reader can re-create any part of the run (cells carry their own)."""
    return {
        "seed": config.seed,
        "sample": derive_seed(config.seed, "sample"),
        "split": derive_seed(config.seed, "split"),
        "evaluation": derive_seed(config.seed, "evaluation"),
        "models": {m["name"]: {"init": derive_seed(config.seed, "init", m["name"]), "train": derive_seed(config.seed, "train", m["name"])}
                   for m in config.models},
    }


def _check_out_dir(out_dir: Path, config_digest: str, force: bool) -> None:
    """Refuse to overwrite a folder holding anything but an earlier run of this very config."""
    if force or not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise KansaError(f"output folder {out_dir} is a file")
    if not any(out_dir.iterdir()):
        return
    try:
        previous = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))["metadata"]["config_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        previous = None
    if previous == config_digest:
        return
    held = "a run of a different config (or seed)" if previous else "files that are not a complete Kansa run"
    raise KansaError(f"output folder {out_dir} holds {held}; choose another --out, or pass --force to overwrite it")


def run_audit(
    config: str | Path | Config,
    out_dir: str | Path | None = None,
    seed: int | None = None,
    quiet: bool = True,
    baseline: str | None = None,
    history: bool | None = None,
    force: bool = False,
    lang: str = "en",
) -> AuditResult:
    """Run the whole audit and evaluate its gates.

    Writes every output into `out_dir` when given. `baseline` (a results.json, a run folder, a
    run id or "last-pass") feeds regression gates; `history` (default: the config's
    [history] enabled) records the run in the history database.
    """
    started = time.perf_counter()
    if not isinstance(config, Config):
        config = load_config(config, seed=seed)
    elif seed is not None:
        config.seed = seed
    if out_dir is not None:
        _check_out_dir(Path(out_dir), config.digest(), force)
    store = History(default_path(config.history["path"], config.base_dir))
    git = git_state(config.base_dir)
    baseline_table, baseline_label = resolve_baseline(baseline, store, git[1], config.title) if baseline else (None, None)
    progress = Progress(quiet)
    dataset = load_dataset(config.data, config.base_dir, derive_seed(config.seed, "sample"))
    splits = split_dataset(dataset, config.data["split"], derive_seed(config.seed, "split"))
    progress.say(
        f"data {dataset.name}: {len(dataset.y)} samples, {dataset.n_classes} classes, "
        f"split {len(splits.train)} / {len(splits.holdout)} / {len(splits.test)}"
    )
    rows = quality_rows(dataset, splits)
    eval_idx = splits.test
    limit = config.evaluation["samples"]
    if limit is not None and limit < len(eval_idx):
        eval_idx = np.sort(np.random.default_rng(derive_seed(config.seed, "evaluation")).choice(eval_idx, limit, replace=False))
    x_eval, y_eval = dataset.x[eval_idx], dataset.y[eval_idx]
    models_meta: list[dict[str, Any]] = []
    cells: list[dict[str, Any]] = []
    artifacts: dict[str, dict[str, np.ndarray]] = {}
    prepared = []
    for model_cfg in config.models:  # every model is loaded and checked before any attack spends time
        name = model_cfg["name"]
        target, cost_rows = _prepare_model(model_cfg, dataset, splits, config, progress)
        rows += [{**row, "model": name} for row in cost_rows + _performance_rows(target, dataset, splits)]
        models_meta.append({"name": name, "kind": model_cfg["kind"], "output": target.output_kind, "sha256": target.digest})
        prepared.append((target, trainer_for(model_cfg, dataset)))
    for target, trainer in prepared:
        audit = _ModelAudit(config, target, trainer, dataset, splits, x_eval, y_eval, progress)
        rows += audit.run(cells, artifacts)
    table = make_table(rows)
    metadata = {
        "schema": "kansa.results/1",
        "run_id": uuid.uuid4().hex[:12],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "title": config.title,
        "config_path": str(config.path),
        "config_sha256": config.digest(),
        "config": config.validated(),
        "config_text": config.text,
        "seed": config.seed,
        "data": {
            "name": dataset.name,
            "sha256": dataset.digest(),
            "samples": int(len(dataset.y)),
            "input_shape": list(dataset.input_shape),
            "input_range": list(dataset.input_range),
            "is_image": dataset.is_image,
            "classes": dataset.class_names,
            "split_sizes": {k: int(len(v)) for k, v in splits.items()},
            "evaluation_samples": int(len(eval_idx)),
        },
        "models": models_meta,
        "cells": cells,
        "versions": versions(),
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "python": sys.executable},
        "git": {"commit": git[0], "branch": git[1]},
        "seeds": _seed_manifest(config),
        "repeats": config.evaluation["repeats"],
        "baseline": baseline_label,
    }
    metadata["wall_seconds"] = time.perf_counter() - started
    result = AuditResult(table=table, metadata=metadata, artifacts=artifacts)
    result.gates = evaluate_gates(config.gates, table, baseline_table)
    if out_dir is not None:
        from reports import write_outputs

        result.out_dir = Path(out_dir)
        write_outputs(result, result.out_dir, lang)
    if config.history["enabled"] if history is None else history:
        store.record(result, overall_verdict(result.gates), git)
    return result


def regate(run_dir: str | Path, config: str | Path | None = None, baseline: str | None = None) -> AuditResult:
    """Re-evaluate gates on a finished run (its own gates, or those of `config`) without re-running anything."""
    table, metadata = load_results(run_dir)
    if config is not None:
        loaded = load_config(config)
        gates, history_path, base_dir = loaded.gates, loaded.history["path"], loaded.base_dir
    else:
        stored = metadata["config"]
        gates = validate_gates_config(stored.get("gates"), Location(f"{run_dir} (stored config)", "gates"))
        history_path, base_dir = None, Path(metadata["config_path"]).parent
    baseline_table, baseline_label = None, None
    if baseline:
        store = History(default_path(history_path, base_dir))
        baseline_table, baseline_label = resolve_baseline(baseline, store, metadata.get("git", {}).get("branch"), metadata["title"])
    result = AuditResult(table=table, metadata={**metadata, "baseline": baseline_label}, out_dir=Path(run_dir))
    result.gates = evaluate_gates(gates, table, baseline_table)
    return result
