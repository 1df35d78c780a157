"""The access policy table (`casbin_rule`), created by migration.

Databases made before this migration got the table from the adapter itself at the API's
first start, with the same columns: it is left as it is.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("casbin_rule"):
        return
    op.create_table(
        'casbin_rule',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('ptype', sa.String(length=255), nullable=True),
        *(sa.Column(f'v{i}', sa.String(length=255), nullable=True) for i in range(7)),
        sa.PrimaryKeyConstraint('id'),
    )


def downgrade() -> None:
    op.drop_table('casbin_rule')
