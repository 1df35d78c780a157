"""Key rotation without losing a link, recipient pseudonyms, re-identification and lookup."""

from __future__ import annotations

import base64
import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from cli.main import main
from factories import invalid_nhs, nhs_numbers, rows_for, write_extract
from governance import audit, optouts, recipient_pseudonyms, rotation, vault
from governance.audit import Actor
from governance.keyed_hash import nhs_pseudonym
from governance.keys import KeyError_, KeyProvider
from governance.reidentify import Refused, lookup_by_nhs_numbers, reason_category, reidentify
from governance.schema import audit_log
from linkage import person_index
from linkage.landing.land import LandingContext, land_file
from linkage.landing.pseudonymise import pseudonymise_nhs

MDT = Actor("dr.mdt", "mdt_clinician", "B86001", "case_finding")


@pytest.fixture
def file_keys(haven):
    """Rotation needs keys it can write: a key file rather than environment keys."""
    haven._keys = KeyProvider(haven.settings.layout.key_file)
    return haven.keys


@pytest.fixture
def file_landing(haven, file_keys):
    return LandingContext(haven.settings, haven.engine, file_keys, haven.actor)


def landed_ids(haven, extract_id: str) -> list[str | None]:
    return pq.read_table(haven.settings.layout.rows(extract_id)).column(
        "person_id").to_pylist()


def test_single_value_pseudonym_equals_the_bulk_one(local_keys):
    key = local_keys.current("pseudonym")
    number = nhs_numbers(1)[0]
    assert nhs_pseudonym(key, number) == pseudonymise_nhs(pa.array([number]), key)[0].as_py()


def test_rotating_the_pseudonym_key_keeps_every_link(haven, file_landing, file_keys, inbox):
    apc = land_file(file_landing, write_extract(inbox / "a", "apc", rows_for("apc", 6, seed=2)))
    gp = land_file(file_landing, write_extract(inbox / "b", "gp_patients",
                                          rows_for("gp_patients", 6, seed=2)))
    person_index.update(haven.settings, haven.engine, file_keys.current("linkage"))
    before = person_index.read_link_map(haven.settings)
    old_ids = landed_ids(haven, apc.extract_id)
    counts = rotation.rotate_pseudonym_key(
        haven.settings, haven.engine, file_keys, haven.actor,
        [lambda mapping: person_index.rekey(haven.settings, mapping)])
    assert counts["pseudonyms"] == 6 and counts["files"] == 2 and counts["derived_rows"] == 12
    new_ids = landed_ids(haven, apc.extract_id)
    assert set(new_ids).isdisjoint(old_ids) and landed_ids(haven, gp.extract_id) == new_ids
    key = file_keys.current("pseudonym")
    numbers = nhs_numbers(6, seed=2)
    assert new_ids == [nhs_pseudonym(key, n) for n in numbers]
    after = person_index.read_link_map(haven.settings)
    assert (after["person_key"] == before["person_key"]).all()  # same persons, same keys
    assert set(after["person_id"]) == set(new_ids)
    with haven.engine.connect() as connection:
        revealed = vault.reveal(connection, file_keys, new_ids)
    assert sorted(revealed.values()) == sorted(numbers)
    # A new extract after rotation links to the same persons.
    land_file(file_landing, write_extract(inbox / "c", "ae", rows_for("ae", 6, seed=2)))
    person_index.update(haven.settings, haven.engine, file_keys.current("linkage"))
    latest = person_index.read_link_map(haven.settings)
    assert latest.groupby("person_id")["person_key"].nunique().max() == 1
    assert latest["person_key"].nunique() == 6


def test_rotating_the_vault_key_reencrypts(haven, file_landing, file_keys, inbox):
    land_file(file_landing, write_extract(inbox, "deaths", rows_for("deaths", 3)))
    old = file_keys.current("vault").key_id
    assert rotation.rotate_vault_key(haven.engine, file_keys, haven.actor) == 3
    with haven.engine.connect() as connection:
        rows = connection.execute(select(vault.vault.c.vault_key_id)).scalars().all()
        revealed = vault.reveal(connection, file_keys, [r for r in connection.execute(
            select(vault.vault.c.person_id)).scalars()])
    assert set(rows) == {file_keys.current("vault").key_id} != {old}
    assert sorted(revealed.values()) == sorted(nhs_numbers(3))


