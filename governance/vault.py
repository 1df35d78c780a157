"""Re-identification vault: each NHS number encrypted with AES-256-GCM, found by its pseudonym.

An authorised re-identification never needs the raw file: the vault holds the only copy of an
NHS number Haven keeps, encrypted under a key separate from the pseudonymisation key. The
pseudonym is bound to the ciphertext as associated data, so entries cannot be swapped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from itertools import repeat

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, delete, func, select, update

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


def seal_columns(person_ids: Sequence[str], nhs_numbers: Sequence[str],
                 key: Key) -> tuple[list[bytes], list[bytes]]:
    """`seal` for columns: the nonces and ciphertexts of (person_id, nhs_number) pairs."""
    encrypt = AESGCM(key.secret).encrypt
    pool = os.urandom(12 * len(person_ids))
    nonces = [pool[i:i + 12] for i in range(0, len(pool), 12)]
    ciphertexts = [encrypt(nonce, nhs.encode(), pid.encode())
                   for nonce, pid, nhs in zip(nonces, person_ids, nhs_numbers, strict=True)]
    return nonces, ciphertexts


# Sealed entries of a landing wait in a temporary table of the landing's own connection: writing
# it takes no lock on the database, and `store_staged` moves them into the vault in one
# statement inside the landing's commit, so the vault changes only if the extract lands.
_STAGE_COLUMNS = "person_id, key_id, vault_key_id, nonce, ciphertext"


def _stage_name(connection: Connection) -> str:
    schema = "pg_temp" if connection.dialect.name == "postgresql" else "temp"
    return f"{schema}.haven_vault_stage"


def stage_open(connection: Connection) -> None:
    """Create (empty) the connection's temporary staging table for sealed vault entries."""
    blob = "BYTEA" if connection.dialect.name == "postgresql" else "BLOB"
    connection.exec_driver_sql(f"DROP TABLE IF EXISTS {_stage_name(connection)}")
    connection.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {_stage_name(connection).split('.')[1]} (person_id TEXT, "
        f"key_id TEXT, vault_key_id TEXT, nonce {blob}, ciphertext {blob})")


def stage(connection: Connection, person_ids: Sequence[str], key_id: str, vault_key_id: str,
          nonces: Sequence[bytes], ciphertexts: Sequence[bytes]) -> None:
    """Add sealed entries (from `seal_columns`) to the staging table made by `stage_open`.

    One statement for the whole batch, not one per entry: the pseudonyms go as one array
    (JSON for SQLite, a PostgreSQL array) and the nonces and ciphertexts as one blob each,
    cut into entries by the database (every ciphertext of a batch has the same length, as
    every NHS number has ten digits; a batch where they differ goes entry by entry).
    """
    if not person_ids:
        return
    table = _stage_name(connection)
    width = len(ciphertexts[0])
    if any(len(c) != width for c in ciphertexts) or any(len(n) != 12 for n in nonces):
        _stage_each(connection, table, person_ids, key_id, vault_key_id, nonces, ciphertexts)
    elif connection.dialect.name == "postgresql":
        connection.exec_driver_sql(
            f"INSERT INTO {table} ({_STAGE_COLUMNS}) SELECT p, %s, %s, n, c "
            "FROM unnest(%s::text[], %s::bytea[], %s::bytea[]) AS t(p, n, c)",
            (key_id, vault_key_id, list(person_ids), list(nonces), list(ciphertexts)))
    else:
        connection.exec_driver_sql(
            f"INSERT INTO {table} ({_STAGE_COLUMNS}) SELECT value, ?, ?, "
            "substr(?, key * 12 + 1, 12), substr(?, key * ? + 1, ?) FROM json_each(?)",
            (key_id, vault_key_id, b"".join(nonces), b"".join(ciphertexts), width, width,
             json.dumps(list(person_ids))))


def _stage_each(connection: Connection, table: str, person_ids: Sequence[str], key_id: str,
                vault_key_id: str, nonces: Sequence[bytes],
                ciphertexts: Sequence[bytes]) -> None:
    """`stage` entry by entry (one executemany), for entries of unequal lengths."""
    marker = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    connection.exec_driver_sql(
        f"INSERT INTO {table} ({_STAGE_COLUMNS}) VALUES ({', '.join([marker] * 5)})",
        list(zip(person_ids, repeat(key_id), repeat(vault_key_id), nonces, ciphertexts,
                 strict=False)))


def store_staged(connection: Connection) -> int:
    """Insert the staged entries whose pseudonym is not in the vault yet; returns how many.

    One statement, in pseudonym order (the primary key's order: far fewer pages touched).
    """
    result = connection.exec_driver_sql(
        f"INSERT INTO vault ({_STAGE_COLUMNS}) SELECT {_STAGE_COLUMNS} "
        f"FROM {_stage_name(connection)} WHERE true ORDER BY person_id "
        "ON CONFLICT (person_id) DO NOTHING")
    return max(int(result.rowcount or 0), 0)


def stage_close(connection: Connection) -> None:
    """Drop the staging table (a no-op when there is none)."""
    connection.exec_driver_sql(f"DROP TABLE IF EXISTS {_stage_name(connection)}")


def store(connection: Connection, rows: Sequence[dict], key_id: str) -> int:
    """Insert vault rows whose pseudonym is not there yet; returns how many were new.

    One driver-level statement per chunk with ON CONFLICT DO NOTHING (SQLite and PostgreSQL):
    the ORM's per-row processing would make this the slowest step of landing.
    """
    if not rows:
        return 0
    marker = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    statement = (
        "INSERT INTO vault (person_id, key_id, vault_key_id, nonce, ciphertext) "
        f"VALUES ({', '.join([marker] * 5)}) ON CONFLICT (person_id) DO NOTHING")
    before = connection.scalar(select(func.count()).select_from(vault)) or 0
    params = [(r["person_id"], key_id, r["vault_key_id"], r["nonce"], r["ciphertext"])
              for r in rows]
    connection.exec_driver_sql(statement, params)
    after = connection.scalar(select(func.count()).select_from(vault)) or 0
    return int(after - before)


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
