"""Executors run planned tasks: `local` in this process, one after another; `ray` as Ray tasks on a cluster.

Both yield results as tasks finish, so the runner journals every cell the moment it completes.
Cells seed themselves from the config, so the executor never changes a number.

With `[execution] cell_timeout`, each cell runs in a child process (`CellProcess`) that is ended
when it overruns: a forward pass that never returns cannot be interrupted from within its process.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any, Iterator, Protocol

from audit.cells import BOUNDED, Task, TaskOutcome, ended, execute, prepare
from audit.errors import KansaError, describe_exception


class Executor(Protocol):
    name: str

    def run(self, tasks: list[Task]) -> Iterator[tuple[int, TaskOutcome]]:
        """(index in `tasks`, outcome) pairs, in the order the tasks finish."""

    def close(self) -> None: ...


def _die_with_parent() -> None:
    """Linux: the child is killed when the driver dies, even by SIGKILL, instead of spinning on as an orphan."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _portable(exc: BaseException) -> BaseException:
    try:
        pickle.dumps(exc)
        return exc
    except Exception:
        return RuntimeError(describe_exception(exc, limit=1000))


def serve(fd: int) -> None:
    """The child's loop on the socket `fd`: prepare a task, say "ready" (its time limit starts), run it, send the outcome."""
    _die_with_parent()
    conn = Connection(fd)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the driver closed the socket: done
            return
        try:
            prepare(task)
            conn.send(("ready", None))
            conn.send(("done", execute(task)))
        except Exception as exc:  # the driver raises it, as if the task had run in its own process
            conn.send(("raised", _portable(exc)))


class CellProcess:
    """One child process that runs tasks one at a time and keeps its session between them; ended and replaced when a task overruns.

    The child is a fresh interpreter (not multiprocessing's spawn, which re-runs the caller's
    `__main__`: a user's script without a main guard would start its audit again), with the
    driver's import path, talking over a socket pair.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        parent, child = multiprocessing.Pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        command = [sys.executable, "-c", "import sys; from audit.executors import serve; serve(int(sys.argv[1]))", str(child.fileno())]
        self._process = subprocess.Popen(command, pass_fds=(child.fileno(),), env=env)
        child.close()
        self._conn = parent
        return parent

    def run(self, task: Task, timeout: float) -> TaskOutcome:
        alive = self._process is not None and self._process.poll() is None
        conn = self._conn if alive and self._conn is not None else self._start()
        conn.send(task)
        ready = self._receive(conn, None)
        if ready[0] == "ready":
            started = time.monotonic()
            done = self._receive(conn, timeout)
            if done[0] == "done":
                return done[1]
            if done[0] == "raised":
                raise done[1]
            return ended(task, done[1], time.monotonic() - started)
        if ready[0] == "raised":
            raise ready[1]
        return ended(task, ready[1], 0.0)

    def _receive(self, conn: Connection, timeout: float | None) -> tuple[str, Any]:
        """("ready" | "done" | "raised", payload), or ("ended", why) after ending a child that overran or died."""
        if not conn.poll(timeout):
            self.close()
            return "ended", f"did not finish within cell_timeout = {timeout:g} s, and was ended"
        try:
            return conn.recv()
        except (EOFError, OSError):
            code = self._process.wait(5) if self._process is not None else None
            self.close()
            return "ended", f"ended unexpectedly: its process exited with code {code}"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            self._process = None


class LocalExecutor:
    """In this process, one task after another; with a cell time limit, cells run in one child process that is replaced when it is ended."""

    name = "local"

    def __init__(self, cell_timeout: float | None = None) -> None:
        self.cell_timeout = cell_timeout or 0.0
        self._cells = CellProcess() if cell_timeout else None

    def run(self, tasks: list[Task]) -> Iterator[tuple[int, TaskOutcome]]:
        for index, task in enumerate(tasks):
            if self._cells is not None and task.kind in BOUNDED:
                yield index, self._cells.run(task, self.cell_timeout)
            else:
                yield index, execute(task)

    def close(self) -> None:
        if self._cells is not None:
            self._cells.close()


_WORKER_CELLS: CellProcess | None = None  # a Ray worker's own child, kept between the cells it runs


def execute_bounded(task: Task, cell_timeout: float | None) -> TaskOutcome:
    """A Ray worker's task: cells in the worker's child process under the time limit, everything else in the worker."""
    global _WORKER_CELLS
    if not cell_timeout or task.kind not in BOUNDED:
        return execute(task)
    if _WORKER_CELLS is None:
        _WORKER_CELLS = CellProcess()
    return _WORKER_CELLS.run(task, cell_timeout)


class RayExecutor:
    """Ray tasks of one CPU each; the cluster at `address` (or $RAY_ADDRESS), else a local Ray for this run.

    Workers share trained weights through the weight cache folder, so on a multi-machine cluster
    `[cache] path` must be storage every node can read and write.
    """

    name = "ray"

    def __init__(self, address: str | None, cpus: int | None, quiet: bool = True, cell_timeout: float | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise KansaError('executor = "ray" needs Ray: pip install "kansa[ray]"') from None
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            address = address or os.environ.get("RAY_ADDRESS")
            # the workers' progress lines reach the driver's stderr unless the run is quiet
            options: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": not quiet}
            if address:
                ray.init(address=address, **options)
            else:
                ray.init(num_cpus=cpus, **options)
        self.cell_timeout = cell_timeout
        self._remote = ray.remote(num_cpus=1, max_retries=0)(execute_bounded)

    def run(self, tasks: list[Task]) -> Iterator[tuple[int, TaskOutcome]]:
        pending = {self._remote.remote(task, self.cell_timeout): index for index, task in enumerate(tasks)}
        while pending:
            done, _ = self._ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            yield index, self._ray.get(done[0])

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


def make_executor(execution: dict[str, Any], quiet: bool = True) -> Executor:
    if execution["executor"] == "ray":
        return RayExecutor(execution["address"], execution["cpus"], quiet, execution["cell_timeout"])
    return LocalExecutor(execution["cell_timeout"])
