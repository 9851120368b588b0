"""One seed fixes everything: every component derives its own from the audit seed and its labels.

Deriving by label (not by order) keeps a component's numbers when another model, defense or
attack is added to the config; what must be shared across cells derives from the data instead.
"""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np


def derive_seed(seed: int, *labels: object) -> int:
    """A stable 31-bit seed for the component named by `labels` (strings, numbers, digests) under `seed`."""
    digest = hashlib.sha256("/".join([str(seed), *map(str, labels)]).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def content_seed(tag: str, *arrays: np.ndarray) -> int:
    """A stable 31-bit seed fixed by the content of integer arrays (e.g. a split's indices) rather than by labels.

    What depends only on the data then draws alike in every cell of an audit: all membership attacks
    score the same members and non-members, so their ROC curves compare like for like.
    """
    digest = hashlib.sha256(tag.encode())
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        digest.update(b"|")
    return int.from_bytes(digest.digest()[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed the global generators that third-party code draws from (ART's attack models, HopSkipJump, torch's init)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def global_generators_kept() -> Iterator[None]:
    """Leave the global generators as they were: work inside (training a model, or fetching it from the cache) may reseed them.

    Without it, what an attack draws after training a surrogate or reference model would depend on
    whether that model came from the weight cache, and a re-run would not repeat the first run's numbers.
    """
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)
