"""OIDC: JWTs verified against the issuer's JWKS (a local key and file, no network), with
claims mapped to user, organisation and roles as Entra ID or NHS CIS2 issue them."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from api_matrix import OWN_PRACTICE, World, build_world
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiConfig

ISSUER = "https://login.example.nhs.uk/tenant/v2.0"
AUDIENCE = "api://haven"


@pytest.fixture
def backend() -> str:
    """SQLite only: identity does not depend on the storage backend."""
    return ""


@pytest.fixture
def signing_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def world(haven, tmp_path, signing_key) -> World:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    config = ApiConfig(refresh_seconds=0, token_cache_seconds=0, oidc_issuer=ISSUER,
                       oidc_audience=AUDIENCE, oidc_jwks=str(jwks),
                       oidc_role_map={"Haven.Analyst": "analyst", "R8000": "mdt_clinician"})
    return build_world(haven, tmp_path, config)


def token(key, kid: str = "k1", **claims) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "3f1c2b9a-user", "iat": now,
            "exp": now + 300, **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


def get(world: World, path: str, bearer: str):
    return world.client.get(path, headers={"Authorization": f"Bearer {bearer}"})


def test_entra_id_app_roles_and_org_claim(world: World, signing_key) -> None:
    bearer = token(signing_key, roles=["Haven.Analyst", "Something.Else"], org="x26")
    me = get(world, "/whoami", bearer).json()
    assert me == {"user": "oidc:3f1c2b9a-user", "org": "X26", "roles": ["analyst"],
                  "authenticated_by": "oidc", "purpose": "commissioning",
                  "purposes": ["commissioning"]}
    assert get(world, "/risk/persons", bearer).status_code == 200
    assert get(world, "/audit", bearer).status_code == 403


def test_cis2_selected_role_profile(world: World, signing_key) -> None:
    codes = "S8000:G8000:R8000"
    profiles = [{"person_roleid": "555", "org_code": OWN_PRACTICE, "role_code": codes},
                {"person_roleid": "556", "org_code": "B86002", "role_code": codes}]
    bearer = token(signing_key, nhsid_nrbac_roles=profiles, selected_roleid="555")
    assert get(world, f"/practices/{OWN_PRACTICE}/case-finding", bearer).status_code == 200
    assert get(world, "/practices/B86002/case-finding", bearer).status_code == 403
    ambiguous = token(signing_key, nhsid_nrbac_roles=profiles)
    assert get(world, "/whoami", ambiguous).status_code == 401


@pytest.mark.parametrize("case", ["expired", "audience", "issuer", "other_key", "unknown_kid",
                                  "no_role", "no_org", "unsigned"])
def test_bad_tokens_are_401(world: World, signing_key, case: str) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"roles": ["Haven.Analyst"], "org": "X26"}
    bearer = {
        "expired": lambda: token(signing_key, exp=int(time.time()) - 3600, **claims),
        "audience": lambda: token(signing_key, aud="api://other", **claims),
        "issuer": lambda: token(signing_key, iss="https://evil.example", **claims),
        "other_key": lambda: token(other, **claims),
        "unknown_kid": lambda: token(other, kid="k9", **claims),
        "no_role": lambda: token(signing_key, roles=["Nothing"], org="X26"),
        "no_org": lambda: token(signing_key, roles=["Haven.Analyst"]),
        "unsigned": lambda: jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x",
                                        "exp": int(time.time()) + 60, **claims}, None,
                                       algorithm="none"),
    }[case]()
    response = get(world, "/whoami", bearer)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert bearer not in response.text


def test_oidc_tokens_are_refused_when_no_issuer_is_configured(haven, signing_key) -> None:
    client = TestClient(create_app(haven.settings, engine=haven.engine, keys=haven.keys))
    bearer = token(signing_key, roles=["analyst"], org="X26")
    assert client.get("/whoami", headers={"Authorization": f"Bearer {bearer}"}).status_code \
        == 401


def test_the_sign_in_page_takes_an_oidc_access_token(world: World, signing_key) -> None:
    """The page's sign-in checks a token with the API's own Authenticator: an OIDC JWT the API
    accepts starts a session as its user; one it refuses does not."""
    import re

    browser = TestClient(world.client.app, raise_server_exceptions=False)
    csrf = re.compile(r'name="csrf" value="([^"]+)"')
    bearer = token(signing_key, roles=["Haven.Analyst"], org="x26")
    for offered, started in ((token(signing_key, kid="k2", roles=["Haven.Analyst"],
                                    org="x26"), False), (bearer, True)):
        form = browser.get("/pages/sign-in")
        answer = browser.post("/pages/sign-in", data={
            "csrf": csrf.search(form.text).group(1), "token": offered}, follow_redirects=False)
        assert (answer.status_code == 303) is started, answer.text
    dashboards = browser.get("/pages/dashboards")
    assert dashboards.status_code == 200 and "People by risk tier" in dashboards.text
