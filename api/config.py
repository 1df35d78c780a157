"""What the API needs beyond `governance.settings.Settings`: upload limit, caches, OIDC.

Passed to `create_app` explicitly; `ApiConfig.from_environ` reads `HAVEN_API_*` and
`HAVEN_OIDC_*` variables once, at the process entry point (`haven serve`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ApiConfig:
    """Settings of the HTTP service.

    Args:
        max_upload_bytes: largest extract accepted by `POST /extracts` (larger: 413).
        max_json_bytes: largest body of any other request (larger: 413). Every body, an
            upload's too, is read only once the request has been authorised.
        refresh_seconds: how often the current score run, opt-outs and the access policy are
            checked for changes made by another process (0: on every request).
        token_cache_seconds: how long a bearer token's user is remembered in this process
            (0: looked up on every request). Revocation through this process is immediate.
        oidc_issuer, oidc_audience: the identity provider's `iss` and this API's `aud`.
        oidc_jwks: the issuer's signing keys: a JWKS file path or an https URL.
        oidc_user_claim, oidc_org_claim, oidc_roles_claim: claims naming the user, their
            organisation (ODS code) and their roles (Entra ID app roles: `roles`).
        oidc_role_map: the identity provider's role names or codes -> Haven roles; a Haven role
            name maps to itself.
    """

    max_upload_bytes: int = 1 << 30
    max_json_bytes: int = 1 << 20
    refresh_seconds: float = 2.0
    token_cache_seconds: float = 5.0
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_jwks: str = ""
    oidc_user_claim: str = "sub"
    oidc_org_claim: str = "org"
    oidc_roles_claim: str = "roles"
    oidc_role_map: Mapping[str, str] = field(default_factory=dict)

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer and self.oidc_jwks)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ApiConfig:
        """Read `HAVEN_API_MAX_UPLOAD_MB`, `HAVEN_API_MAX_JSON_KB`, `HAVEN_OIDC_ISSUER`,
        `HAVEN_OIDC_AUDIENCE`, `HAVEN_OIDC_JWKS`, `HAVEN_OIDC_*_CLAIM` and
        `HAVEN_OIDC_ROLE_MAP` (JSON object)."""
        values: dict[str, object] = {}
        if environ.get("HAVEN_API_MAX_UPLOAD_MB"):
            values["max_upload_bytes"] = int(float(environ["HAVEN_API_MAX_UPLOAD_MB"]) * 2**20)
        if environ.get("HAVEN_API_MAX_JSON_KB"):
            values["max_json_bytes"] = int(float(environ["HAVEN_API_MAX_JSON_KB"]) * 2**10)
        if environ.get("HAVEN_API_REFRESH_SECONDS"):
            values["refresh_seconds"] = float(environ["HAVEN_API_REFRESH_SECONDS"])
        if environ.get("HAVEN_API_TOKEN_CACHE_SECONDS"):
            values["token_cache_seconds"] = float(environ["HAVEN_API_TOKEN_CACHE_SECONDS"])
        for name in ("issuer", "audience", "jwks", "user_claim", "org_claim", "roles_claim"):
            value = environ.get(f"HAVEN_OIDC_{name.upper()}")
            if value:
                values[f"oidc_{name}"] = value
        if environ.get("HAVEN_OIDC_ROLE_MAP"):
            try:
                mapping = json.loads(environ["HAVEN_OIDC_ROLE_MAP"])
            except ValueError as exc:
                raise ValueError("HAVEN_OIDC_ROLE_MAP must be a JSON object") from exc
            if not isinstance(mapping, dict):
                raise ValueError("HAVEN_OIDC_ROLE_MAP must be a JSON object")
            values["oidc_role_map"] = {str(k): str(v) for k, v in mapping.items()}
        return cls(**values)  # type: ignore[arg-type]
