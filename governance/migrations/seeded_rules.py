"""Access rules a migration adds to a policy seeded before them, and takes out on downgrade.

A database's access rules are seeded once from `policies/casbin_policy.csv` (api/authz.py);
a migration that brings new roles or resources adds their rules to a table seeded from an
older file, each at most once (an empty table is left to seeding, which has them).
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

Rule = tuple[str | None, ...]  # ptype, v0 ... v6


def _table() -> sa.TableClause:
    return sa.table('casbin_rule', sa.column('ptype'), *(sa.column(f'v{i}') for i in range(7)))


def _where(rules: sa.TableClause, rule: Rule) -> list:
    values = dict(zip(['ptype', *(f'v{i}' for i in range(7))], rule, strict=True))
    return [rules.c[name].is_(None) if value is None else rules.c[name] == value
            for name, value in values.items()]


def add_rules(bind: sa.Connection, wanted: Iterable[Rule]) -> None:
    """Add each rule the seeded table lacks (nothing when the table is empty: not seeded yet)."""
    rules = _table()
    if not bind.execute(sa.select(sa.func.count()).select_from(rules)).scalar():
        return
    for rule in wanted:
        if not bind.execute(sa.select(sa.func.count()).select_from(rules)
                            .where(*_where(rules, rule))).scalar():
            bind.execute(sa.insert(rules).values(
                ptype=rule[0], **{f'v{i}': v for i, v in enumerate(rule[1:])}))


def remove_rules(bind: sa.Connection, wanted: Iterable[Rule]) -> None:
    """Take the rules out again (downgrade)."""
    rules = _table()
    for rule in wanted:
        bind.execute(sa.delete(rules).where(*_where(rules, rule)))