def test_keys_rotate_command(haven, file_landing, file_keys, inbox, capsys):
    land_file(file_landing, write_extract(inbox, "deaths", rows_for("deaths", 2)))
    env = {"HAVEN_HOME": str(haven.settings.home),
           "HAVEN_DATABASE_URL": haven.settings.database_url}
    assert main(["keys", "rotate", "vault"], env) == 0
    assert main(["keys", "rotate", "pseudonym"], env) == 0
    assert "re-keyed 2 pseudonyms" in capsys.readouterr().out
    assert main(["keys", "rotate", "other"], env) == 2
    assert audit.verify(haven.engine).ok


def test_recipient_pseudonyms_cannot_be_joined_but_map_back(local_keys):
    keys = ["P" + "a" * 20, "P" + "b" * 20]
    made = recipient_pseudonyms.recipient_pseudonyms
    first = made(local_keys, "RECIPIENT-A", "exp-1", keys)
    second = made(local_keys, "recipient-b", "exp-1", keys)
    again = made(local_keys, "RECIPIENT-A", "exp-2", keys)  # same recipient, another export
    assert set(first.values()).isdisjoint(second.values())
    assert set(first.values()).isdisjoint(again.values())
    assert first == made(local_keys, "recipient-a", "exp-1", keys)  # stable for one export
    assert all(v.startswith("R") and len(v) == 21 for v in first.values())
    assert recipient_pseudonyms.resolve(local_keys, "recipient-a", "exp-1", [first[keys[1]]],
                                        keys) == {first[keys[1]]: keys[1]}
    assert recipient_pseudonyms.resolve(local_keys, "recipient-a", "exp-2", [first[keys[1]]],
                                        keys) == {}
    with pytest.raises(ValueError, match="named recipient"):
        recipient_pseudonyms.recipient_pseudonym(local_keys, " ", "exp-1", keys[0])
    with pytest.raises(ValueError, match="export id"):
        recipient_pseudonyms.recipient_pseudonym(local_keys, "RECIPIENT-A", " ", keys[0])


def _landed_gp(haven, landing, inbox, practice: str = "B86001"):
    rows = rows_for("gp_patients", 4, seed=8)
    for row in rows:
        row["gp_practice_code"] = practice
    rows[3]["gp_practice_code"] = "C81002"
    receipt = land_file(landing, write_extract(inbox, "gp_patients", rows))
    ids = landed_ids(haven, receipt.extract_id)
    practices = dict(zip(ids, [r["gp_practice_code"] for r in rows], strict=True))
    return ids, practices


def test_reidentification_for_own_practice_with_a_reason(haven, landing, inbox):
    ids, practices = _landed_gp(haven, landing, inbox)
    found = reidentify(haven.engine, haven.keys, MDT, ids[:2], "MDT review of frail patients",
                       practices.get)
    assert sorted(found.values()) == sorted(nhs_numbers(4, seed=8)[:2])


@pytest.mark.parametrize("case, rule", [
    ("other_practice", "practice"), ("no_reason", "reason"), ("wrong_purpose", "purpose"),
    ("opted_out", "opt_out"), ("nobody", "empty")])
