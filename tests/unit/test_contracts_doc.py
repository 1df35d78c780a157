"""docs/contracts.md says what `linkage/landing/contracts.py` accepts, in both directions.

Each source's table (`column | type | required | rule`) is read and compared with `CONTRACTS`:
the sources, each column, its type (the column's kind), its required flag, its allowed codes
(`one of: ...`), its pattern (`pattern ...`), a length limit other than the default
(`at most N characters`) and the source's unique column (`unique in the file`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from linkage.landing.contracts import CONTRACTS, Column, Contract

DOC = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"
DEFAULT_MAX_LENGTH = Column("x", "text").max_length
SOURCE_HEADING = re.compile(r"^### `([a-z0-9_]+)`: (.+)$")
CODES = re.compile(r"one of: ([^;]*)")
PATTERN = re.compile(r"pattern `([^`]+)`")
MAX_LENGTH = re.compile(r"at most (\d+) characters")
UNIQUE = "unique in the file"


@dataclass(frozen=True)
class DocColumn:
    name: str
    kind: str
    required: bool
    rule: str

    @property
    def codes(self) -> frozenset[str] | None:
        found = CODES.search(self.rule)
        return frozenset(re.findall(r"`([^`]+)`", found.group(1))) if found else None

    @property
    def pattern(self) -> str | None:
        found = PATTERN.search(self.rule)
        return found.group(1) if found else None

    @property
    def max_length(self) -> int:
        found = MAX_LENGTH.search(self.rule)
        return int(found.group(1)) if found else DEFAULT_MAX_LENGTH


@dataclass(frozen=True)
class DocSource:
    name: str
    description: str
    columns: dict[str, DocColumn]


def _cells(line: str) -> list[str]:
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def _unquote(cell: str) -> str:
    return cell.strip("`")


def parse(text: str) -> tuple[dict[str, DocSource], dict[str, str]]:
    """The per-source tables under `## Sources` and the `## Types` table of the document."""
    sources: dict[str, DocSource] = {}
    types: dict[str, str] = {}
    section = ""
    current: DocSource | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("## "):
            section, current = line[3:].strip(), None
            continue
        if section == "Sources" and line.startswith("### "):
            heading = SOURCE_HEADING.match(line)
            assert heading, f"docs/contracts.md line {number}: a source heading is " \
                            f"'### `source`: description', not {line!r}"
            name = heading.group(1)
            assert name not in sources, f"docs/contracts.md: source {name} described twice"
            current = sources[name] = DocSource(name, heading.group(2).strip(), {})
            continue
        if not line.startswith("|"):
            continue
        cells = _cells(line)
        if set("".join(cells)) <= set("-: "):  # the header's underline
            continue
        if section == "Types":
            if cells != ["type", "accepted"]:
                types[_unquote(cells[0])] = cells[1]
        elif section == "Sources":
            assert current is not None, f"docs/contracts.md line {number}: a table outside a source"
            if cells == ["column", "type", "required", "rule"]:
                continue
            assert len(cells) == 4, \
                f"docs/contracts.md line {number} ({current.name}): expected 4 cells, not " \
                f"{len(cells)}"
            column, kind, required, rule = cells
            column = _unquote(column)
            assert required in ("yes", "no"), \
                f"docs/contracts.md: {current.name}.{column}: required is 'yes' or 'no'"
            assert column not in current.columns, \
                f"docs/contracts.md: {current.name}.{column} listed twice"
            current.columns[column] = DocColumn(column, _unquote(kind), required == "yes", rule)
    return sources, types


DOC_SOURCES, DOC_TYPES = parse(DOC.read_text(encoding="utf-8"))


def differences(source: str, doc: DocSource | None, code: Contract | None) -> list[str]:
    """Every way one source's table and its contract differ, each naming source and column."""
    if code is None:
        return [f"source {source}: in docs/contracts.md but not in linkage/landing/contracts.py"]
    if doc is None:
        return [f"source {source}: in linkage/landing/contracts.py but not in docs/contracts.md"]
    found = []
    if doc.description != code.description:
        found.append(f"{code.source}: described as {doc.description!r} in the doc, "
                     f"{code.description!r} in the code")
    for name in code.names:
        if name not in doc.columns:
            found.append(f"{code.source}.{name}: in linkage/landing/contracts.py but not in "
                         f"docs/contracts.md")
    for name in doc.columns:
        if name not in code.names:
            found.append(f"{code.source}.{name}: in docs/contracts.md but not in "
                         f"linkage/landing/contracts.py")
    for column in code.columns:
        written = doc.columns.get(column.name)
        if written is None:
            continue
        where = f"{code.source}.{column.name}"
        if written.kind != column.kind:
            found.append(f"{where}: type {written.kind!r} in the doc, {column.kind!r} in the code")
        if written.required != column.required:
            found.append(f"{where}: required {'yes' if written.required else 'no'} in the doc, "
                         f"{'yes' if column.required else 'no'} in the code")
        if written.codes != column.values:
            found.append(f"{where}: codes {sorted(written.codes or [])} in the doc, "
                         f"{sorted(column.values or [])} in the code")
        code_pattern = column.pattern.pattern if column.pattern is not None else None
        if written.pattern != code_pattern:
            found.append(f"{where}: pattern {written.pattern!r} in the doc, {code_pattern!r} "
                         f"in the code")
        if written.max_length != column.max_length:
            found.append(f"{where}: at most {written.max_length} characters in the doc, "
                         f"{column.max_length} in the code")
        if (UNIQUE in written.rule) != (code.unique == column.name):
            found.append(f"{where}: the doc {'says' if UNIQUE in written.rule else 'omits'} "
                         f"'{UNIQUE}', the code's unique column is {code.unique!r}")
    return found


