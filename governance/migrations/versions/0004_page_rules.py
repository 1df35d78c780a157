"""The web pages' access rules in a policy seeded before them (api/pages).

A database whose access rules were seeded from an older `policies/casbin_policy.csv` gets the
rules the pages added: anyone may sign in (exchange a token for a session), a signed-in user
may sign out, and an MDT clinician may mark their own practice's persons reviewed at an MDT
meeting. An empty rules table is left to the API's seeding, which has them.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

RULES = (
    ("p", "anonymous", "*", "session", "create", "*", "*", "any"),
    ("p", "authenticated", "*", "session", "delete", "*", "*", "any"),
    ("p", "mdt_clinician", "*", "mdt_review", "create", "case_finding", "*", "own"),
)


def upgrade() -> None:
    rules = sa.table('casbin_rule', sa.column('ptype'),
                     *(sa.column(f'v{i}') for i in range(7)))
    bind = op.get_bind()
    seeded = bind.execute(sa.select(sa.func.count()).select_from(rules)).scalar()
    if not seeded:
        return
    for rule in RULES:
        values = dict(zip(['ptype', *(f'v{i}' for i in range(7))], rule, strict=True))
        present = bind.execute(sa.select(sa.func.count()).select_from(rules).where(
            *(rules.c[name] == value for name, value in values.items()))).scalar()
        if not present:
            bind.execute(sa.insert(rules).values(**values))


def downgrade() -> None:
    rules = sa.table('casbin_rule', sa.column('ptype'),
                     *(sa.column(f'v{i}') for i in range(7)))
    bind = op.get_bind()
    for rule in RULES:
        values = dict(zip(['ptype', *(f'v{i}' for i in range(7))], rule, strict=True))
        bind.execute(sa.delete(rules).where(
            *(rules.c[name] == value for name, value in values.items())))
