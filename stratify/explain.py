"""Reasons: the three things that raised each person's risk most, in a clinician's words.

Input is the per reason-group contributions (log-odds) from `models.*.contributions` and the
person's feature values; for each of the top three groups the phrase comes from the group's first
feature that holds a record (so "2 emergency admissions in 24 months" when none fell in the last
12). Phrases are formatted once per distinct (feature, value), not once per person.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stratify.catalogue import BY_NAME, groups

TOP = 3
# Marks a listed factor that lowers risk: persons at low risk may have fewer than three factors
# that raise it, and their list is then filled with the least lowering ones, said as such.
LOWERS = " (lowers risk)"
MISSING = -1e12  # stands for an unknown value (e.g. age without a birth year-month)


def reasons(contributions: pd.DataFrame, X: pd.DataFrame, top: int = TOP) -> pd.DataFrame:
    """Columns `reason_1..top` (phrases) and `reason_group_1..top` for each person."""
    members = groups()
    names = [g for g in contributions.columns if g in members]
    values = contributions[names].to_numpy(dtype=float)
    # Stable order: largest contribution first; ties by catalogue order.
    order = np.argsort(-values, axis=1, kind="stable")[:, :top]
    group_index = {g: i for i, g in enumerate(names)}
    out = pd.DataFrame(index=X.index)
    matrix = X.to_numpy(dtype=float)
    position = {name: i for i, name in enumerate(X.columns)}
    for slot in range(min(top, len(names))):
        chosen = order[:, slot]
        feature = np.empty(len(X), dtype=object)
        value = np.zeros(len(X))
        for group in names:
            rows = chosen == group_index[group]
            if not rows.any():
                continue
            cols = [n for n in members[group] if n in position]
            block = matrix[np.ix_(rows, [position[n] for n in cols])]
            defaults = np.array([BY_NAME[n].default for n in cols])
            recorded = ~np.isclose(block, defaults) & ~np.isnan(block)
            first = np.where(recorded.any(axis=1), recorded.argmax(axis=1), 0)
            feature[rows] = np.array(cols, dtype=object)[first]
            value[rows] = block[np.arange(len(first)), first]
        lowers = values[np.arange(len(X)), chosen] < 0
        keyed = pd.DataFrame({"feature": feature, "value": np.nan_to_num(np.round(value, 1),
                                                                          nan=MISSING),
                              "lowers": lowers})
        unique = keyed.drop_duplicates()
        words = {(f, v, low): (BY_NAME[f].words(v) if v != MISSING else f"{f} not recorded")
                 + (LOWERS if low else "")
                 for f, v, low in zip(unique["feature"], unique["value"], unique["lowers"],
                                      strict=True)}
        out[f"reason_{slot + 1}"] = [words[k] for k in zip(keyed["feature"], keyed["value"],
                                                            keyed["lowers"], strict=True)]
        out[f"reason_group_{slot + 1}"] = np.array(names, dtype=object)[chosen]
    return out


def joined(frame: pd.DataFrame, top: int = TOP) -> pd.Series:
    """The reasons as one `; `-joined string per person."""
    columns = [f"reason_{i + 1}" for i in range(top) if f"reason_{i + 1}" in frame.columns]
    result = frame[columns[0]].astype(str)
    for column in columns[1:]:
        result = result + "; " + frame[column].astype(str)
    return result
