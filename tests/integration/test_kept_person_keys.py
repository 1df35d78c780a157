"""Each pseudonym keeps the person key the map gave it (`person_index.KeptKeys`, looked up
through a `PseudonymTable`), whatever the batches the map is read in and when the linkage
key has changed since: an attack on the kept keys with a person's rows spread over many
batches, a new extract of the same persons and a key of the test's own making."""

from __future__ import annotations

import os

from factories import nhs_numbers, rows_for, write_extract
from governance.keys import Key
from linkage import person_index
from linkage.landing.land import land_file


def test_person_keys_survive_small_batches_and_a_new_linkage_key(haven, landing, inbox):
    numbers = nhs_numbers(12, seed=8)
    apc, gp = rows_for("apc", 12, seed=8), rows_for("gp_patients", 12, seed=8)
    for i in range(12):
        apc[i]["nhs_number"] = numbers[i] if i != 4 else ""  # one row with no person
        gp[i]["nhs_number"] = numbers[(i * 5) % 12]  # the persons in another order
    land_file(landing, write_extract(inbox / "a", "apc", apc))
    land_file(landing, write_extract(inbox / "b", "gp_patients", gp))
    person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"),
                        batch_rows=3)
    first = person_index.read_link_map(haven.settings)
    given = first.dropna(subset=["person_id"]).groupby("person_id")["person_key"]
    assert given.nunique().max() == 1 and len(given) == 12
    keys = given.first()
    ae = rows_for("ae", 12, seed=8)
    for i in range(12):
        ae[i]["nhs_number"] = numbers[11 - i]
    land_file(landing, write_extract(inbox / "c", "ae", ae))
    other = Key("test-linkage-2", os.urandom(32))  # a linkage key the first run never saw
    person_index.update(haven.settings, haven.engine, other, batch_rows=4)
    second = person_index.read_link_map(haven.settings)
    linked = second.dropna(subset=["person_id"])
    assert len(linked) == 35 and set(linked["source"]) == {"apc", "gp_patients", "ae"}
    # every row of a person, old or new, carries the key the first run gave that person
    assert (linked["person_key"].to_numpy() == keys[linked["person_id"]].to_numpy()).all()
