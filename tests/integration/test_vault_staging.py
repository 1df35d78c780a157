"""The vault's batched staging: one statement a batch, every entry decrypting to its number."""

from __future__ import annotations

from sqlalchemy import func, select

from governance import vault
from governance.keyed_hash import nhs_pseudonym
from governance.schema import vault as vault_table


def _entries(haven, numbers: list[str]) -> tuple[list[str], list[bytes], list[bytes]]:
    ids = [nhs_pseudonym(haven.keys.current("pseudonym"), n) for n in numbers]
    nonces, ciphertexts = vault.seal_columns(ids, numbers, haven.keys.current("vault"))
    return ids, nonces, ciphertexts


def _stage_and_store(haven, batches: list[tuple[list[str], list[bytes], list[bytes]]]) -> int:
    key_id = haven.keys.current("pseudonym").key_id
    vault_key_id = haven.keys.current("vault").key_id
    with haven.engine.connect() as connection:
        vault.stage_open(connection)
        connection.commit()
        for ids, nonces, ciphertexts in batches:
            vault.stage(connection, ids, key_id, vault_key_id, nonces, ciphertexts)
        connection.commit()
        with connection.begin():
            stored = vault.store_staged(connection)
        vault.stage_close(connection)
        connection.commit()
    return stored


def test_a_batch_is_staged_whole_and_each_entry_opens_to_its_own_number(haven):
    numbers = [f"999{i:07d}" for i in range(0, 3000, 7)]
    first = _entries(haven, numbers[:200])
    second = _entries(haven, numbers[150:])  # 50 persons again: stored once
    assert _stage_and_store(haven, [first, second]) == len(numbers)
    with haven.engine.connect() as connection:
        rows = connection.execute(select(vault_table)).fetchall()
        opened = vault.reveal(connection, haven.keys, first[0] + second[0])
    assert len(rows) == len(numbers)
    assert {r.key_id for r in rows} == {haven.keys.current("pseudonym").key_id}
    assert {len(r.nonce) for r in rows} == {12}
    ids = {nhs_pseudonym(haven.keys.current("pseudonym"), n): n for n in numbers}
    assert opened == ids


def test_entries_of_unequal_lengths_are_staged_one_by_one(haven):
    ids, nonces, ciphertexts = _entries(haven, ["9990000018", "9990000026"])
    longer = vault.seal_columns([ids[1]], ["99900000261"], haven.keys.current("vault"))
    assert _stage_and_store(haven, [(ids, nonces[:1] + longer[0],
                                     ciphertexts[:1] + longer[1])]) == 2
    with haven.engine.connect() as connection:
        opened = vault.reveal(connection, haven.keys, ids)
        assert connection.scalar(select(func.count()).select_from(vault_table)) == 2
    assert opened == {ids[0]: "9990000018", ids[1]: "99900000261"}


def test_odd_nonces_are_staged_one_by_one(haven):
    ids, nonces, ciphertexts = _entries(haven, ["9990000018"])
    with haven.engine.connect() as connection:
        vault.stage_open(connection)
        vault.stage(connection, ids, "p", "v", [nonces[0] + b"x"], ciphertexts)
        staged = connection.exec_driver_sql(
            "SELECT nonce FROM " + vault._stage_name(connection)).scalar_one()
        vault.stage_close(connection)
    assert staged == nonces[0] + b"x"
