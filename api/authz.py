"""Casbin decides every request: the model and seed rules live in `policies/`, the rules in force
live in the database (`casbin_rule`, through `sqlalchemy_adapter`).

On first start the table is empty and is seeded from `policies/casbin_policy.csv`; from then on
the database is the policy, changed by admins through the API (each change audited). A change
that widens access to person-level data (`AccessPolicy.widens`) needs a second person: an admin
proposes it, an IG lead approves it (`api.policy_changes`); only then does `change` apply it.
Decisions
are remembered per request tuple until the policy changes, because Casbin's own evaluation
(hundreds of microseconds in Python) would otherwise be paid on every request; another process's
change is noticed within `refresh_seconds` (the row count and highest id of `casbin_rule`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import casbin
from casbin.util import key_match
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy_adapter import Adapter

from governance import audit, schema, store
from governance.audit import Actor
from governance.settings import Settings
from policies import POLICIES_DIR

MODEL_PATH = POLICIES_DIR / "casbin_model.conf"
SEED_PATH = POLICIES_DIR / "casbin_policy.csv"
# (resource, action) pairs the shipped policy limits to a caller's own organisation.
SHIPPED_OWN_SCOPED = frozenset(
    (rule[2], rule[3]) for rule in casbin.Enforcer(str(MODEL_PATH), str(SEED_PATH)).get_policy()
    if rule[6] == "own")
# Roles every caller has implicitly; never assigned to a user.
BUILT_IN = frozenset({"anonymous", "authenticated"})
NONE = "-"
CACHE_LIMIT = 100_000
# Data sources a person's record can draw on, and the category the rules name them by.
SOURCE_CATEGORY = {
    "apc": "hospital", "ae": "hospital", "op": "hospital",
    "gp_patients": "gp", "gp_events": "gp", "gp_medications": "gp",
    "community": "community", "social_care": "social_care",
    "deaths": "registry", "optouts": "registry",
}
SOURCES = tuple(SOURCE_CATEGORY)


def policy_source(source: str) -> str:
    """How the rules name a data source: `<category>/<source>` (e.g. `gp/gp_events`)."""
    return f"{SOURCE_CATEGORY.get(source, 'other')}/{source}"

# Casbin logs every decision (denials as warnings) with the request values; Haven audits them.
logging.getLogger("casbin").setLevel(logging.ERROR)


class _Base(DeclarativeBase):
    pass


class CasbinRule(_Base):
    """The adapter's rule class over `governance.schema.casbin_rule` (made by migration), which
    has a seventh value column: Haven's `p` rules have seven fields (role, org, resource,
    action, purpose, source, scope); the adapter's own class stops at six."""

    __table__ = schema.casbin_rule

    def __str__(self) -> str:
        values = [getattr(self, f"v{i}") for i in range(7)]
        return ", ".join([self.ptype] + [v for v in values if v is not None])


# What a rule may grant without a second person: (resource, action) pairs whose answers hold
# no person-level data (pseudonymised or not) and give no power over who sees it. Everything
# else, any resource or action not named here included, counts as person-level: record-level
# risk data, persons, exports, jobs, re-identification, uploads, the audit log (it names person
# keys), retention, users, tokens, keys, policy tables and these rules themselves.
NOT_PERSON_LEVEL = frozenset({
    ("health", "read"), ("api_docs", "read"), ("whoami", "read"), ("aggregate", "read"),
    ("run", "read"), ("receipt", "read"), ("destruction_certificate", "read"),
    ("optout_report", "read"), ("policy_table", "read"), ("access_policy", "read"),
    ("user", "read"),
    ("session", "create"), ("session", "delete"),  # web sign-in and out, with one's own token
})


# Roles every caller holds (`anonymous`: even without a token; `authenticated`: any token). A
# rule for them reaches everyone, so beyond what is open to every caller today, granting them
# anything, person-level or not (receipts, the opt-out report, users), needs a second person.
EVERY_CALLER = frozenset({"anonymous", "authenticated"})
OPEN_TO_EVERY_CALLER = frozenset({
    ("health", "read"), ("api_docs", "read"), ("whoami", "read"),
    ("session", "create"), ("session", "delete"),
})


class PolicyError(ValueError):
    """A rule cannot be added or removed; the message names the field."""


class NeedsApproval(PolicyError):
    """The change widens access to person-level data: it applies only once approved."""


