"""Trained weights cached by content, so a re-run or a re-render never retrains.

The key is a digest of everything that decides the weights: the recipe (model and defense
parameters), the training data, the seed and Kansa's cache format. Weights are stored as a plain
state_dict and read back with `torch.load(weights_only=True)`; the architecture is always rebuilt
by code, never unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from audit.files import write_bytes_atomic, write_text_atomic

if TYPE_CHECKING:
    import torch

CACHE_FORMAT = "kansa.weights/1"
DEFAULT_PATH = Path(".kansa") / "cache"


def default_cache_path(configured: str | None, base_dir: Path) -> Path:
    if configured:
        return (base_dir / configured).expanduser()
    return Path(os.environ.get("KANSA_CACHE", DEFAULT_PATH))


def array_digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        h.update(str((contiguous.dtype.str, contiguous.shape)).encode())
        h.update(contiguous.tobytes())
    return h.hexdigest()


def content_key(kind: str, *parts: Any) -> str:
    """The sha256 of `parts` in canonical JSON under a format tag (`kind`): what cached weights and journaled cells are filed under."""
    return hashlib.sha256(json.dumps([kind, *parts], sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class WeightCache:
    """`root` None disables caching (every model trains)."""

    root: Path | None
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    def fit(
        self,
        label: str,
        parts: dict[str, Any],
        build: "Callable[[], torch.nn.Module]",
        train: "Callable[[torch.nn.Module], dict[str, Any]]",
    ) -> "tuple[torch.nn.Module, dict[str, Any]]":
        """The trained module for `parts` and what training reported (e.g. its seconds, a DP epsilon).

        `build` makes the untrained architecture; `train` trains it in place and returns JSON-able facts.
        """
        import torch

        key = content_key(CACHE_FORMAT, parts)
        weights, facts = self._paths(key)
        if weights is not None and weights.is_file() and facts is not None and facts.is_file():
            try:
                state = torch.load(str(weights), map_location="cpu", weights_only=True)
                info = json.loads(facts.read_text(encoding="utf-8"))
                module = build()
                module.load_state_dict(state)
            except Exception as exc:  # a damaged entry costs a retrain, never a wrong model
                warnings.warn(f"kansa: ignoring damaged cache entry {weights} ({exc}); retraining {label}", stacklevel=2)
            else:
                self.reused.append(label)
                return module.eval(), {**info, "cached": True}
        module = build()
        info = train(module)
        state = {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
        clean = build()  # drops whatever the trainer hooked into the module (Opacus, pruning masks)
        clean.load_state_dict(state)
        self.trained.append(label)
        if weights is not None and facts is not None:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            write_bytes_atomic(weights, buffer.getvalue())
            write_text_atomic(facts, json.dumps({**info, "label": label}, sort_keys=True))
        return clean.eval(), {**info, "cached": False}

    def _paths(self, key: str) -> tuple[Path | None, Path | None]:
        if self.root is None:
            return None, None
        folder = self.root / key[:2]
        return folder / f"{key}.pt", folder / f"{key}.json"
