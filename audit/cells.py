"""Cells: the independent units of an audit's work, their content keys, and the journal that makes runs resumable.

A run is planned as stages of tasks: train the models, build the defended variants, run every
(model, variant, attack) cell, then finish each variant (per-sample worst case and sanity checks).
A task is plain data, so an executor can run it in this process or on a Ray worker. Each finished
cell is journaled in the run folder under its content key; a run started again skips every cell
whose key is already there, so a changed config re-runs only the cells it changes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attacks import configured
from attacks.base import AttackContext, AttackOutput, ensemble_rows, worst_over_repeats
from audit.cache import content_key
from audit.checks import CHECKS_UNFINISHED, apply_waivers, flag, probe_convergence, probe_large_eps, probe_noise, probe_subsample, table_checks
from audit.config import Config
from audit.endpoints import query_scope
from audit.errors import describe_exception
from audit.files import write_npz_atomic
from audit.metrics import Category
from audit.results import CellRecord, count_row, error_row, make_table, not_applicable_row, variant_label
from audit.seeding import derive_seed, seed_everything
from audit.session import AuditSession, members_refusal, session_for

CELL_FORMAT = "kansa.cell/1"
JOURNAL = "cells"
JOURNAL_OWNER = "run.json"
PLAN = "plan.json"  # the attack cells a run will have, and when and where it started (`kansa status`)


@dataclass
class Task:
    """One unit of work: `kind` is model, variant, attack or finish."""

    kind: str
    config: Config
    cache_root: Path | None
    model: str
    defense: str = ""
    attack: str = ""
    key: str = ""
    quiet: bool = True
    inputs: list["CellResult"] = field(default_factory=list)
    query_store: Path | None = None  # the run's endpoint query cache and budget count (audit.endpoints)


@dataclass
class CellResult:
    """What a cell measured: rows (without model/defense columns), per-sample arrays and artifacts, and its record."""

    key: str
    record: CellRecord
    rows: list[dict[str, Any]]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    resumed: bool = False

    @property
    def per_sample(self) -> dict[str, np.ndarray]:
        return {k.removeprefix("sample/"): v for k, v in self.arrays.items() if k.startswith("sample/")}


@dataclass
class BuiltVariant:
    """A variant task's outcome: its rows, the digest of its weights (None when its defense failed), its per-sample arrays."""

    rows: list[dict[str, Any]]
    digest: str | None
    cached: bool
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class TaskOutcome:
    """What any task hands back to the driver: its result, and which weights it trained or took from the cache."""

    result: "BuiltVariant | CellResult | None"
    trained: list[str]
    reused: list[str]


def cell_key(*parts: Any) -> str:
    """A cell's journal key: its inputs' content, so a changed config re-runs only the cells it changes."""
    return content_key(CELL_FORMAT, *parts)[:24]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:40] or "x"


def journal_path(out_dir: Path, key: str) -> Path:
    return out_dir / JOURNAL / f"{key}.npz"


def save_cell(out_dir: Path, cell: CellResult) -> None:
    meta = json.dumps({"format": CELL_FORMAT, "record": asdict(cell.record), "rows": cell.rows})
    write_npz_atomic(journal_path(out_dir, cell.key), {**cell.arrays, "__cell__": np.array(meta)})


