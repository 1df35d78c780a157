"""The inbound extract contracts (docs/contracts.md) as data: columns, types and codes.

The formats belong to the senders; Haven adapts to them. Each column has a kind that says how
it is checked and how it is stored after pseudonymisation (see `pseudonymise.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Kinds of column. Person identifiers never pass the pseudonymisation boundary in clear.
NHS = "nhs_number"
DOB = "date_of_birth"
SEX = "sex"
POSTCODE = "postcode"
PRACTICE = "gp_practice_code"
NAME = "name"            # forename/surname: keyed encodings only
RECORD_ID = "record_id"  # sender's record or client id: keyed
DATE = "date"
DATETIME = "datetime"
CODE = "code"            # one of a fixed set of values
TEXT = "text"            # a short coded value checked by pattern
ICD10 = "icd10"
ICD10_LIST = "icd10_list"
NUMBER = "number"
INTEGER = "integer"
ODS = "ods"
FLAG = "flag"            # Y / N

ADMISSION_METHODS = frozenset(
    ["11", "12", "13", "21", "22", "23", "24", "25", "2A", "2B", "2C", "2D", "28",
     "31", "32", "81", "82", "83"])
EMERGENCY_METHODS = frozenset(["21", "22", "23", "24", "25", "2A", "2B", "2C", "2D", "28"])

ICD10_RE = re.compile(r"^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$")
ODS_RE = re.compile(r"^[A-Z0-9]{3,10}$")
PRACTICE_RE = re.compile(r"^[A-Z][0-9]{5}$")
OPCS_RE = re.compile(r"^[A-Z][0-9]{2}(\.?[0-9]{1,2})?$")
SNOMED_RE = re.compile(r"^[1-9][0-9]{5,17}$")
BNF_RE = re.compile(r"^[0-9A-Z]{15}$")
TWO_CHARS_RE = re.compile(r"^[0-9A-Z]{2}$")
TFC_RE = re.compile(r"^[0-9]{3}$")


@dataclass(frozen=True)
class Column:
    """One contract column: its kind, whether it may be blank, and its allowed values."""

    name: str
    kind: str
    required: bool = False
    values: frozenset[str] | None = None
    pattern: re.Pattern[str] | None = None
    max_length: int = 64


@dataclass(frozen=True)
class Contract:
    """One source's contract: its columns, which is unique, and source-specific rules."""

    source: str
    columns: tuple[Column, ...]
    unique: str | None = None
    consent_column: str | None = None
    description: str = ""
    extras: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def _person(nhs_required: bool = False) -> tuple[Column, ...]:
    return (
        Column("nhs_number", NHS, required=nhs_required),
        Column("date_of_birth", DOB, required=True),
        Column("sex", SEX, required=True, values=frozenset("1290")),
        Column("postcode", POSTCODE),
        Column("gp_practice_code", PRACTICE, pattern=PRACTICE_RE),
    )


def _code(name: str, values: set[str] | frozenset[str], required: bool = True) -> Column:
    return Column(name, CODE, required=required, values=frozenset(values))


CONTRACTS: dict[str, Contract] = {
    c.source: c
    for c in (
        Contract("apc", (
            Column("spell_id", RECORD_ID, required=True),
            *_person(),
            Column("provider_code", ODS, required=True, pattern=ODS_RE),
            Column("admission_date", DATE, required=True),
            Column("discharge_date", DATE),
            _code("admission_method", ADMISSION_METHODS),
            Column("discharge_destination", TEXT, pattern=TWO_CHARS_RE),
            Column("primary_diagnosis", ICD10, required=True, pattern=ICD10_RE),
            Column("secondary_diagnoses", ICD10_LIST, max_length=400),
            Column("primary_procedure", TEXT, pattern=OPCS_RE),
        ), unique="spell_id", description="hospital admitted patient care spells (SUS)"),
        Contract("ae", (
            Column("attendance_id", RECORD_ID, required=True),
            *_person(),
            Column("provider_code", ODS, required=True, pattern=ODS_RE),
            Column("arrival_datetime", DATETIME, required=True),
            _code("arrival_mode", {"ambulance", "walk_in", "other"}),
            Column("acuity", INTEGER, values=frozenset("12345")),
            Column("chief_complaint", TEXT, pattern=SNOMED_RE),
            _code("discharge_status", {"admitted", "discharged", "transferred", "died", "left"}),
        ), unique="attendance_id", description="emergency department attendances (ECDS)"),
        Contract("op", (
            Column("appointment_id", RECORD_ID, required=True),
            *_person(),
            Column("provider_code", ODS, required=True, pattern=ODS_RE),
            Column("appointment_date", DATE, required=True),
            _code("attendance_status", {"5", "6", "7", "2", "3", "4"}),
            _code("first_attendance", {"1", "2"}),
            Column("treatment_function_code", TEXT, required=True, pattern=TFC_RE),
        ), unique="appointment_id", description="outpatient appointments (SUS)"),
        Contract("gp_patients", (
            *_person(nhs_required=True),
            Column("registration_date", DATE, required=True),
        ), description="GP registrations, one row a patient"),
        Contract("gp_events", (
            Column("nhs_number", NHS, required=True),
            Column("event_date", DATE, required=True),
            _code("code_system", {"snomed", "icd10"}),
            Column("code", TEXT, required=True, max_length=20),
            _code("event_type", {"diagnosis", "observation"}),
            Column("value", NUMBER),
        ), description="GP coded events"),
        Contract("gp_medications", (
            Column("nhs_number", NHS, required=True),
            Column("issue_date", DATE, required=True),
            Column("bnf_code", TEXT, required=True, pattern=BNF_RE),
            Column("quantity", NUMBER),
        ), description="GP prescriptions issued"),
        Contract("community", (
            Column("contact_id", RECORD_ID, required=True),
            *_person(),
            Column("contact_date", DATE, required=True),
            _code("service", {"district_nursing", "therapy", "rapid_response", "reablement",
                              "other"}),
        ), unique="contact_id", description="community service contacts (CSDS)"),
        Contract("social_care", (
            Column("client_id", RECORD_ID, required=True),
            Column("nhs_number", NHS),
            Column("forename", NAME),
            Column("surname", NAME),
            Column("date_of_birth", DOB, required=True),
            Column("sex", SEX, required=True, values=frozenset("1290")),
            Column("postcode", POSTCODE),
            _code("service_type", {"home_care", "residential", "nursing", "reablement",
                                   "direct_payment", "day_care", "equipment", "other"}),
            Column("start_date", DATE, required=True),
            Column("end_date", DATE),
            Column("weekly_cost", NUMBER),
            _code("consent", {"Y", "N"}),
        ), consent_column="consent", description="council adult social care services"),
        Contract("deaths", (
            Column("nhs_number", NHS, required=True),
            Column("date_of_birth", DOB),
            Column("date_of_death", DATE, required=True),
        ), description="death registrations"),
        Contract("optouts", (
            Column("nhs_number", NHS, required=True),
            _code("optout_type", {"ndoo", "type1", "consent_withdrawn"}),
            Column("effective_date", DATE, required=True),
            _code("withdrawn", {"Y", "N"}),
        ), description="objections and opt-outs"),
    )
}
