"""Consecutive monthly deliveries cut from one `haven synth` population, for `haven refresh`.

`haven synth` writes each source's whole history (2022-04-01 to 2026-03-31) in one extract.
`month_extracts(src, out, start, end)` writes, per extract, the rows dated in `[start, end)`
(`start` None: everything before `end`) with a manifest for that period: the first delivery
is everything before the first reference date, each later one a month's new rows, as a sender
would send them. Rows are dated by each source's event date (below); an extract with no row in
the period is not written (nothing arrived).

Also a command, for figures at scale: `python -m tests.months SRC OUT START END`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
from pathlib import Path

import pandas as pd

DATE_COLUMN = {"apc": "admission_date", "ae": "arrival_datetime", "op": "appointment_date",
               "gp_events": "event_date", "gp_medications": "issue_date",
               "community": "contact_date", "social_care": "start_date",
               "gp_patients": "registration_date", "deaths": "date_of_death",
               "optouts": "effective_date"}


def month_extracts(src: Path, out: Path, start: dt.date | None, end: dt.date) -> list[str]:
    """Write the rows of every extract in `src` dated in `[start, end)` to `out` with their
    manifests; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for manifest_path in sorted(src.glob("*.manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        name = manifest_path.name.removesuffix(".manifest.json")
        frame = pd.read_csv(src / name, dtype=str, keep_default_na=False)
        day = frame[DATE_COLUMN[manifest["source"]]].str[:10]
        keep = day < end.isoformat()
        if start is not None:
            keep &= day >= start.isoformat()
        part = frame[keep]
        if part.empty:
            continue
        data = part.to_csv(index=False, lineterminator="\n").encode("utf-8")
        (out / name).write_bytes(data)
        period_start = start or dt.date.fromisoformat(manifest["period_start"])
        (out / manifest_path.name).write_text(json.dumps({
            **manifest, "period_start": period_start.isoformat(),
            "period_end": (end - dt.timedelta(days=1)).isoformat(),
            "sha256": hashlib.sha256(data).hexdigest(), "rows": int(len(part))}, indent=2))
        written.append(name)
    return written


if __name__ == "__main__":  # pragma: no cover - a command for figures at scale
    source, target, first, last = sys.argv[1:5]
    files = month_extracts(Path(source), Path(target),
                           None if first == "-" else dt.date.fromisoformat(first),
                           dt.date.fromisoformat(last))
    print(f"wrote {len(files)} extracts to {target}")
