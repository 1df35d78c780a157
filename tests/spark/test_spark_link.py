"""The person index's probabilistic step on Spark (`pipeline/engines/spark_link.py`): each
bucket of the register's persons matched in a Spark task gives exactly the embedded engine's
matches, model and quality figures; `haven link` with HAVEN_ENGINE=spark on a register of
several buckets runs Spark jobs and gives every landed row the embedded engine's person, the
first time and again after a month lands (the kept linkage models reused); a destruction
re-links on Spark and certifies the same counts."""

from __future__ import annotations

import functools
import gc
import json
import operator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from spark_fixtures import (
    CANARY,
    comparable_links,
    spark_fixture,  # noqa: F401 - the shared `spark` session
)
from sqlalchemy import select
from unit.test_bucketed_matching import _store, _world

from cli.main import main
from conftest import key_environment
from factories import later_ae_extract
from governance import retention
from governance.schema import extracts as extract_table
from governance.settings import Settings
from linkage import index_matcher, profile_store
from linkage.index_matcher import estimate_quality, in_order, match_profiles
from linkage.person_index import read_link_map
from pipeline import govern
from pipeline.context import Context
from pipeline.engines.spark_link import bucket_mapper
from synth import generate


def _jobs(spark: Any) -> int:
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup())


def test_buckets_matched_on_spark_equal_those_matched_here(spark: Any, tmp_path: Path,
                                                           monkeypatch) -> None:
    profiles, query, examples = _world(seed=3)
    store = _store(profiles, tmp_path / "b", bucket_rows=40, fixed=True)
    on_spark = bucket_mapper(spark, tmp_path / "handover")  # as `haven link` runs it
    before = _jobs(spark)
    for labelled in (examples, None):  # trained on the examples, or on profile twins
        want = match_profiles(query, store, 0.95, labelled, in_order)
        got = match_profiles(query, store, 0.95, labelled, on_spark)
        assert (want["band"] == "link").sum() > 20 and (want["band"] == "review").any()
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert _jobs(spark) >= before + 4  # training and scoring, twice, each a Spark job
    # a view less some profiles (the quality estimate's), and blocks capped on the register
    rest = store.without(np.arange(0, store.n, 5))
    pd.testing.assert_frame_equal(match_profiles(query, rest, 0.95, examples, on_spark),
                                  match_profiles(query, rest, 0.95, examples), check_exact=True)
    want = match_profiles(query, store, 0.95, examples)
    monkeypatch.setattr(index_matcher, "MAX_BLOCK_PAIRS", 5)  # executors see the cap too
    capped = match_profiles(query, store, 0.95, examples)
    assert not capped.equals(want)
    pd.testing.assert_frame_equal(match_profiles(query, store, 0.95, examples, on_spark),
                                  capped, check_exact=True)
    monkeypatch.undo()
    quality = estimate_quality(store, examples, {"acute": 0.9}, map_buckets=on_spark)
    assert quality == estimate_quality(store, examples, {"acute": 0.9})
    assert quality["social_care"]["evaluated_rows"] > 20


