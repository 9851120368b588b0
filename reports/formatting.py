"""How numbers of the results table read in the report: one place, so every section prints them alike."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from audit.metrics import metric_info


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:.{digits}f}"
    return str(value)


def fmt_ci(row: pd.Series) -> str:
    """An estimate with its interval (and the spread over repeats), or a plain count."""
    if math.isnan(row["ci_low"]):
        return fmt(row["value"])
    text = f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    return text + (f" ± {row['std']:.3f}" if "std" in row and not math.isnan(row["std"]) else "")


def shown_with_interval(row: pd.Series) -> str:
    """A value in its metric's declared format, with its interval when it has one."""
    info = metric_info(row["metric"])
    if info is None:
        return fmt_ci(row)
    text = info.shown(row["value"])
    if not math.isnan(row["ci_low"]):
        text += f" [{info.shown(row['ci_low'])}, {info.shown(row['ci_high'])}]"
    return text + (f" ± {info.shown(row['std'])}" if "std" in row and not math.isnan(row["std"]) else "")
