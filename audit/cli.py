"""The `kansa` command. Heavy imports (torch, ART) happen inside commands, so `--help` is instant.

Exit codes: 0 success, 1 a gate failed, 2 usage or input error, 3 inconclusive.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from audit.results import AuditResult

EXIT_OK, EXIT_GATE_FAILED, EXIT_INPUT, EXIT_INCONCLUSIVE = 0, 1, 2, 3


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kansa")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kansa", description="Adversarial-robustness and ML-quality audits.")
    parser.add_argument("--version", action="version", version=f"kansa {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run an audit and write report.html, results.json, results.csv")
    run.add_argument("config", help="audit config (TOML or YAML)")
    run.add_argument("--out", help="output folder (default: runs/<config name>)")
    run.add_argument("--seed", type=int, help="override the config's seed")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--baseline", help='for regression gates: a results.json, a run folder, a run id, or "last-pass"')
    run.add_argument("--no-history", action="store_true", help="do not record this run in the history database")
    run.add_argument("--force", action="store_true", help="overwrite an output folder that holds another run")
    run.add_argument("--lang", choices=("en", "ja"), default="en", help="language of the report")
    run.add_argument("--executor", choices=("local", "ray"), help="where cells run (default: the config's [execution] executor)")
    run.add_argument("--fresh", action="store_true", help="re-run every cell, ignoring those an interrupted run journaled")
    run.add_argument("--mlflow", metavar="URI", help="log the audit as an MLflow run at this tracking URI (pip install 'kansa[mlflow]')")

    report = commands.add_parser("report", help="re-render the report of a finished run, without re-running anything")
    report.add_argument("run_dir", help="folder holding results.json")
    report.add_argument("--lang", choices=("en", "ja"), default="en")

    status = commands.add_parser("status", help="what a run in progress or interrupted has done and has left, from its journal")
    status.add_argument("run_dir", metavar="RUN_DIR", help="the folder kansa run --out writes")
    compare = commands.add_parser("compare", help="compare models and defenses across finished runs: comparison.csv, .json, .html")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="folders holding results.json")
    compare.add_argument("--out", default="comparison", help="output folder (default: ./comparison)")
    compare.add_argument("--lang", choices=("en", "ja"), default="en")
    compare.add_argument("--allow-mismatch", action="store_true",
                         help="compare runs on other data, samples or attack budgets anyway, each group with its own Pareto front")
    compare.add_argument("--robust", metavar="COLUMN", help='robust-accuracy column for the Pareto front, e.g. "robust_accuracy[pgd@0.1]" (default: the strongest common one)')

    gate = commands.add_parser("gate", help="re-evaluate gates on a finished run (exit 0 pass, 1 fail, 3 inconclusive)")
    gate.add_argument("run_dir", help="folder holding results.json")
    gate.add_argument("--config", help="take the gates from this config instead of the run's own")
    gate.add_argument("--baseline", help='a results.json, a run folder, a run id, or "last-pass"')

    history = commands.add_parser("history", help="list recorded runs, or a metric's trend")
    history.add_argument("--db", help="history database (default: .kansa/history.sqlite or $KANSA_HISTORY)")
    history.add_argument("--metric", help="show this metric across runs")
    history.add_argument("--model")
    history.add_argument("--attack")
    history.add_argument("--at", type=float, help="swept parameter value (eps, fpr)")
    history.add_argument("--subset", default="all")
    history.add_argument("--limit", type=int, default=20)

    init = commands.add_parser("init", help="write a commented example config")
    init.add_argument("path", nargs="?", default="audit.toml")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    validate = commands.add_parser("validate", help="check a config without running it")
    validate.add_argument("config")

    listing = commands.add_parser("list", help="list attacks and defenses with their parameters")
    listing.add_argument("--schema", action="store_true", help="print the whole config schema as Markdown")
    listing.add_argument("--metrics", action="store_true", help="print every metric of the results table as Markdown")
    return parser


def _verdict_exit(result: "AuditResult") -> int:
    """Print the gate checks and turn the worst verdict into the exit code."""
    from audit.gates import FAIL, INCONCLUSIVE, overall_verdict
    from reports.junit import case_name

    for _, check in result.gates.iterrows():
        print(f"{check['verdict'].upper():>12}  {check['gate']}  {case_name(check)}: {check['reason']}")
    verdict = overall_verdict(result.gates)
    if verdict is not None:
        print(f"verdict: {verdict}")
    return {FAIL: EXIT_GATE_FAILED, INCONCLUSIVE: EXIT_INCONCLUSIVE}.get(verdict, EXIT_OK)


def _run(args: argparse.Namespace) -> int:
    from audit.api import run_audit
    from audit.results import UNDEFENDED
    from reports.html import report_name
    from reports.terminal import terminal_summary

    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    result = run_audit(
        args.config, out_dir=out, seed=args.seed, quiet=args.quiet, baseline=args.baseline,
        history=False if args.no_history else None, force=args.force, lang=args.lang,
        executor=args.executor, resume=False if args.fresh else None, mlflow=args.mlflow,
    )
    errors = result.errors
    cells = len(result.metadata.cells)
    print(terminal_summary(result, out / report_name(args.lang), out))
    if len(errors):
        failed = sorted({"/".join(part for part in (r.model, r.defense if r.defense != UNDEFENDED else "", r.attack or "(defense)") if part)
                         for r in errors.itertuples()})
        print(f"kansa: {len(failed)} failed ({', '.join(failed)}) of {cells} attack cells and "
              f"{len(result.metadata.defenses)} defenses; their rows have status=error", file=sys.stderr)
    return _verdict_exit(result)


def _report(args: argparse.Namespace) -> int:
    from audit.results import load_run
    from reports.html import write_html

    result = load_run(args.run_dir)
    print(f"report:  {write_html(result, Path(args.run_dir), args.lang)}")
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from reports.trade_offs import compare_runs

    written = compare_runs(args.run_dirs, Path(args.out), args.lang, args.robust, args.allow_mismatch)
    print(f"table:   {written['comparison_csv']}, {written['comparison_json']}")
    print(f"report:  {written['comparison_html']}")
    return EXIT_OK


def _gate(args: argparse.Namespace) -> int:
    from audit.runner import regate
    from reports import write_gate_outputs

    result = regate(args.run_dir, config=args.config, baseline=args.baseline)
    written = write_gate_outputs(result, Path(args.run_dir))
    print(f"verdicts: {written['gates']}, {written['junit']}, {written['summary']}")
    return _verdict_exit(result)


def _history(args: argparse.Namespace) -> int:
    from audit.history import History, default_path

    store = History(Path(args.db) if args.db else default_path(None, Path.cwd()))
    if not store.path.is_file():
        from audit.errors import KansaError

        raise KansaError(f"no history database at {store.path}")
    if args.metric:
        rows = store.trend(args.metric, model=args.model, attack=args.attack, param_value=args.at, subset=args.subset)
        if rows.empty:
            print(f"no recorded values of {args.metric}")
            return EXIT_OK
        print(rows.tail(args.limit).to_string(index=False))
    else:
        print(store.runs(args.limit).to_string(index=False))
    return EXIT_OK


def _init(args: argparse.Namespace) -> int:
    from audit.config import example_config
    from audit.errors import KansaError
    from audit.files import write_text_atomic

    path = Path(args.path)
    if path.exists() and not args.force:
        raise KansaError(f"{path} exists; use --force to overwrite it")
    write_text_atomic(path, example_config())
    print(f"wrote {path}; run it with: kansa run {path}")
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    """The config, the data and every model file a run would load, without training or attacking anything."""
    from audit.config import check_against_data, load_config
    from audit.session import AuditSession, Progress, members_origin

    config = load_config(args.config)
    session = AuditSession(config, None, Progress(quiet=True))
    dataset, splits = session.dataset, session.splits
    check_against_data(config, dataset, splits)
    loaded = [(model, session.model(model["name"])) for model in config.models if model["kind"] != "builtin"]
    roles = "declared" if splits.declared else "Kansa's split"
    print(f"{args.config}: valid ({len(config.models)} model(s), {len(config.attacks)} attack(s), {len(config.defenses)} defense(s); "
          f"data {dataset.name}: {len(dataset.y)} {dataset.kind} samples, {dataset.n_classes} classes; "
          f"train / hold-out / test {len(splits.train)} / {len(splits.holdout)} / {len(splits.test)} ({roles}); device {session.device})")
    for model, prepared in loaded:
        print(f"  model {model['name']}: {model['kind']} file opens and fits the data: inputs {dataset.input_shape} -> "
              f"{dataset.n_classes} {prepared.output_kind}; members {members_origin(model, splits)}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from attacks import registry as attacks
    from audit.params import describe_params
    from defenses import registry as defenses

    if args.schema:
        from audit.config import schema_markdown

        print(schema_markdown(), end="")
        return EXIT_OK
    if args.metrics:
        from audit.metrics import metrics_markdown

        attacks(), defenses()  # third-party components declare their metrics when imported
        print(metrics_markdown(), end="")
        return EXIT_OK
    traits: dict[str, Callable[[Any], str]] = {
        "attacks": lambda cls: f"{cls.kind.category}, {cls.access.value}" + (", randomised" if cls.randomized else ""),
        "defenses": lambda cls: cls.stage,
    }
    for heading, members in (("attacks", attacks()), ("defenses", defenses())):
        print(f"{heading}:")
        for name, cls in members.items():
            print(f"  {name}  [{traits[heading](cls)}]  {cls.summary}")
            for p in describe_params(cls.params):
                print(f"      {p['name']}: {p['accepts']} (default {p['default']}) - {p['doc']}")
    return EXIT_OK


def _one_line(message: str) -> str:
    """Control characters (from file contents or odd keys) must not break the one-line contract."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)


