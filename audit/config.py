"""Load and validate an audit config (TOML, or YAML) into a `Config`.

Validation is complete before anything heavy runs: a typo costs a second, not a training run.
The schema of each table is declared by the module that uses it (data, models, attacks).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from attacks import configured, swept_eps
from attacks import registry as attack_registry
from attacks.base import ENSEMBLE, THREAT_EPS
from audit.checks import CHECKS_PARAMS, WAIVER_PARAMS, validate_waivers
from audit.data import COMMON_PARAMS as DATA_COMMON
from audit.data import ONE_SOURCE_PARAMS, SOURCE_PARAMS, validate_data_config
from audit.errors import ConfigError
from audit.gates import GATE_PARAMS, PRESETS, validate_gates_config
from audit.metrics import CHARACTERISTICS
from audit.models import COMMON_PARAMS as MODEL_COMMON
from audit.models import KIND_PARAMS, validate_model_config
from audit.params import AnyTable, Choice, Flag, ListOf, Location, Number, Param, ParamSet, Text, describe_params, optional_tables, validate_tagged
from audit.results import UNDEFENDED
from defenses import registry as defense_registry

if TYPE_CHECKING:
    from audit.data import Dataset, Splits

TOP_PARAMS = (
    Param("title", Text(), "Kansa audit", "report title"),
    Param("seed", Number(0, 2**31 - 1, integer=True), 0, "fixes splits, training and attacks"),
)
EVALUATION_PARAMS = (
    Param("samples", Number(1, None, integer=True), None, "attack at most this many test samples (default: the whole test split)"),
    Param("repeats", Number(1, 100, integer=True), 1, "re-run randomised attacks with other seeds; results carry the mean and std"),
    Param("threat_linf_eps", Number(0, None, closed="neither"), None,
          "the L-inf budget your threat model names (e.g. 0.1, or 8/255 = 0.0314); every headline reports robust accuracy at it; "
          "it must be among the eps an L-inf attack sweeps"),
    Param("threat_l2_eps", Number(0, None, closed="neither"), None, "the same for the L2 threat model"),
    Param("threat_l1_eps", Number(0, None, closed="neither"), None, "the same for the L1 threat model"),
    Param("threat_l0_eps", Number(0, None, closed="neither"), None, "the same for the L0 threat model (input values changed)"),
    Param("strong_l2_attacks", Flag(), True,
          "when attacks sweep L2 eps, also run APGD-L2 (id apgd-l2) and FMN-L2 (id fmn-l2) at those eps unless attacks of those names "
          "with norm 2 are listed, so the L2 ensemble never rests on DeepFool or CW alone; false: only the attacks listed"),
)
STRONG_L2 = (("apgd-l2", "apgd"), ("fmn-l2", "fmn"))  # (id, name): what the L2 ensemble always includes unless opted out
HISTORY_PARAMS = (
    Param("enabled", Flag(), True, "record every run in the history database"),
    Param("path", Text(), None, "SQLite file, relative to this config (default: .kansa/history.sqlite in the working directory, or $KANSA_HISTORY)"),
)
COMPONENT_PARAMS = (
    Param("name", Text(), "unnamed ML component", "the ML component under audit"),
    Param("intended_use", Text(), None, "what the component is for, and where it must not be used"),
    Param("guideline_edition", Text(), "not declared", "edition of AIST's Machine Learning Quality Management Guideline followed"),
    Param("aisl", Choice(("AISL 0", "AISL 0.1", "AISL 0.2", "AISL 1", "AISL 2", "AISL 3", "AISL 4")), None, "declared risk-avoidance level"),
    Param("aipl", Choice(("AIPL 0", "AIPL 1", "AIPL 2")), None, "declared AI-performance level"),
    Param("aifl", Choice(("AIFL 0", "AIFL 1", "AIFL 2")), None, "declared fairness level"),
    Param("risk_factors", ListOf(Text()), None, "hazards the component's errors could cause"),
    Param("attributes", ListOf(Text()), None, "distinguished problem cases (attributes of inputs) the data must cover"),
    Param("threat_model", Text(), None, "who may attack the component, with what access; shown in the security section"),
)
ATTESTATION_PARAMS = (
    Param("characteristic", Choice(CHARACTERISTICS), doc="the quality characteristic it evidences (S: security and privacy)"),
    Param("statement", Text(), doc="what was done or checked, that no tool can measure"),
    Param("owner", Text(), doc="who attests it"),
    Param("date", Text(), None, "when"),
    Param("evidence", Text(), None, "where the evidence lives (a document, a ticket)"),
)
CACHE_PARAMS = (
    Param("enabled", Flag(), True, "reuse trained weights (models, defended variants, reference models) across runs"),
    Param("path", Text(), None, "cache folder, relative to this config (default: .kansa/cache in the working directory, or $KANSA_CACHE)"),
)
EXECUTION_PARAMS = (
    Param("executor", Choice(("local", "ray")), "local", "local: in this process; ray: Ray tasks (pip install 'kansa[ray]')"),
    Param("address", Text(), None, "Ray cluster address (default: $RAY_ADDRESS, else a local Ray started for the run)"),
    Param("cpus", Number(1, 100_000, integer=True), None, "CPUs of the local Ray started for the run (default: all)"),
    Param("cell_timeout", Number(0, None, closed="neither"), None,
          "seconds a task that uses a model (a variant's evaluation, an attack cell, a variant's checks) may run; one that takes longer "
          "is ended and becomes an error row while the rest of the audit completes (such tasks then run in a child process that can "
          "be ended; training is not limited; default: no limit)"),
    Param("resume", Flag(), True, "skip cells an earlier, interrupted run of this config already journaled in the run folder"),
    Param("device", Choice(("auto", "cpu", "cuda")), "auto", "where models train and attacks run: auto takes a CUDA GPU when torch sees one"),
    Param("threads", Number(1, 1024, integer=True), None,
          "torch threads per process (default: torch's choice; 1 avoids a many-fold slowdown on cores other jobs also use)"),
)
MLFLOW_PARAMS = (
    Param("uri", Text(), doc="tracking URI: http(s)://server:5000, databricks, sqlite:///mlflow.db, or a file store (file:///path; "
                             "MLflow 3 wants MLFLOW_ALLOW_FILE_STORE=true for it); credentials in MLFLOW_TRACKING_TOKEN or _USERNAME/_PASSWORD, never here"),
    Param("experiment", Text(), "kansa", "the MLflow experiment the runs go to (created when missing)"),
    Param("run_name", Text(), None, "the MLflow run's name (default: the config's title)"),
    Param("timeout", Number(0, None, closed="neither"), 30, "seconds one request to the tracking server may take"),
    Param("retries", Number(0, 20, integer=True), 2, "retries of a failed request to the tracking server"),
)
TRACKING_PARAMS = (
    Param("mlflow", AnyTable(), None, '{ uri = "...", experiment = "..." }: log each audit as an MLflow run (pip install "kansa[mlflow]"); '
                                      "see docs/tracking.md"),
)
TABLES = ("data", "models", "evaluation", "attacks", "defenses", "gates", "history", "cache", "execution", "checks", "waivers", "component",
          "attestations", "tracking")


@dataclass
class Config:
    path: Path
    title: str
    seed: int
    data: dict[str, Any]
    models: list[dict[str, Any]]
    evaluation: dict[str, Any]
    attacks: list[dict[str, Any]]
    defenses: list[dict[str, Any]]
    gates: list[dict[str, Any]]
    history: dict[str, Any]
    cache: dict[str, Any]
    execution: dict[str, Any]
    checks: dict[str, Any]
    waivers: list[dict[str, Any]]
    component: dict[str, Any]
    attestations: list[dict[str, Any]]
    text: str
    label: str = ""
    tracking: dict[str, Any] = field(default_factory=lambda: {"mlflow": None})

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def location(self) -> Location:
        return Location(self.label or str(self.path))

    def validated(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "seed": self.seed,
            "data": self.data,
            "models": self.models,
            "evaluation": self.evaluation,
            "attacks": self.attacks,
            "defenses": self.defenses,
            "gates": self.gates,
            "checks": self.checks,
            "waivers": self.waivers,
            "component": self.component,
            "attestations": self.attestations,
        }

    def digest(self) -> str:
        canonical = json.dumps(self.validated(), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _parse(path: Path, label: str) -> tuple[dict[str, Any], str]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label}: cannot read the file ({exc})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{label}: invalid YAML: {' '.join(str(exc).split())}") from None
        except RecursionError:
            raise ConfigError(f"{label}: invalid YAML: nested too deeply to parse") from None
        if raw is None:
            raw = {}
    else:
        import tomllib

        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{label}: invalid TOML: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{label}: invalid TOML: arrays or tables nested too deeply to parse") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: expected a table of settings at the top level, got {type(raw).__name__}")
    return raw, text


def _list_of_tables(raw: dict[str, Any], key: str, where: Location) -> list[Any]:
    """A required `[[key]]` array: at least one table."""
    if raw.get(key) is None:
        raise where.child(key).error(f"missing; add at least one [[{key}]] table")
    tables = optional_tables(raw[key], where.child(key))
    if not tables:
        raise where.child(key).error(f"expected one or more [[{key}]] tables, got []")
    return tables


def _unique(items: list[dict[str, Any]], key: str, where: Location, table: str) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item[key] in seen:
            raise where.child(table).child(i).child(key).error(
                f'"{item[key]}" is already used by {table}[{seen[item[key]]}]; give each a distinct {key}'
            )
        seen[item[key]] = i


def validate_attack_config(table: Any, where: Location) -> dict[str, Any]:
    attacks = attack_registry()
    values = validate_tagged(
        table, where, "name", {name: cls.params for name, cls in attacks.items()},
        (Param("id", Text(), None, "label in results (default: the name); needed when one attack appears twice"),),
    )
    name, attack_id = values.pop("name"), values.pop("id")
    if (attack_id or name) in ENSEMBLE.values():
        raise where.child("id").error(f'"{attack_id or name}" is reserved for the per-sample worst case over all attacks')
    attacks[name].check(values, where)
    return {"name": name, "id": attack_id or name, "params": values}


def validate_defense_config(table: Any, where: Location, model_names: list[str]) -> dict[str, Any]:
    defenses = defense_registry()
    values = validate_tagged(
        table, where, "name", {name: cls.params for name, cls in defenses.items()},
        (Param("id", Text(), None, "label in results (default: the name); needed when one defense appears twice"),
         Param("models", ListOf(Text()), None, "names of the models to defend (default: every model)")),
    )
    name, defense_id, models = values.pop("name"), values.pop("id"), values.pop("models")
    if (defense_id or name) == UNDEFENDED:
        raise where.child("id").error(f'"{UNDEFENDED}" is reserved for the undefended baseline, which every audit includes')
    for i, model in enumerate(models or []):
        if model not in model_names:
            raise where.child("models").child(i).error(f'no model is named "{model}"; models: {", ".join(model_names)}')
    defenses[name].check(values, where)
    return {"name": name, "id": defense_id or name, "models": models or list(model_names), "params": values}


def _strong_l2(evaluation: dict[str, Any], attacks: list[dict[str, Any]], where: Location) -> list[dict[str, Any]]:
    """The L2 attacks an L2 threat model adds by default (`strong_l2_attacks`): on the MNIST CNN at L2 eps 2 they leave
    0.19-0.22 robust where DeepFool leaves 0.42 and CW 0.63 (bench/RESULTS.md)."""
    l2_eps = swept_eps(attacks).get("2")
    if not evaluation["strong_l2_attacks"] or not l2_eps:
        return []
    listed = {attack.name for attack in configured(attacks).values() if attack.norm == "2"}
    return [validate_attack_config({"name": name, "id": attack_id, "norm": "2", "eps": l2_eps}, where.child(attack_id))
            for attack_id, name in STRONG_L2 if name not in listed]


def _check_threat_eps(evaluation: dict[str, Any], attacks: list[dict[str, Any]], where: Location) -> None:
    """A declared threat-model eps must be measured: the headline is never read off a neighbouring eps."""
    swept = swept_eps(attacks)
    for norm, key in THREAT_EPS.items():
        eps = evaluation[key]
        if eps is not None and not any(abs(eps - e) <= 1e-9 * max(1.0, eps) for e in swept.get(norm, [])):
            listed = ", ".join(f"{e:g}" for e in swept.get(norm, [])) or "none"
            raise where.child(key).error(f"{eps:g} is not among the eps the L{'-inf' if norm == 'inf' else norm} attacks sweep ({listed}); "
                                         "add it to an attack's eps list")


def load_config(path: str | Path, seed: int | None = None) -> Config:
    """Parse and validate; every error names the file and the key path."""
    path = Path(path)
    label = str(path)
    raw, text = _parse(path, label)
    where = Location(label)
    top = ParamSet(TOP_PARAMS, extra_keys=TABLES).validate(raw, where)
    if "data" not in raw:
        raise where.child("data").error('missing; add a [data] table, e.g. source = "digits"')
    data = validate_data_config(raw["data"], where.child("data"))
    models = [validate_model_config(m, where.child("models").child(i)) for i, m in enumerate(_list_of_tables(raw, "models", where))]
    _unique(models, "name", where, "models")
    evaluation = ParamSet(EVALUATION_PARAMS).validate(raw.get("evaluation", {}), where.child("evaluation"))
    attacks = [validate_attack_config(a, where.child("attacks").child(i)) for i, a in enumerate(_list_of_tables(raw, "attacks", where))]
    attacks += _strong_l2(evaluation, attacks, where.child("attacks"))
    _unique(attacks, "id", where, "attacks")
    _check_threat_eps(evaluation, attacks, where.child("evaluation"))
    names = [m["name"] for m in models]
    defenses = [validate_defense_config(d, where.child("defenses").child(i), names)
                for i, d in enumerate(optional_tables(raw.get("defenses"), where.child("defenses")))]
    _unique(defenses, "id", where, "defenses")
    cache = ParamSet(CACHE_PARAMS).validate(raw.get("cache", {}), where.child("cache"))
    execution = ParamSet(EXECUTION_PARAMS).validate(raw.get("execution", {}), where.child("execution"))
    gates = validate_gates_config(raw.get("gates"), where.child("gates"))
    history = ParamSet(HISTORY_PARAMS).validate(raw.get("history", {}), where.child("history"))
    checks = ParamSet(CHECKS_PARAMS).validate(raw.get("checks", {}), where.child("checks"))
    waivers = validate_waivers(raw.get("waivers"), where.child("waivers"))
    component = ParamSet(COMPONENT_PARAMS).validate(raw.get("component", {}), where.child("component"))
    attestations = [
        ParamSet(ATTESTATION_PARAMS).validate(t, where.child("attestations").child(i))
        for i, t in enumerate(optional_tables(raw.get("attestations"), where.child("attestations")))
    ]
    tracking = ParamSet(TRACKING_PARAMS).validate(raw.get("tracking", {}), where.child("tracking"))
    if tracking["mlflow"] is not None:
        tracking["mlflow"] = validate_mlflow(tracking["mlflow"], where.child("tracking").child("mlflow"))
    return Config(
        path=path.resolve(),
        title=top["title"],
        seed=top["seed"] if seed is None else seed,
        data=data,
        models=models,
        evaluation=evaluation,
        attacks=attacks,
        defenses=defenses,
        gates=gates,
        history=history,
        cache=cache,
        execution=execution,
        checks=checks,
        waivers=waivers,
        component=component,
        attestations=attestations,
        text=text,
        label=label,
        tracking=tracking,
    )


def validate_mlflow(table: Any, where: Location) -> dict[str, Any]:
    """The `[tracking] mlflow` table (or `--mlflow URI`); a URI with credentials in it is refused, as it would be written into the outputs."""
    values = ParamSet(MLFLOW_PARAMS).validate(table, where)
    if "@" in urlsplit(values["uri"]).netloc:
        raise where.child("uri").error("holds credentials, which would be recorded with the config; "
                                       "set MLFLOW_TRACKING_TOKEN (or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD) instead")
    return values


def check_against_data(config: Config, dataset: "Dataset", splits: "Splits") -> None:
    """Every configured attack and defense must apply to the loaded data; the first that does not is a config error naming its key.

    Run before anything is trained, so `kansa validate` and the first second of `kansa run` say what a
    run would otherwise find out only when the piece fails.
    """
    where = config.location
    for i, model in enumerate(config.models):
        if model["kind"] == "builtin" and not len(splits.train):
            raise where.child("models").child(i).error(f'model "{model["name"]}" is trained by Kansa, on data.train, which is not declared')
    for table, family in (("attacks", attack_registry()), ("defenses", defense_registry())):
        for i, entry in enumerate(getattr(config, table)):
            family[entry["name"]].check_data(entry["params"], dataset, splits, where.child(table).child(i))


def schema_markdown() -> str:
    """The whole config schema as Markdown tables, generated from the same declarations that validate."""
    def table(params: tuple[Param, ...] | list[Param]) -> list[str]:
        if not params:
            return ["(no further keys)", ""]
        lines = ["| key | accepts | default | meaning |", "| --- | --- | --- | --- |"]
        for p in describe_params(params):
            accepts = p["accepts"].replace("|", "\\|")
            lines.append(f"| `{p['name']}` | {accepts} | {p['default']} | {p['doc']} |")
        return lines + [""]

    out = ["### Top level", "", *table(TOP_PARAMS), "### `[component]`", "",
           "Declarations for the guideline-style report.", "", *table(COMPONENT_PARAMS),
           "### `[[attestations]]`", "", "What no tool can measure, attested by a named owner.", "", *table(ATTESTATION_PARAMS), "### `[data]`", "",
           "Either one source (`source` is one of " + ", ".join(f"`{k}`" for k in SOURCE_PARAMS) + "), which Kansa splits into "
           "train / hold-out / test unless a `split_column` or `split_file` declares the roles; or a source per role in "
           "`[data.train]` (the data the model was trained on: the members), `[data.holdout]` (data it never saw: the non-members) "
           "and `[data.test]` (required: what accuracy and integrity attacks measure), each a table with its own `source`. "
           "Declared roles are never re-split. Keys of `[data]` in both forms:", "", *table(DATA_COMMON),
           "Keys of `[data]` with one source:", "", *table(ONE_SOURCE_PARAMS)]
    for source, params in SOURCE_PARAMS.items():
        out += [f'#### `source = "{source}"`', "", *table(params)]
    out += ["### `[[models]]`", "", "`kind` is one of " + ", ".join(f"`{k}`" for k in KIND_PARAMS) + " (default `builtin`).", "",
            *table(MODEL_COMMON)]
    for kind, params in KIND_PARAMS.items():
        out += [f'#### `kind = "{kind}"`', "", *table(params)]
    out += ["### `[evaluation]`", "", *table(EVALUATION_PARAMS)]
    out += ["### `[[gates]]`", "", "Presets: " + ", ".join(f"`{k}` ({', '.join(f'{a} = {b}' for a, b in v.items())})" for k, v in PRESETS.items()) + ".", "",
            *table(GATE_PARAMS), "### `[history]`", "", *table(HISTORY_PARAMS), "### `[cache]`", "", *table(CACHE_PARAMS),
            "### `[execution]`", "", "Where cells run; see docs/scale.md.", "", *table(EXECUTION_PARAMS),
            "### `[checks]`", "", "Evaluation sanity checks; see docs/checks.md.", "", *table(CHECKS_PARAMS),
            "### `[[waivers]]`", "", *table(WAIVER_PARAMS),
            "### `[tracking]`", "", "Where each audit is logged; see docs/tracking.md.", "", *table(TRACKING_PARAMS),
            "#### `[tracking] mlflow`", "", *table(MLFLOW_PARAMS)]
    out += ["### `[[attacks]]`", "",
            "Every attack takes `name` (required) and `id` (its label in results; default: the name).", ""]
    for name, cls in attack_registry().items():
        out += [f'#### `name = "{name}"`', "", cls.summary + ".", "", *table(cls.params)]
    out += ["### `[[defenses]]`", "",
            "Every defense takes `name` (required), `id` (its label in results; default: the name) and `models` "
            "(the model names it applies to; default: all). The undefended variant `none` is always audited too.", ""]
    for name, cls in defense_registry().items():
        out += [f'#### `name = "{name}"` ({cls.stage})', "", cls.summary + ".", "", *table(cls.params)]
    return "\n".join(out).rstrip() + "\n"


def example_config() -> str:
    """The commented example that `kansa init` writes and the default audit runs."""
    return (Path(__file__).parent / "resources" / "example.toml").read_text(encoding="utf-8")
