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


def class_heatmap(rows: pd.DataFrame, title: str) -> str:
    """Robust accuracy per class (rows) and attack / eps (columns), so a fragile class stands out."""
    columns = rows["attack"] + " " + rows["param_value"].map("{:g}".format)
    pivot = rows.assign(column=columns).pivot_table(index="subset", columns="column", values="value", sort=False)
    fig = _figure(1.0 + 0.55 * pivot.shape[1], 0.8 + 0.3 * pivot.shape[0])
    ax = fig.add_subplot()
    image = ax.imshow(pivot.to_numpy(), vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(pivot.shape[1]), list(pivot.columns), rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(pivot.shape[0]), [s.split("=", 1)[1] for s in pivot.index], fontsize=7)
    for (i, j), value in np.ndenumerate(pivot.to_numpy()):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, fraction=0.04)
    ax.set_title(title, fontsize=9)
    return to_data_uri(fig)


def distributions(series: dict[str, np.ndarray], xlabel: str) -> str:
    """Histograms of a per-sample quantity (e.g. the minimal adversarial perturbation), one per attack."""
    fig = _figure(5.2, 2.8)
    ax = fig.add_subplot()
    finite = np.concatenate([v for v in series.values() if len(v)] or [np.zeros(1)])
    bins = np.linspace(0, float(finite.max()) or 1.0, 30)
    for label, values in series.items():
        ax.hist(values, bins=bins, alpha=0.5, label=f"{label} (n={len(values)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return to_data_uri(fig)


def amplified(clean: np.ndarray, adversarial: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """The perturbation scaled to fill the value range around its middle, so small changes are visible."""
    low, high = value_range
    delta = adversarial.astype(np.float64) - clean
    scale = np.abs(delta).reshape(len(delta), -1).max(axis=1).reshape((-1,) + (1,) * (delta.ndim - 1))
    return (low + high) / 2 + delta / np.where(scale > 0, scale, 1.0) * (high - low) / 2


def roc_curves(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str) -> str:
    """Membership ROC curves on linear axes and on log-log axes, where the low-FPR regime that matters is visible."""
    fig = _figure(9.0, 3.6)
    linear, loglog = fig.subplots(1, 2)
    floor = 1.0
    for label, fpr, tpr in curves:
        linear.plot(fpr, tpr, label=label, linewidth=1.2)
        positive = fpr > 0
        if positive.any():
            floor = min(floor, float(fpr[positive].min()))
            loglog.plot(fpr[positive], np.maximum(tpr[positive], floor / 10), label=label, linewidth=1.2)
    for ax in (linear, loglog):
        ax.plot([floor / 10, 1], [floor / 10, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.grid(alpha=0.3)
    linear.set_xlim(0, 1)
    linear.set_ylim(0, 1)
    loglog.set_xscale("log")
    loglog.set_yscale("log")
    loglog.set_xlim(floor / 2, 1)
    loglog.set_ylim(floor / 2, 1)
    linear.set_title(f"{title}: ROC", fontsize=10)
    loglog.set_title("log-log (chance is the dotted diagonal)", fontsize=10)
    loglog.legend(fontsize=7, loc="lower right")
    return to_data_uri(fig)


def score_histograms(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str) -> str:
    """One panel per attack: its membership scores for members and non-members on shared bins."""
    k = len(panels)
    columns = min(k, 4)
    rows = (k + columns - 1) // columns
    fig = _figure(2.6 * columns, 2.2 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, (label, members, non_members) in zip(axes, panels):
        both = np.concatenate([members, non_members])
        low, high = np.percentile(both, [0.5, 99.5])
        if not high > low:
            low, high = float(both.min()) - 0.5, float(both.max()) + 0.5
        bins = np.linspace(low, high, 40)
        ax.hist(np.clip(non_members, low, high), bins=bins, alpha=0.55, label="non-members", color="tab:blue")
        ax.hist(np.clip(members, low, high), bins=bins, alpha=0.55, label="members", color="tab:red")
        ax.set_yscale("log")  # confident models pile most samples into one bin; the tails carry the signal
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[k:]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: membership scores (higher = more likely a member)", fontsize=9)
    return to_data_uri(fig)


def image_rows(
    rows: Sequence[tuple[str, np.ndarray, Sequence[str]]],
    value_range: tuple[float, float],
) -> str:
    """A grid of images, one labelled row per set (e.g. reconstructions, start image, class means), captioned."""
    k = max(len(images) for _, images, _ in rows)
    fig = _figure(1.15 * k + 0.6, 1.35 * len(rows))
    axes = fig.subplots(len(rows), k, squeeze=False)
    low, high = value_range
    for r, (label, images, captions) in enumerate(rows):
        for j in range(k):
            ax = axes[r][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(images):
                ax.set_visible(False)
                continue
            image = images[j]
            if image.ndim == 3 and image.shape[0] in (1, 3):
                image = np.moveaxis(image, 0, -1)
            ax.imshow(image.squeeze(), cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            ax.set_title(captions[j], fontsize=7)
        axes[r][0].set_ylabel(label, fontsize=8)
    return to_data_uri(fig)