def _status(args: argparse.Namespace) -> int:
    from audit.results import variant_label
    from audit.runner import run_status

    status = run_status(args.run_dir)
    planned = len(status.done) + len(status.left)
    seconds = sum(cell.seconds for cell in status.done)
    print(f"{status.out_dir}: {status.state}, started {status.started}; {len(status.done)} of {planned} attack cells done "
          f"({seconds:.1f} s of attack time so far)")
    if status.done:
        print("done:")
        for cell in status.done:
            print(f"  {variant_label(cell.model, cell.defense)} / {cell.attack}: {cell.status}, {cell.seconds:.1f} s")
    if status.left:
        print("left:" if status.state != "interrupted" else "left (kansa run again with the same --out resumes them):")
        for model, defense, attack in status.left:
            print(f"  {variant_label(model, defense)} / {attack}")
    return EXIT_OK


COMMANDS = {"run": _run, "report": _report, "compare": _compare, "gate": _gate, "history": _history, "init": _init, "validate": _validate,
            "list": _list, "status": _status}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from audit.errors import KansaError

    try:
        return COMMANDS[args.command](args)
    except KansaError as exc:
        if args.debug:
            raise
        print(f"kansa: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("kansa: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line, with the way to the traceback
        if args.debug:
            raise
        print(f"kansa: error: internal error ({type(exc).__name__}: {_one_line(str(exc))}); rerun with --debug for the traceback", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
