"""Opt-outs as an attacker meets them: who may assert one, when one applies, and whether the
reverse lookup gets round them. Each test names the promise it guards (docs/threat-model.md)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
from pathlib import Path

import pytest
from api_matrix import (
    OTHER_PRACTICE,
    OWN_PRACTICE,
    World,
    build_world,
    land_optout,
)
from sqlalchemy import select

from factories import nhs_numbers, rows_for, write_extract
from governance import optouts
from governance.audit import SYSTEM
from governance.policy_tables import policy_text, set_policy
from governance.schema import audit_log
from governance.schema import optouts as register
from linkage.landing.contracts import CONTRACTS
from pipeline.land import land

COUNCIL = "E08000035"
OTHER_COUNCIL = "E08000036"
STRANGERS = nhs_numbers(12, seed=97)  # 999-range numbers nobody in the world holds


@pytest.fixture
def world(haven, tmp_path) -> World:
    return build_world(haven, tmp_path)


def optout_file(rows: list[tuple[str, str, str, str]]) -> bytes:
    """(NHS number, type, effective date, withdrawn) -> an optouts CSV."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CONTRACTS["optouts"].names)
    writer.writeheader()
    writer.writerows({"nhs_number": n, "optout_type": t, "effective_date": d, "withdrawn": w}
                     for n, t, d, w in rows)
    return buffer.getvalue().encode()


def council_upload(world: World, rows: list[tuple[str, str, str, str]],
                   sender: str = COUNCIL):
    data = optout_file(rows)
    fields = {"source": "optouts", "sender": sender, "period_start": "2024-01-01",
              "period_end": "2024-12-31", "sha256": hashlib.sha256(data).hexdigest(),
              "rows": str(len(rows))}
    return world.call("council_uploader", "POST", "/extracts", data=fields,
                      files={"file": ("optouts.csv", data, "text/csv")})


def land_as_haven(haven, folder: Path, sender: str, rows: list[tuple[str, str, str, str]]):
    """Land an optouts extract from `sender` the way `haven land` does (pipeline.land)."""
    path = write_extract(folder, "optouts", [
        {"nhs_number": n, "optout_type": t, "effective_date": d, "withdrawn": w}
        for n, t, d, w in rows], sender=sender)
    [receipt] = land(haven, path)
    return receipt


def land_as(world: World, folder: Path, sender: str, rows: list[tuple[str, str, str, str]]):
    return land_as_haven(world.haven, folder, sender, rows)


def reidentify(world: World, key: str):
    return world.call("mdt_clinician", "POST", "/reidentify",
                      json={"person_keys": [key], "reason": "mdt_review"})


def register_rows(world: World) -> list[tuple[str, str, bool]]:
    with world.haven.engine.connect() as connection:
        return [tuple(r) for r in connection.execute(
            select(register.c.sender, register.c.optout_type, register.c.withdrawn))]


def audit_text(world: World) -> str:
    with world.haven.engine.connect() as connection:
        return " ".join(str(dict(r)) for r in connection.execute(select(audit_log)).mappings())


# ------------------------------------------------------------------------------------------
# 1. Who may assert an opt-out (policies/optout_senders.csv)
# ------------------------------------------------------------------------------------------
def test_council_cannot_cancel_or_create_national_or_gp_optouts(world: World) -> None:
    """Promise: only the national register (and, for type 1, the patient's own practice) can
    create or cancel a national or GP opt-out; a council's rows asserting one are rejected."""
    objector, national, gp = world.keys_in(OWN_PRACTICE)[:3]
    land_optout(world, objector, "type1")  # from the national register (X26)
    assert reidentify(world, objector).status_code == 403
    forged = [(world.nhs[objector], "type1", "2024-06-01", "Y"),  # cancel a GP objection
              (world.nhs[national], "ndoo", "2024-01-01", "N"),  # create a national one
              (world.nhs[gp], "type1", "2024-01-01", "N")]  # create a GP one
    own_clients = [(n, "consent_withdrawn", "2024-01-01", "N") for n in STRANGERS[:4]]
    response = council_upload(world, forged + own_clients)
    assert response.status_code == 201, response.text
    # The objection stands, nothing was created: re-identification is still refused for the
    # objector, allowed for the others; the national opt-out withholds nobody.
    assert reidentify(world, objector).status_code == 403
    assert reidentify(world, gp).status_code == 200
    assert world.call("analyst", "GET", f"/persons/{national}").status_code == 200
    receipt = response.json()
    assert receipt["counts"]["landed"] == 4 and receipt["counts"]["rejected"] == 3
    assert receipt["counts"]["rejected_by_reason"] == {optouts.NOT_THIS_SENDER: 3}
    assert receipt["rejected_rows"] == [{"row": r, "reason": optouts.NOT_THIS_SENDER}
                                        for r in (1, 2, 3)]
    assert sorted(register_rows(world)) == [(COUNCIL, "consent_withdrawn", False)] * 4 + [
        ("X26", "type1", False)]
    # Reasons name the field and rule; no number appears in the answer or the audit log.
    numbers = [n for n, *_ in forged + own_clients]
    assert not any(n in response.text or n in audit_text(world) for n in numbers)


