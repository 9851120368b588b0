"""Questions several renderers ask of the results table, answered once."""

from __future__ import annotations

from typing import Any

import pandas as pd

from audit.results import variant_label


def headline(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Per model variant: its test accuracy row and its lowest robust-accuracy row (None when no attack succeeded)."""
    accuracy = table[(table["metric"] == "accuracy") & (table["subset"] == "split=test")]
    robust = table[(table["metric"] == "robust_accuracy") & (table["subset"] == "all") & (table["status"] == "ok")]
    out = []
    for _, row in accuracy.iterrows():
        mine = robust[(robust["model"] == row["model"]) & (robust["defense"] == row["defense"])]
        worst = mine.sort_values("value", kind="stable").head(1)
        out.append({"model": variant_label(row["model"], row["defense"]), "clean": row, "worst": worst.iloc[0] if len(worst) else None})
    return out
