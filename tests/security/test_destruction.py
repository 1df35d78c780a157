"""Destruction and verification: what a certificate states is measured after removal, and
nothing made from destroyed or purged rows stays in the person index, runs, reports, exports
or what the API serves.

Every check here measures on its own (files under the data directory, database tables),
never through the code under test, so a destruction that only says it removed something
fails. Synthetic 999-range data only; no identifier is printed or asserted against a log.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from api.app import create_app
from api.config import ApiConfig
from api.users import add_user
from cli.main import main
from conftest import everything_kept
from factories import approve_candidates, nhs_numbers, rows_for, write_extract
from governance import audit, retention
from governance.audit import SYSTEM
from governance.schema import audit_log, destruction_certificates, extracts, optouts, runs, vault
from linkage import kept_models, person_index
from linkage.probabilistic import MatchModel
from pipeline import govern, land, link
from synth.generator import generate

SCORE_DAY = "2025-04-01"
LONG_AGO = dt.date(2000, 1, 1)  # a retention date that has passed: the extract is due
ROLES = ("analyst", "super_user", "ig_lead")


def environ(haven) -> dict[str, str]:
    return {"HAVEN_HOME": str(haven.settings.home),
            "HAVEN_DATABASE_URL": haven.settings.database_url, **haven.settings.key_env}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A small synthetic population's extracts (400 persons, every source), made once."""
    out = tmp_path_factory.mktemp("synth") / "extracts"
    generate(400, 1, out, progress=False)
    return out


@pytest.fixture
def linked(haven, synthetic) -> dict[str, list[str]]:
    """Every synthetic extract landed and linked (`haven land`, `haven link`); source ->
    extract ids."""
    receipts = land.land(haven, synthetic)
    assert receipts and all(r.status == "landed" for r in receipts)
    link.link(haven)
    by_source: dict[str, list[str]] = {}
    for receipt in receipts:
        by_source.setdefault(receipt.source, []).append(receipt.extract_id)
    return by_source


def _due_only(haven, ids: list[str]) -> None:
    """Make exactly these extracts past their retention date."""
    with haven.engine.begin() as connection:
        connection.execute(update(extracts).where(extracts.c.extract_id.in_(ids))
                           .values(retention_date=LONG_AGO))


def _files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def left_behind(haven, ids: list[str]) -> dict[str, int]:
    """What the data directory and database still hold of the extracts, measured here."""
    layout, wanted = haven.settings.layout, set(ids)
    found: dict[str, int] = {}
    # every Parquet file under the index with map rows (any generation, any partial folder)
    index_files = sorted(layout.index_dir.rglob("*.parquet")) if layout.index_dir.exists() \
        else []
    held = [pq.read_table(p, columns=["extract_id", "via_extract"]).to_pandas()
            for p in index_files if "via_extract" in pq.read_schema(p).names]
    link_map = pd.concat(held) if held else pd.DataFrame(columns=["extract_id", "via_extract"])
    found["index files named by them"] = sum(any(e in p.name for e in wanted)
                                             for p in index_files)
    found["map rows"] = int(link_map["extract_id"].isin(wanted).sum())
    found["map links resting on them"] = int(link_map["via_extract"].isin(wanted).sum())
    review = pq.read_table(layout.review).to_pandas() if layout.review.exists() \
        else pd.DataFrame()
    found["review pairs"] = int(sum(review[c].isin(wanted).sum() for c in
                                    ("query_extract", "profile_extract") if c in review))
    quality = layout.link_quality.read_text() if layout.link_quality.exists() else ""
    found["quality file mentions"] = sum(e in quality for e in wanted)
    found["extract and staging folders"] = sum(
        layout.extract(e).exists() or layout.staged(e).exists() for e in wanted)
    with haven.engine.connect() as connection:
        used = [r for r in connection.execute(select(runs.c.run_id, runs.c.status,
                                                     runs.c.extract_ids))
                if wanted & set(r.extract_ids or [])]
        found["register rows"] = connection.scalar(select(func.count()).select_from(optouts)
                                                   .where(optouts.c.extract_id.in_(ids)))
        held = set(connection.scalars(select(vault.c.person_id)))
        live = list(connection.scalars(select(extracts.c.extract_id)
                                       .where(extracts.c.status == "landed")))
        referenced = set(connection.scalars(select(optouts.c.person_id)))
    found["runs in use"] = sum(r.status != "void" for r in used)
    found["run and report files"] = sum(_files(layout.run(r.run_id).folder)
                                        + _files(layout.report(r.run_id)) for r in used)
    found["exports"] = sum(json.loads(d.read_text()).get("run_id") in {r.run_id for r in used}
                           for d in layout.export_descriptions())
    for extract_id in live:
        path = layout.rows(extract_id)
        if "person_id" in pq.read_schema(path).names:
            referenced |= set(pq.read_table(path, columns=["person_id"])
                              .column("person_id").drop_null().to_pylist())
    found["vault entries nothing references"] = len(held - referenced)
    return found


