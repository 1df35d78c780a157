"""The access rules of journeys, costs and segments (issue #14 parts 1-3) in a policy seeded
before them.

A database whose access rules were seeded from an older `policies/casbin_policy.csv` gets them:
analysts read the analyses' published tables, their pseudonymised records and the unit cost
table; super users change the unit cost table. An empty rules table is left to the API's
seeding, which has them. No table changes.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

RULES = (
    ("p", "analyst", "*", "analysis_table", "read", "commissioning", "*", "any"),
    ("p", "analyst", "*", "analysis_records", "read", "commissioning", "*", "any"),
    ("p", "analyst", "*", "unit_costs", "read", "commissioning", "*", "any"),
    ("p", "super_user", "*", "unit_costs", "update", "commissioning", "*", "any"),
)


def _rules() -> sa.TableClause:
    return sa.table('casbin_rule', sa.column('ptype'), *(sa.column(f'v{i}') for i in range(7)))


def _where(rules: sa.TableClause, rule: tuple) -> list:
    values = dict(zip(['ptype', *(f'v{i}' for i in range(7))], rule, strict=True))
    return [rules.c[name].is_(None) if value is None else rules.c[name] == value
            for name, value in values.items()]


def upgrade() -> None:
    rules = _rules()
    bind = op.get_bind()
    if not bind.execute(sa.select(sa.func.count()).select_from(rules)).scalar():
        return
    for rule in RULES:
        if not bind.execute(sa.select(sa.func.count()).select_from(rules)
                            .where(*_where(rules, rule))).scalar():
            bind.execute(sa.insert(rules).values(
                ptype=rule[0], **{f'v{i}': v for i, v in enumerate(rule[1:])}))


def downgrade() -> None:
    rules = _rules()
    bind = op.get_bind()
    for rule in RULES:
        bind.execute(sa.delete(rules).where(*_where(rules, rule)))
