"""Key rotation: a new pseudonymisation key re-keys every pseudonym; a new vault key re-encrypts.

Pseudonymisation key: for each vault entry not under the current key, decrypt the NHS number,
compute its pseudonym under the new key, and rewrite every place the old pseudonym is kept:
each landed extract's Parquet (`person_id`, `key_id`; atomically per file), the dependents
given the old -> new mapping (the person index), then in one transaction the opt-out register,
the vault (re-sealed, since the pseudonym is bound into each entry) and the extracts' key ids.
No link is lost: rows that shared a pseudonym share its successor.

Resumable: the vault is rewritten last, so after a failure it still holds the old pseudonyms,
and the next call finishes the same rotation (it rotates to a new key only when every vault
entry is already under the current one). Files already rewritten are skipped by their
`key_id`; dependents must ignore pseudonyms they no longer hold. With keys passed in the
environment, the operator sets the new key there (a new id) and the call re-keys to it.

Not re-keyed: keyed record ids (`record_key`) and linkage encodings (`lk_*`) cannot be
recomputed without the raw identifiers, which Haven does not keep; they stay as made. The old
key stays in the key ring until `KeyProvider.retire` (audit entries and older record keys were
made with it). Rotate with the API stopped, or through the API itself: another process keeps
the key ring it read at start.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Engine, bindparam, func, select, update

from governance import audit, store, vault
from governance.audit import Actor
from governance.keyed_hash import nhs_pseudonym
from governance.keys import KeyProvider
from governance.retention import LIVE
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


def _stale(engine: Engine, purpose_column: str, key_id: str) -> int:
    """Vault entries not under `key_id` (in the pseudonym or vault key column)."""
    column = vault.vault.c[purpose_column]
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(vault.vault)
                                     .where(column != key_id)) or 0)


def _rekey_file(settings: Settings, extract_id: str, mapping: dict[str, str],
                new_id: str) -> tuple[int, int] | None:
    """Rewrite one extract's pseudonyms; (rows, rows left unmapped) or None when untouched."""
    path = settings.layout.rows(extract_id)
    if not path.exists() or "key_id" not in pq.read_schema(path).names:
        return None
    table = pq.read_table(path)
    key_ids = table.column("key_id")
    if not pc.any(pc.not_equal(key_ids, new_id)).as_py():
        return None  # already under the new key (a resumed rotation)
    original = table.column("person_id")
    table = remap_column(table, "person_id", mapping)
    mapped = pc.or_(pc.is_null(original), pc.is_in(original, value_set=pa.array(
        list(mapping), pa.string())))
    # A pseudonym with no vault entry cannot be re-keyed: it keeps its old key id.
    table = table.set_column(table.schema.get_field_index("key_id"), "key_id",
                             pc.if_else(mapped, pa.scalar(new_id, pa.string()), key_ids))
    tmp = path.with_name(path.name + ".rekey")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    unmapped = table.num_rows - int(pc.sum(mapped.cast(pa.int64())).as_py() or 0)
    return table.num_rows, unmapped


def rotate_pseudonym_key(settings: Settings, engine: Engine, keys: KeyProvider, actor: Actor,
                         dependents: Sequence[Rekeyer] = ()) -> dict[str, int]:
    """Re-key every pseudonym under a new key, through the vault; returns counts."""
    with store.data_lock(settings):
        old_id = keys.current("pseudonym").key_id
        if _stale(engine, "key_id", old_id) == 0:
            keys.rotate("pseudonym")  # nothing pending: a new key (refused for env keys)
        new_key = keys.current("pseudonym")
        with engine.connect() as connection:
            pending = list(connection.scalars(select(vault.vault.c.person_id)
                                              .where(vault.vault.c.key_id != new_key.key_id)))
            numbers = vault.reveal(connection, keys, pending)
            landed = list(connection.scalars(
                select(extracts.c.extract_id).where(extracts.c.status.in_(LIVE))
                .order_by(extracts.c.extract_id)))
        mapping = {old: nhs_pseudonym(new_key, number) for old, number in numbers.items()}
        counts = {"pseudonyms": len(mapping), "files": 0, "rows": 0, "unmapped_rows": 0,
                  "derived_rows": 0}
        for extract_id in landed:
            done = _rekey_file(settings, extract_id, mapping, new_key.key_id)
            if done is not None:
                counts["files"] += 1
                counts["rows"] += done[0]
                counts["unmapped_rows"] += done[1]
        for dependent in dependents:
            counts["derived_rows"] += int(dependent(mapping))
        # a cached working copy of linked rows holds person keys, not pseudonyms, but it was
        # made from the files just rewritten (their change times moved, so no key matches
        # it again): removed now rather than left for the next keep to replace
        counts["linked_cache_entries_removed"] = store.clear_linked_cache(settings)
        with engine.begin() as connection:
            registered = set(connection.scalars(select(optouts.c.person_id).distinct()))
            moves = [{"old": p, "new": mapping[p]} for p in sorted(registered & set(mapping))]
            if moves:
                connection.execute(update(optouts).where(optouts.c.person_id ==
                                                         bindparam("old"))
                                   .values(person_id=bindparam("new")), moves)
            vault.forget(connection, list(mapping))
            sealed = vault.seal(((mapping[p], n) for p, n in numbers.items()),
                                keys.current("vault"))
            vault.store(connection, sealed, new_key.key_id)
            connection.execute(update(extracts).where(extracts.c.status.in_(LIVE))
                               .values(key_id=new_key.key_id))
            audit.record(connection, actor, "keys.rotate", "key/pseudonym",
                         n_records=len(mapping),
                         detail={"old_key_id": old_id, "new_key_id": new_key.key_id,
                                 **{k: v for k, v in counts.items() if k != "pseudonyms"}})
    return counts


def rotate_vault_key(engine: Engine, keys: KeyProvider, actor: Actor) -> int:
    """A new vault key; every vault entry re-encrypted under it (in one transaction).

    When entries are still under an older key (an interrupted rotation, or a new key set in
    the environment), they are re-encrypted under the current key without rotating again.
    """
    old = keys.current("vault").key_id
    if _stale(engine, "vault_key_id", old) == 0:
        keys.rotate("vault")
    new = keys.current("vault")
    with engine.begin() as connection:
        changed = vault.reencrypt(connection, keys)
        audit.record(connection, actor, "keys.rotate", "key/vault", n_records=changed,
                     detail={"old_key_id": old, "new_key_id": new.key_id})
    return changed
