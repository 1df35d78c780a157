"""Key provider: secret keys by purpose, each with a key id, from a 0600 file or the environment.

Purposes: `pseudonym` (HMAC-SHA256 of NHS numbers), `linkage` (keyed encodings of other
identifiers), `vault` (AES-256-GCM re-identification vault), `release` (recipient pseudonyms).
Keys never come from the repository: the key file is created on first use under the data
directory with permissions 0600, or every key is passed as `HAVEN_KEY_<PURPOSE>=<id>:<base64>`.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PURPOSES = ("pseudonym", "linkage", "vault", "release")


class KeyError_(Exception):  # noqa: N801 - distinct from the builtin KeyError
    """A key could not be found or read; the message never contains key material."""


@dataclass(frozen=True)
class Key:
    """One secret key and the id stored beside everything it made."""

    key_id: str
    secret: bytes

    def __repr__(self) -> str:  # never print the secret
        return f"Key(key_id={self.key_id!r})"


@dataclass
class KeyRing:
    """Every key of one purpose, with the one in use now."""

    active: str
    keys: dict[str, bytes]

    def current(self) -> Key:
        return Key(self.active, self.keys[self.active])

    def get(self, key_id: str) -> Key:
        if key_id not in self.keys:
            raise KeyError_(f"no key with id {key_id!r}")
        return Key(key_id, self.keys[key_id])


class KeyProvider:
    """Reads and rotates keys; one instance per process, passed down explicitly."""

    def __init__(self, key_file: Path, environ: Mapping[str, str] | None = None) -> None:
        self.key_file = key_file
        self._env = {k: v for k, v in (environ or {}).items() if k.startswith("HAVEN_KEY_")}
        self._rings: dict[str, KeyRing] | None = None

    @property
    def from_environment(self) -> bool:
        return bool(self._env)

    def ring(self, purpose: str) -> KeyRing:
        if purpose not in PURPOSES:
            raise KeyError_(f"unknown key purpose {purpose!r}")
        return self._load()[purpose]

    def current(self, purpose: str) -> Key:
        return self.ring(purpose).current()

    def get(self, purpose: str, key_id: str) -> Key:
        return self.ring(purpose).get(key_id)

    def rotate(self, purpose: str) -> Key:
        """Make a new key the active one for `purpose`, keeping old ones for re-keying."""
        if self.from_environment:
            raise KeyError_("keys come from the environment: rotate them where they are kept")
        rings = self._load()
        ring = rings[purpose]
        new_id = f"{purpose[0]}{len(ring.keys) + 1}-{secrets.token_hex(3)}"
        ring.keys[new_id] = secrets.token_bytes(32)
        ring.active = new_id
        self._save(rings)
        return ring.current()

    def retire(self, purpose: str, key_id: str) -> None:
        """Forget an old key once nothing made with it remains."""
        rings = self._load()
        ring = rings[purpose]
        if key_id == ring.active:
            raise KeyError_("the active key cannot be retired")
        ring.keys.pop(key_id, None)
        self._save(rings)

    def _load(self) -> dict[str, KeyRing]:
        if self._rings is None:
            self._rings = self._from_env() if self._env else self._from_file()
        return self._rings

    def _from_env(self) -> dict[str, KeyRing]:
        rings: dict[str, KeyRing] = {}
        for purpose in PURPOSES:
            value = self._env.get(f"HAVEN_KEY_{purpose.upper()}")
            if not value or ":" not in value:
                raise KeyError_(f"HAVEN_KEY_{purpose.upper()} must be set as <id>:<base64>")
            key_id, encoded = value.split(":", 1)
            try:
                secret = base64.b64decode(encoded, validate=True)
            except ValueError as exc:
                raise KeyError_(f"HAVEN_KEY_{purpose.upper()} is not valid base64") from exc
            if len(secret) < 32:
                raise KeyError_(f"HAVEN_KEY_{purpose.upper()} must be at least 32 bytes")
            rings[purpose] = KeyRing(key_id, {key_id: secret})
        return rings

    def _from_file(self) -> dict[str, KeyRing]:
        if not self.key_file.exists():
            rings = {p: KeyRing(f"{p[0]}1", {f"{p[0]}1": secrets.token_bytes(32)})
                     for p in PURPOSES}
            self._save(rings)
            return rings
        mode = self.key_file.stat().st_mode & 0o777
        if mode & 0o077:
            raise KeyError_(f"key file {self.key_file} must not be readable by others "
                            f"(mode {mode:o}; expected 600)")
        data = json.loads(self.key_file.read_text(encoding="utf-8"))
        return {
            p: KeyRing(data[p]["active"],
                       {k: base64.b64decode(v) for k, v in data[p]["keys"].items()})
            for p in PURPOSES
        }

    def _save(self, rings: dict[str, KeyRing]) -> None:
        data = {
            p: {"active": r.active,
                "keys": {k: base64.b64encode(v).decode() for k, v in r.keys.items()}}
            for p, r in rings.items()
        }
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.key_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, self.key_file)
        self._rings = rings
