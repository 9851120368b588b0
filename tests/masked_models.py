"""A gradient-masked model for tests that must catch one: its own file, so every test builds the same twin."""

from __future__ import annotations

import torch


class RoundsItsInput(torch.nn.Module):
    """Rounds its input to quarters before the network: round() has zero gradient, so gradient attacks see nothing."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)
