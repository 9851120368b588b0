"""The one place that knows the order of an audit: plan the cells, hand them to an executor, assemble, write.

Stages: train the models, build their defended variants, run every (model, variant, attack) cell,
finish each variant (worst case and sanity checks). Each stage's tasks are independent, so the
executor may run them anywhere; results are assembled in plan order, so every executor gives the
same table. Finished cells are journaled in the run folder, which makes an interrupted run resumable.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from attacks import configured
from audit.cache import array_digest, default_cache_path
from audit.cells import JOURNAL, JOURNAL_OWNER, PLAN, BuiltVariant, CellResult, Task, cell_key, load_cell, save_cell, slug, waived
from audit.config import Config, check_against_data, load_config, validate_mlflow
from audit.data import quality_rows
from audit.deltas import change_rows
from audit.endpoints import QUERY_STORE, forget_spent
from audit.errors import KansaError
from audit.executors import Executor, make_executor
from audit.files import write_text_atomic
from audit.gates import evaluate_gates, overall_verdict, validate_gates_config
from audit.history import History, default_path, git_state, resolve_baseline
from audit.models import module_digest
from audit.params import Location
from audit.results import (
    UNDEFENDED,
    AuditResult,
    CellRecord,
    DataSummary,
    DefenseRecord,
    Execution,
    ModelRecord,
    RunMetadata,
    Training,
    VariantRecord,
    load_results,
    make_table,
)
from audit.seeding import derive_seed
from audit.session import AuditSession, Progress, adopt_session, members_origin
from defenses import registry as defense_registry


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


class _Journal:
    """Finished cells of this run folder, read back on resume and written as each cell completes."""

    def __init__(self, out_dir: Path | None, resume: bool, config_digest: str) -> None:
        self.out_dir, self.resume = out_dir, resume
        if out_dir is not None:
            if not resume:
                shutil.rmtree(out_dir / JOURNAL, ignore_errors=True)
            write_text_atomic(out_dir / JOURNAL / JOURNAL_OWNER, json.dumps({"config_sha256": config_digest}))

    def load(self, key: str) -> CellResult | None:
        """The journaled cell, unless it failed: a resumed run tries a failed or ended cell again (a transient fault, a raised cell_timeout)."""
        cell = load_cell(self.out_dir, key) if self.out_dir is not None and self.resume else None
        return cell if cell is not None and cell.record.status != "error" else None

    def save(self, cell: CellResult) -> None:
        if self.out_dir is not None:
            save_cell(self.out_dir, cell)

    def plan(self, cells: dict[tuple[str, str, str], str]) -> None:
        """Record the attack cells this run will have (with their keys), for `kansa status` while it runs or after it was interrupted."""
        if self.out_dir is not None:
            write_text_atomic(self.out_dir / JOURNAL / PLAN, json.dumps({
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "host": platform.node(), "pid": os.getpid(),
                "cells": [{"model": m, "defense": d, "attack": a, "key": key} for (m, d, a), key in cells.items()],
            }))

    def keep_only(self, keys: set[str]) -> None:
        """Drop journaled cells no longer in the plan (an earlier config's), once the run is complete."""
        if self.out_dir is not None:
            for path in (self.out_dir / JOURNAL).glob("*.npz"):
                if path.stem not in keys:
                    path.unlink(missing_ok=True)
            for debris in (self.out_dir / JOURNAL).glob(".*.tmp"):  # a write a kill interrupted
                debris.unlink(missing_ok=True)


@dataclass
class Plan:
    """The audit's work in order: its models, every (model, variant) pair, and what every cell key depends on."""

    config: Config
    models: list[str]
    pairs: list[tuple[str, str]]
    common: dict[str, Any]

    @staticmethod
    def of(config: Config, session: AuditSession) -> "Plan":
        names = [m["name"] for m in config.models]
        pairs = [(name, UNDEFENDED) for name in names] + [(name, d["id"]) for name in names for d in config.defenses if name in d["models"]]
        pairs.sort(key=lambda pair: names.index(pair[0]))
        common = {"data": session.dataset.digest(), "evaluation": config.evaluation, "eval": array_digest(session.eval_idx),
                  "checks": config.checks, "seed": config.seed, "device": session.device}
        return Plan(config, names, pairs, common)


@dataclass
class Executed:
    """Every stage's outcome, keyed by plan position, as `assemble` reads them."""

    variants: dict[tuple[str, str], BuiltVariant]
    cells: dict[tuple[str, str, str], CellResult]
    finished: dict[tuple[str, str], CellResult]
    training: Training
    executor: str


class _Stages:
    """Runs the plan's stages through one executor, journaling each finished cell and reusing journaled ones."""

    def __init__(self, plan: Plan, executor: Executor, journal: _Journal, cache_root: Path | None, quiet: bool,
                 query_store: Path | None = None) -> None:
        self.plan, self.executor, self.journal, self.cache_root, self.query_store = plan, executor, journal, cache_root, query_store
        self.quiet = quiet
        self.training = Training()

    def task(self, kind: str, model: str, **fields: Any) -> Task:
        return Task(kind, self.plan.config, self.cache_root, model, quiet=self.quiet, query_store=self.query_store, **fields)

    def run(self, tasks: list[Task], journaled: bool = False, finished: Callable[[], None] | None = None) -> list[Any]:
        """The tasks' results in task order; with `journaled`, each cell is saved the moment it finishes, and `finished` told."""
        results: list[Any] = [None] * len(tasks)
        for index, outcome in self.executor.run(tasks):
            self.training.trained += outcome.trained
            self.training.from_cache += outcome.reused
            results[index] = outcome.result
            if journaled:
                self.journal.save(outcome.result)
            if finished is not None:
                finished()
        return results


def execute_plan(stages: _Stages, progress: Progress) -> Executed:
    """Train the models, build the variants, run every cell, finish every variant; journaled cells are not run again."""
    plan = stages.plan
    config = plan.config
    stages.run([stages.task("model", name) for name in plan.models])  # every model is checked before any attack
    built = stages.run([stages.task("variant", model, defense=defense) for model, defense in plan.pairs])
    variants: dict[tuple[str, str], BuiltVariant] = dict(zip(plan.pairs, built))
    attacked = [pair for pair in plan.pairs if variants[pair].digest is not None]
    cells: dict[tuple[str, str, str], CellResult] = {}
    pending, planned = [], {}
    for model, defense in attacked:
        for attack_cfg in config.attacks:
            key = planned[(model, defense, attack_cfg["id"])] = cell_key(plan.common, variants[(model, defense)].digest, attack_cfg, model, defense)
            cell = stages.journal.load(key)
            if cell is None:
                pending.append(stages.task("attack", model, defense=defense, attack=attack_cfg["id"], key=key))
            else:
                cells[(model, defense, attack_cfg["id"])] = cell
    if cells:
        progress.say(f"resuming: {len(cells)} finished cell(s) journaled in {stages.journal.out_dir}")
    stages.journal.plan(planned)
    for cell in stages.run(pending, journaled=True, finished=progress.cells(len(cells), len(cells) + len(pending))):
        cells[(cell.record.model, cell.record.defense, cell.record.attack)] = cell
    finishing, finished = [], {}
    for model, defense in attacked:
        inputs = [cells[(model, defense, a["id"])] for a in config.attacks]
        key = cell_key(plan.common, variants[(model, defense)].digest, [cell.key for cell in inputs], "finish")
        done = stages.journal.load(key)
        if done is None:
            finishing.append(stages.task("finish", model, defense=defense, key=key, inputs=inputs))
        else:
            finished[(model, defense)] = done
    for cell in stages.run(finishing, journaled=True):
        finished[(cell.record.model, cell.record.defense)] = cell
    return Executed(variants, cells, finished, stages.training, stages.executor.name)


@dataclass
class Assembled:
    """The results table in plan order, the artifacts of the successful cells, and what the metadata records of them."""

    rows: list[dict[str, Any]]
    artifacts: dict[str, dict[str, np.ndarray]]
    models: list[ModelRecord]
    variants: list[VariantRecord]
    cells: list[CellRecord]


def assemble(plan: Plan, session: AuditSession, executed: Executed) -> Assembled:
    """Rows of every stage in plan order (so every executor gives the same table), with waivers applied."""
    config = plan.config
    out = Assembled(quality_rows(session.dataset, session.splits), {}, [], [], [])
    for name in plan.models:
        model = session.model(name)
        out.models.append(ModelRecord(name, model.cfg["kind"], model.output_kind, module_digest(model.module),
                                      members_origin(model.cfg, session.splits), model.reference))
        out.rows += [{**row, "model": name} for row in model.rows]
    for model, defense in plan.pairs:
        variant = executed.variants[(model, defense)]
        out.rows += variant.rows
        if variant.digest is None:
            continue
        artifact = f"artifacts/{slug(model)}-{slug(defense)}-variant-{variant.digest[:8]}.npz"
        out.variants.append(VariantRecord(model, defense, variant.digest, variant.cached, artifact, session.trainer(model, defense).recipe))
        out.artifacts[Path(artifact).stem] = variant.arrays
        where = {"model": model, "defense": defense}
        for attack_cfg in config.attacks:
            cell = executed.cells[(model, defense, attack_cfg["id"])]
            out.rows += [{**row, **where} for row in cell.rows]
            out.cells.append(replace(cell.record, key=cell.key, resumed=cell.resumed))
            if cell.record.status == "ok":
                out.artifacts[Path(cell.record.artifact).stem] = cell.arrays
        out.rows += [{**row, **where} for row in waived(executed.finished[(model, defense)].rows, model, defense, config)]
    attacks = configured(config.attacks)
    cells = {key: cell.arrays for key, cell in executed.cells.items() if cell.record.status == "ok"}
    built = {pair: variant.arrays for pair, variant in executed.variants.items() if variant.digest is not None}
    out.rows += change_rows(cells, built, attacks, config.seed)
    return out


def _metadata(config: Config, session: AuditSession, executed: Executed, assembled: Assembled,
              git: tuple[str | None, str | None], baseline_label: str | None) -> RunMetadata:
    dataset, splits = session.dataset, session.splits
    data = DataSummary(
        name=dataset.name, sha256=dataset.digest(), samples=int(len(dataset.y)), input_shape=list(dataset.input_shape),
        input_range=list(dataset.input_range), is_image=dataset.is_image, classes=dataset.class_names,
        split_sizes={k: int(len(v)) for k, v in splits.items()}, evaluation_samples=int(len(session.eval_idx)),
        evaluated_sha256=array_digest(session.eval_idx),
    )
    return RunMetadata(
        run_id=uuid.uuid4().hex[:12],
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        title=config.title,
        config_path=str(config.path),
        config_sha256=config.digest(),
        config=config.validated(),
        config_text=config.text,
        seed=config.seed,
        data=data,
        models=assembled.models,
        defenses=[DefenseRecord(d["id"], d["name"], defense_registry()[d["name"]].stage, d["models"], d["params"]) for d in config.defenses],
        variants=assembled.variants,
        cells=assembled.cells,
        training=executed.training,
        execution=Execution(executed.executor, sum(cell.resumed for cell in executed.cells.values()), session.device),
        versions=versions(),
        machine={"platform": platform.platform(), "processor": platform.machine(), "python": sys.executable},
        git={"commit": git[0], "branch": git[1]},
        seeds=_seed_manifest(config),
        repeats=config.evaluation["repeats"],
        baseline=baseline_label,
    )


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
    write_outputs: Callable[[AuditResult, Path, str, dict[str, Any]], object] | None = None,
    mlflow: str | None = None,
) -> AuditResult:
    """Run the whole audit and evaluate its gates: plan, execute, assemble, finalise.

    `out_dir` receives the journal (for resume) and, through `write_outputs` (the reports'
    writer, which `audit.run_audit` passes), every output. `baseline` (a results.json, a run
    folder, a run id or "last-pass") feeds regression gates; `history` (default: the config's
    [history] enabled) records the run in the history database. `executor` ("local" or "ray")
    and `resume` override the config's [execution] table; `mlflow` (a tracking URI) its
    [tracking] mlflow table, which `write_outputs` logs the run to.
    """
    started = time.perf_counter()
    if not isinstance(config, Config):
        config = load_config(config, seed=seed)
    elif seed is not None:
        config.seed = seed
    if mlflow is not None:
        declared = {key: value for key, value in (config.tracking["mlflow"] or {}).items() if value is not None}
        config.tracking["mlflow"] = validate_mlflow({**declared, "uri": mlflow}, Location("--mlflow"))
    execution = {**config.execution, **({"executor": executor} if executor else {}), **({"resume": resume} if resume is not None else {})}
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_out_dir(out, config.digest(), force)
    store = History(default_path(config.history["path"], config.base_dir))
    git = git_state(config.base_dir)
    baseline_table, baseline_label = resolve_baseline(baseline, store, git[1], config.title) if baseline else (None, None)
    progress = Progress(quiet)
    cache_root = default_cache_path(config.cache["path"], config.base_dir) if config.cache["enabled"] else None
    if cache_root is None and (execution["executor"] == "ray" or execution["cell_timeout"]):
        # the processes that run cells share trained weights through files even when the cache is off
        cache_root = out / ".weights" if out is not None else Path(tempfile.mkdtemp(prefix="kansa-weights-"))
    if execution["threads"]:
        import torch

        torch.set_num_threads(execution["threads"])
    query_store = None
    if any(m["kind"] == "http" for m in config.models):
        query_store = (out if out is not None else Path(tempfile.mkdtemp(prefix="kansa-queries-"))) / QUERY_STORE
        if not execution["resume"]:
            forget_spent(query_store)  # a fresh audit has its whole budget; the cached answers stay valid
    session = AuditSession(config, cache_root, progress, query_store)
    adopt_session(session)  # local tasks run on this very session
    dataset, splits = session.dataset, session.splits
    check_against_data(config, dataset, splits)
    progress.say(
        f"data {dataset.name}: {len(dataset.y)} samples, {dataset.n_classes} classes, "
        f"split {len(splits.train)} / {len(splits.holdout)} / {len(splits.test)}"
    )
    plan = Plan.of(config, session)
    journal = _Journal(out, execution["resume"], config.digest())
    runner = make_executor(execution, quiet)
    try:
        executed = execute_plan(_Stages(plan, runner, journal, cache_root, quiet, query_store), progress)
    finally:
        runner.close()
    assembled = assemble(plan, session, executed)
    journal.keep_only({cell.key for cell in executed.cells.values()} | {cell.key for cell in executed.finished.values()})
    adopt_session(None)
    metadata = _metadata(config, session, executed, assembled, git, baseline_label)
    metadata.wall_seconds = time.perf_counter() - started
    table = make_table(assembled.rows)
    result = AuditResult(table=table, metadata=metadata, artifacts=assembled.artifacts)
    result.gates = evaluate_gates(config.gates, table, baseline_table)
    if out is not None:
        result.out_dir = out
        if write_outputs is not None:
            write_outputs(result, out, lang, config.tracking)
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
        gates = validate_gates_config(metadata.config.get("gates"), Location(f"{run_dir} (stored config)", "gates"))
        history_path, base_dir = None, Path(metadata.config_path).parent
    baseline_table, baseline_label = None, None
    if baseline:
        store = History(default_path(history_path, base_dir))
        baseline_table, baseline_label = resolve_baseline(baseline, store, metadata.git.get("branch"), metadata.title)
    result = AuditResult(table=table, metadata=replace(metadata, baseline=baseline_label), out_dir=Path(run_dir))
    result.gates = evaluate_gates(gates, table, baseline_table)
    return result


