"""What every command needs, built once from settings: database, keys and who is acting."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from functools import cached_property

from sqlalchemy import Engine

from governance.audit import Actor
from governance.db import open_database
from governance.keys import KeyProvider
from governance.settings import Settings


@dataclass
class Haven:
    """The command line's handle on one data directory (settings passed in, nothing global)."""

    settings: Settings

    @cached_property
    def engine(self) -> Engine:
        return open_database(self.settings)

    @cached_property
    def keys(self) -> KeyProvider:
        return KeyProvider(self.settings.key_file, self.settings.key_env)

    @property
    def actor(self) -> Actor:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # pragma: no cover - no passwd entry in some containers
            user = "unknown"
        return Actor(user=f"cli:{user}", role="operator", org="HAVEN",
                     purpose="administration")
