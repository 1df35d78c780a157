"""Re-identification and reverse lookup, as the API calls them.

`governance/reidentify.py` (`reidentify`, `lookup_by_nhs_numbers`) is where this belongs; until
that module is installed the API uses the small local versions below, which read the person
index and the vault the same way: person key -> pseudonyms (`link_map.parquet`) -> NHS numbers
(`governance.vault.reveal`), and NHS number -> pseudonym under every pseudonymisation key in
the ring -> person key. The caller must already have been authorised for each person.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

import nhs_number
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Engine

from api.release import active_optout_person_ids
from governance import vault
from governance.keys import KeyProvider
from governance.settings import Settings
from linkage.pseudonymise import pseudonymise_nhs

ALL_OPTOUTS = ("ndoo", "type1", "consent_withdrawn")
_SEPARATORS = re.compile(r"[ -]")


def normalise(number: str) -> str | None:
    """10 digits when the text is a valid NHS number (modulus 11), else None."""
    digits = _SEPARATORS.sub("", number.strip())
    if len(digits) != 10 or not digits.isdigit() or not nhs_number.is_valid(digits):
        return None
    return digits


def _link_rows(settings: Settings, column: str, values: Sequence[str]) -> pa.Table:
    path = settings.index_dir / "link_map.parquet"
    if not path.exists() or not values:
        return pa.table({"person_id": pa.array([], pa.string()),
                         "person_key": pa.array([], pa.string())})
    table = pq.read_table(path, columns=["person_id", "person_key"],
                          filters=pc.field(column).isin(list(values)))
    return table.filter(pc.is_valid(table.column("person_id")))


def person_ids_of(settings: Settings, person_keys: Sequence[str]) -> dict[str, set[str]]:
    """Pseudonyms (`person_id`) behind each person key."""
    out: dict[str, set[str]] = {}
    for row in _link_rows(settings, "person_key", person_keys).to_pylist():
        out.setdefault(row["person_key"], set()).add(row["person_id"])
    return out


def opted_out(engine: Engine, settings: Settings, person_keys: Sequence[str],
              today: dt.date | None = None) -> set[str]:
    """Person keys with an opt-out of any kind in force."""
    active = active_optout_person_ids(engine, today, ALL_OPTOUTS)
    return {key for key, ids in person_ids_of(settings, person_keys).items() if ids & active}


def _local_reidentify(settings: Settings, engine: Engine, keys: KeyProvider,
                      person_keys: Sequence[str]) -> dict[str, str]:
    ids = person_ids_of(settings, person_keys)
    with engine.connect() as connection:
        revealed = vault.reveal(connection, keys, sorted({i for s in ids.values() for i in s}))
    out = {}
    for key in person_keys:
        numbers = sorted({revealed[i] for i in ids.get(key, ()) if i in revealed})
        if numbers:
            out[key] = numbers[0]
    return out


def _local_lookup(settings: Settings, keys: KeyProvider,
                  numbers: Sequence[str]) -> dict[str, str]:
    ring = keys.ring("pseudonym")
    by_id: dict[str, str] = {}
    values = pa.array(list(numbers), pa.string())
    for key_id in ring.keys:
        hashed = pseudonymise_nhs(values, ring.get(key_id)).to_pylist()
        by_id.update(zip(hashed, numbers, strict=True))
    out = {}
    for row in _link_rows(settings, "person_id", list(by_id)).to_pylist():
        out.setdefault(by_id[row["person_id"]], row["person_key"])
    return out


def reidentify(settings: Settings, engine: Engine, keys: KeyProvider,
               person_keys: Sequence[str]) -> dict[str, str]:
    """NHS number of each person key (persons with none in the vault are left out)."""
    return _local_reidentify(settings, engine, keys, person_keys)


def lookup_by_nhs_numbers(settings: Settings, keys: KeyProvider,
                          numbers: Sequence[str]) -> dict[str, str]:
    """Person key of each valid, normalised NHS number the person index holds."""
    return _local_lookup(settings, keys, numbers)
