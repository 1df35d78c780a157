"""Code lists: well-formed codes, every file names its source, the published tables intact."""

from __future__ import annotations

import re

import pytest

from stratify import codelists


def test_code_lists_are_well_formed() -> None:
    assert codelists.check_all() == []


@pytest.mark.parametrize("name", codelists.FILES)
def test_every_file_names_its_source(name: str) -> None:
    assert len(codelists.source_of(name)) > 20


def test_hfrs_is_the_published_table() -> None:
    table = codelists.hfrs().set_index("icd10_3")["weight"]
    assert len(table) == 109 and table.index.is_unique
    assert table["F00"] == 7.1 and table["G81"] == 4.4 and table["R50"] == 0.1
    assert round(table.sum(), 1) == 173.2


def test_charlson_uses_quan_codes_and_charlson_weights() -> None:
    table = codelists.charlson()
    weights = table.groupby("category")["weight"].first()
    assert weights["metacanc"] == 6 and weights["aids"] == 6 and weights["msld"] == 3
    assert weights["diabwc"] == 2 and weights["mi"] == 1
    assert set(table.loc[table["category"] == "metacanc", "icd10_prefix"]) == \
        {"C77", "C78", "C79", "C80"}
    assert "C44" not in set(table["icd10_prefix"])


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


def test_checker_catches_a_malformed_code(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = codelists.load("ltc_icd10")
    bad.loc[0, "icd10_prefix"] = "E11.9"
    real = codelists.load
    monkeypatch.setattr(codelists, "load",
                        lambda name: bad.copy() if name == "ltc_icd10" else real(name))
    assert any(re.search("malformed code 'E11.9'", p) for p in codelists.check_all())


def test_bnf_sections_are_named() -> None:
    sections = codelists.bnf_sections()
    assert sections["section"].is_unique
    assert sections.set_index("section").loc["0601", "section_name"] == "Drugs used in diabetes"
    assert sections["feature"].sum() >= 15
