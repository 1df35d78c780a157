"""Opt-outs as an attacker meets them: who may assert one, when one applies, and whether the
reverse lookup gets round them. Each test names the promise it guards (docs/threat-model.md)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from api_matrix import (
    OTHER_PRACTICE,
    OWN_PRACTICE,
    World,
    build_world,
    land_optout,
    score_rows,
    write_score_run,
)
from sqlalchemy import select, update

from factories import approve_candidates, nhs_numbers, rows_for, write_extract
from governance import optouts
from governance.audit import SYSTEM
from governance.keyed_hash import nhs_pseudonym
from governance.policy_tables import policy_text, set_policy
from governance.reidentify import normalise
from governance.schema import audit_log, runs
from governance.schema import optouts as register
from linkage.landing.contracts import CONTRACTS
from linkage.person_index import read_link_map
from pipeline import report as report_module
from pipeline import score as score_module
from pipeline.land import land
from pipeline.link import link
from pipeline.person_keys import person_keys_of_ids
from pipeline.report import model_report
from pipeline.score import export_scores, score
from pipeline.serving import ServingRun, optouts_applied, serving_run, withheld_person_keys
from synth import generate

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


# ------------------------------------------------------------------------------------------
# 2. Which opt-outs apply: those in force at the moment of use, whatever the score date
# ------------------------------------------------------------------------------------------
def numbers_in(path: Path) -> pd.Series:
    return pd.read_csv(path, dtype=str, keep_default_na=False)["nhs_number"].map(normalise)


@pytest.mark.parametrize("backend", [""])  # one full pipeline run, on SQLite
def test_scoring_applies_the_optouts_in_force_now_not_on_its_date(
        haven, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Promise: a run uses no data an opt-out in force when it is scored covers, whatever
    reference date it is scored at (an early date brings back no one's history), and the
    export and the model report of a run leave out whoever it must withhold now."""
    out = tmp_path / "synth"
    generate(800, 11, out, progress=False)
    at = dt.date.fromisoformat(json.loads((out / "truth" / "meta.json").read_text())[
        "score_date"])
    meds = pd.read_csv(out / "gp_medications.csv", dtype=str)
    prescribed = set(meds.loc[meds["issue_date"] < at.isoformat(), "nhs_number"].map(normalise))
    deaths = pd.read_csv(out / "deaths.csv", dtype=str)
    died = set(deaths.loc[deaths["date_of_death"] < at.isoformat(), "nhs_number"].map(
        normalise))
    people = sorted(prescribed & set(numbers_in(out / "gp_patients.csv"))
                    - set(numbers_in(out / "optouts.csv")) - died)
    assert all(r.status == "landed" for r in land(haven, out))
    link(haven)
    key = haven.keys.current("pseudonym")
    # Persons with rows that carry no NHS number (linked probabilistically or by council
    # client id): an opt-out covers those rows too.
    links = read_link_map(haven.settings)
    bare = set(links.loc[links["method"] != "nhs_number", "person_id"].dropna())
    linked = sorted(n for n in numbers_in(out / "gp_patients.csv").unique()
                    if nhs_pseudonym(key, n) in bare)[:5]
    people = [n for n in people if n not in linked]
    type1, ndoo, others = people[:10], people[10:20] + linked, people[20:]
    assert len(others) > 100 and len(linked) == 5
    # In force since June 2025: after the reference date, before today. Sent before scoring.
    assert land_as_haven(haven, tmp_path / "o1", "X26",
                         [(n, "type1", "2025-06-01", "N") for n in type1]
                         + [(n, "ndoo", "2025-06-01", "N") for n in ndoo]).status == "landed"
    read: dict[str, set[str]] = {}
    real_score = score_module.score_persons

    def reading(sources, *a, **k):  # every person key of every row the model was given
        read["keys"] = _person_keys_in(sources)
        return real_score(sources, *a, **k)

    monkeypatch.setattr(score_module, "score_persons", reading)
    run_id = score(haven, at).run_id
    approve_candidates(haven.engine)  # a model serves once a clinical safety officer approves

    def keys_of(numbers: list[str]) -> set[str]:
        return set(person_keys_of_ids(haven.settings, [nhs_pseudonym(key, n)
                                                       for n in numbers]).values())

    scored = set(pd.read_parquet(haven.settings.layout.run(run_id).scores)["person_key"])
    objecting, rest = keys_of(type1 + ndoo), keys_of(others)  # (no number in a failure)
    assert not scored & objecting  # their GP registration was not read at all
    national = keys_of(ndoo)
    assert len(read["keys"]) > 100
    assert not read["keys"] & national  # no row of theirs, however it was linked, reached the model
    assert len(scored & rest) > 0.8 * len(others)
    exported = tmp_path / "scores.csv"
    export_scores(haven, exported)
    assert not set(pd.read_csv(exported)["person_key"]) & objecting
    # Two scored persons object later (dated before the run's date): the run must not show
    # them, and its model report leaves them out too.
    late = [n for n in others if keys_of([n]) & scored][:2]
    late_keys = keys_of(late)
    land_as_haven(haven, tmp_path / "o2", "X26", [(n, "type1", "2024-01-01", "N")
                                                  for n in late])
    export_scores(haven, exported)
    assert not set(pd.read_csv(exported)["person_key"]) & late_keys
    seen: dict[str, object] = {}
    real = report_module.evaluate
    monkeypatch.setattr(report_module, "evaluate", lambda run, sources, **options: seen.update(
        run=run, medicated=_person_keys_in(sources, ("gp_medications",)))
        or real(run, sources, **options))
    model_report(haven, run_id, tmp_path / "report")
    assert not set(seen["run"].scores["person_key"]) & late_keys
    assert "did not apply): 2\n" in (tmp_path / "report" / "report.md").read_text()  # counted
    assert len(seen["medicated"]) > 100 and not seen["medicated"] & late_keys


