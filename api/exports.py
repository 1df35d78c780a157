"""Exports of the current run for a named recipient, in that recipient's own pseudonyms.

Each row's person key is replaced by the recipient's own pseudonym
(`governance.recipient_pseudonyms.recipient_pseudonym`: HMAC under the release key in the
recipient's domain), so two recipients' files cannot be joined on the person and neither holds
Haven's person key. CSV text cells that a spreadsheet would run as a formula (starting with
`=`, `+`, `-`, `@`, tab or carriage return) are prefixed with `'`. An export is a folder
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

from governance.keys import KeyProvider
from governance.recipient_pseudonyms import recipient_pseudonyms
from governance.settings import Settings

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
EXPORT_ID = re.compile(r"^exp-\d{14}-[0-9a-f]{8}$")
COLUMNS = ("recipient_key", "probability", "tier", "previous_tier", "change", "practice",
           "age_band", "sex", "conditions", "reasons", "sources")


def neutralise(value: Any) -> Any:
    """A text cell that cannot start a spreadsheet formula."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write(settings: Settings, keys: KeyProvider, people: list[dict[str, Any]], *,
          recipient: str, fmt: str, run_id: str, org: str, user: str) -> dict[str, Any]:
    """Write the export and its description; returns the description."""
    export_id = f"exp-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(4)}"
    folder = settings.layout.export(export_id)
    folder.mkdir(parents=True)
    pseudonyms = recipient_pseudonyms(keys, recipient, [p["person_key"] for p in people])
    rows = [{"recipient_key": pseudonyms[p["person_key"]], **{c: p.get(c) for c in COLUMNS[1:]}}
            for p in people]
    for row in rows:
        for name in ("conditions", "sources"):
            row[name] = ";".join(row[name] or [])
        row["reasons"] = "; ".join(row["reasons"] or [])
    path = settings.layout.export_file(export_id, fmt)
    if fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: neutralise(v) for k, v in row.items()})
    else:
        schema = pa.schema([("recipient_key", pa.string()), ("probability", pa.float64()),
                            ("tier", pa.string()), ("previous_tier", pa.string()),
                            ("change", pa.float64()), ("practice", pa.string()),
                            ("age_band", pa.string()), ("sex", pa.string()),
                            ("conditions", pa.string()), ("reasons", pa.string()),
                            ("sources", pa.string())])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="zstd")
    description = {
        "export_id": export_id, "recipient": recipient, "format": fmt, "rows": len(rows),
        "run_id": run_id, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "org": org,
        "created_by": user,
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
