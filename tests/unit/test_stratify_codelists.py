"""Code lists: every code valid for its system, none listed twice, every file names its source,
the published tables intact, and `check_all` finds what is wrong in a file on disk."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stratify import codelists

Change = Callable[[str], str]  # a file's text -> the text written back

# Each list's code column and the module's own pattern for its code system.
CODE_COLUMNS = {
    "ltc_icd10": ("icd10_prefix", codelists.ICD10_PREFIX_RE),
    "ltc_snomed": ("snomed_id", codelists.SNOMED_RE),
    "charlson_icd10": ("icd10_prefix", codelists.ICD10_PREFIX_RE),
    "hfrs_icd10": ("icd10_3", codelists.ICD10_3_RE),
    "bnf_sections": ("section", codelists.BNF_SECTION_RE),
}
# What a code is unique within: its condition or category where the list has one.
GROUPS = {"ltc_icd10": "condition", "ltc_snomed": "condition", "charlson_icd10": "category"}
# Words each file's source line must hold: the publication or terminology it is from.
SOURCES = {
    "ltc_conditions": "QOF",
    "ltc_icd10": "ICD-10",
    "ltc_snomed": "SNOMED CT",
    "charlson_icd10": "Quan H",
    "hfrs_icd10": "Gilbert T",
    "bnf_sections": "British National Formulary",
}


# Verhoeff's tables: d multiplies in the dihedral group D5; p[i] is p[1] applied i times.
VERHOEFF_D = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
              [2, 3, 4, 0, 1, 7, 8, 9, 5, 6], [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
              [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
              [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
              [8, 7, 6, 5, 9, 3, 2, 1, 0, 4], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
VERHOEFF_P = [list(range(10)), [1, 5, 7, 6, 2, 8, 3, 0, 9, 4]]
while len(VERHOEFF_P) < 8:
    VERHOEFF_P.append([VERHOEFF_P[1][x] for x in VERHOEFF_P[-1]])


def verhoeff_ok(digits: str) -> bool:
    """The Verhoeff check digit that ends every SNOMED CT identifier."""
    check = 0
    for i, digit in enumerate(reversed(digits)):
        check = VERHOEFF_D[check][VERHOEFF_P[i % 8][int(digit)]]
    return check == 0


def test_the_files_are_the_lists_the_module_knows() -> None:
    on_disk = sorted(path.stem for path in codelists.FOLDER.glob("*.csv"))
    assert on_disk == sorted(codelists.FILES) == sorted(SOURCES)


@pytest.mark.parametrize("name", codelists.FILES)
def test_every_file_names_its_source(name: str) -> None:
    first = codelists.header(name)[0]
    assert first.lower().startswith("source:"), f"{name}.csv: the first line is not its source"
    assert SOURCES[name] in codelists.source_of(name)


@pytest.mark.parametrize("name", list(CODE_COLUMNS))
def test_every_code_is_valid_for_its_system(name: str) -> None:
    column, pattern = CODE_COLUMNS[name]
    codes = codelists.load(name)[column]
    assert len(codes) > 0
    assert [c for c in codes if not pattern.fullmatch(c)] == []


def test_snomed_ids_are_concept_ids_with_their_check_digit() -> None:
    assert verhoeff_ok("22298006") and not verhoeff_ok("22298007")  # the check itself
    ids = codelists.ltc_snomed()["snomed_id"]
    assert [i for i in ids if not verhoeff_ok(i)] == []
    # Partition identifier (second and third digits from the end): 00 or 10 is a concept.
    assert [i for i in ids if i[-3:-1] not in ("00", "10")] == []


@pytest.mark.parametrize("name", list(CODE_COLUMNS))
def test_no_code_is_listed_twice(name: str) -> None:
    column, _ = CODE_COLUMNS[name]
    frame = codelists.load(name)
    key = [GROUPS[name], column] if name in GROUPS else [column]
    assert frame.loc[frame.duplicated(key, keep=False), key].values.tolist() == []


@pytest.mark.parametrize("name", ["ltc_icd10", "charlson_icd10"])
def test_no_prefix_is_covered_by_a_shorter_one_in_its_group(name: str) -> None:
    frame = codelists.load(name)
    group = GROUPS[name]
    covered = [(g, code) for g, codes in frame.groupby(group)["icd10_prefix"]
               for code in codes if any(code != other and code.startswith(other)
                                        for other in codes)]
    assert covered == []


def test_conditions_are_known_flagged_and_coded_both_ways() -> None:
    table = codelists.load("ltc_conditions")
    assert table["condition"].is_unique
    assert set(table["counted"]) <= {"0", "1"}
    known = set(table["condition"])
    for name in ("ltc_icd10", "ltc_snomed"):
        assert set(codelists.load(name)["condition"]) == known, name


def test_known_codes_are_in_their_lists() -> None:
    icd = codelists.ltc_icd10()
    copd = set(icd.loc[icd["condition"] == "copd", "icd10_prefix"])
    assert {"J43", "J44"} <= copd and "J45" not in copd  # asthma is a condition of its own
    charlson = codelists.charlson()
    assert set(charlson.loc[charlson["category"] == "cpd", "icd10_prefix"]) >= {"J44", "J45"}
    assert "F00" in set(codelists.hfrs()["icd10_3"])


def test_hfrs_is_the_published_table() -> None:
    table = codelists.hfrs().set_index("icd10_3")["weight"]
    assert len(table) == 109 and table.index.is_unique
    assert table["F00"] == 7.1 and table["G81"] == 4.4 and table["R50"] == 0.1
    assert round(table.sum(), 1) == 173.2


def test_charlson_uses_quan_codes_and_charlson_weights() -> None:
    table = codelists.charlson()
    assert table.groupby("category")["weight"].nunique().max() == 1
    weights = table.groupby("category")["weight"].first()
    assert weights["metacanc"] == 6 and weights["aids"] == 6 and weights["msld"] == 3
    assert weights["diabwc"] == 2 and weights["mi"] == 1
    assert set(table.loc[table["category"] == "metacanc", "icd10_prefix"]) == \
        {"C77", "C78", "C79", "C80"}
    assert "C44" not in set(table["icd10_prefix"])
    hierarchy = set(codelists.CHARLSON_HIERARCHY) | set(codelists.CHARLSON_HIERARCHY.values())
    assert hierarchy <= set(table["category"])


def test_core_conditions_have_both_code_systems() -> None:
    icd = codelists.ltc_icd10()
    snomed = codelists.ltc_snomed()
    for condition, prefix, concept in (("diabetes", "E11", "44054006"),
                                       ("copd", "J44", "13645005"),
                                       ("heart_failure", "I50", "84114007"),
                                       ("af", "I48", "49436004"),
                                       ("dementia", "F03", "52448006"),
                                       ("stroke", "I63", "230690007")):
        assert prefix in set(icd.loc[icd["condition"] == condition, "icd10_prefix"])
        assert concept in set(snomed.loc[snomed["condition"] == condition, "snomed_id"])


def test_bnf_sections_are_named() -> None:
    sections = codelists.bnf_sections()
    assert sections["section"].is_unique
    assert sections.set_index("section").loc["0601", "section_name"] == "Drugs used in diabetes"
    assert sections["feature"].sum() >= 15
    # The first two digits are the chapter: one chapter name each.
    assert sections.groupby(sections["section"].str[:2])["chapter_name"].nunique().max() == 1


def test_the_real_lists_are_well_formed() -> None:
    assert codelists.check_all() == []


# `check_all` on files changed on disk: each fault is found and named with its file.
@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    copy = tmp_path / "codelists"
    shutil.copytree(codelists.FOLDER, copy)
    monkeypatch.setattr(codelists, "FOLDER", copy)
    codelists._load.cache_clear()
    yield copy
    codelists._load.cache_clear()


def _rewrite(folder: Path, name: str, change: Change) -> None:
    path = folder / f"{name}.csv"
    path.write_text(change(path.read_text(encoding="utf-8")), encoding="utf-8")


def _append(row: str) -> Change:
    return lambda text: text.rstrip("\n") + "\n" + row + "\n"


@pytest.mark.parametrize(("name", "change", "expected"), [
    ("ltc_icd10", _append("copd,J44.1,with a dot"), "ltc_icd10: malformed code 'J44.1'"),
    ("ltc_snomed", _append("copd,013645005,leading zero"),
     "ltc_snomed: malformed code '013645005'"),
    ("hfrs_icd10", lambda t: t.replace("\nF00,", "\nF0,", 1), "hfrs_icd10: malformed code 'F0'"),
    ("bnf_sections", _append("601,Endocrine system,short,0"),
     "bnf_sections: malformed code '601'"),
    ("charlson_icd10", _append("mi,I21,1,Myocardial infarction"),
     "charlson_icd10: duplicated codes"),
    ("ltc_icd10", _append("gout,M10,Gout"), "ltc_icd10: unknown condition gout"),
    ("ltc_snomed", lambda t: "\n".join(line for line in t.splitlines()
                                       if not line.startswith("pad,")) + "\n",
     "condition pad lacks ICD-10 or SNOMED codes"),
    ("hfrs_icd10", lambda t: t.replace("\nG81,4.4,Hemiplegia", "", 1),
     "hfrs_icd10: 108 codes, expected 109"),
    ("charlson_icd10", lambda t: "\n".join(line for line in t.splitlines()
                                           if not line.startswith("# source:")) + "\n",
     "code list charlson_icd10 does not name its source"),
], ids=["icd10-dotted", "snomed-leading-zero", "hfrs-short", "bnf-short", "charlson-duplicate",
        "unknown-condition", "condition-without-snomed", "hfrs-108", "no-source"])
def test_check_all_names_each_fault_and_its_file(folder: Path, name: str, change: Change,
                                                 expected: str) -> None:
    _rewrite(folder, name, change)
    assert expected in codelists.check_all()


def test_a_file_without_a_source_line_is_refused_by_name(folder: Path) -> None:
    _rewrite(folder, "ltc_snomed", lambda t: re.sub(r"^# source:.*\n", "", t, flags=re.M))
    with pytest.raises(ValueError, match="code list ltc_snomed does not name its source"):
        codelists.source_of("ltc_snomed")