def nothing_left(haven, ids: list[str]) -> dict[str, int]:
    return {name: 0 for name in left_behind(haven, ids)}


def _run_with_files(haven, extract_ids: list[str], run_id: str = "score-x") -> str:
    """A score run using the extracts, with its files, a report and an export made from it."""
    layout = haven.settings.layout
    layout.run(run_id).folder.mkdir(parents=True)
    link_map = person_index.read_link_map(haven.settings)
    link_map[["person_key"]].drop_duplicates().assign(probability=0.5).to_parquet(
        layout.run(run_id).scores)
    layout.report(run_id).mkdir(parents=True)
    (layout.report(run_id) / "report.md").write_text("# report\n")
    export_id = f"exp-{run_id}"
    layout.export(export_id).mkdir(parents=True)
    layout.export_description(export_id).write_text(json.dumps({"run_id": run_id}))
    layout.export_file(export_id, "csv").write_text("person_key\n")
    with haven.engine.begin() as connection:
        connection.execute(runs.insert().values(
            run_id=run_id, kind="score", at=dt.datetime.now(dt.UTC), status="complete",
            extract_ids=extract_ids, summary={"purpose": "commissioning"}))
    return run_id


def api(haven, refresh_seconds: float = 600):
    """The API over this Haven, one user per role used here; returns a caller."""
    tokens = {role: add_user(haven.engine, SYSTEM, role.replace("_", "-"), "X26", [role],
                             ROLES) for role in ROLES}
    client = TestClient(create_app(haven.settings, engine=haven.engine, keys=haven.keys,
                                   config=ApiConfig(refresh_seconds=refresh_seconds,
                                                    token_cache_seconds=0)),
                        raise_server_exceptions=False)

    def call(role: str, method: str, path: str, **kwargs):
        return client.request(method, path, headers={"Authorization": f"Bearer {tokens[role]}"},
                              **kwargs)

    return call


def _pseudonyms(haven, ids: list[str]) -> set[str]:
    """Pseudonyms and person keys the extracts' rows had in the index."""
    link_map = person_index.read_link_map(haven.settings)
    mine = link_map[link_map["extract_id"].isin(ids)]
    return set(mine["person_id"].dropna()) | set(mine["person_key"].dropna())


def test_destroying_every_extract_leaves_nothing_and_the_certificate_is_measured(
        haven, linked, tmp_path):
    """Promise: destroy-all leaves nothing behind; the certificate is what was measured after."""
    ids = sorted(e for listed in linked.values() for e in listed)
    _run_with_files(haven, ids)
    before = left_behind(haven, ids)
    total = len(person_index.read_link_map(haven.settings))
    assert before["map rows"] == total > 0 and before["map links resting on them"] > 0
    gone = _pseudonyms(haven, ids)

    certificate = govern.destroy_expired(haven, dt.date(2099, 1, 1))

    assert certificate.extract_ids == ids
    assert left_behind(haven, ids) == nothing_left(haven, ids)
    kept = everything_kept(haven)
    assert not [p for p in gone if p in kept]  # no pseudonym or person key anywhere
    # The certificate's figures are measurements: what remains is zero, what went is counted.
    assert certificate.remaining and set(certificate.remaining.values()) == {0}
    assert {"index_rows", "index_links_via", "review_pairs", "quality_files", "extract_rows",
            "run_files", "exports", "vault_entries"} <= set(certificate.remaining)
    assert certificate.counts["index_rows_removed"] == total
    assert certificate.counts["index_links_relinked"] == before["map links resting on them"]
    assert certificate.counts["rows_removed"] == certificate.counts["rows"]
    assert certificate.counts["runs_voided"] == 2  # the link run and the score run
    assert certificate.counts["exports_removed"] == 1
    with haven.engine.connect() as connection:
        stored = connection.execute(select(destruction_certificates.c.counts)).scalar_one()
    assert stored["remaining"] == certificate.remaining
    assert retention.verify_certificate(haven.engine, certificate.certificate_id)
    # What `haven link export` writes afterwards is measured too: no row.
    out = tmp_path / "map.csv"
    assert main(["link", "export", "--out", str(out)], environ(haven)) == 0
    assert len(pd.read_csv(out)) == 0


