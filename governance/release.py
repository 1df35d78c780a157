"""Pseudonymisation domains: record-level releases carry recipient-specific pseudonyms.

A release to a named recipient replaces each person key with `R` + 20 hex of an HMAC under the
release key, in that recipient's domain: two recipients' releases cannot be joined on it, and
neither can be joined to Haven's own keys. Haven maps it back for an authorised query by
recomputing it over candidate person keys (the keyed hash is one-way).
"""

from __future__ import annotations

from collections.abc import Iterable

from governance.keys import KeyProvider
from governance.pseudonyms import keyed_hash


def recipient_pseudonym(keys: KeyProvider, recipient: str, person_key: str) -> str:
    if not recipient.strip():
        raise ValueError("a release needs a named recipient")
    key = keys.current("release")
    return "R" + keyed_hash(key, f"recipient|{recipient.strip().upper()}", person_key, 20)


def recipient_pseudonyms(keys: KeyProvider, recipient: str,
                         person_keys: Iterable[str]) -> dict[str, str]:
    """person_key -> the recipient's pseudonym, for a whole release."""
    return {k: recipient_pseudonym(keys, recipient, k) for k in person_keys}


def resolve(keys: KeyProvider, recipient: str, pseudonyms: Iterable[str],
            candidates: Iterable[str]) -> dict[str, str]:
    """Map a recipient's pseudonyms back to person keys, among `candidates` (e.g. a run)."""
    wanted = set(pseudonyms)
    found = {}
    for person_key in candidates:
        p = recipient_pseudonym(keys, recipient, person_key)
        if p in wanted:
            found[p] = person_key
    return found
