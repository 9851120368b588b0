"""Intervals that travel with every rate, so no number in a report stands without its precision."""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval: well-behaved at rates near 0 or 1, where audits live."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """Mean with a normal-approximation interval (perturbation sizes are averages of many samples)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    if n == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(values.mean())
    if n == 1:
        return (mean, math.nan, math.nan)
    half = z * float(values.std(ddof=1)) / math.sqrt(n)
    return (mean, mean - half, mean + half)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities in float64, so a confident model's small probabilities never round to 0."""
    z = np.asarray(logits, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def paired_difference(first: np.ndarray, second: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """The difference of two rates measured on the same samples (mean of `first` minus mean of `second`), with
    Newcombe's hybrid score interval for paired proportions, continuity-corrected (1998, method 11).

    Pairing matters: two variants scored on the same samples disagree on few of them, so their
    difference is far more precise than two independent intervals suggest. The interval combines
    both Wilson intervals, corrected by the correlation of the paired outcomes. The continuity
    correction keeps it conservative, and keeps it from collapsing to a point when the variants
    agree on every sample (no disagreement among 150 samples still leaves room for a change of
    about 2 points, and the interval says so).
    """
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    n = len(first)
    if n == 0 or len(second) != n:
        return (math.nan, math.nan, math.nan)
    both, only_first = int((first & second).sum()), int((first & ~second).sum())
    only_second, neither = int((~first & second).sum()), int((~first & ~second).sum())
    p1, p2 = (both + only_first) / n, (both + only_second) / n
    l1, u1 = _wilson_corrected(both + only_first, n, z)
    l2, u2 = _wilson_corrected(both + only_second, n, z)
    denominator = (both + only_first) * (only_second + neither) * (both + only_second) * (only_first + neither)
    phi = max(both * neither - only_first * only_second - n / 2, 0.0) / math.sqrt(denominator) if denominator else 0.0
    difference = p1 - p2
    low = difference - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    high = difference + math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return (difference, max(-1.0, low), min(1.0, high))


def _wilson_corrected(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval with continuity correction (Newcombe 1998, single proportions, method 4)."""
    p = successes / n
    low = 0.0 if successes == 0 else (2 * n * p + z * z - 1 - z * math.sqrt(z * z - 2 - 1 / n + 4 * p * (n * (1 - p) + 1))) / (2 * (n + z * z))
    high = 1.0 if successes == n else (2 * n * p + z * z + 1 + z * math.sqrt(z * z + 2 - 1 / n + 4 * p * (n * (1 - p) - 1))) / (2 * (n + z * z))
    return max(0.0, low), min(1.0, high)
