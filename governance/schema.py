"""The relational part of Haven's storage: one SQLAlchemy metadata for SQLite and PostgreSQL.

Row-level pseudonymised data lives in Parquet under the data directory (see `store.py`); these
tables hold what must be transactional: extract receipts, the re-identification vault, the
audit chain, destruction certificates, users and tokens, opt-outs and run metadata.
Migrations in `governance/migrations/` create exactly this schema.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# One row per file offered for landing, whatever became of it.
extracts = Table(
    "extracts",
    metadata,
    Column("extract_id", String(40), primary_key=True),
    Column("source", String(32), nullable=False, index=True),
    Column("sender", String(16), nullable=False, index=True),
    Column("period_start", Date),
    Column("period_end", Date),
    Column("sha256", String(64), nullable=False, index=True),
    # Set only while landed: the same file sent twice is recognised by this unique value.
    Column("landed_sha256", String(64), unique=True),
    Column("status", String(16), nullable=False),  # landed | refused | destroyed
    Column("reason", Text),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("retention_date", Date),
    Column("destroyed_at", DateTime(timezone=True)),
    Column("uploaded_by_org", String(16)),
    Column("uploaded_by_user", String(64)),
    Column("key_id", String(32)),
    Column("counts", JSON, nullable=False),
    Column("rows_landed", BigInteger, nullable=False, default=0),
)

# Rejected rows: the 1-based data row and a reason that never quotes an identifier.
rejected_rows = Table(
    "rejected_rows",
    metadata,
    Column("extract_id", String(40), primary_key=True),
    Column("row", BigInteger, primary_key=True),
    Column("reason", Text, nullable=False),
)

# Re-identification vault: NHS numbers encrypted (AES-GCM) under the vault key, by pseudonym.
vault = Table(
    "vault",
    metadata,
    Column("person_id", String(64), primary_key=True),
    Column("key_id", String(32), nullable=False),
    Column("vault_key_id", String(32), nullable=False),
    Column("nonce", LargeBinary(12), nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
)

# Append-only, hash-chained audit log. Never an identifier: pseudonyms and counts only.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("role", String(32), nullable=False),
    Column("org", String(16), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("action", String(64), nullable=False),
    Column("resource", String(200), nullable=False),
    Column("n_records", BigInteger, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("detail", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
)

# Single-row table holding the chain head; updating it serialises concurrent appends.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

destruction_certificates = Table(
    "destruction_certificates",
    metadata,
    Column("certificate_id", String(40), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("schedule", String(64), nullable=False),
    Column("extract_ids", JSON, nullable=False),
    Column("counts", JSON, nullable=False),
    Column("manifest_digest", String(64), nullable=False),
    Column("audit_seq", BigInteger),
)

# Opt-out register: one row per landed opt-out, pseudonymised like any other extract row.
optouts = Table(
    "optouts",
    metadata,
    Column("person_id", String(64), nullable=False, index=True),
    Column("optout_type", String(32), nullable=False),
    Column("effective_date", Date, nullable=False),
    Column("withdrawn", Boolean, nullable=False),
    Column("sender", String(16), nullable=False),
    Column("extract_id", String(40), nullable=False, index=True),
    Column("row", BigInteger, nullable=False),
    UniqueConstraint("extract_id", "row"),
)

users = Table(
    "users",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("org", String(16), nullable=False),
    Column("roles", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("active", Boolean, nullable=False, default=True),
)

tokens = Table(
    "tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", String(64), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

# Runs of linkage and scoring: what they used, so destruction can find and void them.
runs = Table(
    "runs",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("kind", String(16), nullable=False),  # link | score
    Column("at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),  # complete | void
    Column("extract_ids", JSON, nullable=False),
    Column("summary", JSON, nullable=False),
)

# Policy tables an IG lead has changed (the shipped defaults live in policies/ as files).
policy_overrides = Table(
    "policy_overrides",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("content", Text, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("changed_by", String(64), nullable=False),
)

# The access policy (Casbin rules, read and written through `sqlalchemy_adapter` by the API):
# created by migration like every table, so the application's role needs no CREATE right.
# Seven value columns: Haven's `p` rules are (role, org, resource, action, purpose, source,
# scope).
casbin_rule = Table(
    "casbin_rule",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ptype", String(255)),
    *(Column(f"v{i}", String(255)) for i in range(7)),
)

# Changes to the access rules (`casbin_rule`): every change an admin makes, and for a change
# that widens access to person-level data, the IG lead's decision (two people; nobody decides
# their own). `status`: applied (at once: it widened nothing) | pending | approved | rejected.
access_policy_changes = Table(
    "access_policy_changes",
    metadata,
    Column("change_id", String(40), primary_key=True),
    Column("ptype", String(1), nullable=False),
    Column("rule", JSON, nullable=False),
    Column("op", String(8), nullable=False),  # add | remove
    Column("status", String(16), nullable=False, index=True),
    Column("proposed_by", String(64), nullable=False),
    Column("proposed_org", String(16), nullable=False),
    Column("proposed_at", DateTime(timezone=True), nullable=False),
    Column("decided_by", String(64)),
    Column("decided_at", DateTime(timezone=True)),
    Column("changed", Boolean),  # whether applying it changed the rules (None until applied)
)

# Risk models and their clinical safety decisions (governance/model_approvals.py). Every
# `haven score` that trains a model records it here as a `candidate`; only a model a clinical
# safety officer `approved` (with a reason) may score what the faces serve. `status`:
# candidate | approved | rejected. `retrain_flag`: set by `haven refresh` when the approved
# model's performance falls past the drift policy's threshold (what was measured, and when).
models = Table(
    "models",
    metadata,
    Column("model_id", String(64), primary_key=True),
    Column("run_id", String(40), nullable=False, index=True),  # the score run that trained it
    Column("purpose", String(32), nullable=False),
    Column("algorithm", String(32), nullable=False),
    Column("description", JSON, nullable=False),  # version, training window, features
    Column("status", String(16), nullable=False, index=True),
    Column("proposed_at", DateTime(timezone=True), nullable=False),
    Column("decided_by", String(64)),
    Column("decided_role", String(32)),
    Column("decided_at", DateTime(timezone=True)),
    Column("reason", Text),
    Column("retrain_flag", JSON),
)

# Declared emergencies (governance/incidents.py, issue 14): an IG lead or admin declares one with
# a reason, the affected postcode sectors and an expiry; while it is in force (not ended, not
# expired) a responder may re-identify the vulnerable adults of those sectors. Migration 0006.
incidents = Table(
    "incidents",
    metadata,
    Column("incident_id", String(40), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("sectors", JSON, nullable=False),
    Column("declared_by", String(64), nullable=False),
    Column("declared_role", String(32), nullable=False),
    Column("declared_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
    Column("ended_by", String(64)),
    Column("ended_at", DateTime(timezone=True)),
    # Migration 0008 (red-team F3): the responding organisations (ODS codes) and the IG
    # lead's approval an admin's declaration waits for (governance/incidents.py).
    Column("organisations", JSON),
    Column("approved_by", String(64)),
    Column("approved_at", DateTime(timezone=True)),
)
