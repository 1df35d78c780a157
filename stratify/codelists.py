"""Clinical code lists, kept as CSV files in `stratify/codelists/` so clinicians can review them.

Each file opens with `# source: ...` comment lines naming where its codes come from; the loaders
here read them into small pandas frames and check their shape (see `check_all`).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pandas as pd

FOLDER = Path(__file__).with_name("codelists")

ICD10_PREFIX_RE = re.compile(r"^[A-Z][0-9]{2}[0-9A-Z]?$")
ICD10_3_RE = re.compile(r"^[A-Z][0-9]{2}$")
SNOMED_RE = re.compile(r"^[1-9][0-9]{5,17}$")
BNF_SECTION_RE = re.compile(r"^[0-9]{4}$")

FILES = ("ltc_conditions", "ltc_icd10", "ltc_snomed", "charlson_icd10", "hfrs_icd10",
         "bnf_sections")


def header(name: str) -> list[str]:
    """The leading `#` comment lines of a code list (its source and usage notes)."""
    lines = []
    for line in (FOLDER / f"{name}.csv").read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return lines


def source_of(name: str) -> str:
    """The `source:` line of a code list: which publication or terminology its codes are from."""
    for line in header(name):
        if line.lower().startswith("source:"):
            return line.split(":", 1)[1].strip()
    raise ValueError(f"code list {name} does not name its source")


@cache
def _load(name: str) -> pd.DataFrame:
    return pd.read_csv(FOLDER / f"{name}.csv", comment="#", dtype=str, keep_default_na=False)


def load(name: str) -> pd.DataFrame:
    """One code list as a frame of strings (a copy: callers may change it)."""
    return _load(name).copy()


def conditions() -> pd.DataFrame:
    """Long-term conditions: `condition`, `label` (clinician's words), `counted` (bool)."""
    frame = load("ltc_conditions")
    frame["counted"] = frame["counted"] == "1"
    return frame


def ltc_icd10() -> pd.DataFrame:
    """ICD-10 prefixes (3 or 4 characters, no dot) of each long-term condition."""
    return load("ltc_icd10")


def ltc_snomed() -> pd.DataFrame:
    """SNOMED CT concept ids of each long-term condition."""
    return load("ltc_snomed")


def charlson() -> pd.DataFrame:
    """Charlson categories: ICD-10 prefixes (Quan 2005) with the original Charlson weights."""
    frame = load("charlson_icd10")
    frame["weight"] = frame["weight"].astype(int)
    return frame


# Charlson hierarchy: the milder category does not count when the severer one is present.
CHARLSON_HIERARCHY = {"diab": "diabwc", "mld": "msld", "canc": "metacanc"}


def hfrs() -> pd.DataFrame:
    """Hospital Frailty Risk Score: 109 ICD-10 3-character codes and their points."""
    frame = load("hfrs_icd10")
    frame["weight"] = frame["weight"].astype(float)
    return frame


def bnf_sections() -> pd.DataFrame:
    """BNF sections (4 digits: chapter + section) with names; `feature` marks those used."""
    frame = load("bnf_sections")
    frame["feature"] = frame["feature"] == "1"
    return frame


def check_all() -> list[str]:
    """Problems with the code lists (empty when all are well-formed)."""
    problems: list[str] = []
    for name in FILES:
        try:
            source_of(name)
        except ValueError as error:
            problems.append(str(error))
    known = set(conditions()["condition"])
    for name, column, pattern in (("ltc_icd10", "icd10_prefix", ICD10_PREFIX_RE),
                                  ("ltc_snomed", "snomed_id", SNOMED_RE),
                                  ("charlson_icd10", "icd10_prefix", ICD10_PREFIX_RE),
                                  ("hfrs_icd10", "icd10_3", ICD10_3_RE),
                                  ("bnf_sections", "section", BNF_SECTION_RE)):
        frame = load(name)
        bad = frame.loc[~frame[column].str.fullmatch(pattern.pattern), column]
        problems += [f"{name}: malformed code {code!r}" for code in bad]
        key = [c for c in ("condition", "category") if c in frame.columns] + [column]
        if frame.duplicated(key).any():
            problems.append(f"{name}: duplicated codes")
        if "condition" in frame.columns:
            problems += [f"{name}: unknown condition {c}" for c in set(frame["condition"]) - known]
    missing = known - set(ltc_icd10()["condition"]) | known - set(ltc_snomed()["condition"])
    problems += [f"condition {c} lacks ICD-10 or SNOMED codes" for c in sorted(missing)]
    if len(hfrs()) != 109:
        problems.append(f"hfrs_icd10: {len(hfrs())} codes, expected 109")
    return problems