def later_run(world: World, sources: dict[str, str] | None = None,
              record: dict | None = None) -> ServingRun:
    """A run of every world person scored now (newest: it serves), at 2025-04-01; `record`:
    what it says it applied (none: a run scored before runs recorded it)."""
    keys = sorted(world.practice)
    rows = score_rows(keys, [world.practice[k] for k in keys])
    for key, text in (sources or {}).items():
        rows.loc[rows["person_key"] == key, "sources"] = text
    made = world.extra["later_runs"] = world.extra.get("later_runs", 0) + 1
    run_id = write_score_run(world.haven, rows, run_id=f"score-2025-04-01-later{made}",
                             when=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5 + made))
    if record is not None:
        with world.haven.engine.begin() as connection:
            summary = dict(connection.scalar(select(runs.c.summary).where(
                runs.c.run_id == run_id)))
            connection.execute(update(runs).where(runs.c.run_id == run_id).values(
                summary={**summary, "optouts": record}))
    found = serving_run(world.haven.engine, "commissioning")
    assert found is not None and found.run_id == run_id
    return found


def test_release_withholds_optouts_in_force_now_that_the_run_did_not_apply(
        world: World, tmp_path: Path) -> None:
    """Promise: what is released follows the opt-outs in force now: a national or type 1
    opt-out the run did not apply (dated after its reference date, arrived after it, not yet
    in force when scored, or covering more since) withholds the person from every answer of
    the purposes it covers until a run scored after it."""
    own = world.keys_in(OWN_PRACTICE)
    t1, nd = own[:2]
    # In force since June 2025 and landed before the run: the run (dated April) left them in.
    land_as(world, tmp_path / "a", "X26", [(world.nhs[t1], "type1", "2025-06-01", "N"),
                                           (world.nhs[nd], "ndoo", "2025-06-01", "N")])
    run = later_run(world)
    for key in (t1, nd):
        assert world.call("analyst", "GET", f"/persons/{key}").status_code == 404
    listed = {i["person_key"] for i in world.call(
        "mdt_clinician", "GET", f"/practices/{OWN_PRACTICE}/case-finding?limit=500").json()[
        "items"]}
    assert t1 not in listed and nd in listed  # the national opt-out leaves individual care
    unknown = world.call("mdt_clinician", "GET", "/persons/P" + "0" * 20 + "/fhir")
    assert world.call("mdt_clinician", "GET", f"/persons/{t1}/fhir").status_code == \
        unknown.status_code == 403  # as for a person nobody holds
    engine, settings = world.haven.engine, world.haven.settings

    def withheld(run: ServingRun, today: dt.date | None = None) -> set[str]:
        return withheld_person_keys(settings, engine, "commissioning", run, today)

    assert withheld(run) == {t1, nd}
    # A run that recorded applying both (scored now, with that register and table) shows
    # them; one whose register lacked the extract, or scored on the April date, does not.
    applied = optouts_applied(engine)
    assert withheld(later_run(world, record=applied)) == set()
    assert withheld(later_run(world, record={**applied, "register": []})) == {t1, nd}
    assert withheld(later_run(world, record={**applied, "in_force_on": "2025-04-01"})) == {
        t1, nd}
    # The IG lead widens type 1 to hospital data: the run applied less than now covers.
    wider = policy_text("optout_purposes.csv").replace(
        "type1,commissioning,gp_patients;gp_events;gp_medications,all",
        "type1,commissioning,gp_patients;gp_events;gp_medications;apc,all")
    set_policy(engine, "optout_purposes.csv", wider, SYSTEM)
    assert withheld(later_run(world, record=applied)) == {t1}
    # An opt-out dated in the future withholds from the day it is in force.
    future = own[2]
    land_as(world, tmp_path / "b", "X26", [(world.nhs[future], "ndoo", "2099-01-01", "N")])
    run = later_run(world, record=optouts_applied(engine))
    assert withheld(run) == set()
    assert withheld(run, dt.date(2099, 1, 2)) == {future}