def test_reidentification_is_refused_and_audited(haven, landing, inbox, case, rule):
    ids, practices = _landed_gp(haven, landing, inbox)
    requester, chosen, reason = MDT, ids[:2], "MDT review of frail patients"
    if case == "other_practice":
        chosen = ids[2:]
    elif case == "no_reason":
        reason = " "
    elif case == "wrong_purpose":
        requester = Actor("dr.mdt", "mdt_clinician", "B86001", "commissioning")
    elif case == "opted_out":
        number = nhs_numbers(4, seed=8)[0]
        land_file(landing, write_extract(inbox / "o", "optouts", [
            {"nhs_number": number, "optout_type": "type1", "effective_date": "2020-01-01",
             "withdrawn": "N"}], sender="X26"))
    elif case == "nobody":
        chosen = []
    with pytest.raises(Refused) as refused:
        reidentify(haven.engine, haven.keys, requester, chosen, reason, practices.get,
                   at=dt.date(2026, 1, 1))
    assert refused.value.rule == rule
    with haven.engine.connect() as connection:
        entry = connection.execute(select(audit_log).where(audit_log.c.action == "reidentify")
                                   ).mappings().one()
    assert entry["outcome"] == "refused" and entry["detail"]["rule"] == rule
    assert not any(n in repr(dict(entry)) for n in nhs_numbers(4, seed=8))


def test_the_log_keeps_the_reason_category_never_its_text(haven, landing, inbox):
    ids, practices = _landed_gp(haven, landing, inbox)
    number = nhs_numbers(4, seed=8)[0]
    reidentify(haven.engine, haven.keys, MDT, ids[:1], f"MDT: Ann Smith {number} seen today",
               practices.get)
    with haven.engine.connect() as connection:
        detail = connection.execute(select(audit_log.c.detail).where(
            audit_log.c.action == "reidentify")).scalar_one()
    assert detail == {"rule": "ok", "reason_category": "mdt_review", "reason_chars": 36}
    assert "Smith" not in repr(detail) and number not in repr(detail)


def test_reverse_lookup_gives_pseudonyms_of_valid_numbers_only(haven, landing, inbox):
    ids, _ = _landed_gp(haven, landing, inbox)
    numbers = nhs_numbers(4, seed=8)
    spaced = f"{numbers[1][:3]} {numbers[1][3:6]} {numbers[1][6:]}"
    found = lookup_by_nhs_numbers(haven.keys, [numbers[0], spaced, invalid_nhs(numbers[2]), ""])
    assert found == {0: ids[0], 1: ids[1], 2: None, 3: None}


def test_an_interrupted_rotation_is_finished_not_repeated(haven, file_landing, file_keys, inbox):
    apc = land_file(file_landing, write_extract(inbox / "a", "apc", rows_for("apc", 5, seed=4)))
    land_file(file_landing, write_extract(inbox / "o", "optouts", [
        {"nhs_number": nhs_numbers(5, seed=4)[0], "optout_type": "ndoo",
         "effective_date": "2020-01-01", "withdrawn": "N"}], sender="X26"))
    person_index.update(haven.settings, haven.engine, file_keys.current("linkage"))
    before = person_index.read_link_map(haven.settings)

    def broken(_mapping: dict[str, str]) -> int:
        raise RuntimeError("the index is unavailable")

    with pytest.raises(RuntimeError):
        rotation.rotate_pseudonym_key(haven.settings, haven.engine, file_keys, haven.actor,
                                      [broken])
    second = file_keys.current("pseudonym")
    with haven.engine.connect() as connection:
        held = connection.execute(select(vault.vault.c.key_id)).scalars().all()
    assert set(held) != {second.key_id}  # the vault still holds the old pseudonyms
    counts = rotation.rotate_pseudonym_key(
        haven.settings, haven.engine, file_keys, haven.actor,
        [lambda mapping: person_index.rekey(haven.settings, mapping)])
    assert file_keys.current("pseudonym") == second and len(file_keys.ring("pseudonym").keys) == 2
    assert counts["files"] == 0 and counts["pseudonyms"] == 5  # files were already done
    numbers = nhs_numbers(5, seed=4)
    assert landed_ids(haven, apc.extract_id) == [nhs_pseudonym(second, n) for n in numbers]
    after = person_index.read_link_map(haven.settings)
    assert set(after["person_id"]) == set(landed_ids(haven, apc.extract_id))
    assert (after["person_key"] == before["person_key"]).all()
    # The opt-out follows its person to the new pseudonym.
    excluded = optouts.excluded(haven.engine, landed_ids(haven, apc.extract_id),
                                "commissioning", "apc", "RR8", dt.date(2024, 1, 1))
    assert excluded.tolist() == [True, False, False, False, False]
    assert audit.verify(haven.engine).ok


