"""The one interface every defense implements: take the undefended model, return a defended variant.

Every configured attack then runs against the variant, exactly as against the undefended model.
A defense that hides gradients must still be attacked honestly, so every variant keeps a usable
gradient: non-differentiable input transforms pass gradients straight through (BPDA, Athalye et
al. 2018); behind an output transform, and for a quantized model, white-box attacks differentiate
the raw or float twin model while every decision is judged on the defended one (the results say so).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from audit.errors import KansaError
from audit.metrics import Category
from audit.plugins import Component
from audit.results import count_row

if TYPE_CHECKING:
    import torch

    from audit.cache import WeightCache
    from audit.data import Dataset, Splits

STAGES = ("training", "compression", "preprocessing", "postprocessing")


class DefenseError(KansaError):
    """A defense that cannot be applied as configured (the variant is recorded as an error)."""


@dataclass
class DefenseContext:
    """What a defense may use: the undefended model, its training recipe, the data and the weight cache.

    `recipe` is the built-in training recipe (for a loaded model: the built-in defaults for the data).
    `build` makes the model training-time defenses start from: a fresh built-in architecture, or a
    copy of the loaded weights to fine-tune. `base_parts` identifies the undefended model's content
    in cache keys. `make_base` gives the undefended model, built only when a defense reads it
    (a training-time defense of a reference model never needs its undefended twin trained).
    `training_data` replaces the training split when the variant is remade on other data (an
    attacker's reference model trained like the variant).
    """

    model_name: str
    make_base: "Callable[[], torch.nn.Module]"
    output_kind: str
    recipe: dict[str, Any]
    dataset: "Dataset"
    splits: "Splits"
    seed: int
    cache: "WeightCache"
    base_parts: dict[str, Any]
    build: "Callable[[], torch.nn.Module]"
    progress: bool = False
    device: str = "cpu"
    training_data: tuple[np.ndarray, np.ndarray] | None = None

    @functools.cached_property
    def base(self) -> "torch.nn.Module":
        return self.make_base()

    @property
    def train_x(self) -> np.ndarray:
        if self.training_data is not None:
            return self.training_data[0]
        if not len(self.splits.train):
            raise DefenseError("this defense trains on data.train, which is not declared: declare the model's training data as data.train")
        return self.dataset.x[self.splits.train]

    @property
    def train_y(self) -> np.ndarray:
        return self.dataset.y[self.splits.train] if self.training_data is None else self.training_data[1]

    def starting_model(self) -> "torch.nn.Module":
        """A fresh initialisation for a built-in model (seeded by the defense); a copy of the loaded weights otherwise."""
        import torch

        torch.manual_seed(self.seed)
        return self.build()

    def trained(self, defense: "Defense", train: "Callable[[torch.nn.Module], dict[str, Any]]",
                build: "Callable[[], torch.nn.Module] | None" = None) -> "tuple[torch.nn.Module, dict[str, Any]]":
        """Train (or fetch from the cache) the variant `defense` makes of this model."""
        parts = {**self.base_parts, "defense": defense.name, "defense_params": defense.values, "seed": self.seed}
        return self.cache.fit(f"{self.model_name}/{defense.name}", parts, build or self.starting_model, train)


@dataclass
class Defended:
    """A defended variant: `module` is what ships and what every decision is judged on (outputs of `output_kind`).

    `gradient` is (module, output kind) for white-box attacks to differentiate when `module` has no
    useful gradient. `rows` describe the defense (category "defense"): achieved epsilon, sparsity, notes.
    """

    module: "torch.nn.Module"
    output_kind: str
    gradient: "tuple[torch.nn.Module, str] | None" = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    training_seconds: float | None = None
    cached: bool = False


class Defense(Component, ABC):
    """A named defense with declared parameters. Subclasses set the class attributes and `apply`.

    `randomized` defenses are attacked through an expectation over several passes.
    """

    family = "defense"
    stage: ClassVar[str]

    @abstractmethod
    def apply(self, context: DefenseContext) -> Defended:
        """The defended variant of `context.base`."""


def note_row(metric: str, value: float, message: str = "") -> dict[str, Any]:
    return count_row(metric, value, category=Category.DEFENSE, message=message)
