"""A link reuses each source's linkage model kept from an earlier run (issue #12: a monthly
refresh's link was mostly training and the quality estimate), within the policy's limits, and
never a model trained on rows destroyed or purged since."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sqlalchemy import update

from factories import later_ae_extract
from governance.schema import extracts
from linkage import index_matcher, kept_models, person_index
from linkage.index_matcher import estimate_quality, match_profiles
from pipeline.land import land
from synth import generate

pytestmark = pytest.mark.parametrize("backend", [""])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(2000, 7, out, progress=False)
    return out


class Trained:
    """Counts the supervised fits (a kept model used as it is makes none)."""

    def __init__(self, patch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = index_matcher.fit_supervised

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        patch.setattr(index_matcher, "fit_supervised", counted)


def _update(haven, said: list[str] | None = None, **kwargs) -> person_index.LinkSummary:
    return person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"),
                               match_profiles, quality=estimate_quality,
                               progress=(said.append if said is not None else None), **kwargs)


def _set_status(haven, extract_id: str, status: str) -> None:
    with haven.engine.begin() as connection:
        connection.execute(update(extracts).where(extracts.c.extract_id == extract_id)
                           .values(status=status))


def _first_build(haven, synthetic: Path) -> dict[str, str]:
    """Everything landed and linked: {extract_id: source}."""
    landed = {r.extract_id: r.source for r in land(haven, synthetic) if r.status == "landed"}
    _update(haven)
    return landed


def _month(haven, synthetic: Path, folder: Path) -> str:
    """A month's A&E extract (`factories.later_ae_extract`: about 1,400 rows with an NHS
    number) landed; its extract id."""
    path = later_ae_extract(synthetic, folder)
    report = next(r for r in land(haven, folder) if r.source == "ae")
    assert report.status == "landed", report
    path.unlink()
    return report.extract_id


def _kept(haven) -> dict:
    return json.loads(haven.settings.layout.link_models.read_text(encoding="utf-8"))


def test_a_later_link_reuses_the_kept_models_and_their_quality(haven, synthetic, monkeypatch,
                                                               tmp_path, backend):
    landed = _first_build(haven, synthetic)
    first = _kept(haven)
    assert any(name.startswith("ae:") for name in first["models"]), first["models"].keys()
    assert first["quality"] and first["quality_at"]
    registers = {e for e, s in landed.items() if s in ("gp_patients", "social_care")}
    for name, kept in first["models"].items():
        assert set(kept["trained_on"]) >= registers, name
    trained = Trained(monkeypatch)
    month = _month(haven, synthetic, tmp_path / "month")
    said: list[str] = []
    summary = _update(haven, said)
    assert summary.extracts_added == [month]
    assert trained.calls == 0, "\n".join(said)  # nor the quality estimate
    assert any("ae: linked with the model trained on" in line for line in said)
    assert summary.by_source_method["ae"].get("probabilistic", 0) > 0
    assert _kept(haven)["models"] == first["models"]
    assert summary.quality
    assert all(rates["measured_at"] == first["quality_at"]
               for rates in summary.quality.values())
    assert {s: {k: v for k, v in r.items() if k != "measured_at"}
            for s, r in summary.quality.items()} == first["quality"]


def test_retrain_and_the_policys_limits_train_again(haven, synthetic, monkeypatch, tmp_path,
                                                   backend):
    _first_build(haven, synthetic)
    trained = Trained(monkeypatch)
    path = haven.settings.layout.link_models
    first = _kept(haven)
    name = next(n for n in first["models"] if n.startswith("ae:"))
    month = _month(haven, synthetic, tmp_path / "month")
    _set_status(haven, month, "held")
    _update(haven)

    def month_linked(**kwargs) -> tuple[person_index.LinkSummary, dict]:
        """The month landed and linked, and the models kept then (it is taken out of the map
        again: the models trained on its rows go with it)."""
        _set_status(haven, month, "landed")
        summary = _update(haven, **kwargs)
        kept = _kept(haven)["models"]
        _set_status(haven, month, "held")
        _update(haven)
        return summary, kept

    def edited(change) -> None:
        data = json.loads(path.read_text())
        change(data["models"])
        path.write_text(json.dumps(data))
        trained.calls = 0

    month_linked()
    assert trained.calls == 0  # the kept models, as they are

    # a register grown by more than the policy's share since the model was trained
    edited(lambda models: models[name].update(profiles=models[name]["profiles"] // 2))
    summary, kept = month_linked()
    assert trained.calls > 0
    assert not any("measured_at" in r for r in summary.quality.values())  # measured again
    assert kept[name]["profiles"] == first["models"][name]["profiles"]
    assert month in kept[name]["trained_on"]  # its labelled rows: forgotten when it goes
    assert name not in _kept(haven)["models"]
    path.write_text(json.dumps(first))

    # a model older than the policy's days
    edited(lambda models: models[name].update(trained_at=(
        datetime.now(UTC) - timedelta(days=93)).isoformat()))
    _, kept = month_linked()
    assert trained.calls > 0
    assert datetime.fromisoformat(kept[name]["trained_at"]) > (
        datetime.now(UTC) - timedelta(minutes=5))
    path.write_text(json.dumps(first))

    # kept only for other fields than the rows carry
    edited(lambda models: models.update({"ae:lk_sex": models.pop(name)}))
    month_linked()
    assert trained.calls > 0
    path.write_text(json.dumps(first))

    # asked
    trained.calls = 0
    month_linked()
    assert trained.calls == 0
    month_linked(retrain=True)
    assert trained.calls > 0


def test_a_model_trained_on_a_destroyed_extract_is_forgotten_and_measured(haven, synthetic,
                                                                        backend):
    landed = _first_build(haven, synthetic)
    register = next(e for e, s in landed.items() if s == "gp_patients")
    path = haven.settings.layout.link_models
    stale = path.read_text()
    assert person_index.leftovers(haven.settings, [register])["kept_linkage_models"] == len(
        _kept(haven)["models"])
    # destroyed with no matcher at hand: the models trained on it go all the same
    _set_status(haven, register, "destroyed")
    said: list[str] = []
    person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"),
                        progress=said.append)
    assert person_index.leftovers(haven.settings, [register])["kept_linkage_models"] == 0
    assert not path.exists()
    assert any("linkage models to train again" in line for line in said)
    # a file left as a run killed before its rewrite would leave it: measured, then dropped
    path.write_text(stale)
    assert person_index.leftovers(haven.settings, [register])["kept_linkage_models"] > 0
    _update(haven)
    assert person_index.leftovers(haven.settings, [register])["kept_linkage_models"] == 0


def test_rows_purged_from_a_training_extract_forget_its_models(haven, synthetic, backend):
    _first_build(haven, synthetic)
    frame = person_index.read_link_map(haven.settings)
    care = frame[frame["source"] == "social_care"]
    purged = {e: list(g["row"].head(3)) for e, g in care.groupby("extract_id")}
    before = _kept(haven)
    summary = _update(haven, drop_rows=purged)
    after = _kept(haven) if haven.settings.layout.link_models.exists() else {"models": {}}
    for source, kept in after["models"].items():  # trained again by this run, if at all
        assert kept["trained_at"] != before["models"].get(source, {}).get("trained_at")
    assert not any("measured_at" in rates for rates in summary.quality.values())


def _purge_like_optouts(haven, extract_id: str, rows: list[int]) -> None:
    """What `governance.optouts.purge` does to a landed extract: its rows file rewritten
    without `rows`, and its landed row count lowered."""
    path = haven.settings.layout.rows(extract_id)
    table = pq.read_table(path)
    kept = table.filter(pc.invert(pc.is_in(table["row"], value_set=pa.array(rows))))
    pq.write_table(kept, path)
    with haven.engine.begin() as connection:
        connection.execute(update(extracts).where(extracts.c.extract_id == extract_id)
                           .values(rows_landed=kept.num_rows))


def test_a_purge_while_a_link_matches_forgets_the_model_trained_on_its_rows(
        haven, synthetic, tmp_path, monkeypatch, backend):
    """A reviewer's attack: a purge (which holds the data lock, not the index lock) rewrites
    a new extract between a link's matching, which trained on its labelled rows, and its
    writing pass. The map then never holds the purged rows, so the purge's own update is told
    of rows the map lacks, and a purge killed before that update tells nothing: either way
    the next update forgets the model, since the extract's landed rows changed."""
    _first_build(haven, synthetic)
    month = _month(haven, synthetic, tmp_path / "month")
    table = pq.read_table(haven.settings.layout.rows(month))
    labelled = table.filter(pc.is_valid(table["person_id"]))["row"].to_pylist()
    real = person_index._write_linked

    def purged_meanwhile(*args, **kwargs):
        _purge_like_optouts(haven, month, labelled)
        return real(*args, **kwargs)

    monkeypatch.setattr(person_index, "_write_linked", purged_meanwhile)
    _update(haven, retrain=True)
    monkeypatch.setattr(person_index, "_write_linked", real)
    trained_on_month = [n for n, m in _kept(haven)["models"].items() if month in m["trained_on"]]
    assert trained_on_month, "the month's labelled rows trained a model"
    said: list[str] = []
    _update(haven, said)  # not told of the purge (killed before its update)
    left = _kept(haven)["models"] if haven.settings.layout.link_models.exists() else {}
    assert not set(trained_on_month) & set(left)
    assert any("linkage models to train again" in line for line in said)


