"""One person's linked activity by month, across sources: counts only, never free text.

The person index gives the landed rows linked to a person key; each source's event date is
counted by month. Only the sources the caller may see are read (the caller's Casbin decision,
passed in), and rows the purpose may not use (opt-outs in force today, `governance.optouts`)
are left out, as every release leaves them out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from governance import optouts
from linkage import map_store
from linkage.person_index import landed_extracts
from pipeline.context import Context

# The date each source's row happened on (docs/landed-schema.md).
EVENT_DATE = {"apc": "admission_date", "ae": "arrival_datetime", "op": "appointment_date",
              "gp_events": "event_date", "gp_medications": "issue_date",
              "community": "contact_date", "social_care": "start_date"}
MONTHS = 24


def _month(day: dt.date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def _months_back(last: dt.date, count: int) -> list[str]:
    months = []
    year, month = last.year, last.month
    for _ in range(count):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return months[::-1]


def activity_by_month(ctx: Context, person_key: str, sources: Iterable[str], purpose: str,
                      until: dt.date | None = None, months: int = MONTHS
                      ) -> dict[str, object]:
    """Counts by month and source of the person's linked rows in `sources`, over the `months`
    months ending with the later of `until` and their latest activity.

    Returns `{"months": [...], "sources": [...], "counts": {source: [n per month]},
    "total": n}`; sources without activity are left out."""
    settings, engine = ctx.settings, ctx.engine
    wanted = [s for s in EVENT_DATE if s in set(sources)]
    empty: dict[str, object] = {"months": [], "sources": [], "counts": {}, "total": 0}
    if not wanted or not map_store.exists(settings):
        return empty
    linked = map_store.read_table(settings, ["extract_id", "source", "row"],
                                  (pc.field("person_key") == person_key)
                                  & pc.field("source").isin(pa.array(wanted, pa.string())))
    if linked.num_rows == 0:
        return empty
    landed = landed_extracts(engine).set_index("extract_id")["sender"].to_dict()
    keep = optouts.purpose_filter(engine, purpose, dt.datetime.now(dt.UTC).date())
    found: dict[str, list[dt.date]] = {}
    for (extract_id, source), group in linked.to_pandas().groupby(["extract_id", "source"]):
        if extract_id not in landed:
            continue
        column = EVENT_DATE[str(source)]
        table = pq.read_table(settings.layout.rows(str(extract_id)),
                              columns=["row", "person_id", column],
                              filters=pc.field("row").isin(pa.array(group["row"].tolist(),
                                                                    pa.int64())))
        frame = table.to_pandas()
        frame["sender"] = landed[extract_id]
        frame = frame[keep(frame, str(source)).to_numpy()] if len(frame) else frame
        days = pd.to_datetime(frame[column], errors="coerce").dropna()
        found.setdefault(str(source), []).extend(d.date() for d in days)
    if not any(found.values()):
        return empty
    latest = max(max(days) for days in found.values() if days)
    last = max(latest, until) if until else latest
    window = _months_back(last, months)
    position = {m: i for i, m in enumerate(window)}
    counts: dict[str, list[int]] = {}
    for source in wanted:
        series = [0] * len(window)
        for day in found.get(source, []):
            at = position.get(_month(day))
            if at is not None:
                series[at] += 1
        if any(series):
            counts[source] = series
    return {"months": window, "sources": list(counts), "counts": counts,
            "total": sum(sum(v) for v in counts.values())}
