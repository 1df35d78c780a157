"""Who is calling: Haven bearer tokens (hash lookup) or OIDC access tokens (JWTs).

An OIDC token is verified against the configured issuer's signing keys (JWKS from a file or an
https URL), audience, expiry and issuer, and its claims give the user, organisation and roles
the way NHS CIS2 or Entra ID issue them:

- Entra ID style: `roles` (app roles) and an organisation claim (`org` by default).
- NHS CIS2 style: `nhsid_nrbac_roles`, a list of role profiles each with `org_code`,
  `role_code` (`:`-separated codes) and `person_roleid`; the profile named by `selected_roleid`
  is used (or the only one).

Role names or codes from the identity provider map to Haven roles through
`ApiConfig.oidc_role_map`; anything unmapped is ignored, and a token giving no Haven role is
refused.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt
from sqlalchemy import Engine

from api.config import ApiConfig
from api.users import Principal, principal_for_token, token_hash
from pipeline.land import SENDER_RE

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256"]


class AuthError(Exception):
    """Credentials were sent but cannot be accepted; the message never quotes them."""


class OidcVerifier:
    """Verifies JWTs from one issuer and maps their claims to a Principal."""

    def __init__(self, config: ApiConfig, known_roles: Iterable[str]) -> None:
        self.config = config
        self.known_roles = set(known_roles)
        self._client: jwt.PyJWKClient | None = None
        self._keys: dict[str, Any] = {}
        if config.oidc_jwks.startswith(("https://", "http://")):
            self._client = jwt.PyJWKClient(config.oidc_jwks, cache_keys=True, lifespan=3600)
        else:
            self._load_file()

    def _load_file(self) -> None:
        try:
            data = json.loads(Path(self.config.oidc_jwks).read_text(encoding="utf-8"))
            keyset = jwt.PyJWKSet.from_dict(data)
        except (OSError, ValueError, jwt.PyJWKSetError) as exc:
            raise AuthError("the OIDC signing keys could not be read") from exc
        self._keys = {key.key_id: key for key in keyset.keys}

    def _signing_key(self, token: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        kid = jwt.get_unverified_header(token).get("kid")
        if kid not in self._keys:
            self._load_file()  # the issuer may have rotated its keys
        if kid not in self._keys:
            raise AuthError("token signed with an unknown key")
        return self._keys[kid].key

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token, self._signing_key(token), algorithms=ALGORITHMS,
                audience=self.config.oidc_audience or None, issuer=self.config.oidc_issuer,
                leeway=30, options={"require": ["exp", "iss", "sub"],
                                    "verify_aud": bool(self.config.oidc_audience)})
        except (jwt.PyJWTError, AuthError, ValueError) as exc:
            raise AuthError("the token could not be verified") from exc
        return self.principal(claims)

    def principal(self, claims: dict[str, Any]) -> Principal:
        user = str(claims.get(self.config.oidc_user_claim) or "")
        org, names = self._org_and_roles(claims)
        roles = tuple(dict.fromkeys(
            role for name in names
            if (role := self.config.oidc_role_map.get(name, name)) in self.known_roles))
        if not user or not roles:
            raise AuthError("the token gives no Haven role")
        if not SENDER_RE.match(org):
            raise AuthError("the token names no organisation")
        return Principal(user=f"oidc:{user}"[:64], org=org, roles=roles, method="oidc")

    def _org_and_roles(self, claims: dict[str, Any]) -> tuple[str, list[str]]:
        profiles = claims.get("nhsid_nrbac_roles")
        if isinstance(profiles, list) and profiles:
            selected = claims.get("selected_roleid")
            chosen = [p for p in profiles if isinstance(p, dict)
                      and (selected is None or p.get("person_roleid") == selected)]
            if len(chosen) != 1:
                raise AuthError("the token selects no single role profile")
            profile = chosen[0]
            codes = str(profile.get("role_code", "")).split(":")
            names = [*codes, str(profile.get("role_name", ""))]
            return str(profile.get("org_code", "")).upper(), [n for n in names if n]
        roles = claims.get(self.config.oidc_roles_claim, [])
        if isinstance(roles, str):
            roles = roles.split()
        return str(claims.get(self.config.oidc_org_claim, "")).upper(), \
            [str(r) for r in roles if r]


class Authenticator:
    """Turns an `Authorization: Bearer ...` value into a Principal (or AuthError)."""

    def __init__(self, engine: Engine, config: ApiConfig, known_roles: Iterable[str]) -> None:
        self.engine = engine
        self.config = config
        self.oidc = OidcVerifier(config, known_roles) if config.oidc_enabled else None
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def forget(self) -> None:
        """Drop remembered tokens (after a user or token is revoked here)."""
        with self._lock:
            self._cache.clear()

    def remembered(self, token: str) -> Principal | None:
        """The principal of a Haven token seen within `token_cache_seconds` (no I/O)."""
        ttl = self.config.token_cache_seconds
        if ttl <= 0 or token.count(".") == 2:
            return None
        hit = self._cache.get(token_hash(token))
        if hit is not None and time.monotonic() - hit[0] < ttl:
            return hit[1]
        return None

    def authenticate(self, token: str) -> Principal:
        """Verify a token (may read the database or fetch the issuer's keys)."""
        if token.count(".") == 2:
            if self.oidc is None:
                raise AuthError("OIDC tokens are not accepted by this service")
            return self.oidc.verify(token)
        remembered = self.remembered(token)
        if remembered is not None:
            return remembered
        principal = principal_for_token(self.engine, token)
        if principal is None:
            raise AuthError("the token is not valid")
        if self.config.token_cache_seconds > 0:
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[token_hash(token)] = (time.monotonic(), principal)
        return principal
