"""Incidents name their responding organisations and wait for an IG lead's approval when an
admin declares them (red-team F3; governance/incidents.py).

New columns on `incidents`: `organisations` (JSON list of ODS codes; a responder of any other
organisation is refused), `approved_by` and `approved_at` (an incident is in force only once
approved). Incidents declared before this revision: an IG lead's count as approved by that IG
lead when declared (as they were in force at once); an admin's are left pending, and none names
an organisation, so no responder may act on them until an IG lead declares afresh (fail closed).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('incidents') as batch:
        batch.add_column(sa.Column('organisations', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('approved_by', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('approved_at', sa.DateTime(timezone=True), nullable=True))
    table = sa.table('incidents', sa.column('declared_role'), sa.column('declared_by'),
                     sa.column('declared_at'), sa.column('approved_by'),
                     sa.column('approved_at'))
    op.get_bind().execute(sa.update(table).where(table.c.declared_role == 'ig_lead').values(
        approved_by=table.c.declared_by, approved_at=table.c.declared_at))


def downgrade() -> None:
    with op.batch_alter_table('incidents') as batch:
        batch.drop_column('approved_at')
        batch.drop_column('approved_by')
        batch.drop_column('organisations')
