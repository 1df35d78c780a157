"""Read the policy tables shipped in `policies/` (CSV with `#` comment lines), with any override
an IG lead has stored in the database taking precedence; `set_policy` stores such an override,
checked and audited."""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import re
from datetime import UTC, date, datetime

from sqlalchemy import Engine, delete, insert, select

from governance import audit
from governance.audit import Actor
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


# Tables an IG lead may change here. The access rules (casbin_*) change through the API's
# own audited endpoints, and are left out.
NOT_TABLES = frozenset({"casbin_model.conf", "casbin_policy.csv"})
# Each table's own check, beyond the common ones (`module:function`, imported when needed so
# this module stays at the bottom of governance).
VALIDATORS = {
    "drift.json": "governance.drift_policy:validate_drift",
    "geography.csv": "governance.geography:validate_geography",
    "incidents.json": "governance.incidents:validate_limits",
    "optout_purposes.csv": "governance.optouts:validate_purposes",
    "optout_senders.csv": "governance.optouts:validate_senders",
    "release.json": "governance.release_rule:validate_release",
    "retention.csv": "governance.retention:validate_retention",
    "suppression.json": "governance.suppression:validate_rule",
    # The analyses' tables are checked by the stage that reads them (issue #14).
    "segments.csv": "stratify.segments:validate_segments",
    "unit_costs.csv": "stratify.costs:validate_unit_costs",
}
_TEN_DIGITS = re.compile(r"\d{10}")


def json_object(content: str, name: str) -> dict:
    """`content` (a JSON policy table) as an object; ValueError naming the table otherwise."""
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise ValueError(f"{name}: not valid JSON") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{name}: expected a JSON object")
    return data


def policy_names() -> list[str]:
    """The policy tables shipped in `policies/` that an IG lead may change."""
    return sorted(p.name for p in POLICIES_DIR.iterdir()
                  if p.suffix in (".csv", ".json") and p.name not in NOT_TABLES)


def _header(text: str) -> list[str]:
    lines = [line for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return [c.strip() for c in next(csv.reader(lines[:1]), [])]


def validate_policy(name: str, content: str, engine: Engine | None = None) -> None:
    """Raise ValueError unless `content` may replace the policy table `name`: same CSV header
    as the shipped table (or valid JSON), no 10-digit number, and the table's own check."""
    if name not in policy_names():
        raise ValueError(f"no policy table {name!r}")
    if _TEN_DIGITS.search(content.replace(" ", "")):
        raise ValueError(f"{name}: a policy table may not hold a 10-digit number")
    if name.endswith(".csv"):
        shipped = _header((POLICIES_DIR / name).read_text(encoding="utf-8"))
        if _header(content) != shipped:
            raise ValueError(f"{name}: the header must be {','.join(shipped)}")
    else:
        try:
            json.loads(content)
        except ValueError as exc:
            raise ValueError(f"{name}: not valid JSON") from exc
    if name in VALIDATORS:
        module, function = VALIDATORS[name].split(":")
        getattr(importlib.import_module(module), function)(content, engine)


def set_policy(engine: Engine, name: str, content: str, actor: Actor) -> dict[str, str]:
    """Store an IG lead's version of a policy table (it takes precedence over the shipped one),
    checked first and audited in the same transaction with digests of old and new content."""
    validate_policy(name, content, engine)
    old = policy_text(name, engine)
    digests = {"before": hashlib.sha256(old.encode()).hexdigest(),
               "after": hashlib.sha256(content.encode()).hexdigest()}
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(delete(policy_overrides).where(policy_overrides.c.name == name))
        connection.execute(insert(policy_overrides).values(
            name=name, content=content, changed_at=now, changed_by=actor.user))
        audit.record(connection, actor, "policy_table.change", f"policy/{name}",
                     detail=digests)
    return {"name": name, **digests}


def reset_policy(engine: Engine, name: str, actor: Actor) -> bool:
    """Drop an IG lead's override so the shipped table applies again (audited); False when
    there was none."""
    with engine.begin() as connection:
        removed = connection.execute(
            delete(policy_overrides).where(policy_overrides.c.name == name)).rowcount
        if removed:
            audit.record(connection, actor, "policy_table.reset", f"policy/{name}")
    return bool(removed)
