"""Declared incidents (`incidents`) for emergency planning, and the rules of its roles in a
policy seeded before they existed (issue 14 part 6).

A database whose access rules were seeded from an older `policies/casbin_policy.csv` gets the
new roles (`planner`, `responder`, under `authenticated`) and rules: a planner reads the
suppressed counts of vulnerable adults; a responder reads incidents and, during one, may
re-identify the list of its affected sectors; IG leads and admins declare, end and read
incidents; analysts read evaluations and forecasts. An empty rules table is left to the API's
seeding, which has them.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from governance.migrations.seeded_rules import add_rules, remove_rules

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

RULES = (
    ("g", "planner", "authenticated", "*", None, None, None, None),
    ("g", "responder", "authenticated", "*", None, None, None, None),
    ("p", "planner", "*", "vulnerable_counts", "read", "emergency_planning", "*", "any"),
    ("p", "responder", "*", "incident", "read", "emergency_planning", "*", "any"),
    ("p", "responder", "*", "incident_reidentify", "create", "emergency_planning", "*",
     "any"),
    ("p", "ig_lead", "*", "incident", "create", "governance", "*", "any"),
    ("p", "ig_lead", "*", "incident", "update", "governance", "*", "any"),
    ("p", "ig_lead", "*", "incident", "read", "governance", "*", "any"),
    ("p", "admin", "*", "incident", "create", "administration", "*", "any"),
    ("p", "admin", "*", "incident", "update", "administration", "*", "any"),
    ("p", "admin", "*", "incident", "read", "administration", "*", "any"),
    ("p", "analyst", "*", "evaluation", "read", "commissioning", "*", "any"),
    ("p", "analyst", "*", "forecast", "read", "commissioning", "*", "any"),
)


def upgrade() -> None:
    op.create_table(
        'incidents',
        sa.Column('incident_id', sa.String(length=40), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('sectors', sa.JSON(), nullable=False),
        sa.Column('declared_by', sa.String(length=64), nullable=False),
        sa.Column('declared_role', sa.String(length=32), nullable=False),
        sa.Column('declared_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended_by', sa.String(length=64), nullable=True),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('incident_id'),
    )
    op.create_index('ix_incidents_expires_at', 'incidents', ['expires_at'])
    add_rules(op.get_bind(), RULES)


def downgrade() -> None:
    remove_rules(op.get_bind(), RULES)
    op.drop_index('ix_incidents_expires_at', table_name='incidents')
    op.drop_table('incidents')
