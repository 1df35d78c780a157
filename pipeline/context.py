"""What every pipeline function needs: settings, the database, keys and who is acting."""

from __future__ import annotations

import getpass

from sqlalchemy import Engine

from governance.audit import Actor
from governance.db import open_database
from governance.keys import KeyProvider
from governance.settings import Settings

# A stage's progress: one line of what it is doing or has done (counts, where results went);
# the stages' own type, so a pipeline step hands its progress on to them unchanged.
from stratify.progress import Progress, quiet

__all__ = ["Context", "Progress", "operator", "quiet"]


def operator() -> Actor:
    """The person at the command line, named by their login."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # pragma: no cover - no passwd entry in some containers
        user = "unknown"
    return Actor(user=f"cli:{user}", role="operator", org="HAVEN", purpose="administration")


class Context:
    """One data directory's database and keys, opened on first use, and the acting user.

    Args:
        settings: where the data is.
        engine: an open database (default: `open_database(settings)` on first use).
        keys: the key provider (default: from `settings`).
        actor: who is acting (default: the operator at the command line).
    """

    def __init__(self, settings: Settings, *, engine: Engine | None = None,
                 keys: KeyProvider | None = None, actor: Actor | None = None) -> None:
        self.settings = settings
        self._engine = engine
        self._keys = keys
        self.actor = actor or operator()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = open_database(self.settings)
        return self._engine

    @property
    def keys(self) -> KeyProvider:
        if self._keys is None:
            self._keys = KeyProvider(self.settings.layout.key_file, self.settings.key_env)
        return self._keys

    def acting_as(self, actor: Actor) -> Context:
        """The same database and keys, another acting user (an API caller)."""
        return Context(self.settings, engine=self.engine, keys=self.keys, actor=actor)

    def close(self) -> None:
        """Dispose of the database connections this context opened."""
        if self._engine is not None:
            self._engine.dispose()
