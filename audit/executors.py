"""Executors run planned tasks: `local` in this process, one after another; `ray` as Ray tasks on a cluster.

Both yield results as tasks finish, so the runner journals every cell the moment it completes.
Cells seed themselves from the config, so the executor never changes a number.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Protocol

from audit.cells import Task, TaskOutcome, execute
from audit.errors import KansaError


class Executor(Protocol):
    name: str

    def run(self, tasks: list[Task]) -> Iterator[tuple[int, TaskOutcome]]:
        """(index in `tasks`, outcome) pairs, in the order the tasks finish."""

    def close(self) -> None: ...


class LocalExecutor:
    name = "local"

    def run(self, tasks: list[Task]) -> Iterator[tuple[int, TaskOutcome]]:
        for index, task in enumerate(tasks):
            yield index, execute(task)

    def close(self) -> None:
        pass


class RayExecutor:
    """Ray tasks of one CPU each; the cluster at `address` (or $RAY_ADDRESS), else a local Ray for this run.

    Workers share trained weights through the weight cache folder, so on a multi-machine cluster
    `[cache] path` must be storage every node can read and write.
    """

    name = "ray"

    def __init__(self, address: str | None, cpus: int | None, quiet: bool = True) -> None:
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
        self._remote = ray.remote(num_cpus=1, max_retries=0)(execute)

    def run(self, tasks: list[Task]) -> Iterator[tuple[int, TaskOutcome]]:
        pending = {self._remote.remote(task): index for index, task in enumerate(tasks)}
        while pending:
            done, _ = self._ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            yield index, self._ray.get(done[0])

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


def make_executor(execution: dict[str, Any], quiet: bool = True) -> Executor:
    if execution["executor"] == "ray":
        return RayExecutor(execution["address"], execution["cpus"], quiet)
    return LocalExecutor()
