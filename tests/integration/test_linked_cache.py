"""The linked cache (pipeline/linked_cache.py): a stage is given the last stage's working copy
of linked rows only when the copy it would make itself is the same. After every change the
copy's rows depend on (a late opt-out, a new day, a landing and link, a purge, a destruction,
a key rotation, another purpose) the next stage's copy equals one made afresh, row for row;
destruction, purge and rotation remove every kept copy, and destruction counts what is left."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from linked_cache_fixtures import takes_watched

import pipeline.linked_cache as cache_module
from factories import rows_for, write_extract
from governance import retention, store
from governance.keys import KeyProvider
from linkage.landing.land import LandingContext, land_file
from pipeline import govern
from pipeline.land import land
from pipeline.link import link
from pipeline.linked_copy import linked_copy
from pipeline.score import purpose_filter, purpose_rows
from pipeline.serving import optouts_applied
from stratify.sources import COLUMNS
from synth import generate


@pytest.fixture(scope="module")
def extracts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(300, 7, out, progress=False)
    return out


def _copy(haven: Any, purpose: str = "commissioning", reuse: bool = True,
          applied: dict[str, Any] | None = None) -> tuple[dict[str, pd.DataFrame], bool]:
    """Every table of the stage's copy (ordered), and whether it came from the cache."""
    applied = applied or optouts_applied(haven.engine)
    with takes_watched() as taken:
        rows = (purpose_rows(haven, purpose, applied) if reuse
                else purpose_filter(haven, purpose, applied))
        with linked_copy(haven, rows) as copy:
            con = duckdb.connect(str(copy.folder / "sources.duckdb"), read_only=True)
            try:
                tables = {n: con.execute(f"SELECT * FROM v_{n} ORDER BY ALL").df()
                          for n in COLUMNS}
            finally:
                con.close()
            rows = copy.rows
    assert rows == sum(len(t) for t in tables.values())
    return tables, any(taken)


def _same(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=True, obj=name)


def _rows(tables: dict[str, pd.DataFrame]) -> int:
    return sum(len(t) for t in tables.values())


def _fresh_equals_next(haven: Any, **options: Any) -> dict[str, pd.DataFrame]:
    """The next stage's copy is made afresh (not taken) and equals a copy made without the
    cache at all; then the one after is taken from the cache, equal again. The opt-outs
    applied are taken once: a run crossing midnight applies another day's, another key."""
    options.setdefault("applied", optouts_applied(haven.engine))
    fresh, _ = _copy(haven, reuse=False, **options)
    made, taken = _copy(haven, **options)
    assert not taken
    _same(made, fresh)
    again, taken = _copy(haven, **options)
    assert taken
    _same(again, fresh)
    return fresh


def _land_optout(haven: Any, extracts: Path, folder: Path, source: str = "gp_patients",
                 kind: str = "ndoo") -> None:
    """An opt-out of `kind` for the first person with an NHS number in `source`'s extract
    lands (a late opt-out); a withdrawal of consent comes from the council that sent it."""
    path = sorted(extracts.glob(f"{source}*.csv"))[0]
    with path.open(newline="", encoding="utf-8") as handle:
        first = next(r for r in csv.DictReader(handle) if r.get("nhs_number"))
    sender = json.loads(path.with_name(path.name + ".manifest.json").read_text())["sender"]
    optout = rows_for("optouts", 1, seed=3)[0]
    optout.update(nhs_number=first["nhs_number"], optout_type=kind,
                  effective_date="2023-01-01")
    written = write_extract(folder, "optouts", [optout],
                            sender=sender if kind == "consent_withdrawn" else "X26")
    receipt = land_file(LandingContext(haven.settings, haven.engine, haven.keys, haven.actor),
                        written)
    assert receipt.status == "landed", receipt.reason


