"""One audit's shared state: data, splits, the attacked samples, models and their defended variants.

Built lazily and memoised per process, so the local executor builds each piece once and a Ray
worker rebuilds only what its cells need (trained weights come from the content cache; nothing
trains twice).
"""

from __future__ import annotations

import copy
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TextIO

import numpy as np
from tqdm.auto import tqdm

from attacks.base import ModelTrainer, Retrained
from audit.cache import WeightCache, array_digest
from audit.checks import RANDOMIZED, flag, probe_gradients, probe_randomness
from audit.config import Config
from audit.data import Dataset, Splits, load_data, stratified_subset
from audit.errors import describe_exception
from audit.metrics import Category
from audit.models import (
    KIND_PARAMS,
    Target,
    build_builtin,
    detect_output,
    expectation,
    load_endpoint,
    load_model,
    make_target,
    model_size,
    module_digest,
    normalized,
    placed,
    resolve_device,
    train,
)
from audit.params import Location, ParamSet
from audit.results import TEST_CORRECT, UNDEFENDED, count_row, error_row, rate_row, variant_label
from audit.seeding import derive_seed, global_generators_kept, seed_everything
from defenses import registry
from defenses.base import Defended, Defense, DefenseContext

if TYPE_CHECKING:
    import torch


def load_audit_data(config: Config) -> tuple[Dataset, Splits]:
    """The config's data and its train / hold-out / test roles (declared, or Kansa's seeded split), exactly as every run of it sees them."""
    return load_data(config.data, config.base_dir, derive_seed(config.seed, "sample"), derive_seed(config.seed, "split"))


def members_origin(cfg: dict[str, Any], splits: Splits) -> str:
    """Where a model's members come from (see `audit.results.ModelRecord`).

    Kansa's own split holds the members only of a model Kansa trained on it; a loaded model's
    members are known only when the user declares them.
    """
    if splits.declared:
        return "declared" if len(splits.train) else "unknown"
    return "kansa_split" if cfg["kind"] == "builtin" else "unknown"


def members_refusal(cfg: dict[str, Any], splits: Splits) -> str | None:
    """Why an attack that needs members cannot run on this model, or None when they are known."""
    if members_origin(cfg, splits) == "unknown":
        if splits.declared:
            return ("no data.train is declared: declare the model's training data as data.train (the members) "
                    "to measure membership leakage")
        return (f"model {cfg['name']!r} was trained outside Kansa, so Kansa's own split cannot say which samples it was trained on: "
                "declare the model's training data as data.train (the members) and data it never saw as data.holdout "
                "(the non-members) to measure membership leakage")
    if not len(splits.holdout):
        return ("no data.holdout is declared: declare data the model never saw as data.holdout (the non-members) "
                "to measure membership leakage")
    return None


