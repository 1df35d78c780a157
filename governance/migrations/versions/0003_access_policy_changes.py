"""Access rule changes that wait for a second person (`access_policy_changes`), and the IG
lead's right to decide them in a policy seeded before it existed.

A database whose access rules were seeded from an older `policies/casbin_policy.csv` gets the
one new rule (`ig_lead` may approve access policy changes for governance); an empty rules
table is left to the API's seeding, which has it.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

APPROVE = ("p", "ig_lead", "*", "access_policy", "approve", "governance", "*", "any")


def upgrade() -> None:
    op.create_table(
        'access_policy_changes',
        sa.Column('change_id', sa.String(length=40), nullable=False),
        sa.Column('ptype', sa.String(length=1), nullable=False),
        sa.Column('rule', sa.JSON(), nullable=False),
        sa.Column('op', sa.String(length=8), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('proposed_by', sa.String(length=64), nullable=False),
        sa.Column('proposed_org', sa.String(length=16), nullable=False),
        sa.Column('proposed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('decided_by', sa.String(length=64), nullable=True),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('changed', sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint('change_id'),
    )
    op.create_index('ix_access_policy_changes_status', 'access_policy_changes', ['status'])
    rules = sa.table('casbin_rule', sa.column('ptype'),
                     *(sa.column(f'v{i}') for i in range(7)))
    bind = op.get_bind()
    seeded = bind.execute(sa.select(sa.func.count()).select_from(rules)).scalar()
    values = dict(zip(['ptype', *(f'v{i}' for i in range(7))], APPROVE, strict=True))
    present = bind.execute(sa.select(sa.func.count()).select_from(rules).where(
        *(rules.c[name] == value for name, value in values.items()))).scalar()
    if seeded and not present:
        bind.execute(sa.insert(rules).values(**values))


def downgrade() -> None:
    op.drop_index('ix_access_policy_changes_status', table_name='access_policy_changes')
    op.drop_table('access_policy_changes')