def test_an_optout_of_some_sources_withholds_whom_the_run_read_them_for(
        world: World, tmp_path: Path) -> None:
    """Promise: where an opt-out covers only some sources for a purpose, a run that used one
    of them for the person does not show the person at all (probability and reasons rest on
    that data) until re-scored; a run that used none of them still may."""
    carer, other = world.keys_in(OWN_PRACTICE)[:2]
    run = later_run(world, sources={carer: "apc;gp_patients;social_care",
                                    other: "apc;gp_patients"},
                    record=optouts_applied(world.haven.engine))
    land_as(world, tmp_path, COUNCIL, [(world.nhs[k], "consent_withdrawn", "2024-01-01", "N")
                                       for k in (carer, other)])
    for purpose in ("commissioning", "case_finding"):
        assert withheld_person_keys(world.haven.settings, world.haven.engine, purpose,
                                    run) == {carer}
    listed = {i["person_key"] for i in world.call(
        "mdt_clinician", "GET", f"/practices/{OWN_PRACTICE}/case-finding?limit=500").json()[
        "items"]}
    assert carer not in listed and other in listed


# ------------------------------------------------------------------------------------------
# 3. The reverse lookup is a re-identification
# ------------------------------------------------------------------------------------------
def test_reverse_lookup_is_a_reidentification(world: World, tmp_path: Path) -> None:
    """Promise: the reverse lookup (NHS numbers -> person keys and risk) obeys the rules of
    re-identification: a reason from the list, nothing for a person opted out of case finding
    (answered exactly as a number nobody holds), audited as a re-identification."""
    own = world.keys_in(OWN_PRACTICE)
    objector, national, patient = own[:3]
    # A withdrawal of social care consent (it covers case finding) and a national data
    # opt-out (it does not), both applied by a run scored after them: both persons are listed.
    land_as(world, tmp_path, COUNCIL, [(world.nhs[objector], "consent_withdrawn",
                                        "2024-01-01", "N")])
    land_as(world, tmp_path / "n", "X26", [(world.nhs[national], "ndoo", "2024-01-01", "N")])
    later_run(world)
    asked = [world.nhs[objector], world.nhs[national], world.nhs[patient], STRANGERS[0]]

    def lookup(**body):
        return world.call("mdt_clinician", "POST", "/reverse-lookup",
                          json={"nhs_numbers": asked, **body})

    assert lookup().status_code == 422  # no reason
    assert lookup(reason="because I can").status_code == 422  # not from the list
    assert world.call("mdt_clinician", "POST", "/reverse-lookup", purpose="commissioning",
                      json={"nhs_numbers": asked, "reason": "mdt_review"}).status_code == 403
    response = lookup(reason="mdt_review")
    assert response.status_code == 200
    items = response.json()["items"]
    assert [i["found"] for i in items] == [False, True, True, False]
    # The opted-out person's item is the unknown number's, but for the number echoed back.
    assert [{**items[i], "nhs_number": "-"} for i in (0, 3)] == [
        {"nhs_number": "-", "found": False, "person": None}] * 2
    assert reidentify(world, objector).status_code == 403  # the same rule refuses
    with world.haven.engine.connect() as connection:
        entries = connection.execute(select(audit_log).where(
            audit_log.c.action.like("reidentify%")).order_by(audit_log.c.seq)).mappings().all()
    http = [e for e in entries if e["resource"] == "/reverse-lookup"]
    assert [(e["action"], e["outcome"]) for e in http] == [  # every attempt
        ("reidentify.create", o) for o in ("refused", "refused", "denied", "ok")]
    assert http[-1]["n_records"] == 2 and http[-1]["detail"]["reason"] == "mdt_review"
    assert sorted(http[-1]["detail"]["person_keys"]) == sorted([national, patient])
    decided = [e for e in entries if e["action"] == "reidentify"
               and e["detail"].get("via") == "reverse_lookup"]
    assert [(e["outcome"], e["n_records"], e["detail"]["rule"], e["detail"]["opted_out"],
             e["detail"]["reason_category"]) for e in decided] == [
        ("allowed", 2, "ok", 1, "mdt_review")]
    assert not any(n in audit_text(world) for n in asked)


def _person_keys_in(sources, names: tuple[str, ...] | None = None) -> set[str]:
    """The person keys of every row of the sources `names` (default all) in `sources` (frames
    or an on-disk copy: read through the same connection the model reads)."""
    from stratify.features import connect
    from stratify.sources import COLUMNS

    con = connect(sources)
    try:
        return {row[0] for name in names or tuple(COLUMNS) for row in con.execute(
            f"SELECT DISTINCT person_key FROM v_{name}").fetchall()}
    finally:
        con.close()
