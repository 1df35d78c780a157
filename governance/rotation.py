"""Key rotation: a new pseudonymisation key re-keys every pseudonym; a new vault key re-encrypts.

Pseudonymisation key: for each vault entry, decrypt the NHS number, compute its pseudonym under
the new key, and rewrite every place the old pseudonym is kept (each landed extract's Parquet,
atomically per file; the opt-out register; the vault itself, re-sealed because the pseudonym
is bound into each entry) and tell dependents (the person index) the old -> new mapping, so no
link is lost. The old key stays in the key ring until `retire` is called.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Engine, delete, select, update

from governance import audit, store, vault
from governance.audit import Actor
from governance.keys import KeyProvider
from governance.pseudonyms import nhs_pseudonym
from governance.schema import extracts, optouts
from governance.settings import Settings

# A dependent rewrites pseudonyms it holds, given the old -> new mapping; returns rows changed.
Rekeyer = Callable[[dict[str, str]], int]


def remap_column(table: pa.Table, column: str, mapping: dict[str, str]) -> pa.Table:
    """`table` with `column` mapped through `mapping` (values not in it kept)."""
    values = table.column(column)
    old = pa.array(list(mapping), pa.string())
    new = pa.array(list(mapping.values()), pa.string())
    index = pc.index_in(values, value_set=old)
    mapped = pc.if_else(pc.is_valid(index), pc.take(new, pc.fill_null(index, 0)), values)
    return table.set_column(table.schema.get_field_index(column), column, mapped)


def rotate_pseudonym_key(settings: Settings, engine: Engine, keys: KeyProvider, actor: Actor,
                         dependents: Sequence[Rekeyer] = ()) -> dict[str, int]:
    """Re-key every pseudonym under a new key, through the vault; returns counts."""
    old_key = keys.current("pseudonym")
    with engine.connect() as connection:
        held = [row.person_id for row in connection.execute(select(vault.vault.c.person_id))]
        numbers = vault.reveal(connection, keys, held)
    new_key = keys.rotate("pseudonym")
    mapping = {old: nhs_pseudonym(new_key, number) for old, number in numbers.items()}
    counts = {"pseudonyms": len(mapping), "files": 0, "rows": 0}
    with store.data_lock(settings):
        with engine.connect() as connection:
            landed = list(connection.scalars(
                select(extracts.c.extract_id).where(extracts.c.status == "landed")))
        for extract_id in landed:
            path = store.rows_path(settings, extract_id)
            if not path.exists() or "person_id" not in pq.read_schema(path).names:
                continue
            table = remap_column(pq.read_table(path), "person_id", mapping)
            ids = table.schema.get_field_index("key_id")
            table = table.set_column(ids, "key_id", pa.repeat(
                pa.scalar(new_key.key_id, pa.string()), table.num_rows))
            tmp = path.with_suffix(".rekey")
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, path)
            counts["files"] += 1
            counts["rows"] += table.num_rows
        with engine.begin() as connection:
            for old, new in mapping.items():
                connection.execute(update(optouts).where(optouts.c.person_id == old)
                                   .values(person_id=new))
            connection.execute(delete(vault.vault))
            sealed = vault.seal(((mapping[p], n) for p, n in numbers.items()),
                                keys.current("vault"))
            vault.store(connection, sealed, new_key.key_id)
            connection.execute(update(extracts).where(extracts.c.status == "landed")
                               .values(key_id=new_key.key_id))
        for dependent in dependents:
            counts["derived_rows"] = counts.get("derived_rows", 0) + dependent(mapping)
    audit.log(engine, actor, "keys.rotate", "key/pseudonym", n_records=len(mapping),
              detail={"old_key_id": old_key.key_id, "new_key_id": new_key.key_id,
                      "files": counts["files"]})
    return counts


def rotate_vault_key(engine: Engine, keys: KeyProvider, actor: Actor) -> int:
    """A new vault key; every vault entry re-encrypted under it."""
    old = keys.current("vault").key_id
    new = keys.rotate("vault")
    with engine.begin() as connection:
        changed = vault.reencrypt(connection, keys)
        audit.record(connection, actor, "keys.rotate", "key/vault", n_records=changed,
                     detail={"old_key_id": old, "new_key_id": new.key_id})
    return changed