def test_after_destroying_everything_link_score_and_the_api_serve_nothing_made_from_it(
        haven, linked, capsys):
    """Promise: after destroy-all, link, score and the API serve nothing made of destroyed data."""
    env = environ(haven)
    assert main(["score", "--at", SCORE_DAY, "--model", "rule"], env) == 0
    approve_candidates(haven.engine)  # a model serves once a clinical safety officer approves
    call = api(haven)  # keeps the run it loaded for a long while between checks
    served = call("analyst", "GET", "/risk/persons")
    assert served.status_code == 200 and served.json()["items"]
    export = call("super_user", "POST", "/exports", json={"recipient": "RR8"})
    assert export.status_code in (200, 201)
    ids = sorted(e for listed in linked.values() for e in listed)
    _due_only(haven, ids)

    destroyed = call("ig_lead", "POST", "/retention/run", json={"dry_run": False})

    assert destroyed.status_code == 200
    assert call("analyst", "GET", "/risk/persons").status_code == 409
    assert call("analyst", "GET", "/runs/current").status_code == 409
    assert call("super_user", "GET",
                f"/exports/{export.json()['export_id']}").status_code == 404
    assert set(destroyed.json()["result"]["remaining"].values()) == {0}
    capsys.readouterr()
    assert main(["link"], env) == 0
    assert len(person_index.read_link_map(haven.settings)) == 0
    assert main(["score", "--at", SCORE_DAY, "--model", "rule"], env) == 1
    assert "nothing landed and linked to score" in capsys.readouterr().out
    with haven.engine.connect() as connection:
        complete = connection.execute(select(runs.c.run_id, runs.c.extract_ids).where(
            runs.c.status == "complete")).all()
    assert all(not set(r.extract_ids) & set(ids) for r in complete)  # only the empty link
    assert call("analyst", "GET", "/risk/persons").status_code == 409
    assert left_behind(haven, ids) == nothing_left(haven, ids)


def test_destroying_the_last_extract_of_a_source_leaves_no_link_resting_on_it(haven, linked):
    """Promise: destroying a source's last extract leaves no link resting on it in the index."""
    (register,) = linked["gp_patients"]
    before = left_behind(haven, [register])
    assert before["map links resting on them"] > 0
    others = person_index.read_link_map(haven.settings)
    others = others[others["extract_id"] != register]
    resting = others[others["via_extract"] == register]
    _due_only(haven, [register])

    certificate = govern.destroy_expired(haven, LONG_AGO + dt.timedelta(days=1))

    assert certificate.extract_ids == [register]
    assert left_behind(haven, [register]) == nothing_left(haven, [register])
    assert set(certificate.remaining.values()) == {0}
    assert certificate.counts["index_rows_removed"] == before["map rows"]
    assert certificate.counts["index_links_relinked"] == len(resting)
    after = person_index.read_link_map(haven.settings).set_index(["extract_id", "row"])
    # Every other row is still indexed; those that rested on the register hold no pseudonym
    # they had only through it.
    assert len(after) == len(others)
    relinked = after.loc[list(zip(resting["extract_id"], resting["row"], strict=True))]
    assert (relinked["via_extract"] != register).all()
    assert not (relinked["method"] == "probabilistic").any() or \
        relinked.loc[relinked["method"] == "probabilistic", "via_extract"].notna().all()


