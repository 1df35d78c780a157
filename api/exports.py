"""Exports of the current run for a named recipient: pseudonymised, k-anonymous records.

Each row's person key is replaced by a pseudonym of that export alone
(`governance.recipient_pseudonyms.recipient_pseudonym`: HMAC under the release key in the
domain of the recipient and the export id), so no recipient holds Haven's person key and no
two exports, of one recipient or two, can be joined on the key (k-anonymity holds per file, so
a recipient joining its own exports per practice and per tier would otherwise break it). That
alone does not stop two files being joined: the other columns single a person out. So a file carries
only the columns the purpose needs (`policies/release.json`: tier, probability band, practice,
age band, sex and number of long-term conditions for commissioning; never reasons, sources,
exact probabilities or change), and `governance.release_rule.k_anonymise` coarsens them row by
row (probability band, then conditions, age band, practice to PCN, ... to `*`) until every
combination is shared by at least k persons of the file; rows that stay in smaller groups are
left out. CSV text cells that a spreadsheet would run as a formula (starting with `=`, `+`,
`-`, `@`, tab or carriage return) are prefixed with `'`. An export is a folder
`exports/<export_id>/` whose `export.json` names its run, so destroying the run (retention,
`governance.retention.void_runs`) destroys the export too.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from governance.geography import Geography
from governance.keys import KeyProvider
from governance.recipient_pseudonyms import recipient_pseudonyms
from governance.release_rule import ReleaseRule, k_anonymise
from governance.settings import Settings

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
EXPORT_ID = re.compile(r"^exp-\d{14}-[0-9a-f]{8}$")
HIDDEN = "*"
BROAD_AGE = {"0-17": "0-44", "18-44": "0-44", "45-64": "45-74", "65-74": "45-74",
             "75-84": "75+", "85+": "75+"}
# The order in which columns are coarsened for rows in groups smaller than k: (column, level).
STEPS = (("probability_band", 1), ("conditions_count", 1), ("age_band", 1), ("practice", 1),
         ("conditions_count", 2), ("practice", 2), ("age_band", 2), ("sex", 1),
         ("practice", 3))


def neutralise(value: Any) -> Any:
    """A text cell that cannot start a spreadsheet formula."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _conditions(listed: list[str] | None) -> list[str]:
    """Number of long-term conditions, then none or some, then hidden (None: not visible)."""
    if listed is None:
        return [HIDDEN] * 3
    n = len(listed)
    return [str(n) if n < 3 else "3+", "0" if n == 0 else "1+", HIDDEN]


# How many levels each column has (level 0 the value itself, the last `*`).
LEVELS = {"tier": 1, "probability_band": 2, "practice": 4, "age_band": 3, "sex": 2,
          "conditions_count": 3}


def _levels(name: str, person: dict[str, Any], rule: ReleaseRule, geography: Geography
            ) -> list[str]:
    """One person's value of a releasable column at each level, finest first."""
    if name == "tier":
        return [person.get("tier") or "unknown"]
    if name == "probability_band":
        return [rule.band(person.get("probability")), HIDDEN]
    if name == "practice":
        practice = person.get("practice") or "unknown"
        return [practice, f"PCN {geography.unit('pcn', practice)}",
                f"locality {geography.unit('locality', practice)}", HIDDEN]
    if name == "age_band":
        age = person.get("age_band") or "unknown"
        return [age, BROAD_AGE.get(age, age), HIDDEN]
    if name == "sex":
        return [person.get("sex") or "unknown", HIDDEN]
    return _conditions(person.get("conditions"))  # conditions_count


def ladders(people: list[dict[str, Any]], columns: tuple[str, ...], rule: ReleaseRule,
            geography: Geography) -> dict[str, list[list[str]]]:
    """Each column's values for every person, one list per level, finest first."""
    made = {}
    for name in columns:
        per_person = [_levels(name, person, rule, geography) for person in people]
        made[name] = [[levels[at] for levels in per_person] for at in range(LEVELS[name])]
    return made


def write(settings: Settings, keys: KeyProvider, people: list[dict[str, Any]], *,
          recipient: str, fmt: str, run_id: str, org: str, user: str, purpose: str,
          rule: ReleaseRule, geography: Geography) -> dict[str, Any]:
    """Write the export and its description; returns the description. `people` are persons
    as `api.present.person` shows them (`conditions` None where the caller may not see them)."""
    export_id = f"exp-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(4)}"
    folder = settings.layout.export(export_id)
    folder.mkdir(parents=True)
    columns = rule.columns_for(purpose)
    released, keep = k_anonymise(ladders(people, columns, rule, geography),
                                 [step for step in STEPS if step[0] in columns], rule.k)
    kept = [i for i, wanted in enumerate(keep) if wanted]
    pseudonyms = recipient_pseudonyms(keys, recipient, export_id,
                                      [people[i]["person_key"] for i in kept])
    rows = [{"recipient_key": pseudonyms[people[i]["person_key"]],
             **{name: released[name][i] for name in columns}} for i in kept]
    fields = ["recipient_key", *columns]
    path = settings.layout.export_file(export_id, fmt)
    if fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: neutralise(v) for k, v in row.items()})
    else:
        schema = pa.schema([(name, pa.string()) for name in fields])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="zstd")
    description = {
        "export_id": export_id, "recipient": recipient, "format": fmt, "rows": len(rows),
        "run_id": run_id, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "org": org,
        "created_by": user, "columns": fields, "k": rule.k,
    }
    settings.layout.export_description(export_id).write_text(json.dumps(description),
                                                             encoding="utf-8")
    return description


def describe(settings: Settings, export_id: str) -> tuple[dict[str, Any], Path] | None:
    """An export's description and file, or None."""
    if not EXPORT_ID.match(export_id):
        return None
    try:
        description = json.loads(settings.layout.export_description(export_id)
                                 .read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    path = settings.layout.export_file(export_id, description["format"])
    return (description, path) if path.exists() else None
