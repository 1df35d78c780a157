"""Alembic environment: runs on the connection Haven hands it, never reads a global URL."""

from alembic import context

from governance.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