def test_a_kept_model_links_on_spark_as_here_without_training_again(spark: Any,
                                                                   tmp_path: Path,
                                                                   monkeypatch) -> None:
    """A link that reuses a kept linkage model (`linkage.kept_models`) sends it to the
    executors as it is: the matches made here with it, and one Spark job (scoring), none to
    find training pairs."""
    profiles, query, examples = _world(seed=3)
    store = _store(profiles, tmp_path / "b", bucket_rows=40, fixed=True)
    trained = match_profiles(query, store, 0.95, examples, in_order)
    model = trained.attrs["model"]
    assert model is not None and (trained["band"] == "link").sum() > 20

    def no_training(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a kept model was trained again")

    monkeypatch.setattr(index_matcher, "fit_supervised", no_training)
    before = _jobs(spark)
    got = match_profiles(query, store, 0.95, examples, bucket_mapper(spark), model=model)
    assert _jobs(spark) == before + 1
    assert got.attrs["model"] is model
    pd.testing.assert_frame_equal(got, trained, check_exact=True)


def test_tasks_run_in_spark_jobs_and_come_back_in_bucket_order(spark: Any,
                                                               tmp_path: Path) -> None:
    """The mapper runs each bucket's task in a Spark job, one bucket a partition, and gives
    the results back in bucket order; a store of one bucket is matched here (no job)."""
    before = _jobs(spark)
    assert bucket_mapper(spark)(str, 7) == [str(i) for i in range(7)]
    assert _jobs(spark) == before + 1
    assert bucket_mapper(spark)(str, 1) == ["0"]
    assert _jobs(spark) == before + 1
    assert list(bucket_mapper(spark, tmp_path)(str, 7)) == [str(i) for i in range(7)]
    assert _jobs(spark) == before + 2
    assert list(tmp_path.iterdir()) == []


def test_results_handed_over_are_read_one_bucket_at_a_time(spark: Any, tmp_path: Path) -> None:
    """With a scratch folder, the job leaves each bucket's result there sealed and the
    driver reads them in bucket order as the caller comes to them, removing each file as it
    is read and the folder after the last (or when the caller stops): the driver holds one
    bucket's results, not every bucket's."""
    mapper = bucket_mapper(spark, tmp_path)
    results = iter(mapper(functools.partial(operator.mul, "haven-result;"), 5))
    [folder] = list(tmp_path.iterdir())  # every bucket matched before the first is read
    assert len(list(folder.iterdir())) == 5
    assert next(results) == ""
    assert len(list(folder.iterdir())) == 4
    for value in list(folder.iterdir()):
        assert b"haven-result;" not in value.read_bytes()  # sealed, not the result in clear
    assert [r.count(";") for r in results] == [1, 2, 3, 4]
    assert list(tmp_path.iterdir()) == []
    stopped = iter(mapper(str, 4))
    assert next(stopped) == "0"
    stopped.close()  # as when the matcher fails half-way
    assert list(tmp_path.iterdir()) == []
    never_read = mapper(str, 3)  # a caller that fails before it reads a result
    assert any(tmp_path.iterdir())
    del never_read
    gc.collect()
    assert list(tmp_path.iterdir()) == []
    read = bucket_mapper(spark, tmp_path)(str, 3)
    assert list(read) == ["0", "1", "2"]  # its folder removed: its name free again
    kept = bucket_mapper(spark, tmp_path)(str, 3)
    del read  # collected later, it never takes a later call's folder with it
    gc.collect()
    assert list(kept) == ["0", "1", "2"]


def test_a_file_planted_among_the_results_is_refused_unopened(spark: Any,
                                                             tmp_path: Path) -> None:
    """A file put in place of a bucket's result (a pickle that would run code when loaded,
    or another bucket's sealed result) is refused before it is unpickled."""
    import pickle

    ran = tmp_path / "ran"

    class Planted:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (ran,))

    for swap in (False, True):
        results = iter(bucket_mapper(spark, tmp_path / "s")(str, 3))
        [folder] = list((tmp_path / "s").iterdir())
        names = sorted(p.name for p in folder.iterdir())
        target = folder / names[0]
        if swap:  # another bucket's sealed result under this one's name
            target.write_bytes((folder / names[1]).read_bytes())
        else:
            target.write_bytes(pickle.dumps(Planted()))
        with pytest.raises(RuntimeError, match="not sealed by this link"):
            list(results)
        assert not ran.exists()
        assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_no_executor_worker_holds_a_haven_key(spark: Any) -> None:
    """The session started with a key in the driver's environment (spark_fixtures' canary, as
    `haven` run with HAVEN_KEY_* has); local executors' Python workers copy the JVM's
    environment, which must not have it (pipeline.engines.spark_session.keys_withheld)."""
    import os

    held = spark.sparkContext.parallelize(range(2), 2).map(
        lambda _: sorted(k for k in os.environ if k.startswith("HAVEN_KEY_"))).collect()
    assert held == [[], []]
    assert CANARY.startswith("HAVEN_KEY_")


def _holds_no_key_or_identifier(payloads: list[bytes]) -> None:
    """None of `payloads` (pickled as a broadcast is) holds the world's linkage key, or one of
    its names, dates of birth or postcodes in clear (`_world(seed=3)`'s own people)."""
    from unit.test_bucketed_matching import KEY, _people

    assert payloads
    clear = _people(160, np.random.default_rng(3))
    values = {str(v).encode() for c in clear.columns for v in clear[c]}
    for payload in payloads:
        assert KEY not in payload
        assert not [v for v in values if len(v) > 3 and v in payload]


def test_what_a_bucket_task_is_sent_holds_no_key_and_no_identifier(tmp_path: Path) -> None:
    """Everything shipped to an executor for a match (the task and its `BucketJob`, pickled
    as a broadcast is) holds keyed encodings, a model and counts: not the linkage key, and
    not one of the query rows' or profiles' names, dates of birth or postcodes in clear."""
    import pickle

    profiles, query, examples = _world(seed=3)
    store = _store(profiles, tmp_path / "b", bucket_rows=40)
    shipped: list[bytes] = []

    def recording(task: Any, count: int) -> list[Any]:
        shipped.append(pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL))
        return in_order(task, count)

    pd.testing.assert_frame_equal(match_profiles(query, store, 0.95, examples, recording),
                                  match_profiles(query, store, 0.95, examples))
    assert len(shipped) == 2  # the training pairs' tasks, then the scoring's
    _holds_no_key_or_identifier(shipped)