@dataclass
class RunStatus:
    """A run folder as `kansa status` reports it: what is done, what is left, and whether it is still running."""

    out_dir: Path
    started: str
    state: str  # "complete", "running" (its process is alive on this machine), "interrupted", or "preparing ..." before its attacks
    done: list[CellRecord]
    left: list[tuple[str, str, str]]


def run_status(out_dir: str | Path) -> RunStatus:
    """From the journal alone, without loading data or models: safe to call while the run works."""
    out = Path(out_dir)
    plan_path = out / JOURNAL / PLAN
    try:
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
        planned = {(c["model"], c["defense"], c["attack"]): c["key"] for c in plan["cells"]}
    except FileNotFoundError:
        if (out / JOURNAL / JOURNAL_OWNER).is_file():  # started, still training models or building variants
            started = datetime.fromtimestamp((out / JOURNAL / JOURNAL_OWNER).stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
            return RunStatus(out, started, "preparing (training models or building variants; no attack cell planned yet)", [], [])
        raise KansaError(f"{out}: no run journal here ({JOURNAL}/{PLAN}); kansa status reads a folder `kansa run --out` wrote") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KansaError(f"{plan_path}: not a readable run plan ({exc})") from None
    journaled = {where: cell.record for where, key in planned.items() if (cell := load_cell(out, key)) is not None}
    results = out / "results.json"
    if results.is_file() and results.stat().st_mtime >= plan_path.stat().st_mtime:
        state = "complete"
    else:
        state = "running" if plan.get("host") == platform.node() and _alive(plan.get("pid")) else "interrupted"
    return RunStatus(out, plan.get("started", ""), state, [journaled[c] for c in planned if c in journaled],
                     [c for c in planned if c not in journaled])


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