def test_a_kept_copy_is_given_only_while_nothing_it_depends_on_changed(
        haven, extracts, tmp_path, monkeypatch):
    assert sorted(p.name for p in extracts.glob("gp_patients*.csv")) == ["gp_patients.csv"]
    land(haven, extracts)
    link(haven)
    before = _fresh_equals_next(haven)
    assert _rows(before) > 5_000
    assert store.linked_cache_entries(haven.settings) == 1
    # another purpose's filter: another key (one entry kept at a time)
    _fresh_equals_next(haven, purpose="direct_care")
    assert store.linked_cache_entries(haven.settings) == 1
    _fresh_equals_next(haven)
    # a late opt-out: the next copy leaves the person's rows out, as a fresh one does
    _land_optout(haven, extracts, tmp_path / "optout")
    after = _fresh_equals_next(haven)
    assert _rows(after) < _rows(before)
    # a new day: opt-outs in force on it may differ (the day is in the key)
    tomorrow = {**optouts_applied(haven.engine),
                "in_force_on": (dt.date.today() + dt.timedelta(days=1)).isoformat()}
    _fresh_equals_next(haven, applied=tomorrow)
    # a council's withdrawal of consent, then a purge of the rows no purpose may use now:
    # every kept copy goes; the next is fresh
    _land_optout(haven, extracts, tmp_path / "consent", "social_care", "consent_withdrawn")
    _copy(haven)
    assert store.linked_cache_entries(haven.settings) == 1
    removed = govern.purge_optouts(haven)
    assert sum(removed.values()) > 0
    assert store.linked_cache_entries(haven.settings) == 0
    purged = _fresh_equals_next(haven)
    # a landed file rewritten with the map left as it is (as a purge of rows the map does
    # not hold would): its size, time and inode are in the key
    with haven.engine.connect() as connection:
        from sqlalchemy import select

        from governance.schema import extracts as table
        apc = connection.execute(select(table.c.extract_id).where(
            table.c.source == "apc")).scalars().first()
    path = haven.settings.layout.rows(apc)
    rows = pq.read_table(path)
    pq.write_table(rows.slice(0, rows.num_rows - 1), path.with_suffix(".new"))
    path.with_suffix(".new").replace(path)
    assert _rows(_fresh_equals_next(haven)) == _rows(purged) - 1


def test_landing_linking_destroying_and_rotating_each_give_a_fresh_copy(
        haven, extracts, tmp_path):
    haven._keys = KeyProvider(haven.settings.layout.key_file)  # rotation writes its keys
    social = sorted(extracts.glob("social_care*.csv"))
    assert len(social) > 1
    hidden = tmp_path / "later"
    hidden.mkdir()
    for path in social[1:]:  # landed later
        for part in (path, path.with_name(path.name + ".manifest.json")):
            (hidden / part.name).write_bytes(part.read_bytes())
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for path in extracts.iterdir():
        if path.is_file() and not any(path.name.startswith(s.name) for s in social[1:]):
            (inbox / path.name).write_bytes(path.read_bytes())
    land(haven, inbox)
    link(haven)
    first = _fresh_equals_next(haven)
    land(haven, hidden)  # landed, not linked yet: its rows have no person key to read
    _fresh_equals_next(haven)
    link(haven)  # a new generation of the map
    linked = _fresh_equals_next(haven)
    assert _rows(linked) > _rows(first)
    # destruction removes the kept copy, and measures none left before certifying
    assert store.linked_cache_entries(haven.settings) == 1
    with haven.engine.connect() as connection:
        from sqlalchemy import select

        from governance.schema import extracts as table
        ids = connection.execute(select(table.c.extract_id).where(
            table.c.source == "social_care")).scalars().all()
    certificate = retention.destroy(haven.settings, haven.engine, ids[:1], haven.actor,
                                    "test", govern.dependents(haven), checks=govern.checks(haven))
    assert certificate.remaining["linked_cache_entries"] == 0
    assert store.linked_cache_entries(haven.settings) == 0
    destroyed = _fresh_equals_next(haven)
    assert _rows(destroyed) < _rows(linked)
    # a key rotation rewrites the landed files the kept copy was made from: it goes
    counts = govern.rotate_pseudonym_key(haven)
    assert counts["linked_cache_entries_removed"] == 1
    assert store.linked_cache_entries(haven.settings) == 0


def test_a_copy_made_while_its_rows_changed_is_not_kept(haven, extracts, monkeypatch):
    land(haven, extracts)
    link(haven)
    keys = iter(["k" * 40, "changed" + "0" * 33])
    monkeypatch.setattr(cache_module, "cache_key", lambda *_a: next(keys))
    _, taken = _copy(haven)
    assert not taken
    assert store.linked_cache_entries(haven.settings) == 0
    # a half-written entry (a stage killed while keeping it) is never given, is counted as
    # left (destruction would not certify), and goes when the next copy is kept
    partial = haven.settings.layout.linked_cache_dir / ".k.0000.tmp"
    partial.mkdir(parents=True)
    (partial / "sources.duckdb").write_bytes(b"not a copy")
    assert store.linked_cache_entries(haven.settings) == 1
    assert retention.measure(haven.settings, haven.engine, [])["linked_cache_entries"] == 1
    monkeypatch.setattr(cache_module, "cache_key", lambda *_a: "k" * 40)
    _, taken = _copy(haven)
    assert not taken and not partial.exists()
    assert json.loads((haven.settings.layout.linked_cache("k" * 40) / "meta.json")
                      .read_text())["rows"] > 0
    _, taken = _copy(haven)
    assert taken