class Progress:
    """What a run tells its user while it works: a line per step, progress within each running cell, and
    the whole run's count of cells with an estimate of the time left.

    On a terminal a cell's progress is a tqdm bar (stderr); elsewhere, a CI log, it is one line every
    `interval` seconds, so a long cell is never silent and the log stays short. `quiet` says nothing.
    """

    def __init__(self, quiet: bool, interval: float = 10.0, stream: TextIO | None = None) -> None:
        self.quiet, self.interval = quiet, interval
        self.stream = stream if stream is not None else sys.stderr
        self.bars = not quiet and self.stream.isatty()
        self.started = time.perf_counter()

    def say(self, message: str) -> None:
        if self.quiet:
            return
        if self.bars:
            tqdm.write(f"kansa: {message}", file=self.stream)
        else:
            print(f"kansa: {message}", file=self.stream, flush=True)

    @contextmanager
    def cell(self, label: str, total: int, unit: str = "samples") -> Iterator[Callable[[int], None]]:
        """Within this block, `advance(n)` counts n more of the cell's `total` done."""
        if self.quiet:
            yield lambda n: None
            return
        if self.bars:
            bar = tqdm(total=total, desc=label, unit=unit.rstrip("s"), file=self.stream, leave=False, dynamic_ncols=True)
            try:
                yield bar.update
            finally:
                bar.close()
            return
        start, state = time.perf_counter(), {"done": 0, "shown": time.perf_counter()}

        def advance(n: int) -> None:
            state["done"] += n
            now = time.perf_counter()
            if now - state["shown"] >= self.interval and state["done"] < total:
                state["shown"] = now
                rate = state["done"] / max(now - start, 1e-9)
                self.say(f"{label}: {state['done']:,}/{total:,} {unit} ({state['done'] / total:.0%}), {rate:,.1f} {unit}/s, "
                         f"about {_duration((total - state['done']) / rate)} left")

        yield advance

    def cells(self, done: int, planned: int) -> Callable[[], None]:
        """Count the run's attack cells from here (`done` of `planned` already, e.g. resumed); call the result as each finishes.

        Each call says the count, the run's time so far and the time left at this stage's pace so far.
        """
        stage, state = time.perf_counter(), {"done": done, "new": 0}

        def finished() -> None:
            state["done"] += 1
            state["new"] += 1
            now, left = time.perf_counter(), planned - state["done"]
            estimate = f", about {_duration((now - stage) / state['new'] * left)} left" if left > 0 else ""
            self.say(f"{state['done']}/{planned} cells done, {_duration(now - self.started)} elapsed{estimate}")

        return finished


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _performance_rows(target: Target, dataset: Dataset, splits: Splits) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The rows, and which test samples the variant classifies correctly (for paired comparisons with other variants)."""
    rows: list[dict[str, Any]] = []
    test_correct = np.zeros(0, dtype=bool)
    for split_name, idx in splits.items():
        start = time.perf_counter()
        pred = target.predict(dataset.x[idx])
        seconds = time.perf_counter() - start
        correct = int((pred == dataset.y[idx]).sum())
        rows.append(rate_row("accuracy", correct, len(idx), subset=f"split={split_name}"))
        if split_name != "test":
            continue
        test_correct = pred == dataset.y[idx]
        rows.append(count_row("inference_ms_per_sample", 1000 * seconds / max(len(idx), 1), category=Category.COST, subset="split=test"))
        truth = dataset.y[idx]
        for label, name in enumerate(dataset.class_names):
            predicted, actual = pred == label, truth == label
            hits = int((predicted & actual).sum())
            rows.append(rate_row("precision", hits, int(predicted.sum()), subset=f"class={name}"))
            rows.append(rate_row("recall", hits, int(actual.sum()), subset=f"class={name}"))
            for other, other_name in enumerate(dataset.class_names):
                count = int((actual & (pred == other)).sum())
                rows.append(count_row("confusion", count, subset=f"true={name};pred={other_name}"))
    return [{"category": Category.PERFORMANCE, **row} for row in rows], test_correct


@dataclass
class PreparedModel:
    """The undefended model, and what its defenses need to make their variants of it."""

    cfg: dict[str, Any]
    module: "torch.nn.Module"
    output_kind: str
    rows: list[dict[str, Any]]
    training_seconds: float | None
    cached: bool
    recipe: dict[str, Any]
    base_parts: dict[str, Any]
    build: "Callable[[], torch.nn.Module]"
    reference: str  # how its shadow, reference and surrogate models are trained (`recipe_description`)

    @property
    def name(self) -> str:
        return self.cfg["name"]


def _recipe(cfg: dict[str, Any]) -> dict[str, Any]:
    """The training recipe of a built-in model; for a loaded one, its declared reference_recipe (by default the built-in one)."""
    return {k: cfg[k] for k in ("kind", *(p.name for p in KIND_PARAMS["builtin"]))} if cfg["kind"] == "builtin" else {
        "kind": "builtin", **cfg["reference_recipe"]}


def _builder(recipe: dict[str, Any], dataset: Dataset) -> "Callable[[], torch.nn.Module]":
    def build() -> "torch.nn.Module":
        return build_builtin(recipe, dataset.input_shape, dataset.n_classes, dataset.is_image)

    return build


def _prepare_model(cfg: dict[str, Any], dataset: Dataset, splits: Splits, config: Config, progress: Progress,
                   cache: WeightCache, device: str, audited: np.ndarray, query_store: Path | None = None) -> PreparedModel:
    import torch

    name = cfg["name"]
    rows: list[dict[str, Any]] = []
    recipe = _recipe(cfg)
    architecture = _builder(recipe, dataset)
    data_parts = {"data": dataset.digest(), "train": array_digest(splits.train), "device": device}  # a GPU trains to other weights
    seconds, cached = None, False
    if cfg["kind"] == "builtin":
        init_seed, train_seed = derive_seed(config.seed, "init", name), derive_seed(config.seed, "train", name)

        def build() -> torch.nn.Module:
            torch.manual_seed(init_seed)
            return architecture()

        def fit(module: torch.nn.Module) -> dict[str, Any]:
            progress.say(f"training {name} on {len(splits.train)} samples ({cfg['epochs']} epochs)")
            return {"seconds": train(module, dataset.x[splits.train], dataset.y[splits.train], cfg, train_seed, progress.bars, name,
                                     device=device)}

        base_parts = {"model": recipe, **data_parts, "init_seed": init_seed, "train_seed": train_seed}
        module, info = cache.fit(name, {"kind": "model", **base_parts}, build, fit)
        seconds, cached = info["seconds"], info["cached"]
        if cached:
            progress.say(f"{name}: trained weights from the cache")
        output_kind = "logits"
    else:
        where = config.location.child("models").child(next(i for i, m in enumerate(config.models) if m["name"] == name))
        model_file = (load_endpoint(cfg, dataset.n_classes, query_store, where, audited[:8]) if cfg["kind"] == "http"
                      else load_model(cfg, config.base_dir, audited))
        module, rows = model_file.module, model_file.rows
        if cfg["normalize"] is not None:
            module = normalized(module, cfg["normalize"], dataset.input_shape, name)
        output_kind = cfg["output"]
        base_parts = {"model": recipe, **data_parts, "loaded": module_digest(module)}
    module = placed(module, device)
    output_kind = detect_output(module, dataset.x[(splits.train if len(splits.train) else splits.test)[:8]], dataset.n_classes, output_kind, name)
    loaded = module

    def build_variant() -> torch.nn.Module:
        return architecture() if cfg["kind"] == "builtin" else copy.deepcopy(loaded)

    return PreparedModel(cfg, module, output_kind, rows, seconds, cached, recipe, base_parts, build_variant,
                         recipe_description(cfg, recipe, dataset))


def _variant_rows(target: Target, defended: Defended, dataset: Dataset, splits: Splits) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """What a variant costs (size, training and inference time), what it is, and how well it performs; and its per-sample arrays."""
    size, total, nonzero = model_size(defended.module)
    performance, test_correct = _performance_rows(target, dataset, splits)
    rows = [
        count_row("size_bytes", size, category=Category.COST),
        count_row("parameters", total, category=Category.COST),
        count_row("nonzero_parameters", nonzero, category=Category.COST),
        *defended.rows,
        *performance,
    ]
    if defended.training_seconds is not None:
        rows.append(count_row("training_seconds", defended.training_seconds, category=Category.COST,
                              message="measured when first trained; this run reused the cached weights" if defended.cached else ""))
    return [{**row, "model": target.name, "defense": target.defense} for row in rows], {TEST_CORRECT: test_correct}


def trainer_for(cfg: dict[str, Any], dataset: Dataset, *, splits: Splits | None = None, cache: WeightCache | None = None,
                device: str = "cpu", defense: "tuple[str, Defense] | None" = None) -> ModelTrainer:
    """Train models like one variant of the target (shadow, reference, surrogate and canary models), through the weight cache.

    A built-in model is retrained with its own recipe; a loaded model, whose recipe Kansa cannot
    know, is approximated by the built-in architecture and recipe for the data. `defense` (its id and
    the configured defense) is then applied as it was to the variant: a training-time defense trains
    with its own recipe (DP-SGD with DP), any other is applied to the model trained like the target.
    """
    if defense is not None and splits is None:
        raise ValueError("a defended variant's trainer needs the audit's splits (its defense may read them)")
    recipe = _recipe(cfg)
    architecture = _builder(recipe, dataset)
    cache = cache or WeightCache(None)
    label = f"{cfg['name']} (reference)"
    described = recipe_description(cfg, recipe, dataset)

    def parts_of(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
        return {"kind": "reference", "model": recipe, "data": array_digest(x, y), "seed": seed, "device": device}

    def undefended(x: np.ndarray, y: np.ndarray, seed: int) -> "torch.nn.Module":
        import torch

        def build() -> torch.nn.Module:
            torch.manual_seed(seed)
            return architecture()

        def fit(module: torch.nn.Module) -> dict[str, Any]:
            return {"seconds": train(module, x, y, recipe, seed, progress=False, label=label, device=device)}

        return cache.fit(label, parts_of(x, y, seed), build, fit)[0]

    def train_like_variant(x: np.ndarray, y: np.ndarray, seed: int) -> Retrained:
        with global_generators_kept():
            return remade(x, y, seed)

    def remade(x: np.ndarray, y: np.ndarray, seed: int) -> Retrained:
        if defense is None:
            return Retrained(make_target(undefended(x, y, seed), dataset, "logits", f"{cfg['name']}-reference", device=device))
        defense_id, piece = defense
        context = DefenseContext(
            model_name=label, make_base=lambda: undefended(x, y, seed), output_kind="logits", recipe=recipe, dataset=dataset,
            splits=splits, seed=derive_seed(seed, "defense", defense_id), cache=cache,
            base_parts=parts_of(x, y, seed), build=architecture, device=device, training_data=(x, y),
        )
        defended = piece.apply(context)
        target = make_target(defended.module, dataset, defended.output_kind, f"{cfg['name']}-reference", defense_id, defended.gradient, device)
        return Retrained(target, tuple(defended.rows))

    if defense is not None:
        described += f", then the defense {defense[0]} ({defense[1].name}) as configured"
    return ModelTrainer(train_like_variant, exact=cfg["kind"] == "builtin", recipe=described)


def recipe_description(cfg: dict[str, Any], recipe: dict[str, Any], dataset: Dataset) -> str:
    """How models like the target are trained, in words; for a loaded model, an approximation of its unknown recipe."""
    architecture = recipe["architecture"] if recipe["architecture"] != "auto" else ("cnn" if dataset.is_image else "mlp")
    text = f"{architecture} architecture, {recipe['epochs']} epochs, {recipe['optimizer']}"
    if cfg["kind"] == "builtin":
        return f"the model's own recipe ({text})"
    declared = cfg["reference_recipe"] != ParamSet(KIND_PARAMS["builtin"]).validate({}, Location(""))
    source = "the declared reference_recipe" if declared else "Kansa's built-in recipe for the data"
    return f"an approximation of the model's unknown recipe: {source} ({text})"


@dataclass
class Variant:
    """One (model, defense) pair as attacks face it, with the rows that describe it.

    `target` is None when the defense failed (`rows` then hold its error row). `probes` are the
    sanity rows measured on the model before any attack; they join the results only when
    integrity attacks ran.
    """

    model: str
    defense: str
    target: Target | None
    rows: list[dict[str, Any]]
    probes: list[dict[str, Any]] = field(default_factory=list)
    cached: bool = False
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # per-sample results, saved as the variant's artifact

    @property
    def labels(self) -> tuple[str, ...]:
        return (self.model,) if self.defense == UNDEFENDED else (self.model, self.defense)


class AuditSession:
    """Everything cells share, built on first use: data, splits, attacked samples, models, variants, trainers."""

    def __init__(self, config: Config, cache_root: Path | None, progress: Progress, query_store: Path | None = None) -> None:
        self.config, self.progress, self.query_store = config, progress, query_store
        self.cache = WeightCache(cache_root)
        self.device = resolve_device(config.execution["device"], config.location.child("execution").child("device"))
        self.dataset, self.splits = load_audit_data(config)
        limit = config.evaluation["samples"]
        self.eval_idx = self.splits.test if limit is None else stratified_subset(
            self.splits.test, self.dataset.y, limit, derive_seed(config.seed, "evaluation"))
        self._models: dict[str, PreparedModel] = {}
        self._variants: dict[tuple[str, str], Variant] = {}
        self._defended: dict[tuple[str, str], tuple[Defended | None, bool, list[dict[str, Any]]]] = {}
        self._trainers: dict[tuple[str, str], ModelTrainer] = {}

    @property
    def x_eval(self) -> np.ndarray:
        return self.dataset.x[self.eval_idx]

    @property
    def y_eval(self) -> np.ndarray:
        return self.dataset.y[self.eval_idx]

    def model(self, name: str) -> PreparedModel:
        if name not in self._models:
            cfg = next(m for m in self.config.models if m["name"] == name)
            self._models[name] = _prepare_model(cfg, self.dataset, self.splits, self.config, self.progress, self.cache, self.device,
                                                self.x_eval, self.query_store)
        return self._models[name]

    def trainer(self, model: str, defense_id: str = UNDEFENDED) -> ModelTrainer:
        """Trains models like the variant: its model's recipe, then its defense (references of a DP-SGD variant train with DP)."""
        if (model, defense_id) not in self._trainers:
            defense = None if defense_id == UNDEFENDED else (defense_id, self._defense(defense_id))
            self._trainers[(model, defense_id)] = trainer_for(self.model(model).cfg, self.dataset, splits=self.splits, cache=self.cache,
                                                              device=self.device, defense=defense)
        return self._trainers[(model, defense_id)]

    def _defense(self, defense_id: str) -> Defense:
        defense_cfg = next(d for d in self.config.defenses if d["id"] == defense_id)
        return registry()[defense_cfg["name"]](**defense_cfg["params"])

    def variant(self, model: str, defense: str) -> Variant:
        if (model, defense) not in self._variants:
            self._variants[(model, defense)] = self._build_variant(model, defense)
        return self._variants[(model, defense)]

    def defended(self, model: str, defense_id: str) -> tuple[Defended | None, bool, list[dict[str, Any]]]:
        """The variant's module, trained or loaded (the slow part, not under `cell_timeout`): (defended, randomized, error rows)."""
        if (model, defense_id) not in self._defended:
            self._defended[(model, defense_id)] = self._defend(model, defense_id)
        return self._defended[(model, defense_id)]

    def _defend(self, model: str, defense_id: str) -> tuple[Defended | None, bool, list[dict[str, Any]]]:
        prepared, config = self.model(model), self.config
        if defense_id == UNDEFENDED:
            return Defended(module=prepared.module, output_kind=prepared.output_kind,
                            training_seconds=prepared.training_seconds, cached=prepared.cached), False, []
        defense = self._defense(defense_id)
        context = DefenseContext(
            model_name=model, make_base=lambda: prepared.module, output_kind=prepared.output_kind, recipe=prepared.recipe,
            dataset=self.dataset, splits=self.splits,
            seed=derive_seed(config.seed, "defense", model, defense_id), cache=self.cache,
            base_parts=prepared.base_parts, build=prepared.build, progress=self.progress.bars, device=self.device,
        )
        self.progress.say(f"defending {model} with {defense_id} ({defense.stage})")
        try:
            return defense.apply(context), defense.randomized, []
        except Exception as exc:  # one failing defense must not lose the rest of the audit
            message = describe_exception(exc, limit=500)
            self.progress.say(f"defense {defense_id} of {model} failed: {message}")
            return None, defense.randomized, [error_row(message, model=model, defense=defense_id, category=Category.DEFENSE)]

    def _build_variant(self, model: str, defense_id: str) -> Variant:
        config = self.config
        defended, randomized, failed = self.defended(model, defense_id)
        if defended is None:
            return Variant(model, defense_id, None, failed)
        try:
            labels = (model,) if defense_id == UNDEFENDED else (model, defense_id)
            target = make_target(defended.module, self.dataset, defended.output_kind, model, defense_id, defended.gradient, self.device)
            seed_everything(derive_seed(config.seed, "performance", *labels))
            rows, arrays = _variant_rows(target, defended, self.dataset, self.splits)
            seed_everything(derive_seed(config.seed, "checks", *labels))
            if randomized or probe_randomness(target, self.x_eval):
                samples = config.checks["eot_samples"]
                target = expectation(target, samples)
                note = flag(RANDOMIZED, True, f"identical calls gave different outputs; every attack used the expectation over {samples} passes")
            else:
                note = flag(RANDOMIZED, False, "identical calls gave identical outputs")
            gradients = [probe_gradients(target, self.x_eval, self.y_eval)] if target.differentiable else []  # nothing to mask without them
            probes = [note, *gradients] if config.checks["enabled"] else []
        except Exception as exc:  # a model that fails on the evaluation data (an endpoint that stopped answering): one error row
            message = f"evaluating {variant_label(model, defense_id)} failed: {describe_exception(exc, limit=500)}"
            self.progress.say(message)
            return Variant(model, defense_id, None, [error_row(message, model=model, defense=defense_id, category=Category.PERFORMANCE)])
        return Variant(model, defense_id, target, rows, probes, defended.cached, arrays)


_SESSIONS: dict[tuple[str, str], AuditSession] = {}


def adopt_session(session: AuditSession | None) -> None:
    """Make `session` the one this process's tasks use (the driver's, for the local executor); None releases it."""
    _SESSIONS.clear()
    if session is not None:
        _SESSIONS[(session.config.digest(), str(session.cache.root))] = session


def session_for(config: Config, cache_root: Path | None, quiet: bool = True, query_store: Path | None = None) -> AuditSession:
    """This process's session for `config` (a Ray worker keeps it between the cells it runs)."""
    key = (config.digest(), str(cache_root))
    if config.execution["threads"]:
        import torch

        torch.set_num_threads(config.execution["threads"])
    if key not in _SESSIONS:
        _SESSIONS.clear()  # one audit at a time per process; drop the previous one's models
        _SESSIONS[key] = AuditSession(config, cache_root, Progress(quiet), query_store)
    return _SESSIONS[key]