class AccessPolicy:
    """The Casbin enforcer over the database policy, with a decision cache."""

    def __init__(self, engine: Engine, settings: Settings, refresh_seconds: float = 2.0) -> None:
        self.engine = engine
        self.refresh_seconds = refresh_seconds
        self.adapter = Adapter(engine, db_class=CasbinRule, create_table=False)
        self._table = CasbinRule.__table__
        self._seed(settings)
        self._lock = threading.RLock()
        self._cache: dict[tuple[str, ...], bool] = {}
        self._sources: dict[tuple, frozenset[str]] = {}
        self._purposes: dict[tuple[str, ...], str] = {}
        self.enforcer = casbin.Enforcer(str(MODEL_PATH), self.adapter)
        self._matching()
        self._version = self._stored_version()
        self._checked = time.monotonic()

    # -- storage ---------------------------------------------------------------------------
    def _stored_version(self) -> tuple[int, int]:
        with self.engine.connect() as connection:
            n, top = connection.execute(
                select(func.count(), func.max(self._table.c.id))).one()
        return int(n or 0), int(top or 0)

    def _seed(self, settings: Settings) -> None:
        """Copy the shipped rules into an empty table (once, whichever process starts first)."""
        if self._stored_version()[0]:
            return
        with store.data_lock(settings, "access-policy"):
            if self._stored_version()[0]:
                return
            seed = casbin.Enforcer(str(MODEL_PATH), str(SEED_PATH))
            self.adapter.save_policy(seed.get_model())
            rules = len(seed.get_policy()) + len(seed.get_grouping_policy())
            audit.log(self.engine, audit.SYSTEM, "access_policy.seed", "access_policy",
                      n_records=rules, detail={"from": SEED_PATH.name})

    def _matching(self) -> None:
        # Role inheritance written for domain `*` holds in every organisation.
        self.enforcer.add_named_domain_matching_func("g", key_match)

    def refresh_due(self) -> bool:
        return time.monotonic() - self._checked >= self.refresh_seconds

    def refresh(self, force: bool = False) -> None:
        """Reload when another process changed the rules (checked every refresh_seconds)."""
        if not force and not self.refresh_due():
            return
        self._checked = time.monotonic()
        version = self._stored_version()
        if force or version != self._version:
            with self._lock:
                self.enforcer.load_policy()
                self._matching()
                self._forget()
                self._version = version

    def _forget(self) -> None:
        self._cache.clear()
        self._sources.clear()
        self._purposes.clear()

    # -- decisions -------------------------------------------------------------------------
    def allowed(self, role: str, org: str, obj: str, act: str, purpose: str,
                source: str = NONE, owner: str = NONE) -> bool:
        """Casbin's decision for one role (see policies/casbin_model.conf for the fields)."""
        key = (role, org, obj, act, purpose, source, owner)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        with self._lock:
            decision = bool(self.enforcer.enforce(*key))
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = decision
        return decision

    def granting_role(self, roles: Sequence[str], org: str, obj: str, act: str, purpose: str,
                      source: str = NONE, owner: str = NONE) -> str | None:
        """The first of the caller's roles that allows the request, or None."""
        for role in roles:
            if self.allowed(role, org, obj, act, purpose, source, owner):
                return role
        return None

    # -- what the policy says --------------------------------------------------------------
    def roles(self) -> set[str]:
        """Roles that may be given to users (every role named in the rules, built-ins aside)."""
        with self._lock:
            named = {rule[0] for rule in self.enforcer.get_policy()}
            for rule in self.enforcer.get_grouping_policy():
                named.update(rule[:2])
        return named - BUILT_IN

    def purposes(self, role: str) -> list[str]:
        """Purposes of use the role (with what it inherits) has any rule for."""
        with self._lock:
            inherited = self._inherited(role)
            found = {rule[4] for rule in self.enforcer.get_policy() if rule[0] in inherited}
        return sorted(found - {"*"})

    def default_purpose(self, roles: Sequence[str]) -> str:
        """The purpose assumed when a caller asserts none: their first role's only purpose."""
        key = tuple(roles)
        found = self._purposes.get(key)
        if found is None:
            found = next((p[0] for p in map(self.purposes, roles) if len(p) == 1), NONE)
            self._purposes[key] = found
        return found

    def rules(self) -> dict[str, list[list[str]]]:
        with self._lock:
            return {"p": [list(r) for r in self.enforcer.get_policy()],
                    "g": [list(r) for r in self.enforcer.get_grouping_policy()]}

    # -- changes (admins, through the API) ---------------------------------------------------
    @staticmethod
    def checked(ptype: str, rule: Sequence[str]) -> list[str]:
        """The rule as it would be stored; raises PolicyError naming what is wrong with it."""
        rule = [str(part).strip() for part in rule]
        expected = {"p": 7, "g": 3}.get(ptype)
        if expected is None:
            raise PolicyError("ptype: must be p (a permission) or g (a role inheritance)")
        if len(rule) != expected or any(not part or "," in part for part in rule):
            raise PolicyError(f"rule: a {ptype} rule has {expected} non-empty fields")
        if ptype == "p" and rule[6] not in ("any", "own"):
            raise PolicyError("rule: scope (the last field) must be any or own")
        return rule

    def widens(self, ptype: str, rule: Sequence[str], add: bool = True) -> bool:
        """Whether the change widens access to person-level data (decided conservatively):
        adding a permission for anything outside `NOT_PERSON_LEVEL`, or a role inheritance
        onto a role that holds such a permission, itself or through the roles it inherits;
        granting every caller (`EVERY_CALLER`) anything beyond `OPEN_TO_EVERY_CALLER`; or
        widening to scope `any` what a rule limits to a caller's own organisation.
        Removing a rule only ever narrows access (the model has no deny rules)."""
        if not add:
            return False
        rule = self.checked(ptype, rule)
        if ptype == "p":
            pair = (rule[2], rule[3])
            if rule[0] in EVERY_CALLER:
                return pair not in OPEN_TO_EVERY_CALLER
            return pair not in NOT_PERSON_LEVEL or (rule[6] == "any"
                                                    and pair in self._own_scoped())
        with self._lock:
            held = {(r[2], r[3]) for r in self.enforcer.get_policy()
                    if r[0] in self._inherited(rule[1])}
        if rule[0] in EVERY_CALLER:
            return bool(held - OPEN_TO_EVERY_CALLER)
        return bool(held - NOT_PERSON_LEVEL)

    def _own_scoped(self) -> set[tuple[str, str]]:
        """(resource, action) pairs a rule limits to the caller's own organisation's data
        (scope `own`, e.g. a council's receipts), in the shipped policy or the live one:
        widening one to `any` lets a role read other organisations' data, so it needs a second
        person even where the data is not person-level. The shipped rules count too, so
        deleting the `own` rule first (a narrowing change, applied at once) does not make the
        `any` rule a one-person change."""
        with self._lock:
            live = {(r[2], r[3]) for r in self.enforcer.get_policy() if r[6] == "own"}
        return live | SHIPPED_OWN_SCOPED

    def person_level_roles(self, roles: Sequence[str]) -> list[str]:
        """Those of `roles` that give access to person-level data as `widens` judges it: the
        role, or a role it inherits, holds a permission outside `NOT_PERSON_LEVEL` (so an
        account holding one, or a token for it, needs a second person too)."""
        return [role for role in roles if self.widens("g", [NONE, role, "*"])]

    def _inherited(self, role: str) -> set[str]:
        """The role and every role it inherits, in any organisation."""
        found, frontier = {role}, [role]
        grouping = self.enforcer.get_grouping_policy()
        while frontier:
            current = frontier.pop()
            for member, parent, *_ in grouping:
                if member == current and parent not in found:
                    found.add(parent)
                    frontier.append(parent)
        return found

    def change(self, actor: Actor, ptype: str, rule: Sequence[str], add: bool, *,
               approved: str | None = None) -> bool:
        """Add or remove one rule; audited. Returns False when nothing changed.

        A change that `widens` access is refused (NeedsApproval) unless `approved` names the
        approved change it carries out (`api.policy_changes.approve`)."""
        rule = self.checked(ptype, rule)
        if approved is None and self.widens(ptype, rule, add):
            raise NeedsApproval("this change widens access to person-level data: propose it "
                                "(POST /access-policy/changes) for an IG lead to approve")
        with self._lock:
            if add:
                changed = (self.enforcer.add_policy(*rule) if ptype == "p"
                           else self.enforcer.add_grouping_policy(*rule))
            else:
                changed = (self.enforcer.remove_policy(*rule) if ptype == "p"
                           else self.enforcer.remove_grouping_policy(*rule))
            self._forget()
            self._version = self._stored_version()
        if changed:
            detail: dict[str, object] = {"ptype": ptype, "rule": rule}
            if approved is not None:
                detail["change_id"] = approved
            audit.log(self.engine, actor, "access_policy.add" if add else "access_policy.remove",
                      "access_policy", n_records=1, detail=detail)
        return bool(changed)

    def sources_allowed(self, roles: Sequence[str], org: str, purpose: str,
                        owner: str) -> frozenset[str]:
        """The data sources whose person-level data these roles may see for this owner."""
        key = (tuple(roles), org, purpose, owner)
        found = self._sources.get(key)
        if found is None:
            found = frozenset(s for s in SOURCES
                              if self.granting_role(roles, org, "person_data", "read", purpose,
                                                    policy_source(s), owner))
            if len(self._sources) >= CACHE_LIMIT:
                self._sources.clear()
            self._sources[key] = found
        return found
