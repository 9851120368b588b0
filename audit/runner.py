"""The one place that knows the order of an audit: plan the cells, hand them to an executor, assemble, write.

Stages: train the models, build their defended variants, run every (model, variant, attack) cell,
finish each variant (worst case and sanity checks). Each stage's tasks are independent, so the
executor may run them anywhere; results are assembled in plan order, so every executor gives the
same table. Finished cells are journaled in the run folder, which makes an interrupted run resumable.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from audit.cache import array_digest, default_cache_path
from audit.cells import JOURNAL, JOURNAL_OWNER, CellResult, Task, content_key, load_cell, save_cell, waived
from audit.config import UNDEFENDED, Config, check_against_data, load_config
from audit.data import quality_rows
from audit.errors import KansaError
from audit.executors import Executor, make_executor
from audit.files import write_text_atomic
from audit.gates import evaluate_gates, overall_verdict, validate_gates_config
from audit.history import History, default_path, git_state, resolve_baseline
from audit.models import module_digest
from audit.params import Location
from audit.results import AuditResult, load_results, make_table
from audit.session import AuditSession, Progress, adopt_session, derive_seed


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("kansa", "torch", "adversarial-robustness-toolbox", "numpy", "pandas", "scikit-learn"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def _seed_manifest(config: Config) -> dict[str, Any]:
    """Every derived seed, so a reader can re-create any part of the run (cells carry their own)."""
    return {
        "seed": config.seed,
        "sample": derive_seed(config.seed, "sample"),
        "split": derive_seed(config.seed, "split"),
        "evaluation": derive_seed(config.seed, "evaluation"),
        "models": {m["name"]: {"init": derive_seed(config.seed, "init", m["name"]), "train": derive_seed(config.seed, "train", m["name"])}
                   for m in config.models},
        "defenses": {m["name"]: {d["id"]: derive_seed(config.seed, "defense", m["name"], d["id"]) for d in config.defenses if m["name"] in d["models"]}
                     for m in config.models},
    }


def _check_out_dir(out_dir: Path, config_digest: str, force: bool) -> None:
    """Refuse to overwrite a folder holding anything but an earlier (finished or interrupted) run of this very config."""
    if force or not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise KansaError(f"output folder {out_dir} is a file")
    if not any(out_dir.iterdir()):
        return
    previous = None
    for record, path in (("results", out_dir / "results.json"), ("journal", out_dir / JOURNAL / JOURNAL_OWNER)):
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            previous = loaded["metadata"]["config_sha256"] if record == "results" else loaded["config_sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if previous == config_digest:
            return
    held = "a run of a different config (or seed)" if previous else "files that are not a Kansa run"
    raise KansaError(f"output folder {out_dir} holds {held}; choose another --out, or pass --force to overwrite it "
                     "(cells the change leaves untouched are still reused)")


def _defense_class(defense_cfg: dict[str, Any]) -> Any:
    from defenses import registry

    return registry()[defense_cfg["name"]]


class _Journal:
    """Finished cells of this run folder, read back on resume and written as each cell completes."""

    def __init__(self, out_dir: Path | None, resume: bool, config_digest: str) -> None:
        self.out_dir, self.resume = out_dir, resume
        if out_dir is not None:
            if not resume:
                shutil.rmtree(out_dir / JOURNAL, ignore_errors=True)
            write_text_atomic(out_dir / JOURNAL / JOURNAL_OWNER, json.dumps({"config_sha256": config_digest}))

    def load(self, key: str) -> CellResult | None:
        return load_cell(self.out_dir, key) if self.out_dir is not None and self.resume else None

    def save(self, cell: CellResult) -> None:
        if self.out_dir is not None:
            save_cell(self.out_dir, cell)

    def keep_only(self, keys: set[str]) -> None:
        """Drop journaled cells no longer in the plan (an earlier config's), once the run is complete."""
        if self.out_dir is not None:
            for path in (self.out_dir / JOURNAL).glob("*.npz"):
                if path.stem not in keys:
                    path.unlink(missing_ok=True)
            for debris in (self.out_dir / JOURNAL).glob(".*.tmp"):  # a write a kill interrupted
                debris.unlink(missing_ok=True)


def _run_stage(executor: Executor, tasks: list[Task], training: dict[str, list[str]],
               on_done: Any = None) -> list[Any]:
    """Run tasks through the executor; results in task order, each handed to `on_done` as soon as it finishes."""
    results: list[Any] = [None] * len(tasks)
    for index, (result, trained, reused) in executor.run(tasks):
        training["trained"] += trained
        training["from_cache"] += reused
        results[index] = result
        if on_done is not None:
            on_done(result)
    return results


def run_audit(
    config: str | Path | Config,
    out_dir: str | Path | None = None,
    seed: int | None = None,
    quiet: bool = True,
    baseline: str | None = None,
    history: bool | None = None,
    force: bool = False,
    lang: str = "en",
    executor: str | None = None,
    resume: bool | None = None,
) -> AuditResult:
    """Run the whole audit and evaluate its gates.

    Writes every output into `out_dir` when given. `baseline` (a results.json, a run folder, a
    run id or "last-pass") feeds regression gates; `history` (default: the config's
    [history] enabled) records the run in the history database. `executor` ("local" or "ray")
    and `resume` override the config's [execution] table.
    """
    started = time.perf_counter()
    if not isinstance(config, Config):
        config = load_config(config, seed=seed)
    elif seed is not None:
        config.seed = seed
    execution = {**config.execution, **({"executor": executor} if executor else {}), **({"resume": resume} if resume is not None else {})}
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_out_dir(out, config.digest(), force)
    store = History(default_path(config.history["path"], config.base_dir))
    git = git_state(config.base_dir)
    baseline_table, baseline_label = resolve_baseline(baseline, store, git[1], config.title) if baseline else (None, None)
    progress = Progress(quiet)
    cache_root = default_cache_path(config.cache["path"], config.base_dir) if config.cache["enabled"] else None
    if cache_root is None and execution["executor"] == "ray":  # workers share trained weights through files even when the cache is off
        cache_root = out / ".weights" if out is not None else Path(tempfile.mkdtemp(prefix="kansa-weights-"))
    if execution["threads"]:
        import torch

        torch.set_num_threads(execution["threads"])
    session = AuditSession(config, cache_root, progress)
    adopt_session(session)  # local tasks run on this very session
    dataset, splits = session.dataset, session.splits
    check_against_data(config, dataset, splits)
    progress.say(
        f"data {dataset.name}: {len(dataset.y)} samples, {dataset.n_classes} classes, "
        f"split {len(splits.train)} / {len(splits.holdout)} / {len(splits.test)}"
    )
    journal = _Journal(out, execution["resume"], config.digest())
    training: dict[str, list[str]] = {"trained": [], "from_cache": []}
    runner = make_executor(execution)
    try:
        def task(kind: str, model: str, **fields: Any) -> Task:
            return Task(kind, config, cache_root, model, quiet=quiet or runner.name != "local", **fields)

        names = [m["name"] for m in config.models]
        _run_stage(runner, [task("model", name) for name in names], training)  # every model is checked before any attack
        pairs = [(name, UNDEFENDED) for name in names] + [(name, d["id"]) for name in names for d in config.defenses if name in d["models"]]
        pairs.sort(key=lambda pair: names.index(pair[0]))
        built = _run_stage(runner, [task("variant", model, defense=defense) for model, defense in pairs], training)
        variants = {pair: result for pair, result in zip(pairs, built)}
        attacked = [pair for pair in pairs if variants[pair][1] is not None]
        common = {"data": dataset.digest(), "evaluation": config.evaluation, "eval": array_digest(session.eval_idx),
                  "checks": config.checks, "seed": config.seed}
        cells: dict[tuple[str, str, str], CellResult] = {}
        pending = []
        for model, defense in attacked:
            for attack_cfg in config.attacks:
                key = content_key(common, variants[(model, defense)][1], attack_cfg, model, defense)
                cell = journal.load(key)
                if cell is None:
                    pending.append(task("attack", model, defense=defense, attack=attack_cfg["id"], key=key))
                else:
                    cells[(model, defense, attack_cfg["id"])] = cell
        if len(cells):
            progress.say(f"resuming: {len(cells)} finished cell(s) journaled in {out}")
        for cell in _run_stage(runner, pending, training, journal.save):
            cells[(cell.record["model"], cell.record["defense"], cell.record["attack"])] = cell
        finishing, finished = [], {}
        for model, defense in attacked:
            inputs = [cells[(model, defense, a["id"])] for a in config.attacks]
            key = content_key(common, variants[(model, defense)][1], [cell.key for cell in inputs], "finish")
            done = journal.load(key)
            if done is None:
                finishing.append(task("finish", model, defense=defense, key=key, inputs=inputs))
            else:
                finished[(model, defense)] = done
        for cell in _run_stage(runner, finishing, training, journal.save):
            finished[(cell.record["model"], cell.record["defense"])] = cell
    finally:
        runner.close()
    rows = quality_rows(dataset, splits)
    models_meta, variants_meta, cell_records, artifacts = [], [], [], {}
    for name in names:
        model = session.model(name)
        models_meta.append({"name": name, "kind": model.cfg["kind"], "output": model.output_kind, "sha256": module_digest(model.module)})
        rows += [{**row, "model": name} for row in model.rows]
    for model, defense in pairs:
        variant_rows, digest, cached = variants[(model, defense)]
        rows += variant_rows
        if digest is None:
            continue
        variants_meta.append({"model": model, "defense": defense, "sha256": digest, "cached": cached})
        where = {"model": model, "defense": defense}
        for attack_cfg in config.attacks:
            cell = cells[(model, defense, attack_cfg["id"])]
            rows += [{**row, **where} for row in cell.rows]
            cell_records.append({**cell.record, "key": cell.key, "resumed": cell.resumed})
            if cell.record["status"] == "ok":
                artifacts[Path(cell.record["artifact"]).stem] = cell.arrays
        rows += [{**row, **where} for row in waived(finished[(model, defense)].rows, model, config)]
    journal.keep_only({cell.key for cell in cells.values()} | {cell.key for cell in finished.values()})
    adopt_session(None)
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
            "evaluation_samples": int(len(session.eval_idx)),
        },
        "models": models_meta,
        "defenses": [{"id": d["id"], "name": d["name"], "stage": _defense_class(d).stage, "models": d["models"], "params": d["params"]}
                     for d in config.defenses],
        "variants": variants_meta,
        "training": training,
        "execution": {"executor": runner.name, "resumed_cells": sum(cell.resumed for cell in cells.values())},
        "cells": cell_records,
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
    if out is not None:
        from reports import write_outputs

        result.out_dir = out
        write_outputs(result, out, lang)
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