def test_destroying_one_extract_among_many_removes_exactly_its_rows(haven, linked, inbox):
    """Promise: destroying one extract among many removes its rows only; other keys are kept."""
    rows = rows_for("apc", 6, seed=11)
    second = land.land(haven, write_extract(inbox, "apc", rows,
                                            manifest={"period_start": "2025-01-01",
                                                      "period_end": "2025-03-31"}))[0]
    link.link(haven)
    (first,) = linked["apc"]
    before_map = person_index.read_link_map(haven.settings)
    before = left_behind(haven, [first])
    run_id = _run_with_files(haven, [first])
    other = _run_with_files(haven, [second.extract_id], run_id="score-y")
    _due_only(haven, [first])

    certificate = govern.destroy_expired(haven, LONG_AGO + dt.timedelta(days=1))

    assert certificate.extract_ids == [first]
    assert left_behind(haven, [first]) == nothing_left(haven, [first])
    assert set(certificate.remaining.values()) == {0}
    assert certificate.counts["index_rows_removed"] == before["map rows"] > 0
    assert certificate.counts["runs_voided"] == 3  # the two link runs that used it, the score run
    after = person_index.read_link_map(haven.settings)
    kept = before_map[before_map["extract_id"] != first]
    merged = kept.merge(after, on=["extract_id", "row"], how="left", indicator=True)
    assert (merged["_merge"] == "both").all() and len(after) == len(kept)
    assert (merged["person_key_x"] == merged["person_key_y"]).all()
    assert not haven.settings.layout.run(run_id).folder.exists()
    assert haven.settings.layout.run(other).folder.exists()  # made from another extract


def test_leftovers_measured_after_destruction_refuse_the_certificate(haven, linked,
                                                                    monkeypatch, capsys):
    """Promise: anything measured left after destruction refuses the certificate, loudly."""
    ids = sorted(e for listed in linked.values() for e in listed)
    claimed = len(person_index.read_link_map(haven.settings))

    def claims_only(settings, engine, key, extract_ids, matcher=None):
        return {"index_rows_removed": claimed}  # says it removed them; the map is untouched

    monkeypatch.setattr(person_index, "forget_extracts", claims_only)
    with pytest.raises(retention.DestructionIncomplete) as failed:
        govern.destroy_expired(haven, dt.date(2099, 1, 1))
    assert failed.value.certificate.remaining["index_rows"] == claimed
    assert str(claimed) in str(failed.value)
    assert retention.list_certificates(haven.engine) == []
    with haven.engine.connect() as connection:
        statuses = set(connection.scalars(select(extracts.c.status)
                                          .where(extracts.c.extract_id.in_(ids))))
        entry = connection.execute(select(audit_log).order_by(audit_log.c.seq.desc())
                                   .limit(1)).mappings().one()
    assert statuses == {"destroying"}
    assert (entry["action"], entry["outcome"]) == ("retention.destroy", "incomplete")
    assert entry["detail"]["remaining"]["index_rows"] == claimed
    assert retention.due(haven.engine, LONG_AGO) == ids
    capsys.readouterr()
    assert main(["retention", "run", "--as-of", "2099-01-01"], environ(haven)) == 1
    assert "not certified" in capsys.readouterr().out
    _due_only(haven, ids)
    refused = api(haven)("ig_lead", "POST", "/retention/run", json={"dry_run": False})
    assert refused.status_code == 500
    assert refused.json()["remaining"]["index_rows"] == claimed
    assert retention.list_certificates(haven.engine) == []
    monkeypatch.undo()
    # The next run, with the index really forgetting, finishes and certifies.
    certificate = govern.destroy_expired(haven, LONG_AGO)
    assert certificate.extract_ids == ids and set(certificate.remaining.values()) == {0}
    assert left_behind(haven, ids) == nothing_left(haven, ids)
    assert audit.verify(haven.engine).ok