def test_a_model_retrained_without_a_quality_estimate_does_not_carry_the_old_one(
        haven, synthetic, tmp_path, backend):
    """A destruction's or a purge's update re-links without measuring quality: the quality
    kept was measured with the models it replaced, so it is not carried to a later link."""
    _first_build(haven, synthetic)
    path = haven.settings.layout.link_models
    data = _kept(haven)
    assert data["quality"]
    name = next(n for n in data["models"] if n.startswith("ae:"))
    data["models"][name]["profiles"] //= 2  # so the month's A&E rows train a model again
    path.write_text(json.dumps(data))
    _month(haven, synthetic, tmp_path / "month")
    person_index.update(haven.settings, haven.engine, haven.keys.current("linkage"),
                        match_profiles)
    after = _kept(haven)
    assert after["models"][name]["trained_at"] != data["models"][name]["trained_at"]
    assert after["models"] and after["quality"] == {} and after["quality_at"] is None


def test_a_source_fitted_afresh_by_ecm_gets_its_quality_measured(haven, synthetic, tmp_path,
                                                                 monkeypatch, backend):
    """No kept model usable for A&E and too few labels to train one: its rows are linked by
    an ECM fit made in the run (never kept), so the quality is measured again, not carried."""
    _first_build(haven, synthetic)
    _month(haven, synthetic, tmp_path / "month")
    real = kept_models.KeptModels.usable
    monkeypatch.setattr(kept_models.KeptModels, "usable",
                        lambda self, source, *a: None if source == "ae" else real(
                            self, source, *a))
    monkeypatch.setattr(index_matcher, "fit_supervised", lambda *a, **k: None)
    said: list[str] = []
    summary = _update(haven, said)
    assert not any("ae: linked with the model" in line for line in said)
    assert "estimating linkage quality on rows whose NHS number is known" in said
    assert not any("measured_at" in rates for rates in summary.quality.values())


def test_a_forced_retrain_is_on_record(haven, synthetic, backend):
    """`retrain` (the command's `--retrain`, a link job's) is in the link run's audit event:
    an IG lead can see who made every model be trained again."""
    from sqlalchemy import select

    from governance.schema import audit_log
    from pipeline.link import link

    land(haven, synthetic)
    link(haven)
    link(haven, retrain=True)
    with haven.engine.connect() as connection:
        asked = [row.detail.get("retrain") for row in connection.execute(
            select(audit_log.c.detail).where(audit_log.c.action == "link.run")
            .order_by(audit_log.c.seq))]
    assert asked == [False, True]