def test_the_document_has_every_source_and_no_other() -> None:
    assert sorted(DOC_SOURCES) == sorted(CONTRACTS), (
        f"only in docs/contracts.md: {sorted(set(DOC_SOURCES) - set(CONTRACTS))}; "
        f"only in linkage/landing/contracts.py: {sorted(set(CONTRACTS) - set(DOC_SOURCES))}")


@pytest.mark.parametrize("source", sorted(set(CONTRACTS) | set(DOC_SOURCES)))
def test_each_source_table_is_the_contract(source: str) -> None:
    found = differences(source, DOC_SOURCES.get(source), CONTRACTS.get(source))
    assert not found, "docs/contracts.md and linkage/landing/contracts.py differ:\n" + \
        "\n".join(found)


def test_every_type_used_is_explained_and_no_other() -> None:
    used = {column.kind for contract in CONTRACTS.values() for column in contract.columns}
    written = {column.kind for source in DOC_SOURCES.values()
               for column in source.columns.values()}
    unexplained = sorted((used | written) - set(DOC_TYPES))
    assert set(DOC_TYPES) == used | written, (
        f"types used but not explained under '## Types': {unexplained}; "
        f"explained but not used: {sorted(set(DOC_TYPES) - used - written)}")


def test_the_consent_rule_is_stated_where_the_code_applies_it() -> None:
    for name, contract in CONTRACTS.items():
        if contract.consent_column:
            rule = DOC_SOURCES[name].columns[contract.consent_column].rule
            assert "only `Y` rows land" in rule, f"{name}.{contract.consent_column}: the doc " \
                                                 f"does not say only `Y` rows land"


# The comparison itself must see a difference of each kind, in each direction.
def _doc_with(source: str, column: str, **change: object) -> DocSource:
    doc = DOC_SOURCES[source]
    columns = dict(doc.columns)
    if change.pop("drop", False):
        del columns[column]
    elif column not in columns:
        columns[column] = DocColumn(column, "text", False, "")
    else:
        columns[column] = DocColumn(**{**columns[column].__dict__, **change})
    return DocSource(doc.name, doc.description, columns)


@pytest.mark.parametrize(("source", "column", "change", "expected"), [
    ("apc", "discharge_date", {"drop": True},
     "apc.discharge_date: in linkage/landing/contracts.py but not in docs/contracts.md"),
    ("ae", "triage_note", {},
     "ae.triage_note: in docs/contracts.md but not in linkage/landing/contracts.py"),
    ("op", "first_attendance", {"required": False}, "op.first_attendance: required no"),
    ("optouts", "optout_type", {"rule": "one of: `ndoo`, `type1`"}, "optouts.optout_type: codes"),
    ("deaths", "date_of_death", {"rule": "one of: `x`"}, "deaths.date_of_death: codes"),
    ("gp_medications", "bnf_code", {"rule": "pattern `^[0-9]{15}$`"},
     "gp_medications.bnf_code: pattern"),
    ("gp_events", "code", {"rule": "any code"}, "gp_events.code: at most 64 characters"),
    ("community", "contact_id", {"rule": "the sender's id"}, "community.contact_id: the doc omits"),
    ("gp_patients", "registration_date", {"kind": "datetime"},
     "gp_patients.registration_date: type"),
])
def test_a_difference_is_found_and_named(source: str, column: str, change: dict,
                                         expected: str) -> None:
    found = differences(source, _doc_with(source, column, **change), CONTRACTS[source])
    assert any(line.startswith(expected) for line in found), found


def test_a_missing_source_is_named() -> None:
    assert differences("apc", None, CONTRACTS["apc"]) == [
        "source apc: in linkage/landing/contracts.py but not in docs/contracts.md"]
    assert differences("apc", DOC_SOURCES["apc"], None) == [
        "source apc: in docs/contracts.md but not in linkage/landing/contracts.py"]