def test_a_purge_reaches_the_person_index_and_the_runs_made_from_purged_rows(haven, inbox):
    """Promise: purged rows leave the index and review list; runs made from them are voided."""
    council = "E08000035"
    care = rows_for("social_care", 6, seed=21)
    apc = rows_for("apc", 3, seed=22)
    for row in apc:
        row["nhs_number"] = ""  # hospital rows without a number: linked to profiles, or not
    land.land(haven, write_extract(inbox / "gp", "gp_patients", rows_for("gp_patients", 4,
                                                                         seed=23)))
    care_receipt = land.land(haven, write_extract(inbox / "care", "social_care", care,
                                                  sender=council))[0]
    apc_receipt = land.land(haven, write_extract(inbox / "apc", "apc", apc))[0]

    def matcher(query, profile, coverage, examples):
        # apc row 1 goes to review against social care row 2 (the person who will withdraw)
        held = profile.whole(["extract_id", "row"])
        mine = (held["extract_id"] == care_receipt.extract_id) & (held["row"] == 2)
        target = int(held.index[mine.to_numpy()][0])
        return pd.DataFrame({"query": [0], "profile": [target], "weight": [4.0],
                             "probability": [0.6], "band": ["review"]})

    person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"), matcher)
    review = pq.read_table(haven.settings.layout.review).to_pandas()
    assert list(zip(review["profile_extract"], review["profile_row"], strict=True)) == [
        (care_receipt.extract_id, 2)]
    care_run = _run_with_files(haven, [care_receipt.extract_id])
    apc_run = "score-apc"
    haven.settings.layout.run(apc_run).folder.mkdir(parents=True)
    with haven.engine.begin() as connection:
        connection.execute(runs.insert().values(
            run_id=apc_run, kind="score", at=dt.datetime.now(dt.UTC), status="complete",
            extract_ids=[apc_receipt.extract_id], summary={}))
    withdrawn = {"nhs_number": care[1]["nhs_number"], "optout_type": "consent_withdrawn",
                 "effective_date": "2024-01-01", "withdrawn": "N"}
    assert withdrawn["nhs_number"] in nhs_numbers(6, seed=21)  # synthetic, 999 range
    land.land(haven, write_extract(inbox / "optout", "optouts", [withdrawn], sender=council))

    assert main(["optouts", "purge", "--as-of", "2024-06-01"], environ(haven)) == 0

    rows_left = pq.read_table(haven.settings.layout.rows(care_receipt.extract_id)).column(
        "row").to_pylist()
    assert 2 not in rows_left  # the purge removed the landed row ...
    link_map = person_index.read_link_map(haven.settings)
    purged = (link_map["extract_id"] == care_receipt.extract_id) & (link_map["row"] == 2)
    assert not purged.any()  # ... and the index forgot it
    review = pq.read_table(haven.settings.layout.review).to_pandas()
    assert review.empty or not ((review.get("profile_row") == 2).any())
    with haven.engine.connect() as connection:
        status = dict(connection.execute(select(runs.c.run_id, runs.c.status)).all())
        detail = connection.execute(select(audit_log.c.detail).where(
            audit_log.c.action == "optouts.purge")).scalar_one()
    assert status[care_run] == "void" and status[apc_run] == "complete"
    assert not haven.settings.layout.run(care_run).folder.exists()
    assert not haven.settings.layout.report(care_run).exists()
    assert not haven.settings.layout.export(f"exp-{care_run}").exists()
    assert detail["index_rows_removed"] == 1 and detail["review_pairs_removed"] == 1
    assert detail["runs_voided"] >= 1
    assert withdrawn["nhs_number"] not in json.dumps(detail)


def test_a_killed_score_s_working_copy_is_destroyed_and_a_running_one_refuses_the_certificate(
        haven, linked):
    """Promise: a stage's working copy of linked rows (scratch/, DuckDB files that may spill)
    is destroyed with the extracts when its process is gone, and one a running stage holds is
    measured as left, so nothing is certified while a copy may still hold the rows."""
    import os

    ids = sorted(e for listed in linked.values() for e in listed)
    layout = haven.settings.layout
    killed = layout.scratch(2**22 + 4321, "dead")  # a score killed mid-way: no such process
    killed.mkdir(parents=True)
    (killed / "sources.duckdb").write_bytes(b"linked rows of every extract")
    running = layout.scratch(os.getpid(), "live")  # a score running now (this process)
    running.mkdir()
    with pytest.raises(retention.DestructionIncomplete) as failed:
        govern.destroy_expired(haven, dt.date(2099, 1, 1))
    assert failed.value.certificate.remaining["scratch_workspaces"] == 1
    assert failed.value.certificate.counts["scratch_workspaces_removed"] == 1  # measured
    assert not killed.exists() and running.exists()
    running.rmdir()  # the running stage ends
    certificate = govern.destroy_expired(haven, dt.date(2099, 1, 1))
    assert certificate.extract_ids == ids and set(certificate.remaining.values()) == {0}


