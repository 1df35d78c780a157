"""Between person keys (what releases name) and pseudonyms (what governance re-identifies).

`governance.reidentify` works on pseudonyms (`person_id`, HMAC of the NHS number); releases
name persons by person key. The person index maps one to the other.
"""

from __future__ import annotations

from collections.abc import Sequence

from governance.settings import Settings
from linkage.person_index import link_rows


def person_ids_of(settings: Settings, person_keys: Sequence[str]) -> dict[str, list[str]]:
    """Pseudonyms behind each person key (sorted; usually one)."""
    out: dict[str, set[str]] = {}
    for row in link_rows(settings, "person_key", person_keys):
        out.setdefault(row["person_key"], set()).add(row["person_id"])
    return {key: sorted(ids) for key, ids in out.items()}


def person_keys_of_ids(settings: Settings, person_ids: Sequence[str]) -> dict[str, str]:
    """Person key of each pseudonym the person index holds."""
    return {row["person_id"]: row["person_key"]
            for row in link_rows(settings, "person_id", person_ids)}