def load_cell(out_dir: Path, key: str) -> CellResult | None:
    """The journaled cell, or None when absent or unreadable (it is then simply run again)."""
    path = journal_path(out_dir, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(str(arrays.pop("__cell__")))
        if meta.get("format") != CELL_FORMAT:
            return None
        record = CellRecord(**meta["record"])
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None
    return CellResult(key, record, meta["rows"], arrays, resumed=True)


def execute(task: Task) -> TaskOutcome:
    """Run one task in this process (the local executor calls it directly, the Ray executor remotely)."""
    session = session_for(task.config, task.cache_root, task.quiet, task.query_store)
    trained, reused = len(session.cache.trained), len(session.cache.reused)
    if task.kind == "model":
        session.model(task.model)
        result: BuiltVariant | CellResult | None = None
    elif task.kind == "variant":
        variant = session.variant(task.model, task.defense)
        result = BuiltVariant(variant.rows, variant.target.digest if variant.target is not None else None, variant.cached, variant.arrays)
    elif task.kind == "attack":
        result = run_attack_cell(session, task)
    elif task.kind == "finish":
        result = finish_variant(session, task)
    else:
        raise ValueError(f"unknown task kind {task.kind!r}")
    return TaskOutcome(result, session.cache.trained[trained:], session.cache.reused[reused:])


BOUNDED = ("variant", "attack", "finish")  # what `[execution] cell_timeout` limits: every use of a model, not its training


def prepare(task: Task) -> None:
    """Build what the task starts from (data, trained weights, the variant), so that its time limit counts only its own work."""
    session = session_for(task.config, task.cache_root, task.quiet, task.query_store)
    if task.kind == "variant":
        session.defended(task.model, task.defense)
    elif task.kind in BOUNDED:
        session.variant(task.model, task.defense)


def ended(task: Task, reason: str, seconds: float) -> TaskOutcome:
    """The outcome of a task whose process was ended before it finished (`reason`: it overran cell_timeout, or its process died).

    A variant becomes an error row and is not attacked; an attack cell becomes an error row, so every
    gate it could have fed is inconclusive; a variant's finishing cell becomes a `checks_unfinished`
    flag, so that variant's integrity gates are too.
    """
    label = variant_label(task.model, task.defense)
    if task.kind == "variant":
        message = f"evaluating {label} {reason}; it was not attacked"
        return TaskOutcome(BuiltVariant([error_row(message, model=task.model, defense=task.defense, category=Category.PERFORMANCE)],
                                        None, False), [], [])
    if task.kind == "attack":
        message = f"{task.attack} on {label} {reason}"
        record = CellRecord(task.model, task.defense, task.attack, status="error", seconds=seconds, message=message,
                            seed=derive_seed(task.config.seed, "attack", task.model, task.defense, task.attack))
        rows = [error_row(message, attack=task.attack, category=_attack(task.config, task.attack).category)]
    elif task.kind == "finish":
        message = f"the worst case and sanity checks of {label} {reason}; its robustness numbers are unchecked"
        record = CellRecord(task.model, task.defense, "", status="error", seconds=seconds, message=message)
        rows = [flag(CHECKS_UNFINISHED, True, message)]
    else:
        raise ValueError(f"a {task.kind} task is never ended: it is not bounded")
    return TaskOutcome(CellResult(task.key, record, rows), [], [])


def _attack(config: Config, attack_id: str) -> Any:
    return configured([a for a in config.attacks if a["id"] == attack_id])[attack_id]


def run_attack_cell(session: AuditSession, task: Task) -> CellResult:
    """One attack on one variant, repeated with other seeds when it is randomised; an error becomes a row."""
    config = session.config
    attack = _attack(config, task.attack)
    variant = session.variant(task.model, task.defense)
    where = {"attack": task.attack, "category": attack.category}
    cell_seed = derive_seed(config.seed, "attack", task.model, task.defense, task.attack)
    repeats = config.evaluation["repeats"] if attack.randomized else 1
    record = CellRecord(task.model, task.defense, task.attack, seed=cell_seed, repeats=repeats)
    session.progress.say(f"attacking {'/'.join(variant.labels)} with {task.attack} on {len(session.eval_idx)} samples"
                         + (f" ({repeats} repeats)" if repeats > 1 else ""))
    start = time.perf_counter()
    refusal = members_refusal(session.model(task.model).cfg, session.splits) if attack.needs_members else None
    if refusal is not None:
        return _failed(session, task, record, where, refusal, start)
    reason = attack.inapplicable(variant.target)
    if reason is not None:
        record.status, record.message = "not_applicable", f"{task.attack} {reason}"
        return CellResult(task.key, record, [not_applicable_row(record.message, **where)])
    runs = []
    try:
        with query_scope() as queried, session.progress.cell(f"{task.attack} on {'/'.join(variant.labels)}",
                                                             len(session.eval_idx) * repeats) as advance:
            for repeat in range(repeats):
                seed = cell_seed if repeat == 0 else derive_seed(cell_seed, f"repeat{repeat}")
                seed_everything(seed)
                context = AttackContext(seed, session.dataset.class_names, session.dataset, session.splits, session.trainer(task.model, task.defense),
                                        advance=advance)
                runs.append(attack.run(variant.target, session.x_eval, session.y_eval, context))
    except Exception as exc:  # one failing attack must not lose the rest of the audit
        return _failed(session, task, record, where, describe_exception(exc, limit=500), start)
    seconds = time.perf_counter() - start
    output = runs[0] if repeats == 1 else worst_over_repeats(runs, session.y_eval, session.dataset.class_names)
    metric_rows = output.rows
    artifact = f"{slug(task.model)}-{slug(task.defense)}-{slug(task.attack)}-{task.key[:8]}"
    record.seconds, record.artifact = seconds, f"artifacts/{artifact}.npz"
    # a row's own category wins: an attack's timing rows are cost, whatever the attack's kind
    rows = [{**where, **row} for row in metric_rows] + [count_row("attack_seconds", seconds, category=Category.COST, attack=task.attack)]
    rows += [count_row("queries", count.asked, category=Category.COST, attack=task.attack, message=(
        f"{task.attack} asked the endpoint of {endpoint} {count.asked} inputs: {count.sent} sent in {count.requests} requests "
        f"({count.retries} retries), {count.cached} answered from the query cache")) for endpoint, count in queried.items()]
    arrays = {**output.artifacts, **{f"sample/{k}": v for k, v in output.per_sample.items()}}
    return CellResult(task.key, record, rows, arrays)


def _failed(session: AuditSession, task: Task, record: CellRecord, where: dict[str, Any], message: str, start: float) -> CellResult:
    session.progress.say(f"attack {task.attack} on {'/'.join(session.variant(task.model, task.defense).labels)} failed: {message}")
    record.seconds, record.status, record.message = time.perf_counter() - start, "error", message
    return CellResult(task.key, record, [error_row(message, **where)])


def finish_variant(session: AuditSession, task: Task) -> CellResult:
    """The per-sample worst case over the variant's integrity attacks, and the sanity checks that judge them."""
    config = session.config
    variant = session.variant(task.model, task.defense)
    attacks, outputs, rows = {}, {}, []
    for cell in task.inputs:
        attack_id = cell.record.attack
        attack = _attack(config, attack_id)
        rows += cell.rows
        if cell.record.status == "ok" and attack.norm is not None:
            attacks[attack_id] = attack
            outputs[attack_id] = (attack.norm, AttackOutput(cell.rows, cell.per_sample))
    record = CellRecord(task.model, task.defense, "")
    if not outputs:
        return CellResult(task.key, record, [])
    finished = [{**row, "category": Category.INTEGRITY} for row in ensemble_rows(outputs, session.y_eval, session.dataset.class_names)]
    sanity: list[dict[str, Any]] = []
    if config.checks["enabled"]:
        where = {"model": task.model, "defense": task.defense}
        table = make_table([{**r, **where} for r in rows + finished])
        session.progress.say(f"sanity checks on {'/'.join(variant.labels)}")
        seed = derive_seed(config.seed, "checks", *variant.labels, "results")
        seed_everything(seed)
        target, x, y = variant.target, session.x_eval, session.y_eval
        subsample = probe_subsample(y, seed)
        start = time.perf_counter()
        sanity = [
            *table_checks(table, attacks),
            *probe_noise(target, x, y, table, attacks, seed),
            *([probe_large_eps(target, x, y, session.dataset.n_classes, subsample)] if target.differentiable else []),
            *probe_convergence(target, x, y, table, attacks, {a: out.per_sample for a, (_, out) in outputs.items()}, subsample),
        ]
        sanity.append(count_row("checks_seconds", time.perf_counter() - start, category=Category.COST))
    return CellResult(task.key, record, finished + variant.probes + sanity)


def waived(rows: list[dict[str, Any]], model: str, defense: str, config: Config) -> list[dict[str, Any]]:
    """Waivers are applied when results are assembled, so editing one never re-runs a cell."""
    return apply_waivers(rows, model, defense, config.waivers)
