"""Read the policy tables shipped in `policies/` (CSV with `#` comment lines), with any override
an IG lead has stored in the database taking precedence."""

from __future__ import annotations

import csv
import io
from datetime import date

from sqlalchemy import Engine, select

from governance.schema import policy_overrides
from policies import POLICIES_DIR


def policy_text(name: str, engine: Engine | None = None) -> str:
    """The text of a policy table: the stored override if any, else the shipped default."""
    if engine is not None:
        with engine.connect() as connection:
            content = connection.scalar(
                select(policy_overrides.c.content).where(policy_overrides.c.name == name))
        if content is not None:
            return content
    return (POLICIES_DIR / name).read_text(encoding="utf-8")


def read_table(name: str, engine: Engine | None = None) -> list[dict[str, str]]:
    """Rows of a CSV policy table, comment lines (starting with #) skipped."""
    text = policy_text(name, engine)
    lines = [line for line in io.StringIO(text) if not line.lstrip().startswith("#")]
    return [{k.strip(): (v or "").strip() for k, v in row.items()}
            for row in csv.DictReader(lines)]


def add_months(day: date, months: int) -> date:
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    for last in (31, 30, 29, 28):
        try:
            return date(year, month, min(day.day, last))
        except ValueError:
            continue
    raise ValueError("unreachable")  # pragma: no cover - February always has 28 days


def retention_date(source: str, period_end: date, engine: Engine | None = None) -> date:
    """The destroy-after date of an extract of `source` covering up to `period_end`."""
    table = {row["source"]: row for row in read_table("retention.csv", engine)}
    if source not in table:
        raise ValueError(f"retention table has no row for source {source!r}")
    return add_months(period_end, int(table[source]["retain_months"]))
