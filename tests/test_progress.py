"""Long work is never silent: progress within a cell (bars on a terminal, periodic lines in a CI log), the run's
count of cells with the time left, nothing with --quiet, and `kansa status` on a run folder."""

from __future__ import annotations

import io
import json
import shutil

import pytest

from attacks.base import AttackContext
from attacks.evasion import PGD
from audit.cells import load_cell
from audit.cli import main
from audit.session import Progress
from tests.conftest import write


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def attack_with(progress: Progress, digits) -> None:
    """A slow cell: PGD on 64 samples in batches of 16, reporting through the attack base's hook."""
    dataset, splits, target = digits
    x, y = dataset.x[splits.test][:64], dataset.y[splits.test][:64]
    with progress.cell("pgd on cnn", len(y)) as advance:
        PGD(eps=[0.1], steps=2, batch_size=16).run(target, x, y, AttackContext(0, dataset.class_names, advance=advance))


def test_a_ci_log_gets_periodic_lines_with_count_rate_and_time_left(digits):
    log = io.StringIO()
    attack_with(Progress(False, interval=0.0, stream=log), digits)
    lines = log.getvalue().splitlines()
    assert [line.split(":", 2)[2].split(" samples")[0].strip() for line in lines] == ["16/64", "32/64", "48/64"]
    assert all(line.startswith("kansa: pgd on cnn: ") and "samples/s, about" in line and "left" in line for line in lines)
    assert "\r" not in log.getvalue()  # no bar control characters in a log


def test_a_terminal_gets_a_bar_and_quiet_gets_nothing(digits, monkeypatch):
    import functools

    import audit.session

    # the suite silences tqdm through TQDM_DISABLE, which tqdm reads at import; this test is about the bar
    monkeypatch.setattr(audit.session, "tqdm", functools.partial(audit.session.tqdm, disable=False))
    terminal = Terminal()
    attack_with(Progress(False, stream=terminal), digits)
    assert "\r" in terminal.getvalue() and "pgd on cnn:" in terminal.getvalue() and "/64 [" in terminal.getvalue()
    silent = Terminal()
    attack_with(Progress(True, interval=0.0, stream=silent), digits)
    assert silent.getvalue() == ""


def test_the_run_counts_its_cells_with_the_time_left():
    log = io.StringIO()
    finished = Progress(False, stream=log).cells(2, 5)  # two resumed from the journal
    for _ in range(3):
        finished()
    lines = log.getvalue().splitlines()
    assert [line.split(" cells")[0] for line in lines] == ["kansa: 3/5", "kansa: 4/5", "kansa: 5/5"]
    assert "left" in lines[0] and "left" not in lines[-1]


AUDIT = """
seed = 0
[data]
source = "digits"
[[models]]
name = "cnn"
epochs = 2
[evaluation]
samples = 40
[history]
enabled = false
[[attacks]]
name = "fgsm"
eps = [0.1]
[[attacks]]
name = "pgd"
eps = [0.1]
steps = 2
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("status")
    assert main(["run", str(write(folder / "audit.toml", AUDIT)), "--out", str(folder / "out"), "--quiet"]) == 0
    return folder / "out"


def test_kansa_status_lists_what_an_interrupted_run_did_and_has_left(finished_run, tmp_path, capsys):
    run = tmp_path / "interrupted"
    shutil.copytree(finished_run, run)
    (run / "results.json").unlink()  # as if killed before the end
    plan = json.loads((run / "cells" / "plan.json").read_text())
    assert [c["attack"] for c in plan["cells"]] == ["fgsm", "pgd"]
    for path in (run / "cells").glob("*.npz"):  # drop the pgd cell and the finishing step
        if load_cell(run, path.stem).record.attack in ("pgd", ""):
            path.unlink()
    capsys.readouterr()
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "interrupted" in out and "1 of 2 attack cells done" in out
    assert "done:\n  cnn / fgsm: ok," in out and "left (kansa run again with the same --out resumes them):\n  cnn / pgd" in out


def test_kansa_status_of_a_complete_run_and_of_a_folder_without_a_journal(finished_run, tmp_path, capsys):
    assert main(["status", str(finished_run)]) == 0
    assert "complete" in capsys.readouterr().out
    assert main(["status", str(tmp_path)]) == 2
    assert "no run journal here" in capsys.readouterr().err
