"""The one mini-batch training loop: Kansa's built-in models, their DP-SGD and distilled variants train through it.

Each caller supplies what differs (the batches, the loss, when to stop); the loop owns the order
of the steps, so every trained model follows one seeded recipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

if TYPE_CHECKING:
    import torch

Batch = TypeVar("Batch")


def train_epochs(module: "torch.nn.Module", optimizer: "torch.optim.Optimizer", epochs: int, batches: Callable[[], Iterable[Batch]],
                 loss: Callable[[Batch], "torch.Tensor"], stop_after_epoch: Callable[[], bool] | None = None,
                 progress: bool = False, label: str = "") -> None:
    """Run `epochs` passes over `batches()` (called once per epoch, so it may reshuffle); `stop_after_epoch` may end training early."""
    from tqdm.auto import tqdm

    for _ in tqdm(range(epochs), desc=f"train {label}", unit="epoch", disable=not progress, leave=False):
        module.train()
        for batch in batches():
            optimizer.zero_grad(set_to_none=True)
            loss(batch).backward()
            optimizer.step()
        if stop_after_epoch is not None and stop_after_epoch():
            break


def shuffled_batches(n: int, batch_size: int, generator: "torch.Generator") -> Callable[[], Iterator["torch.Tensor"]]:
    """Index batches of a fresh seeded permutation of range(n) each epoch."""
    import torch

    def batches() -> Iterator[torch.Tensor]:
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            yield order[i : i + batch_size]

    return batches
