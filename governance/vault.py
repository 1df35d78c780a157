"""Re-identification vault: each NHS number encrypted with AES-256-GCM, found by its pseudonym.

An authorised re-identification never needs the raw file: the vault holds the only copy of an
NHS number Haven keeps, encrypted under a key separate from the pseudonymisation key. The
pseudonym is bound to the ciphertext as associated data, so entries cannot be swapped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, delete, insert, select, update

from governance.keys import Key, KeyProvider
from governance.schema import vault


def seal(entries: Iterable[tuple[str, str]], key: Key) -> list[dict]:
    """Encrypt (person_id, nhs_number) pairs into vault rows under `key`."""
    aead = AESGCM(key.secret)
    rows = []
    for person_id, nhs_number in entries:
        nonce = os.urandom(12)
        rows.append({
            "person_id": person_id,
            "vault_key_id": key.key_id,
            "nonce": nonce,
            "ciphertext": aead.encrypt(nonce, nhs_number.encode(), person_id.encode()),
        })
    return rows


def store(connection: Connection, rows: Sequence[dict], key_id: str) -> int:
    """Insert vault rows not already present; returns how many were new."""
    if not rows:
        return 0
    wanted = {r["person_id"] for r in rows}
    present: set[str] = set()
    ids = list(wanted)
    for start in range(0, len(ids), 5000):
        chunk = ids[start:start + 5000]
        present.update(connection.scalars(
            select(vault.c.person_id).where(vault.c.person_id.in_(chunk))))
    new = [dict(r, key_id=key_id) for r in rows if r["person_id"] not in present]
    seen: set[str] = set()
    unique = []
    for row in new:
        if row["person_id"] not in seen:
            seen.add(row["person_id"])
            unique.append(row)
    if unique:
        connection.execute(insert(vault), unique)
    return len(unique)


def reveal(connection: Connection, keys: KeyProvider, person_ids: Sequence[str]) -> dict[str, str]:
    """Decrypt the NHS numbers of the given pseudonyms. Callers must have been authorised."""
    found: dict[str, str] = {}
    for start in range(0, len(person_ids), 5000):
        chunk = list(person_ids[start:start + 5000])
        for row in connection.execute(select(vault).where(vault.c.person_id.in_(chunk))):
            key = keys.get("vault", row.vault_key_id)
            plain = AESGCM(key.secret).decrypt(row.nonce, row.ciphertext, row.person_id.encode())
            found[row.person_id] = plain.decode()
    return found


def reencrypt(connection: Connection, keys: KeyProvider) -> int:
    """Re-encrypt every vault entry under the current vault key (after a vault key rotation)."""
    current = keys.current("vault")
    aead = AESGCM(current.secret)
    changed = 0
    rows = connection.execute(
        select(vault).where(vault.c.vault_key_id != current.key_id)).fetchall()
    for row in rows:
        old = keys.get("vault", row.vault_key_id)
        plain = AESGCM(old.secret).decrypt(row.nonce, row.ciphertext, row.person_id.encode())
        nonce = os.urandom(12)
        connection.execute(
            update(vault).where(vault.c.person_id == row.person_id).values(
                vault_key_id=current.key_id, nonce=nonce,
                ciphertext=aead.encrypt(nonce, plain, row.person_id.encode())))
        changed += 1
    return changed


def forget(connection: Connection, person_ids: Iterable[str]) -> int:
    """Delete vault entries (when nothing Haven keeps references them any more)."""
    ids = list(person_ids)
    removed = 0
    for start in range(0, len(ids), 5000):
        result = connection.execute(
            delete(vault).where(vault.c.person_id.in_(ids[start:start + 5000])))
        removed += result.rowcount or 0
    return removed