def test_what_a_spark_link_broadcasts_holds_no_haven_key_and_no_identifier(
        spark: Any, tmp_path: Path, monkeypatch) -> None:
    """What reaches the executors in a match on Spark (the task, its `BucketJob` and the
    hand-over's sealing key, a key made for the call): not the linkage key, and not one of the
    world's names, dates of birth or postcodes in clear."""
    import pickle

    from pipeline.engines import spark_link

    profiles, query, examples = _world(seed=3)
    store = _store(profiles, tmp_path / "b", bucket_rows=40, fixed=True)
    sent: list[bytes] = []
    real = spark_link.broadcast

    def recording(session: Any, value: Any) -> Any:
        sent.append(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        return real(session, value)

    monkeypatch.setattr(spark_link, "broadcast", recording)
    match_profiles(query, store, 0.95, examples, bucket_mapper(spark, tmp_path / "h"))
    assert len(sent) == 2  # the training pairs' tasks, then the scoring's
    _holds_no_key_or_identifier(sent)


def _home(home: Path, extracts: Path, month: Path, keys: dict[str, str],
          engine: str) -> dict[str, Any]:
    """Land and link on `engine`; land a month and link again (the kept linkage models
    reused); then destroy a social care extract (its links re-made against the register that
    is left) and say what each step gave."""
    env = {"HAVEN_HOME": str(home), "HAVEN_ENGINE": engine, **keys}
    assert main(["land", str(extracts)], env) == 0
    assert main(["link"], env) == 0
    haven = Context(Settings.from_environ(env))
    linked, _ = comparable_links(haven.settings)
    kept = json.loads(haven.settings.layout.link_models.read_text(encoding="utf-8"))
    assert kept["models"]
    assert main(["land", str(month)], env) == 0
    assert main(["link"], env) == 0
    again = json.loads(haven.settings.layout.link_models.read_text(encoding="utf-8"))
    assert again["models"] == kept["models"]  # reused as they were: none trained again
    relinked, _ = comparable_links(haven.settings)
    assert len(relinked) > len(linked)
    with haven.engine.connect() as connection:
        # the same extract on both homes: by sender (extract ids are each landing's own)
        social = [row.extract_id for row in sorted(connection.execute(select(
            extract_table.c.extract_id, extract_table.c.sender).where(
            extract_table.c.source == "social_care")), key=lambda row: row.sender)]
        assert len(social) > 1
    certificate = retention.destroy(haven.settings, haven.engine, social[:1], haven.actor,
                                    "test", govern.dependents(haven), checks=govern.checks(haven))
    after, _ = comparable_links(haven.settings)
    haven.engine.dispose()
    return {"linked": linked, "relinked": relinked, "after": after,
            "counts": certificate.counts, "remaining": certificate.remaining}


def test_link_and_destruction_on_spark_equal_the_embedded_engine(spark: Any, tmp_path: Path,
                                                                  monkeypatch) -> None:
    # a register of several buckets, so the Spark engine has buckets to send
    monkeypatch.setattr(profile_store, "BUCKET_ROWS", 90)
    # and models trained on this small world's few labelled rows, so they are kept and the
    # second link reuses them (the driver reads the threshold: both engines see it)
    monkeypatch.setattr(index_matcher, "MIN_LABELLED", 10)
    extracts = tmp_path / "extracts"
    generate(400, 4, extracts, progress=False)
    month = later_ae_extract(extracts, tmp_path / "month").parent
    keys = key_environment()
    before = _jobs(spark)
    embedded = _home(tmp_path / "embedded", extracts, month, keys, "embedded")
    assert _jobs(spark) == before  # the embedded engine uses no Spark
    on_spark = _home(tmp_path / "spark", extracts, month, keys, "spark")
    assert _jobs(spark) > before  # landing's batches and link's buckets ran on Spark
    probabilistic = embedded["linked"]["method"] == "probabilistic"
    assert probabilistic.sum() > 5  # there were rows for the buckets to link
    pd.testing.assert_frame_equal(on_spark["linked"], embedded["linked"])
    # a second link, with the kept models, on Spark as here
    pd.testing.assert_frame_equal(on_spark["relinked"], embedded["relinked"])
    pd.testing.assert_frame_equal(on_spark["after"], embedded["after"])
    assert on_spark["counts"] == embedded["counts"]
    assert on_spark["remaining"] == embedded["remaining"]
    assert not any(on_spark["remaining"].values())
    assert embedded["counts"]["index_rows_removed"] > 0


@pytest.mark.parametrize("engine", ["embedded", "spark"])
def test_link_starts_no_spark_for_a_register_of_one_bucket(spark: Any, tmp_path: Path,
                                                           engine: str) -> None:
    """A register small enough to hold in memory is matched in the driver: no Spark job."""
    extracts = tmp_path / "extracts"
    generate(120, 4, extracts, progress=False)
    env = {"HAVEN_HOME": str(tmp_path / "home"), "HAVEN_ENGINE": "embedded",
           **key_environment()}
    assert main(["land", str(extracts)], env) == 0
    before = _jobs(spark)
    assert main(["link"], {**env, "HAVEN_ENGINE": engine}) == 0
    assert _jobs(spark) == before
    assert len(read_link_map(Settings.from_environ(env))) > 1000
