"""Risk models and their clinical safety decisions (`models`), and the clinical safety
officer's rights in a policy seeded before they existed.

A database whose access rules were seeded from an older `policies/casbin_policy.csv` gets the
new role (`clinical_safety_officer`, under `authenticated`) and its rules: read the models and
the refresh (drift) reports, approve or reject a candidate model; an IG lead may read the
models for oversight. An empty rules table is left to the API's seeding, which has them.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from governance.migrations.seeded_rules import add_rules, remove_rules

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

RULES = (
    ("g", "clinical_safety_officer", "authenticated", "*", None, None, None, None),
    ("p", "clinical_safety_officer", "*", "model", "read", "clinical_safety", "*", "any"),
    ("p", "clinical_safety_officer", "*", "model", "approve", "clinical_safety", "*", "any"),
    ("p", "clinical_safety_officer", "*", "drift_report", "read", "clinical_safety", "*",
     "any"),
    ("p", "ig_lead", "*", "model", "read", "governance", "*", "any"),
    ("p", "ig_lead", "*", "drift_report", "read", "governance", "*", "any"),
)


def upgrade() -> None:
    op.create_table(
        'models',
        sa.Column('model_id', sa.String(length=64), nullable=False),
        sa.Column('run_id', sa.String(length=40), nullable=False),
        sa.Column('purpose', sa.String(length=32), nullable=False),
        sa.Column('algorithm', sa.String(length=32), nullable=False),
        sa.Column('description', sa.JSON(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('proposed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('decided_by', sa.String(length=64), nullable=True),
        sa.Column('decided_role', sa.String(length=32), nullable=True),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('retrain_flag', sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint('model_id'),
    )
    op.create_index('ix_models_run_id', 'models', ['run_id'])
    op.create_index('ix_models_status', 'models', ['status'])
    add_rules(op.get_bind(), RULES)


def downgrade() -> None:
    remove_rules(op.get_bind(), RULES)
    op.drop_index('ix_models_status', table_name='models')
    op.drop_index('ix_models_run_id', table_name='models')
    op.drop_table('models')
