"""Between person keys (what the API serves) and pseudonyms (what governance re-identifies).

`governance.reidentify` works on pseudonyms (`person_id`, HMAC of the NHS number); the release
names persons by person key. The person index (`link_map.parquet`) maps one to the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from governance.settings import Settings


def _link_rows(settings: Settings, column: str, values: Sequence[str]) -> list[dict]:
    path = settings.index_dir / "link_map.parquet"
    if not path.exists() or not values:
        return []
    table = pq.read_table(path, columns=["person_id", "person_key"],
                          filters=pc.field(column).isin(pa.array(list(values), pa.string())))
    return table.filter(pc.is_valid(table.column("person_id"))).to_pylist()


def person_ids_of(settings: Settings, person_keys: Sequence[str]) -> dict[str, list[str]]:
    """Pseudonyms behind each person key (sorted; usually one)."""
    out: dict[str, set[str]] = {}
    for row in _link_rows(settings, "person_key", person_keys):
        out.setdefault(row["person_key"], set()).add(row["person_id"])
    return {key: sorted(ids) for key, ids in out.items()}


def person_keys_of_ids(settings: Settings, person_ids: Sequence[str]) -> dict[str, str]:
    """Person key of each pseudonym the person index holds."""
    return {row["person_id"]: row["person_key"]
            for row in _link_rows(settings, "person_id", person_ids)}
