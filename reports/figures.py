"""Figures as embedded PNG data URIs, so the report is one file that opens offline."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import pickle
import textwrap
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import pandas as pd

from audit.files import write_text_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


FIGURE_FORMAT = "kansa.figure/1"
_STORE: ContextVar["_Store | None"] = ContextVar("figure_store", default=None)


class _Store:
    """Rendered figures of one run folder by content, so re-rendering an unchanged run draws nothing."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.used = folder, set()

    def get(self, key: str, draw: Callable[[], str]) -> str:
        self.used.add(key)
        path = self.folder / f"{key}.txt"
        if path.is_file():
            return path.read_text(encoding="ascii")
        uri = draw()
        write_text_atomic(path, uri)
        return uri

    def prune(self) -> None:
        for path in self.folder.glob("*.txt"):
            if path.stem not in self.used:
                path.unlink(missing_ok=True)


@contextmanager
def stored_in(folder: Path) -> Iterator[None]:
    """Within this block, figures are read from (or saved to) `folder`; figures no longer drawn are removed at the end."""
    store = _Store(folder)
    token = _STORE.set(store)
    try:
        yield
    finally:
        _STORE.reset(token)
    store.prune()


F = TypeVar("F", bound=Callable[..., str])


def _stored(draw: F) -> F:
    """A figure is a pure function of its arguments: key it by their content (hashed, never unpickled)."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        store = _STORE.get()
        if store is None:
            return draw(*args, **kwargs)
        import matplotlib

        key = hashlib.sha256(pickle.dumps((FIGURE_FORMAT, matplotlib.__version__, draw.__name__, args, kwargs), protocol=5)).hexdigest()
        return store.get(key[:32], lambda: draw(*args, **kwargs))

    return wrapper  # type: ignore[return-value]


def _figure(width: float, height: float) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def to_data_uri(fig: "Figure") -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@_stored
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


@_stored
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


@_stored
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


@_stored
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


@_stored
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


@_stored
def image_rows(
    rows: Sequence[tuple[str, np.ndarray, Sequence[str]]],
    value_range: tuple[float, float],
) -> str:
    """A grid of images, one labelled row per set (e.g. reconstructions, start image, class means), captioned.

    The tiles are composed into one image on one axes: a grid of many small axes took half a
    second per figure to lay out, and a report holds dozens of them.
    """
    k = max(len(images) for _, images, _ in rows)
    tiles = [[_tile(image) for image in images] for _, images, _ in rows]
    h, w = next(t for row in tiles for t in row).shape[:2]
    gap_x, gap_y = max(1, w // 8), max(2, h // 3)
    channels = next(t for row in tiles for t in row).shape[2:]
    canvas = np.full((len(rows) * (h + gap_y), k * (w + gap_x), *channels), np.nan)
    for r, row in enumerate(tiles):
        for j, tile in enumerate(row):
            canvas[r * (h + gap_y) + gap_y : (r + 1) * (h + gap_y), j * (w + gap_x) : j * (w + gap_x) + w] = tile
    fig = _figure(1.15 * k + 0.6, 1.35 * len(rows))
    fig.set_layout_engine("none")
    ax = fig.add_axes((0.6 / (1.15 * k + 0.6), 0.0, 1.0 - 0.6 / (1.15 * k + 0.6), 1.0))
    ax.set_axis_off()
    low, high = value_range
    shown = np.ma.masked_invalid(canvas)
    if channels:
        shown = np.clip((canvas - low) / (high - low), 0, 1)
        shown[np.isnan(shown)] = 1.0
    import matplotlib

    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    ax.imshow(shown, cmap=cmap, vmin=low, vmax=high, interpolation="nearest", aspect="auto")
    for r, (label, images, captions) in enumerate(rows):
        top = r * (h + gap_y)
        ax.text(-gap_x, top + gap_y + h / 2, textwrap.fill(label, 14), rotation=90, ha="right", va="center", fontsize=8,
                multialignment="center", clip_on=False)
        for j, caption in enumerate(captions[: len(images)]):
            ax.text(j * (w + gap_x) + w / 2, top + gap_y - 0.5, caption, ha="center", va="bottom", fontsize=7)
    return to_data_uri(fig)


def _tile(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3 and image.shape[0] in (1, 3):
        image = np.moveaxis(image, 0, -1)
    return image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image


def _plain(text: str) -> str:
    """User text drawn as typed: a `$` in a model name must not switch matplotlib into math mode."""
    return text.replace("$", r"\$")


@_stored
def trade_off(
    labels: Sequence[str],
    clean: np.ndarray,
    robust: np.ndarray,
    leakage: np.ndarray | None,
    front: np.ndarray,
    frontier: np.ndarray,
    robust_label: str,
    leakage_label: str,
    front_label: str,
    left_out: np.ndarray | None = None,
) -> str:
    """Clean vs robust accuracy per variant, coloured by privacy leakage, with the Pareto front ringed.

    `front` (ringed) may count privacy too, and then does not lie on one curve in this plane; the
    dashed line joins `frontier`, the variants no other beats on both plotted accuracies.
    Variants without a leakage value are drawn hollow rather than given a colour; `left_out`
    ones (numbers their run distrusts, or missing objectives) are crossed out.
    """
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    if frontier.any():
        order = np.lexsort((-robust[frontier], clean[frontier]))
        ax.plot(clean[frontier][order], robust[frontier][order], color="tab:red", linestyle="--", linewidth=1.1, zorder=1,
                label="clean / robust frontier")
    if front.any():
        ax.scatter(clean[front], robust[front], s=190, facecolors="none", edgecolors="tab:red", linewidths=1.6, zorder=2, label=front_label)
    known = np.zeros(len(clean), dtype=bool) if leakage is None else np.isfinite(leakage)
    if known.any():
        points = ax.scatter(clean[known], robust[known], c=leakage[known], cmap="viridis_r", s=70, edgecolors="black", linewidths=0.6, zorder=3)
        fig.colorbar(points, ax=ax, fraction=0.05, label=leakage_label)
    if (~known).any():
        ax.scatter(clean[~known], robust[~known], s=70, facecolors="white", edgecolors="black", linewidths=0.8, zorder=3,
                   label="no membership result" if leakage is not None else None)
    if left_out is not None and left_out.any():
        ax.scatter(clean[left_out], robust[left_out], marker="x", s=140, color="tab:red", linewidths=1.8, zorder=4,
                   label="left out of the front (see the table)")
    for label, x, y in zip(labels, clean, robust):
        ax.annotate(_plain(label), (x, y), xytext=(6, 5), textcoords="offset points", fontsize=7)
    ax.set_xlim(max(0.0, float(clean.min()) - 0.05), 1.02)
    ax.set_ylim(-0.02, min(1.02, float(robust.max()) + 0.1))
    ax.set_xlabel("clean accuracy (test)")
    ax.set_ylabel(_plain(robust_label))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    ax.set_title("trade-off: each point is a model / defense", fontsize=10)
    return to_data_uri(fig)
