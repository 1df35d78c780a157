"""The writing pass's Arrow path for new extracts (`_new_tables` + `_map_batch`) against the
pandas path it replaced (`_new_frames`, `_apply_clients`, `_apply_links`, `_assign_keys`,
`persons_part`), written out here as `finished` ran it: the same map rows and persons."""

from __future__ import annotations

import secrets
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from governance.keys import Key
from linkage import person_index as pi
from linkage.map_store import MAP_SCHEMA
from linkage.persons_file import persons_part
from linkage.pseudonym_table import PseudonymTable

KEY = Key("k1", secrets.token_bytes(32))


def _hex(rng: np.random.Generator, n: int, width: int) -> list[str]:
    return ["".join(rng.choice(list("0123456789abcdef"), width)) for _ in range(n)]


def _landed(tmp_path, rng, extract_id: str, rows: int, with_client: bool):
    """A landed rows file: pseudonyms drawn from a small population (persons repeat, some
    rows have none), and keyed record ids when `with_client`."""
    people = _hex(rng, max(rows // 4, 2), 64)
    person = np.array(people, dtype=object)[rng.integers(0, len(people), rows)]
    person[rng.random(rows) < 0.2] = None
    columns = {"extract_id": [extract_id] * rows,
               "row": rng.permutation(np.arange(rows, dtype=np.int64) * 3 + 1),
               "person_id": person}
    if with_client:
        clients = np.array(_hex(rng, max(rows // 6, 2), 32), dtype=object)
        record = clients[rng.integers(0, len(clients), rows)]
        record[rng.random(rows) < 0.1] = None
        columns["record_key"] = record
    path = tmp_path / f"{extract_id}.parquet"
    pq.write_table(pa.table(columns), path)
    settings = SimpleNamespace(layout=SimpleNamespace(rows=lambda _e: path))
    return settings, pd.DataFrame(columns), people


def _old_path(settings, extract_id, source, batch_rows, clients, links, kept):
    by_row = (clients.set_index(["extract_id", "row"])[
        ["person_id", "method", "via_extract", "weight"]] if clients is not None else None)
    linked = links.set_index(["extract_id", "row"]) if len(links) else None
    memo: dict[str, str] = {}
    tables, parts = [], []
    for frame in pi._new_frames(settings, extract_id, source, batch_rows):
        if by_row is not None:
            pi._apply_clients(frame, by_row)
        if linked is not None:
            pi._apply_links(frame, linked)
        frame = pi._assign_keys(frame, KEY, kept, memo)
        table = pa.Table.from_pandas(frame[MAP_SCHEMA.names], schema=MAP_SCHEMA,
                                     preserve_index=False)
        tables.append(table)
        parts.append(persons_part(table))
    return tables, parts


def _new_path(settings, extract_id, source, batch_rows, clients, links, kept):
    client_links = pi._RowLinks(clients, ["person_id", "method", "via_extract", "weight"])
    row_links = pi._RowLinks(links, ["person_id", "weight", "via_extract"])
    memo: dict[str, str] = {}
    made = [pi._map_batch(t, client_links, row_links, KEY, kept, memo)
            for t in pi._new_tables(settings, extract_id, source, batch_rows)]
    return [m.table for m in made], [m.persons for m in made]


@pytest.mark.parametrize("source,with_client,batch_rows", [
    ("apc", False, 1000), ("apc", False, 97), ("social_care", True, 61),
    ("social_care", True, 1000)])
@pytest.mark.parametrize("with_kept", [False, True])
def test_arrow_writing_path_equals_the_pandas_path(tmp_path, source, with_client, batch_rows,
                                                  with_kept):
    rng = np.random.default_rng(7)
    extract_id = "20261207-x-0001"
    settings, landed, people = _landed(tmp_path, rng, extract_id, 600, with_client)
    bare = landed[landed["person_id"].isna()]
    # probabilistic links for some rows without a pseudonym (one with no weight at all), and
    # one for a row of another extract, which must not be applied here
    linked_rows = bare.sample(frac=0.5, random_state=1)
    links = pd.DataFrame({
        "extract_id": [extract_id] * len(linked_rows) + ["20261207-other-0002"],
        "row": [*linked_rows["row"].tolist(), int(bare["row"].iloc[0])],
        "person_id": [*rng.choice(people, len(linked_rows)).tolist(), people[0]],
        "weight": [*rng.normal(12, 2, len(linked_rows)).tolist(), 9.0],
        "via_extract": ["20261207-gp_patients-0003"] * (len(linked_rows) + 1)})
    links.loc[0, "weight"] = np.nan
    clients = None
    if with_client:
        carried = landed[landed["record_key"].notna()].sample(frac=0.6, random_state=2)
        clients = pd.DataFrame({
            "extract_id": extract_id, "row": carried["row"].to_numpy(),
            "person_id": [p if i % 5 else None
                          for i, p in enumerate(rng.choice(people, len(carried)))],
            "method": ["client" if i % 3 else "nhs_number" for i in range(len(carried))],
            "via_extract": [None if i % 4 == 0 else "20261207-social_care-0004"
                            for i in range(len(carried))],
            "weight": [np.nan if i % 2 else 7.5 for i in range(len(carried))]})
    kept = None
    if with_kept:
        known = people[: len(people) // 2]
        kept = PseudonymTable.from_arrow(
            pa.array(known), pa.array([f"P{secrets.token_hex(10)}" for _ in known]))
    old_tables, old_parts = _old_path(settings, extract_id, source, batch_rows, clients,
                                      links, kept)
    new_tables, new_parts = _new_path(settings, extract_id, source, batch_rows, clients,
                                      links, kept)
    assert len(old_tables) == len(new_tables) > 0
    for old, new in zip(old_tables, new_tables, strict=True):
        assert new.schema == old.schema
        assert new.to_pylist() == old.to_pylist()
    for old, new in zip(old_parts, new_parts, strict=True):
        assert new.equals(old)
    methods = pa.concat_tables(new_tables).column("method").to_pylist()
    assert "probabilistic" in methods and "unlinked" in methods  # the test covers both
    if with_client:
        assert "client" in methods
    if with_kept:
        assert any(k in set(kept.lookup_arrow(pa.array(people)).to_pylist())
                   for k in pa.concat_tables(new_tables).column("person_key").to_pylist())


def test_lookup_arrow_is_lookup():
    ids = [secrets.token_hex(32) for _ in range(50)]
    table = PseudonymTable.from_arrow(pa.array(ids[:30]),
                                      pa.array([f"P{secrets.token_hex(10)}" for _ in ids[:30]]))
    asked = ids[20:45] + [None, ids[3], "short"]
    expected = table.lookup(pd.Series(asked, dtype=object)).tolist()
    assert table.lookup_arrow(pa.array(asked, pa.string())).to_pylist() == expected
    assert expected[:10] != [None] * 10 and expected[10:25] == [None] * 15


@pytest.mark.parametrize("batch_rows", [1000, 83])
@pytest.mark.parametrize("with_register,with_review", [(True, True), (False, False),
                                                       (True, False)])
def test_arrow_survey_of_a_new_extract_equals_the_frames(tmp_path, batch_rows, with_register,
                                                         with_review):
    from linkage.index_matching import Register

    rng = np.random.default_rng(11)
    extract_id = "20261207-apc-0005"
    settings, landed, people = _landed(tmp_path, rng, extract_id, 500, False)
    registered = (Register.from_arrow(pa.array(people[: len(people) * 2 // 3]))
                  if with_register else None)
    review_keys = None
    if with_review:  # earlier review rows: some of this extract's, some of another's
        rows = landed["row"].sample(12, random_state=3).tolist()
        review_keys = pd.MultiIndex.from_arrays(
            [[extract_id] * 8 + ["20261207-op-0006"] * 4, rows], names=["extract_id", "row"])
    plan = pi._Plan(new=pd.DataFrame({"extract_id": [extract_id], "source": ["apc"]}),
                    gone=[], drop_rows={})
    old, new = pi._Survey(), pi._Survey()
    for frame in pi._new_frames(settings, extract_id, "apc", batch_rows):
        old.take(frame, plan, registered, review_keys)
    for table in pi._new_tables(settings, extract_id, "apc", batch_rows):
        new.take_new(table, "apc", registered, review_keys)
    assert new.rows == old.rows == len(landed)
    assert new.counts == old.counts
    assert new.counts["apc"][0] == int(landed["person_id"].notna().sum())
    assert (new.counts["apc"][1] > 0) == with_register
    assert new.clients == old.clients == []
    for found, expected in ((new.todo, old.todo), (new.review_rows, old.review_rows)):
        assert len(found) == len(expected)
        for a, b in zip(found, expected, strict=True):
            pd.testing.assert_frame_equal(a, b)
    if with_review:
        assert sum(len(f) for f in new.review_rows) == 8


@pytest.mark.parametrize("with_kept", [False, True])
def test_arrow_rewrite_of_an_untouched_extract_equals_the_frames(tmp_path, with_kept):
    """An extract already in the map, rewritten only because this run links some of its
    unlinked rows (`_map_tables`): the Arrow path gives what the frames gave."""
    rng = np.random.default_rng(5)
    extract_id = "20261207-op-0007"
    settings, landed, people = _landed(tmp_path, rng, extract_id, 400, False)
    earlier_links = landed[landed["person_id"].isna()].sample(frac=0.3, random_state=4)
    links = pd.DataFrame({"extract_id": extract_id, "row": earlier_links["row"].to_numpy(),
                          "person_id": rng.choice(people, len(earlier_links)),
                          "weight": rng.normal(11, 1, len(earlier_links)),
                          "via_extract": "20261207-gp_patients-0003"})
    map_rows, _ = _new_path(settings, extract_id, "op", 1000, None, links, None)
    mapped = pa.concat_tables(map_rows)
    still = mapped.filter(pc.is_null(mapped["person_id"])).to_pandas()
    later = still.sample(frac=0.5, random_state=6)
    new_links = pd.DataFrame({"extract_id": extract_id, "row": later["row"].to_numpy(),
                              "person_id": rng.choice(people, len(later)),
                              "weight": rng.normal(13, 1, len(later)),
                              "via_extract": "20261207-gp_patients-0008"})
    kept = None
    if with_kept:
        known = people[::3]
        kept = PseudonymTable.from_arrow(
            pa.array(known), pa.array([f"P{secrets.token_hex(10)}" for _ in known]))
    path = tmp_path / "map.parquet"
    pq.write_table(mapped, path)
    base = SimpleNamespace(path=lambda _e: path)
    entry = SimpleNamespace(extract_id=extract_id)

    linked = new_links.set_index(["extract_id", "row"])
    memo: dict[str, str] = {}
    old_tables = []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=150):
        frame = batch.to_pandas()
        frame["retry"], frame["new"] = False, False
        pi._apply_links(frame, linked)
        frame = pi._assign_keys(frame, KEY, kept, memo)
        old_tables.append(pa.Table.from_pandas(frame[MAP_SCHEMA.names], schema=MAP_SCHEMA,
                                               preserve_index=False))
    row_links = pi._RowLinks(new_links, ["person_id", "weight", "via_extract"])
    new_tables = [pi._map_batch(t, pi._RowLinks(None, []), row_links, KEY, kept, {}).table
                  for t in pi._map_tables(base, entry, 150)]
    assert len(new_tables) == len(old_tables) == 3
    for old, new in zip(old_tables, new_tables, strict=True):
        assert new.to_pylist() == old.to_pylist()
    methods = pa.concat_tables(new_tables).column("method").to_pylist()
    assert methods.count("probabilistic") == len(earlier_links) + len(later)
