"""Per-sample tensor helpers that the torch attacks share (a batch is samples along dimension 0)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NORM_ORDER = {"0": 0.0, "1": 1.0, "2": 2.0, "inf": math.inf}  # a threat model's norm as torch's `ord` ("0" counts nonzero entries)


def per_sample(values: "torch.Tensor", like: "torch.Tensor") -> "torch.Tensor":
    """One value per sample, shaped to broadcast against the batch `like`."""
    return values.view(-1, *[1] * (like.dim() - 1))


def sample_norm(values: "torch.Tensor", order: float) -> "torch.Tensor":
    """The norm of each sample of a batch; order 0 counts its nonzero entries."""
    import torch

    return torch.linalg.vector_norm(values.flatten(1), ord=order, dim=1)
