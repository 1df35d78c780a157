"""Test helper: a synth output folder as `sources` frames in landed form, with oracle linkage.

`synth.generate` writes `OUT/<source>.csv` per the contracts and `OUT/truth/` (persons, rows ->
true person, meta). Here each CSV becomes what landing would keep (birth_ym, postcode district,
typed dates, ICD-10 upper case without dot, consented social care rows only, no identifiers),
and `person_key` is the true person from `truth/rows.parquet`: fine for testing stratification,
which must not depend on how linkage got there. Rows landing would refuse (a required date that
does not parse) are dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from linkage.landing.contracts import (
    CONTRACTS,
    DATE,
    DATETIME,
    DOB,
    ICD10,
    ICD10_LIST,
    INTEGER,
    NUMBER,
)

IDENTIFIERS = ("nhs_number", "date_of_birth", "postcode", "forename", "surname", "spell_id",
               "attendance_id", "appointment_id", "contact_id", "client_id", "consent")


@dataclass
class SynthData:
    """Landed-form sources, the truth about persons, and the generator's metadata."""

    sources: dict[str, pd.DataFrame]
    persons: pd.DataFrame
    meta: dict[str, Any]


def _district(postcode: pd.Series) -> pd.Series:
    compact = postcode.str.upper().str.replace(r"\s+", "", regex=True)
    ok = compact.str.fullmatch(r"[A-Z]{1,2}[0-9][A-Z0-9]?[0-9][A-Z]{2}").fillna(False)
    return compact.str[:-3].where(ok, None)


def landed(source: str, raw: pd.DataFrame, people: pd.Series | None,
           extract_id: str | None = None) -> pd.DataFrame:
    """One contract CSV (all text) in landed form; `people` maps 1-based row -> true person."""
    contract = CONTRACTS[source]
    raw = raw.apply(lambda s: s.str.strip()).replace("", None)
    out = pd.DataFrame({"extract_id": extract_id or f"synth-{source}",
                        "row": np.arange(1, len(raw) + 1)},
                       index=raw.index)
    keep = pd.Series(True, index=raw.index)
    for col in contract.columns:
        if col.name not in raw.columns:
            continue
        value = raw[col.name]
        if col.kind == DOB:
            parsed = pd.to_datetime(value, format="%Y-%m-%d", errors="coerce")
            out["birth_ym"] = parsed.dt.strftime("%Y-%m")
            keep &= parsed.notna() | ~col.required
        elif col.kind in (DATE, DATETIME):
            parsed = pd.to_datetime(value, errors="coerce", format="mixed")
            if col.kind == DATETIME and parsed.dt.tz is not None:
                parsed = parsed.dt.tz_localize(None)
            out[col.name] = parsed.dt.normalize() if col.kind == DATE else parsed
            if col.required:
                keep &= parsed.notna()
        elif col.kind in (ICD10, ICD10_LIST):
            out[col.name] = value.str.upper().str.replace(".", "", regex=False) \
                .str.replace(" ", "", regex=False)
        elif col.kind == NUMBER:
            out[col.name] = pd.to_numeric(value, errors="coerce")
        elif col.kind == INTEGER:
            out[col.name] = pd.to_numeric(value, errors="coerce").astype("Int8")
        elif col.name == "postcode":
            out["postcode_district"] = _district(value.fillna(""))
        elif col.name == "withdrawn":
            out[col.name] = value.str.upper() == "Y"
        elif col.name == "code" and source == "gp_events":
            out[col.name] = value.str.upper().str.replace(".", "", regex=False)
        elif col.name not in IDENTIFIERS:
            out[col.name] = value
    if contract.consent_column and contract.consent_column in raw.columns:
        keep &= raw[contract.consent_column].str.upper() == "Y"
    if people is not None:
        out["person_key"] = people.reindex(out["row"].to_numpy()).to_numpy()
        keep &= out["person_key"].notna()
    return out[keep].reset_index(drop=True)


def load_synth(folder: Path | str) -> SynthData:
    """Read a synth output folder into landed-form sources keyed by true person."""
    folder = Path(folder)
    rows = pd.read_parquet(folder / "truth" / "rows.parquet")
    rows["file"] = rows["file"].astype(str)
    rows["person"] = rows["person"].astype(str)
    base = 0 if rows["row"].min() == 0 else 1  # 1-based data rows, as landing counts them
    parts: dict[str, list[pd.DataFrame]] = {}
    for manifest in sorted(folder.glob("*.manifest.json")):
        info = json.loads(manifest.read_text())
        path = manifest.with_name(manifest.name.removesuffix(".manifest.json"))
        if info.get("source") not in CONTRACTS or path.suffix != ".csv":
            continue
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
        mapping = rows[rows["file"] == path.name]
        people = pd.Series(mapping["person"].to_numpy(),
                           index=mapping["row"].to_numpy() - base + 1)
        parts.setdefault(info["source"], []).append(
            landed(info["source"], raw, people, extract_id=f"synth-{path.stem}"))
    sources = {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}
    persons = pd.read_parquet(folder / "truth" / "persons.parquet")
    persons["person"] = persons["person"].astype(str)
    meta_path = folder / "truth" / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return SynthData(sources, persons.set_index("person"), meta)


def generate_synth(persons: int, seed: int, out: Path) -> Path | None:
    """Run the synthetic generator into `out` (once); None when `synth` has no generator yet."""
    try:
        import synth
    except ImportError:  # pragma: no cover - synth is part of the repository
        return None
    generate = getattr(synth, "generate", None)  # absent while synth is being written
    if generate is None:
        return None
    if not (out / "truth" / "persons.parquet").exists():
        generate(persons=persons, seed=seed, out=out, progress=None)
    return out


def synth_or_skip(factory: pytest.TempPathFactory, persons: int, seed: int) -> SynthData:
    """A generated population in a fresh temporary folder, read by `load_synth` (the test is
    skipped while `synth` has no generator)."""
    out = generate_synth(persons, seed=seed, out=factory.mktemp("synth"))
    if out is None:
        pytest.skip("synth.generate is not available")
    return load_synth(out)
