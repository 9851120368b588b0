"""Black-box checks: attacks that never read the target's gradients.

If one of them beats the white-box attacks, the white-box numbers were not trustworthy (the
gradients are masked); the sanity checks compare them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from attacks import register
from attacks.base import Access, AttackContext, AttackOutput, EvasionAttack, MinimizationAttack
from attacks.evasion import PGD, TorchOrArt, Views, art_norm, nested_sweep
from attacks.hopskipjump import hop_skip_jump
from attacks.square import square_search
from audit.params import Choice, Location, Number, Param
from audit.results import rate_row
from audit.seeding import derive_seed

if TYPE_CHECKING:
    import torch

    from audit.data import Dataset, Splits
    from audit.models import Target


@contextmanager
def seeded_hop_skip_jump() -> Iterator[None]:
    """ART's HopSkipJump draws its starting points from `np.random.RandomState()` seeded by the OS, so two runs
    of one config differ; within this block that generator is seeded from numpy's global one, which the cell seeds."""
    from art.attacks.evasion import hop_skip_jump

    class GlobalSeeded:
        def __getattr__(self, name: str) -> Any:
            return getattr(np.random, name)

        @staticmethod
        def RandomState(seed: Any = None) -> np.random.RandomState:  # noqa: N802 - numpy's name
            return np.random.RandomState(np.random.randint(2**31 - 1) if seed is None else seed)

    class NumpyView:
        random = GlobalSeeded()

        def __getattr__(self, name: str) -> Any:
            return getattr(np, name)

    original = hop_skip_jump.np
    hop_skip_jump.np = NumpyView()
    try:
        yield
    finally:
        hop_skip_jump.np = original


@register
class Square(TorchOrArt):
    """On torch, `attacks.square`: one batched query per iteration of the samples still unbroken; in a sweep a
    sample broken at a smaller eps keeps its example (`nested_sweep`). The adversarial logits take a fresh
    prediction pass: reusing the attack's best query would report the luckiest draw of a randomised model."""

    name = "square"
    summary = "Square attack (Andriushchenko et al. 2020): score-based random search, no gradients"
    randomized = True
    access = Access.SCORES
    data_kinds = ("image",)
    data_note = "its random search perturbs square patches of an image"
    params = (
        *EvasionAttack.params,
        Param("queries", Number(1, 100_000, integer=True), 1000,
              "random-search iterations (ART's max_iter): each queries the model once per sample not yet broken, "
              "after one query of the clean input and one of the starting point", quick=20),
        Param("p_init", Number(0, 1, closed="neither"), 0.8,
              "fraction of the image the first squares cover (0.8: AutoAttack's choice); it halves on the paper's schedule, rescaled to the queries"),
        Param("backend", Choice(("torch", "art")), "torch",
              "torch: Kansa's batched kernel with per-sample early stopping; art: ART's SquareAttack (the reference)"),
    )

    def art_attack(self, target: "Target", eps: float) -> Any:
        from art.attacks.evasion import SquareAttack

        v = self.values
        return SquareAttack(target.art_classifier, norm=art_norm(v["norm"]), eps=eps, max_iter=v["queries"], p_init=v["p_init"],
                            batch_size=v["batch_size"], verbose=False)

    def torch_sweep(self, model: Views, x: "torch.Tensor", y: "torch.Tensor", eps: list[float],
                    clip: tuple[float, float]) -> tuple["torch.Tensor", list["torch.Tensor"], list["torch.Tensor"]]:
        v = self.values
        return nested_sweep(model, x, y, eps, lambda robust, e: square_search(model.decide, x, y, robust, e, v["norm"], v["queries"], clip, v["p_init"]))


@register
class HopSkipJump(MinimizationAttack):
    name = "hopskipjump"
    summary = "HopSkipJump (Chen et al. 2020): decision-based, needs only the predicted label"
    randomized = True
    access = Access.LABELS
    params = (
        *MinimizationAttack.params,
        Param("norm", Choice(("2", "inf")), "2", "the norm minimised"),
        Param("steps", Number(1, 1000, integer=True), 10, "iterations (each estimates a gradient from label queries)", quick=2),
        Param("max_queries", Number(10, 1_000_000, integer=True), 1000, "queries per gradient estimate, at most", quick=20),
        Param("backend", Choice(("torch", "art")), "torch",
              "torch: Kansa's kernel, batched over samples (each search step one query of all samples); art: ART's HopSkipJump (the reference)"),
    )

    @property
    def norm(self) -> str:
        return self.values["norm"]

    def minimize(self, target: "Target", x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """On torch, decisions are read off `target.module`, where Kansa measures them (ART's wrapper holds the gradient module)."""
        v = self.values
        if v["backend"] == "torch":
            import torch

            found = hop_skip_jump(target.module, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y, dtype=np.int64)),
                                  v["norm"], v["steps"], target.clip_values, max_evals=v["max_queries"], init_evals=min(100, v["max_queries"]),
                                  batch=v["batch_size"])
            return found.numpy()
        from art.attacks.evasion import HopSkipJump as ArtHopSkipJump

        attack = ArtHopSkipJump(
            target.art_classifier,
            norm=art_norm(self.values["norm"]),
            max_iter=self.values["steps"],
            max_eval=self.values["max_queries"],
            init_eval=min(100, self.values["max_queries"]),
            batch_size=self.values["batch_size"],
            verbose=False,
        )
        with seeded_hop_skip_jump():
            return attack.generate(x.astype(np.float32), y=y)


@register
class Transfer(EvasionAttack):
    name = "transfer"
    summary = "Transfer attack: PGD on a surrogate model Kansa trains, replayed against the target"
    randomized = True
    access = Access.LABELS
    emits = (*EvasionAttack.emits, "surrogate_accuracy")
    params = (
        *EvasionAttack.params,
        Param("surrogate_data", Choice(("train", "holdout")), "train", "split the surrogate learns from (holdout: an attacker without the training data)"),
        Param("steps", Number(1, 10_000, integer=True), 40, "PGD steps on the surrogate", quick=3),
    )

    @classmethod
    def check_data(cls, values: dict[str, Any], dataset: "Dataset", splits: "Splits", where: Location) -> None:
        super().check_data(values, dataset, splits, where)
        if not len(getattr(splits, values["surrogate_data"])):
            raise where.child("surrogate_data").error(f'the surrogate learns from data.{values["surrogate_data"]}, which is not declared')

    def run(self, target: "Target", x: np.ndarray, y: np.ndarray, context: AttackContext) -> AttackOutput:
        if context.train_like_target is None or context.dataset is None or context.splits is None:
            raise ValueError("a transfer attack needs the data splits and a way to train a surrogate")
        data, index, test = context.dataset, getattr(context.splits, self.values["surrogate_data"]), context.splits.test
        self._surrogate = context.train_like_target(data.x[index], data.y[index], derive_seed(context.seed, "surrogate"))
        output = super().run(target, x, y, context)
        correct = int((self._surrogate.predict(data.x[test]) == data.y[test]).sum())
        output.rows.append(rate_row("surrogate_accuracy", correct, len(test)))
        return output

    def perturb(self, target: "Target", x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
        # every step of one start, not only until the surrogate is fooled: a point deep in the surrogate's wrong class transfers better
        pgd = PGD(eps=eps, norm=self.values["norm"], steps=self.values["steps"], random_starts=1, batch_size=self.values["batch_size"],
                  early_stop=False)
        return pgd.perturb(self._surrogate, x, y, eps)
