"""`link_files`: link two person CSV files, or deduplicate one, on keyed encodings only.

The files are read with every column as text (leading zeros kept), the mapped identifier columns
are encoded by `linkage.encodings.encode_identifiers` under a key generated for this call (it is
never written or returned, and dropped once encoding is done), and only the encodings go to the
engine in `linkage.probabilistic`. Output: CSV `left_id,right_id,weight` of matched pairs, weight
the log2 Bayes factor; for one file, every pair of records placed in the same cluster, each once
(left_id < right_id by file order). Pairs in the review band go to a second CSV (same columns,
plus probability) for a human to decide; they are never in the matches. The summary returned
carries the `LinkageSettings` used (`settings`, as `to_dict`), so a run's configuration can be
kept with its output and loaded back (`LinkageSettings.from_dict`).

`fields` maps KIND -> column, KIND one of forename, surname, date_of_birth, sex, postcode,
address, identifier. A kind may name several columns (a list, or numbered kinds `address_2`):
each column becomes its own compared field (e.g. FEBRL's street_number, address_1, address_2,
suburb, state as address, address_2, ... address_5), which gives the model separate evidence for
each part rather than one diluted similarity of a concatenation; repeats of a kind share its key
domain, so a value that moved between columns still compares equal.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from linkage.encodings import KINDS, encode_identifiers, field_kind
from linkage.probabilistic import LinkageSettings, cluster_pairs, dedupe, link, score


def field_columns(fields: Mapping[str, str | Sequence[str]]) -> dict[str, str]:
    """Encoder field name -> CSV column: repeats of a kind become `kind`, `kind_2`, `kind_3`..."""
    out: dict[str, str] = {}
    for kind, cols in fields.items():
        base = field_kind(kind)
        if base is None:
            raise ValueError(f"unknown field kind {kind!r}; expected one of {', '.join(KINDS)}")
        names = [cols] if isinstance(cols, str) else list(cols)
        for col in names:
            if not col:
                raise ValueError(f"field {kind!r} has an empty column name")
            name = kind if kind not in out else None
            n = 2
            while name is None:
                candidate = f"{base}_{n}"
                name = candidate if candidate not in out else None
                n += 1
            out[name] = col
    return out


def _read(path: Path, id_col: str, columns: dict[str, str]) -> tuple[pd.Series, pd.DataFrame]:
    """(ids, identifier frame renamed to field names) from a CSV; all text, blanks as null."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                        encoding="utf-8-sig")
    missing = [c for c in [id_col, *columns.values()] if c not in frame.columns]
    if missing:
        raise ValueError(f"{path.name}: no column(s) {', '.join(map(repr, missing))}")
    data = pd.DataFrame({name: frame[col].replace("", None) for name, col in columns.items()})
    return frame[id_col].reset_index(drop=True), data.reset_index(drop=True)


def _write(path: Path, left_ids: np.ndarray, right_ids: np.ndarray, scored: pd.DataFrame,
           probability: bool = False) -> None:
    out = pd.DataFrame({"left_id": left_ids[scored["left"].to_numpy()],
                        "right_id": right_ids[scored["right"].to_numpy()],
                        "weight": scored["weight"].round(3).to_numpy()})
    if probability:
        out["probability"] = scored["probability"].round(6).to_numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)


def link_files(left: Path, right: Path | None, id_col: str,
               fields: Mapping[str, str | Sequence[str]], out: Path, *,
               review_out: Path | None = None, upper: float | None = None,
               lower: float | None = None, method: str | None = None,
               progress: Callable[[str], None] | None = None,
               settings: LinkageSettings | None = None) -> dict:
    """Link `left` with `right` (or deduplicate `left` when `right` is None); write `out`.

    `settings`: how to link (default `LinkageSettings()`: upper 0.9, lower 0.5, ecm);
    `upper`, `lower`, `method`, when given, replace those three of them.
    Returns counts and paths: records, candidate_pairs, matches, review, out, review_out,
    seconds (and clusters for deduplication), and the settings used (`to_dict`). `progress` is
    told each step (counts only).
    """
    say = progress or (lambda _message: None)
    chosen = {"upper": upper, "lower": lower, "method": method}
    settings = dataclasses.replace(settings or LinkageSettings(),
                                   **{k: v for k, v in chosen.items() if v is not None})
    started = time.perf_counter()
    left, out = Path(left), Path(out)
    review_out = Path(review_out) if review_out else out.with_name(out.stem + ".review.csv")
    columns = field_columns(fields)
    if not columns:
        raise ValueError("no identifier fields given")
    key = secrets.token_bytes(32)
    left_ids, left_data = _read(left, id_col, columns)
    left_enc = encode_identifiers(left_data, key)
    del left_data
    say(f"{left.name}: {len(left_ids):,} records read and encoded")
    summary: dict = {"fields": columns, "left_records": len(left_ids)}
    if right is not None:
        right_ids, right_data = _read(Path(right), id_col, columns)
        right_enc = encode_identifiers(right_data, key)
        del right_data, key
        say(f"{Path(right).name}: {len(right_ids):,} records read and encoded")
        result = link(left_enc, right_enc, settings, progress=progress)
        matches = result.matches.sort_values(["left", "right"])
        _write(out, left_ids.to_numpy(), right_ids.to_numpy(), matches)
        summary["right_records"] = len(right_ids)
    else:
        del key
        result = dedupe(left_enc, settings, progress=progress)
        assert result.clusters is not None
        pairs = cluster_pairs(result.clusters)
        matches = score(left_enc, None, pairs, result.model)
        ids = left_ids.to_numpy()
        _write(out, ids, ids, matches)
        sizes = np.bincount(result.clusters)
        summary["clusters"] = int((sizes > 1).sum())
        summary["largest_cluster"] = int(sizes.max()) if len(sizes) else 0
        right_ids = left_ids
    _write(review_out, left_ids.to_numpy(), right_ids.to_numpy(),
           result.review.sort_values(["left", "right"]), probability=True)
    summary.update({
        "warnings": result.warnings,
        "candidate_pairs": result.blocking.pairs, "matches": len(matches),
        "review": len(result.review), "method": result.model.method,
        "out": str(out), "review_out": str(review_out), "settings": settings.to_dict(),
        "seconds": round(time.perf_counter() - started, 3),
    })
    return summary