def test_a_pseudonym_without_a_vault_entry_keeps_its_old_key_id(haven, file_landing, file_keys,
                                                                inbox):
    deaths = land_file(file_landing, write_extract(inbox, "deaths", rows_for("deaths", 3)))
    old_ids = landed_ids(haven, deaths.extract_id)
    with haven.engine.begin() as connection:
        vault.forget(connection, old_ids[:1])
    counts = rotation.rotate_pseudonym_key(haven.settings, haven.engine, file_keys, haven.actor)
    assert counts["unmapped_rows"] == 1
    table = pq.read_table(haven.settings.layout.rows(deaths.extract_id))
    key_ids = table.column("key_id").to_pylist()
    assert table.column("person_id").to_pylist()[0] == old_ids[0]
    assert key_ids[0] != key_ids[1] == key_ids[2] == file_keys.current("pseudonym").key_id


def test_environment_keys_are_rotated_where_they_are_kept(haven, landing, inbox, capsys):
    land_file(landing, write_extract(inbox, "deaths", rows_for("deaths", 2)))
    with pytest.raises(KeyError_, match="environment"):
        rotation.rotate_pseudonym_key(haven.settings, haven.engine, haven.keys, haven.actor)
    env = {"HAVEN_HOME": str(haven.settings.home),
           "HAVEN_DATABASE_URL": haven.settings.database_url, **haven.settings.key_env}
    assert main(["keys", "rotate", "vault"], env) == 1
    assert "not rotated" in capsys.readouterr().out
    # The operator puts a new pseudonymisation key (a new id) in the environment: re-keyed.
    changed = {**haven.settings.key_env,
               "HAVEN_KEY_PSEUDONYM": "pt2:" + base64.b64encode(b"k" * 32).decode()}
    keys = KeyProvider(haven.settings.layout.key_file, changed)
    counts = rotation.rotate_pseudonym_key(haven.settings, haven.engine, keys, haven.actor)
    assert counts["pseudonyms"] == 2 and counts["files"] == 1
    with haven.engine.connect() as connection:
        revealed = vault.reveal(connection, keys, [nhs_pseudonym(keys.current("pseudonym"), n)
                                                   for n in nhs_numbers(2)])
    assert sorted(revealed.values()) == sorted(nhs_numbers(2))


def test_an_interrupted_vault_rotation_is_finished_not_repeated(haven, file_landing, file_keys,
                                                               inbox):
    land_file(file_landing, write_extract(inbox, "deaths", rows_for("deaths", 2)))
    file_keys.rotate("vault")  # as if the process stopped before re-encrypting
    assert rotation.rotate_vault_key(haven.engine, file_keys, haven.actor) == 2
    assert len(file_keys.ring("vault").keys) == 2


def test_releases_made_before_a_release_key_rotation_still_resolve(local_keys):
    person_keys = ["P" + "c" * 20, "P" + "d" * 20]
    before = recipient_pseudonyms.recipient_pseudonym(local_keys, "RX1", "exp-1",
                                                      person_keys[0])
    local_keys.rotate("release")
    after = recipient_pseudonyms.recipient_pseudonym(local_keys, "rx1", "exp-1", person_keys[0])
    assert before != after
    resolved = recipient_pseudonyms.resolve_recipient_pseudonym(
        local_keys, "RX1", "exp-1", [before, after, "Rnone"], person_keys)
    assert resolved == {before: person_keys[0], after: person_keys[0]}


@pytest.mark.parametrize("reason, category", [
    ("Discussed at the practice MDT huddle", "mdt_review"),
    ("safeguarding concern raised", "safeguarding"),
    ("structured medication review", "medication_review"),
    ("anticipatory care planning", "care_planning"),
    ("invite for a visit", "contact"),
    ("frailty case finding review", "case_review"),
    ("because", "other"),
    ("   ", "none"),
])
def test_reason_categories(reason, category):
    assert reason_category(reason) == category
