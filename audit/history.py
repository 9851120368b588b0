"""Run history in an embedded SQLite database: every run's identity, verdict and metrics.

It answers "what did the last passing run on this branch measure?" (the default baseline)
and "how has this metric moved?" (`kansa history --metric ...`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import pandas as pd

from audit.errors import KansaError
from audit.results import COLUMNS, AuditResult, load_results, make_table

DEFAULT_PATH = Path(".kansa") / "history.sqlite"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, created TEXT, title TEXT, config_path TEXT, config_sha256 TEXT,
    data_sha256 TEXT, models TEXT, git_commit TEXT, git_branch TEXT, verdict TEXT,
    out_dir TEXT, kansa_version TEXT
);
CREATE TABLE IF NOT EXISTS metrics (run_id TEXT REFERENCES runs(run_id), {", ".join(COLUMNS)});
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id);
CREATE INDEX IF NOT EXISTS metrics_metric ON metrics(metric);
"""


def default_path(configured: str | None, base_dir: Path) -> Path:
    if configured:
        return (base_dir / configured).expanduser()
    return Path(os.environ.get("KANSA_HISTORY", DEFAULT_PATH))


def git_state(directory: Path) -> tuple[str | None, str | None]:
    """(commit, branch) of the repository holding `directory`, or (None, None) outside one."""

    def ask(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() or None if done.returncode == 0 else None

    return ask("rev-parse", "HEAD"), ask("rev-parse", "--abbrev-ref", "HEAD")


class History:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=30)
            connection.executescript(_SCHEMA)
            present = {row[1] for row in connection.execute("PRAGMA table_info(metrics)")}
            for column in COLUMNS:  # databases written before a column was added
                if column not in present:
                    connection.execute(f"ALTER TABLE metrics ADD COLUMN {column}")
        except (OSError, sqlite3.DatabaseError) as exc:
            raise KansaError(f"history database {self.path}: {exc}") from None
        return connection

    def record(self, result: AuditResult, verdict: str | None, git: tuple[str | None, str | None]) -> None:
        meta = result.metadata
        models = json.dumps({m.name: m.sha256 for m in meta.models})
        run = (
            meta.run_id, meta.created, meta.title, meta.config_path, meta.config_sha256,
            meta.data.sha256, models, git[0], git[1], verdict or "none",
            str(result.out_dir) if result.out_dir else None, meta.versions.get("kansa"),
        )
        table = result.table.astype(object).where(result.table.notna(), None)
        with closing(self._connect()) as connection, connection:
            connection.execute(f"INSERT INTO runs VALUES ({', '.join('?' * len(run))})", run)
            connection.executemany(
                f"INSERT INTO metrics (run_id, {', '.join(COLUMNS)}) VALUES (?, {', '.join('?' * len(COLUMNS))})",
                [(meta.run_id, *row) for row in table.itertuples(index=False)],
            )

    def runs(self, limit: int = 20) -> pd.DataFrame:
        with closing(self._connect()) as connection:
            return pd.read_sql_query(
                "SELECT run_id, created, title, verdict, git_branch, git_commit, config_sha256 FROM runs "
                "ORDER BY created DESC, rowid DESC LIMIT ?",
                connection, params=(limit,),
            )

    def table(self, run_id: str) -> pd.DataFrame:
        with closing(self._connect()) as connection:
            rows = pd.read_sql_query(f"SELECT {', '.join(COLUMNS)} FROM metrics WHERE run_id = ?", connection, params=(run_id,))
        if rows.empty:
            raise KansaError(f"history database {self.path} has no run {run_id!r}")
        return make_table(rows.to_dict(orient="records"))

    def last_passing(self, branch: str | None, title: str | None = None) -> str | None:
        query = "SELECT run_id FROM runs WHERE verdict = 'pass'"
        params: list[Any] = []
        if branch is not None:
            query += " AND git_branch = ?"
            params.append(branch)
        if title is not None:
            query += " AND title = ?"
            params.append(title)
        with closing(self._connect()) as connection:
            found = connection.execute(query + " ORDER BY created DESC, rowid DESC LIMIT 1", params).fetchone()
        return found[0] if found else None

    def trend(self, metric: str, **where: Any) -> pd.DataFrame:
        clauses, params = ["m.metric = ?"], [metric]
        for column, wanted in where.items():
            if wanted is None:
                continue
            clauses.append(f"ABS(m.{column} - ?) < 1e-9" if column == "param_value" else f"m.{column} = ?")
            params.append(wanted)
        query = (
            "SELECT r.created, r.run_id, r.verdict, r.git_branch, m.model, m.defense, m.attack, m.param_value, "
            "m.subset, m.value, m.ci_low, m.ci_high, m.n FROM metrics m JOIN runs r USING (run_id) "
            f"WHERE {' AND '.join(clauses)} ORDER BY r.created, r.rowid"
        )
        with closing(self._connect()) as connection:
            return pd.read_sql_query(query, connection, params=params)


def resolve_baseline(spec: str, history: History, branch: str | None, title: str) -> tuple[pd.DataFrame | None, str]:
    """A baseline table from a results.json, a run folder, a run id, or "last-pass"; and what it was."""
    if spec == "last-pass":
        run_id = history.last_passing(branch, title)
        if run_id is None:
            return None, f"no passing run of {title!r} on branch {branch or '(none)'} in {history.path}"
        return history.table(run_id), f"last passing run {run_id}"
    path = Path(spec)
    if path.exists():
        table, meta = load_results(path)
        return table, f"{path} (run {meta.run_id})"
    if not history.path.is_file():
        raise KansaError(f"baseline {spec!r} is neither a file nor a run folder, and there is no history database at {history.path}")
    return history.table(spec), f"run {spec}"
