"""Keyed pseudonyms, one value at a time: the same construction landing applies in bulk.

`nhs_pseudonym` is HMAC-SHA256 over `"nhs_number" 0x00 <10 digits>` under the pseudonymisation
key, hex: exactly `linkage.landing.pseudonymise.pseudonymise_nhs` (a test holds them equal), here so
that governance (re-identification, reverse lookup, key rotation) needs nothing above it.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, hmac

from governance.keys import Key


def keyed_hash(key: Key, domain: str, value: str, length: int = 64) -> str:
    mac = hmac.HMAC(key.secret, hashes.SHA256())
    if domain:
        mac.update(domain.encode() + b"\x00")
    mac.update(value.encode())
    return mac.finalize().hex()[:length]


def nhs_pseudonym(key: Key, nhs_number: str) -> str:
    """The person pseudonym of a normalised (10-digit, valid) NHS number."""
    return keyed_hash(key, "nhs_number", nhs_number)
