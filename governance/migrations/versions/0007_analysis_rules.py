"""The access rules of journeys, costs and segments (issue #14 parts 1-3) in a policy seeded
before them.

A database whose access rules were seeded from an older `policies/casbin_policy.csv` gets them:
analysts read the analyses' published tables, their pseudonymised records and the unit cost
table; super users change the unit cost table. An empty rules table is left to the API's
seeding, which has them. No table changes.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

from governance.migrations.seeded_rules import add_rules, remove_rules

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


def upgrade() -> None:
    add_rules(op.get_bind(), RULES)


def downgrade() -> None:
    remove_rules(op.get_bind(), RULES)
