"""The probabilistic step hands back the prior it linked each source at (`Matched.priors`),
so that the quality estimate links its held-out rows at the same one (issue #12): a source
is linked at its measured coverage, and every counted source's prior is there, pending rows
or not."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from linkage.index_matching import coverage, match_pending, read_rows
from linkage.person_index import landed_extracts
from pipeline.land import land
from synth import generate

pytestmark = pytest.mark.parametrize("backend", [""])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(300, 5, out, progress=False)
    return out


def _pending(haven, landed: pd.DataFrame) -> dict[str, set]:
    """{extract_id: rows without a pseudonym}: the rows the probabilistic step links."""
    todo = {}
    for extract_id in landed["extract_id"]:
        rows = read_rows(haven.settings, extract_id, encodings=False)
        missing = set(rows.loc[rows["person_id"].isna(), "row"].tolist())
        if missing:
            todo[extract_id] = missing
    return todo


def test_each_source_is_linked_at_its_coverage_and_the_priors_are_returned(
        haven, synthetic, tmp_path, backend) -> None:
    land(haven, synthetic)
    landed = landed_extracts(haven.engine)
    source_of = dict(zip(landed["extract_id"], landed["source"], strict=True))
    todo = _pending(haven, landed)
    pending = {source_of[e] for e in todo}
    assert len(pending) >= 2
    # made-up counts: each pending source a coverage of its own, and one source not pending
    counts = {source: (100 + 10 * i, 60 + 7 * i) for i, source in enumerate(sorted(pending))}
    counts["deaths"] = (40, 39)
    used: dict[str, float] = {}

    def recording(query: pd.DataFrame, profile, prior: float, labelled) -> pd.DataFrame:
        used[source_of[str(query["extract_id"].iloc[0])]] = prior
        return pd.DataFrame({"query": [], "profile": [], "weight": [], "probability": [],
                             "band": []})

    matched = match_pending(haven.settings, landed, recording, lambda _m: None, todo, counts,
                            tmp_path / "scratch")
    want = {source: coverage(*found) for source, found in counts.items()}
    assert matched.priors == want
    assert len(set(want.values())) == len(want)  # a source's prior is its own
    assert used and all(used[s] == want[s] for s in used)
    assert "deaths" not in used and matched.priors["deaths"] == pytest.approx(39 / 40)


def test_labelled_examples_past_the_cap_are_a_sample_of_whole_persons(
        haven, synthetic, tmp_path, monkeypatch, backend) -> None:
    """The matcher and the quality estimate get each source's labelled rows capped
    (`LABELLED_ROWS`): a sample of persons, every row of a kept person."""
    from linkage import index_matching
    from linkage.landing import pseudonymise

    # one person in five labelled (not fifty): enough persons per source that a sample of a
    # third of them is neither all nor none, whatever this run's keys make the pseudonyms
    monkeypatch.setattr(pseudonymise, "TRAINING_SHARE", 5)
    land(haven, synthetic)
    landed = landed_extracts(haven.engine)
    todo = _pending(haven, landed)

    def nothing(query: pd.DataFrame, profile, prior: float, labelled) -> pd.DataFrame:
        return pd.DataFrame({"query": [], "profile": [], "weight": [], "probability": [],
                             "band": []})

    def examples(scratch: str) -> pd.DataFrame:
        return match_pending(haven.settings, landed, nothing, lambda _m: None, todo, {},
                             tmp_path / scratch).examples

    whole = examples("a")
    per_source = whole.groupby("source").size()
    assert whole.groupby("source")["person_id"].nunique().max() >= 20
    monkeypatch.setattr(index_matching, "LABELLED_ROWS", int(per_source.max()) // 3)
    capped = examples("b")
    sizes = capped.groupby("source").size().reindex(per_source.index, fill_value=0)
    assert (sizes <= per_source).all() and sizes[per_source.idxmax()] < per_source.max()
    rows = whole.groupby(["source", "person_id"]).size()
    kept = capped.groupby(["source", "person_id"]).size()
    assert (rows[kept.index] == kept).all()  # a kept person's rows, all of them