@pytest.mark.parametrize("index_built", [True, False])
def test_a_half_written_map_left_by_a_killed_link_is_destroyed_and_certified(
        haven, linked, index_built):
    """Promise: a link (or key rotation) killed while writing the new map leaves a partial
    file holding rows of any extract; destruction removes it and certifies the measurement,
    also when the kill came before the first map was written."""
    ids = sorted(e for listed in linked.values() for e in listed)
    layout = haven.settings.layout
    current = layout.link_map.resolve()
    partial = layout.map_generation("killed").with_suffix(".tmp")
    shutil.copytree(current, partial)  # what a killed writing pass leaves: a whole generation
    if not index_built:
        shutil.rmtree(current)
        for path in (layout.link_map, layout.review, layout.link_quality):
            path.unlink(missing_ok=True)
    assert person_index.leftovers(haven.settings, ids)["index_partial_files"] == 1

    certificate = govern.destroy_expired(haven, dt.date(2099, 1, 1))

    assert not partial.exists()
    assert certificate.remaining["index_partial_files"] == 0
    assert certificate.counts["index_partial_files_removed"] == 1
    assert set(certificate.remaining.values()) == {0}


def test_a_kept_linkage_model_is_forgotten_by_a_destruction_with_no_map(haven, linked):
    """Promise: no linkage model trained on a destroyed extract's rows is kept past its
    destruction, also when there is no map to update (a first build killed after it kept its
    models, or an index removed). Found by CI: with a map removed, whether the test of the
    half-written map passed hung on whether its keys' labelled sample was large enough for
    a model to be kept."""
    register = linked["gp_patients"]
    model = MatchModel(fields=("sex",), level_weights={"sex": {0: -1.0, 1: 1.0}}, prior=0.5,
                       method="supervised")
    layout = haven.settings.layout
    kept_models.write(layout.link_models, kept_models.KeptModels(models={
        "ae:lk_sex": kept_models.KeptModel(("lk_sex",), model, 400, dt.datetime.now(dt.UTC),
                                           {register[0]: 400})}))
    shutil.rmtree(layout.link_map.resolve())
    for path in (layout.link_map, layout.review, layout.link_quality):
        path.unlink(missing_ok=True)
    ids = sorted(e for listed in linked.values() for e in listed)
    assert person_index.leftovers(haven.settings, ids)["kept_linkage_models"] == 1

    certificate = govern.destroy_expired(haven, dt.date(2099, 1, 1))

    assert certificate.remaining["kept_linkage_models"] == 0
    assert set(certificate.remaining.values()) == {0}
    assert not kept_models.read(layout.link_models, None).models


def test_a_kept_linkage_model_of_a_destroyed_extract_refuses_the_certificate(haven, linked,
                                                                           monkeypatch):
    """Promise: no linkage model trained on a destroyed extract's rows is kept past its
    destruction. Attack: a models.json naming the extract left after the index step (as a
    run killed before rewriting it would leave it): destruction measures it and certifies
    nothing."""
    register = linked["gp_patients"]
    _due_only(haven, register)
    real = person_index.forget_extracts

    def leaves_a_model(settings, engine, key, extract_ids, matcher=None):
        counts = real(settings, engine, key, extract_ids, matcher)
        model = MatchModel(fields=("sex",), level_weights={"sex": {0: -1.0, 1: 1.0}},
                           prior=0.5, method="supervised")
        kept_models.write(settings.layout.link_models, kept_models.KeptModels(models={
            "ae:lk_sex": kept_models.KeptModel(("lk_sex",), model, 400, dt.datetime.now(dt.UTC),
                                               {register[0]: 400})}))
        return counts

    monkeypatch.setattr(person_index, "forget_extracts", leaves_a_model)
    with pytest.raises(retention.DestructionIncomplete) as failed:
        govern.destroy_expired(haven, dt.date(2099, 1, 1))
    assert failed.value.certificate.remaining["kept_linkage_models"] == 1
    assert retention.list_certificates(haven.engine) == []
    monkeypatch.undo()
    certificate = govern.destroy_expired(haven, dt.date(2099, 1, 1))  # run again: its update
    assert certificate.remaining["kept_linkage_models"] == 0  # forgets the stale model
    assert not haven.settings.layout.link_models.exists()
