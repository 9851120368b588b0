"""Figures as embedded PNG data URIs, so the report is one file that opens offline."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def to_data_uri(fig: "Figure") -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def robustness_curve(rows: pd.DataFrame, title: str) -> str:
    """Robust accuracy vs eps per attack, with the 95% interval as a band."""
    fig = _figure(5.2, 3.2)
    ax = fig.add_subplot()
    for attack, group in rows.groupby("attack", sort=False):
        group = group.sort_values("param_value")
        ax.plot(group["param_value"], group["value"], marker="o", label=str(attack))
        ax.fill_between(group["param_value"], group["ci_low"], group["ci_high"], alpha=0.2)
    ax.set_xlabel("eps")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_data_uri(fig)


def gallery(
    clean: np.ndarray,
    adversarial: np.ndarray,
    captions_clean: Sequence[str],
    captions_adv: Sequence[str],
    value_range: tuple[float, float],
) -> str:
    """Two rows: clean images and their adversarial versions, captioned with labels and confidences."""
    k = len(clean)
    fig = _figure(1.25 * k, 3.0)
    axes = fig.subplots(2, k, squeeze=False)
    low, high = value_range
    for j in range(k):
        for row, (images, captions) in enumerate(((clean, captions_clean), (adversarial, captions_adv))):
            ax = axes[row][j]
            image = images[j]
            if image.shape[0] in (1, 3):
                image = np.moveaxis(image, 0, -1)
            ax.imshow(image.squeeze(), cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            ax.set_title(captions[j], fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("clean", fontsize=8)
    axes[1][0].set_ylabel("adversarial", fontsize=8)
    return to_data_uri(fig)