def test_a_practice_asserts_type1_only_for_its_own_registered_patients(
        world: World, tmp_path: Path) -> None:
    """Promise: a type 1 objection from a practice lands only for a person registered with
    that practice in landed GP data; anyone else (registered elsewhere, or unknown: fail
    closed) is rejected with one reason, so the receipt tells the practice nothing more."""
    own = world.keys_in(OWN_PRACTICE)
    moved = own[4]
    other = world.keys_in(OTHER_PRACTICE)[0]
    # A later registration moves one patient from this practice to the other.
    row = rows_for("gp_patients", 1, seed=7)[0]
    row.update(nhs_number=world.nhs[moved], gp_practice_code=OTHER_PRACTICE,
               registration_date="2024-05-01")
    [moved_receipt] = land(world.haven, write_extract(tmp_path / "gp", "gp_patients", [row],
                                                      sender=OTHER_PRACTICE))
    assert moved_receipt.status == "landed"
    [empty] = land(world.haven, write_extract(tmp_path / "none", "gp_patients", [],
                                              sender=OWN_PRACTICE))  # a list with no one
    assert empty.status == "landed"
    rows = [(world.nhs[k], "type1", "2024-01-01", "N") for k in own[:4]] + [
        (world.nhs[other], "type1", "2024-01-01", "N"),  # another practice's patient
        (STRANGERS[5], "type1", "2024-01-01", "N"),  # no landed registration at all
        (world.nhs[moved], "type1", "2024-01-01", "N"),  # registered elsewhere since
        (world.nhs[own[5]], "consent_withdrawn", "2024-01-01", "N"),  # not a council
    ]
    receipt = land_as(world, tmp_path / "o", OWN_PRACTICE, rows)
    assert receipt.status == "landed", receipt.reason
    assert receipt.counts["landed"] == 4 and receipt.counts["rejected"] == 4
    assert receipt.rejected_rows == [
        {"row": 5, "reason": optouts.NOT_OWN_PRACTICE},
        {"row": 6, "reason": optouts.NOT_OWN_PRACTICE},
        {"row": 7, "reason": optouts.NOT_OWN_PRACTICE},
        {"row": 8, "reason": optouts.NOT_THIS_SENDER}]
    assert sorted(register_rows(world)) == [(OWN_PRACTICE, "type1", False)] * 4
    assert not any(n in str(receipt.to_json()) for n, *_ in rows)


def test_consent_withdrawal_comes_from_a_council_and_covers_its_own_data(
        world: World, tmp_path: Path) -> None:
    """Promise: only a council withdraws social care consent, and its withdrawal covers its
    own social care data only; the national register or a practice cannot assert one for
    every council."""
    person = world.keys_in(OWN_PRACTICE)[0]
    for sender in ("X26", OWN_PRACTICE):
        receipt = land_as(world, tmp_path / sender, sender,
                          [(world.nhs[person], "consent_withdrawn", "2024-01-01", "N"),
                           (world.nhs[person], "type1", "2024-01-01", "N")])
        assert receipt.counts["rejected_by_reason"] == {optouts.NOT_THIS_SENDER: 1}
    assert {k for _, k, _ in register_rows(world)} == {"type1"}
    council = land_as(world, tmp_path / "c", COUNCIL,
                      [(world.nhs[person], "consent_withdrawn", "2024-01-01", "N")])
    assert council.counts["landed"] == 1
    [person_id] = optouts.active_optouts(world.haven.engine, dt.date.today()).query(
        "optout_type == 'consent_withdrawn'")["person_id"]
    for sender, expected in ((COUNCIL, [True]), (OTHER_COUNCIL, [False])):
        assert optouts.excluded(world.haven.engine, [person_id], "commissioning",
                                "social_care", sender, dt.date.today()
                                ).tolist() == expected


def test_ig_lead_sees_and_changes_who_may_assert_opt_outs(world: World, tmp_path: Path
                                                          ) -> None:
    """Promise: the senders table is an IG lead's policy table: shown, checked before it is
    stored, audited when changed, and in force from the next row landed."""
    shown = world.call("ig_lead", "GET", "/policy-tables/optout_senders.csv")
    assert shown.status_code == 200 and "ndoo,X26" in shown.json()["content"]
    for bad in ("optout_type,sender\ntype2,X26\n", "optout_type,sender\nndoo,x26 x\n",
                "optout_type,sender\nndoo,9990000018\n"):
        refused = world.call("ig_lead", "PUT", "/policy-tables/optout_senders.csv",
                             json={"content": bad})
        assert refused.status_code == 422
    assert world.call("analyst", "PUT", "/policy-tables/optout_senders.csv",
                      json={"content": "optout_type,sender\nndoo,X26\n"}).status_code == 403
    # The national register moves to a new code: rows under the old one are rejected.
    content = policy_text("optout_senders.csv").replace("ndoo,X26", "ndoo,X27")
    changed = world.call("ig_lead", "PUT", "/policy-tables/optout_senders.csv",
                         json={"content": content})
    assert changed.status_code == 200
    with world.haven.engine.connect() as connection:
        entry = connection.execute(select(audit_log).where(
            audit_log.c.action == "policy_table.change")).mappings().one()
    assert entry["resource"] == "policy/optout_senders.csv"
    assert set(entry["detail"]) == {"before", "after"}
    rows = [(STRANGERS[0], "ndoo", "2024-01-01", "N"), (STRANGERS[1], "type1", "2024-01-01", "N")]
    assert land_as(world, tmp_path / "a", "X26", rows).counts["rejected_by_reason"] == {
        optouts.NOT_THIS_SENDER: 1}
    assert land_as(world, tmp_path / "b", "X27", rows).counts["rejected_by_reason"] == {
        optouts.NOT_THIS_SENDER: 1}
    # Nobody may assert a type the table leaves out.
    set_policy(world.haven.engine, "optout_senders.csv",
               "optout_type,sender\nndoo,X27\n", SYSTEM)
    assert optouts.allowed_senders(world.haven.engine) == {"ndoo": frozenset({"X27"})}
    assert land_as(world, tmp_path / "c", COUNCIL, [
        (STRANGERS[1], "consent_withdrawn", "2024-01-01", "N")]).status == "refused"
