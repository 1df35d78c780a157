"""Pseudonymisation domains: record-level releases carry export-specific pseudonyms.

A release to a named recipient replaces each person key with `R` + 20 hex of an HMAC-SHA256
under the release key, in that recipient's and that export's domain
(`recipient|<ID>|<export_id>`): no two exports, of one recipient or two, can be joined on it
(a recipient joining its own exports, one per practice and one per tier, would otherwise learn
each row's practice and tier beside the coarsened columns and break the k-anonymity each file
has), and none can be joined to Haven's own pseudonyms or person keys. Haven maps it back for
an authorised query of a given export by recomputing it over candidate person keys (the keyed
hash is one-way), under every release key in the ring, so releases made before a release key
rotation still resolve.
"""

from __future__ import annotations

from collections.abc import Iterable

from governance.keyed_hash import keyed_hash
from governance.keys import Key, KeyProvider


def _domain(recipient: str, export_id: str) -> str:
    name = recipient.strip().upper()
    if not name:
        raise ValueError("a release needs a named recipient")
    export = export_id.strip()
    if not export:
        raise ValueError("a release needs an export id")
    return f"recipient|{name}|{export}"


def _pseudonym(key: Key, domain: str, person_key: str) -> str:
    return "R" + keyed_hash(key, domain, person_key, 20)


def recipient_pseudonym(keys: KeyProvider, recipient: str, export_id: str,
                        person_key: str) -> str:
    """The pseudonym `recipient` sees for `person_key` in export `export_id` (recipient ids
    ignore case)."""
    return _pseudonym(keys.current("release"), _domain(recipient, export_id), person_key)


def recipient_pseudonyms(keys: KeyProvider, recipient: str, export_id: str,
                         person_keys: Iterable[str]) -> dict[str, str]:
    """person_key -> the recipient's pseudonym, for a whole release (one export)."""
    key, domain = keys.current("release"), _domain(recipient, export_id)
    return {k: _pseudonym(key, domain, k) for k in person_keys}


def resolve_recipient_pseudonym(keys: KeyProvider, recipient: str, export_id: str,
                                pseudonyms: Iterable[str],
                                candidates: Iterable[str]) -> dict[str, str]:
    """Map the pseudonyms of export `export_id` for `recipient` back to person keys, among
    `candidates` (e.g. a run's persons the query is authorised for); pseudonyms matching none
    (or from another export) are left out."""
    wanted = set(pseudonyms)
    domain = _domain(recipient, export_id)
    ring = keys.ring("release")
    found: dict[str, str] = {}
    for person_key in candidates:
        for key_id in ring.keys:
            p = _pseudonym(ring.get(key_id), domain, person_key)
            if p in wanted:
                found[p] = person_key
    return found


resolve = resolve_recipient_pseudonym  # the first name, kept for callers
