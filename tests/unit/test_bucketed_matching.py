"""Attacks on matching against a register held in buckets of persons
(`linkage.profile_store`, `linkage.index_matcher`): on inputs chosen to split what one bucket
decides (equally good candidates in different buckets, a person with profiles from several
extracts, empty buckets, a bucket where a field is all null, Bloom filters held as fixed-size
binary, profiles left out at the edges of buckets, query rows with no candidate, the ECM
fallback), the links, review pairs, weights and quality figures are those of one bucket."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from linkage import index_matcher
from linkage.encodings import encode_identifiers
from linkage.index_matcher import estimate_quality, match_profiles
from linkage.probabilistic import Encoded
from linkage.probabilistic.blocking import key_counts, usable_passes
from linkage.profile_store import ProfileStore, ProfileWriter, person_buckets

KEY = bytes(range(32))  # a test's own linkage key (synthetic identifiers only)
FORENAMES = ["ANN", "BOB", "CARL", "DAWN", "ERIC", "FAY", "GUS", "HANNAH", "IAN", "JO"]
SURNAMES = ["LEE", "SMITH", "JONES", "KHAN", "PATEL", "BROWN", "TAYLOR", "WILSON"]


def _people(n: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame({
        "forename": rng.choice(FORENAMES, n), "surname": rng.choice(SURNAMES, n),
        "date_of_birth": [f"{y}-{m:02d}-{d:02d}" for y, m, d in zip(
            rng.integers(1950, 1956, n), rng.integers(1, 4, n), rng.integers(1, 5, n),
            strict=True)],
        "sex": rng.choice(["M", "F"], n),
        "postcode": rng.choice(["LS1 4AB", "LS1 4AD", "M1 1AA", "M1 2BB"], n),
    })


def _noisy(people: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    out = people.copy()
    for column in ("forename", "postcode", "date_of_birth"):
        hit = rng.random(len(out)) < 0.15
        out.loc[hit, column] = None
    swap = rng.random(len(out)) < 0.1
    out.loc[swap, "surname"] = out.loc[swap, "surname"].str[:-1] + "E"
    return out


def _world(seed: int = 3, persons: int = 160, twin_share: float = 0.5
           ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(profiles, query rows, labelled examples). A quarter of the persons have a clone: a
    different person with the very same identifiers (equally good candidates, which may
    fall in different buckets); about `twin_share` have a second profile in another extract."""
    rng = np.random.default_rng(seed)
    people = _people(persons, rng)
    clones = people.iloc[: persons // 4]
    people = pd.concat([people, clones], ignore_index=True)
    ids = [f"{v:064x}" for v in rng.integers(0, 2**62, len(people))]
    people["person_id"] = ids
    twins = people[rng.random(len(people)) < twin_share]
    profiles = pd.concat([people.assign(source="gp_patients", extract_id="gp"),
                          _noisy(twins, rng).assign(source="social_care", extract_id="sc")],
                         ignore_index=True)
    profiles = profiles.iloc[rng.permutation(len(profiles))].reset_index(drop=True)
    profiles["row"] = np.arange(len(profiles), dtype=np.int64)
    wanted = people.iloc[rng.choice(len(people), 90, replace=False)]
    strangers = _people(15, np.random.default_rng(seed + 100))  # mostly no candidate
    strangers["date_of_birth"] = "1901-07-09"
    strangers["postcode"] = "ZZ9 9ZZ"
    strangers["forename"] = "XAVIERA"
    query = pd.concat([_noisy(wanted, rng), strangers], ignore_index=True)
    query = _encoded(query.assign(extract_id="acute", row=np.arange(len(query))))
    examples = _encoded(profiles.iloc[::3].assign(extract_id="acute"))
    return _encoded(profiles), query.drop(columns=["person_id"]), examples


def _encoded(frame: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in ("extract_id", "row", "person_id", "source") if c in frame.columns]
    return pd.concat([frame[keep].reset_index(drop=True),
                      encode_identifiers(frame.reset_index(drop=True), KEY)], axis=1)


def _store(profiles: pd.DataFrame, folder: Path, bucket_rows: int,
           fixed: bool = False) -> ProfileStore:
    """`profiles` written in buckets, in batches that split persons; `fixed`: Bloom filters
    of one length as fixed-size binary (as link writes a register's)."""
    schema = pa.Schema.from_pandas(profiles, preserve_index=False)
    if fixed:
        for name in profiles.columns:
            lengths = profiles[name].dropna().map(len).unique() if name.endswith("__bf") else []
            if len(lengths) == 1:
                schema = schema.set(schema.get_field_index(name),
                                    pa.field(name, pa.binary(int(lengths[0]))))
    writer = ProfileWriter(folder, len(profiles), schema, bucket_rows=bucket_rows)
    for start in range(0, len(profiles), 37):
        writer.add(pa.Table.from_pandas(profiles.iloc[start:start + 37], preserve_index=False))
    store = writer.close()
    assert len(store.buckets) > 1 and store.n == len(profiles)
    return store


def _same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12, atol=0)


def test_equally_good_candidates_in_different_buckets_match_as_in_one(tmp_path: Path) -> None:
    """Clones (two persons, the same identifiers) share a query row's probability: in
    different buckets their evidence is summed as in one, so neither is linked."""
    profiles, query, examples = _world()
    store = _store(profiles, tmp_path / "b", bucket_rows=40, fixed=True)
    one = match_profiles(query, profiles, 0.95, examples)
    # the clones make equally good candidates; some fall in different buckets
    counts = len(store.buckets)
    buckets = person_buckets(pa.array(profiles["person_id"]), counts)
    assert (one["band"] == "review").any() and (one["band"] == "link").sum() > 20
    spread = [len(set(buckets[profiles["person_id"] == p])) for p in profiles["person_id"]]
    assert max(spread) == 1  # a person's profiles share a bucket
    same = profiles.filter(like="lk_").apply(lambda c: c.map(repr)).agg("|".join, axis=1)
    clones = profiles[same.duplicated(keep=False)].assign(bucket=buckets[same.duplicated(
        keep=False).to_numpy()], same=same)
    assert (clones.groupby("same")["bucket"].nunique() > 1).sum() > 3  # ties cross buckets
    _same(match_profiles(query, store, 0.95, examples), one)
    _same(match_profiles(query, store, 0.95), match_profiles(query, profiles, 0.95))
    # not one row of the query is lost or gained when no row has any candidate at all
    strangers = query.iloc[-15:].reset_index(drop=True)
    assert match_profiles(strangers, store, 0.95, examples).empty
    assert match_profiles(strangers, profiles, 0.95, examples).empty


@pytest.mark.parametrize("fixed", [False, True])
def test_a_bucket_with_a_field_all_null_and_empty_buckets(tmp_path: Path, fixed: bool) -> None:
    profiles, query, examples = _world(seed=5)
    count = 9
    bucket = person_buckets(pa.array(profiles["person_id"]), count)
    surname = [c for c in profiles.columns if c.startswith("lk_surname")]
    profiles.loc[bucket == 0, surname] = None  # bucket 0 holds no surname at all
    store = _store(profiles, tmp_path / "b", bucket_rows=-(-len(profiles) // count),
                   fixed=fixed)
    assert len(store.buckets) == count
    nulls = [part[surname].isna().all().all()
             for _, part in store.frames(["person_id", *surname])]
    assert nulls[0] and not all(nulls)
    _same(match_profiles(query, store, 0.95, examples),
          match_profiles(query, profiles, 0.95, examples))
    # far more buckets than persons: most are empty
    small = profiles.iloc[:50].reset_index(drop=True)
    sparse = _store(small, tmp_path / "s", bucket_rows=1, fixed=fixed)
    assert sum(len(part) == 0 for _, part in sparse.frames(["person_id"])) > 5
    for labelled in (examples, None):
        _same(match_profiles(query, sparse, 0.95, labelled),
              match_profiles(query, small, 0.95, labelled))


def test_profiles_left_out_at_bucket_edges_and_views_of_views(tmp_path: Path,
                                                               monkeypatch) -> None:
    profiles, query, examples = _world(seed=7)
    store = _store(profiles, tmp_path / "b", bucket_rows=50, fixed=True)
    edges = []
    for positions, _ in store.frames(["person_id"]):
        edges += [positions[0], positions[-1]]  # each bucket's first and last profile
    gone = np.unique(np.array(edges))
    rest = store.without(gone)
    kept = profiles.drop(index=gone).reset_index(drop=True)
    want = match_profiles(query, kept, 0.95, examples)
    _same(match_profiles(query, rest, 0.95, examples), want)
    again = rest.without(np.array([0, 1, rest.n - 1]))
    kept2 = kept.drop(index=[0, 1, len(kept) - 1]).reset_index(drop=True)
    assert again.persons == kept2["person_id"].nunique()
    _same(match_profiles(query, again, 0.95), match_profiles(query, kept2, 0.95))
    # blocks sized on the view (the register less those left out), not on a bucket of it
    monkeypatch.setattr(index_matcher, "MAX_BLOCK_PAIRS", 5)
    capped = match_profiles(query, kept, 0.95, examples)
    assert not capped.equals(want)  # the cap bites
    _same(match_profiles(query, rest, 0.95, examples), capped)
    monkeypatch.undo()
    # quality: social care rows linked against the rest with their own left out
    assert estimate_quality(store, examples) == estimate_quality(profiles, examples)
    assert estimate_quality(store, examples)["social_care"]["evaluated_rows"] > 20


def test_ecm_fallback_and_oversized_blocks_with_several_buckets(tmp_path: Path,
                                                                monkeypatch) -> None:
    profiles, query, _ = _world(seed=11, twin_share=0.0)  # no twins, no examples: ECM
    assert index_matcher.train_on_profiles(profiles, [c for c in query.columns
                                                      if c.startswith("lk_")]) is None
    store = _store(profiles, tmp_path / "b", bucket_rows=30, fixed=True)
    ecm = match_profiles(query, profiles, 0.95)
    assert len(ecm) > 10
    _same(match_profiles(query, store, 0.95), ecm)
    monkeypatch.setattr(index_matcher, "MAX_BLOCK_PAIRS", 4)  # no bucket alone is oversized
    capped = match_profiles(query, profiles, 0.95)
    assert not capped.equals(ecm)
    _same(match_profiles(query, store, 0.95), capped)
    twinned, query2, examples = _world(seed=11)
    many = _store(twinned, tmp_path / "t", bucket_rows=30)
    _same(match_profiles(query2, many, 0.95, examples),
          match_profiles(query2, twinned, 0.95, examples))


def test_register_tallies_are_each_pass_own_read_once_and_a_views_own(tmp_path: Path,
                                                                       monkeypatch) -> None:
    """The whole register's key counts, kept per store and per blocking pass: each pass's are
    that pass's (one pass's counts served for another changes which blocks are oversized),
    the buckets are read for them once however many matches follow, and a view less some
    profiles counts without them."""
    profiles, query, examples = _world(seed=13)
    store = _store(profiles, tmp_path / "b", bucket_rows=40, fixed=True)
    whole, asked = Encoded(profiles), Encoded(query)
    passes = usable_passes(asked, whole, index_matcher.INDEX_PASSES)
    tallies = index_matcher.register_tallies(store, passes)
    wanted = {cols: key_counts(asked.pass_key(cols), whole.pass_key(cols)) for cols in passes}
    for cols in passes:
        np.testing.assert_array_equal(tallies[cols].counts_for(asked.pass_key(cols)),
                                      wanted[cols])
    assert len({tuple(counts) for counts in wanted.values()}) > 5  # a swap would be seen
    # a fresh store, warmed by a source carrying fewer fields (fewer passes), then matched
    # with the blocks capped so that the whole register's counts decide what is skipped
    fresh = _store(profiles, tmp_path / "c", bucket_rows=40, fixed=True)
    keyed_reads = []
    frames = fresh.frames

    def counting(columns):
        if "person_id" not in columns:  # the tallies' read: blocking keys only
            keyed_reads.append(tuple(columns))
        return frames(columns)

    monkeypatch.setattr(fresh, "frames", counting)
    few = query.drop(columns=[c for c in query.columns if c.startswith("lk_surname")])
    _same(match_profiles(few, fresh, 0.95, examples),
          match_profiles(few, profiles, 0.95, examples))
    monkeypatch.setattr(index_matcher, "MAX_BLOCK_PAIRS", 5)
    capped = match_profiles(query, profiles, 0.95, examples)
    assert not capped.equals(match_profiles(query, profiles, 0.95))  # the cap bites
    _same(match_profiles(query, fresh, 0.95, examples), capped)
    assert len(keyed_reads) == 1  # two sources' matches (four plans), one read of the keys
    # a view less some profiles has tallies of its own, counted without them
    rest = store.without(np.arange(0, store.n, 3))
    kept = Encoded(profiles.drop(index=np.arange(0, len(profiles), 3)).reset_index(drop=True))
    mine = index_matcher.register_tallies(rest, passes)
    for cols in passes:
        np.testing.assert_array_equal(mine[cols].counts_for(asked.pass_key(cols)),
                                      key_counts(asked.pass_key(cols), kept.pass_key(cols)))


def _with_strangers(seed: int) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(register, a hospital source's labelled rows, how many of those rows' persons are on
    the register). A third of the labelled rows are of persons the register lacks, each a
    lookalike of a registered person (kin: the same surname, birth date and postcode, any
    forename and sex)."""
    rng = np.random.default_rng(seed)
    people = _people(240, rng)
    people["person_id"] = [rng.bytes(32).hex() for _ in range(len(people))]
    register = _encoded(people.assign(source="gp_patients", extract_id="gp",
                                      row=np.arange(len(people))))
    registered = _noisy(people.iloc[rng.integers(0, len(people), 400)], rng)
    strangers = _noisy(people.iloc[:200], rng)
    strangers["forename"] = rng.choice(FORENAMES, len(strangers))  # kin, not the person
    strangers["sex"] = rng.choice(["M", "F"], len(strangers))
    strangers["person_id"] = [rng.bytes(32).hex() for _ in range(len(strangers))]
    rows = pd.concat([registered, strangers], ignore_index=True)
    labelled = _encoded(rows.assign(source="acute", extract_id="acute",
                                    row=np.arange(len(rows))))
    return register, labelled, len(registered)


def test_quality_links_held_out_rows_at_the_prior_production_used(tmp_path: Path) -> None:
    """The labelled sample is chosen by person, not by registration, so its held-out rows
    include persons the register lacks in the share the source's rows do. Linked at 0.999
    they are pushed onto lookalikes (false matches production does not make); linked at
    the source's measured coverage, as production links it, they are what production does
    with such rows: the same links as matching them at that prior."""
    from linkage.index_matching import coverage

    register, labelled, known = _with_strangers(seed=21)
    prior = coverage(len(labelled), known)
    assert 0.6 < prior < 0.75
    measured = estimate_quality(register, labelled, {"acute": prior})["acute"]
    assumed = estimate_quality(register, labelled)["acute"]  # no prior known: 0.999
    # what production matching does with the held-out half at its prior, counted here
    person = labelled["person_id"]
    half = person.map(lambda p: int(str(p)[6:10], 16) % 2 == 0).to_numpy()
    train, test = labelled[half], labelled[~half].reset_index(drop=True)
    fields = [c for c in labelled.columns if c.startswith("lk_")]
    links = match_profiles(test[["extract_id", "row", *fields]], register, prior, train)
    links = links[links["band"] == "link"]
    truth = test["person_id"].to_numpy(dtype=object)[links["query"].to_numpy(dtype=np.int64)]
    wrong = int((truth != register["person_id"].to_numpy(dtype=object)[
        links["profile"].to_numpy(dtype=np.int64)]).sum())
    assert wrong > 0 and measured["false_match_rate"] == round(wrong / len(links), 5)
    assert assumed["false_match_rate"] > measured["false_match_rate"] + 0.02
    # a stranger's row left unlinked is right: missed matches are counted over rows whose
    # person is registered, and the rest are counted apart
    on_register = test["person_id"].isin(set(register["person_id"])).to_numpy()
    assert measured["unregistered_rows"] == int((~on_register).sum()) > 50
    assert measured["evaluated_rows"] == len(test)
    right = len(links) - wrong
    assert measured["missed_match_rate"] == round(1 - right / on_register.sum(), 5)
    # the same held in buckets
    store = _store(register, tmp_path / "b", bucket_rows=60)
    assert estimate_quality(store, labelled, {"acute": prior}) == estimate_quality(
        register, labelled, {"acute": prior})


def test_a_model_learnt_from_twins_trains_on_a_sample_of_fixed_size(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """Past `most` twin profiles, a sample of persons (all of a person's profiles, chosen by
    pseudonym) trains the model: bounded in size, the same however the register is ordered
    or bucketed, and learning the weights the whole set does."""
    profiles, query, _ = _world(seed=13, persons=1200, twin_share=0.6)
    fields = [c for c in query.columns if c.startswith("lk_")]
    seen: list[pd.Series] = []
    fit = index_matcher.fit_supervised

    def spy(query_rows, person_q, *args, **kwargs):
        seen.append(person_q.reset_index(drop=True))
        return fit(query_rows, person_q, *args, **kwargs)

    monkeypatch.setattr(index_matcher, "fit_supervised", spy)
    whole = index_matcher.train_on_profiles(profiles, fields)
    twins = len(seen[-1])
    assert twins > 800
    most = twins // 3
    sampled = index_matcher.train_on_profiles(profiles, fields, most=most)
    sample = seen[-1]
    assert most // 2 <= len(sample) <= most * 1.3  # bounded, and not a handful
    assert (sample.value_counts() >= 2).all()  # a sampled person's twins come together
    # the same persons sampled from the register shuffled; the same model from it in buckets
    shuffled = profiles.iloc[np.random.default_rng(1).permutation(len(profiles))]
    index_matcher.train_on_profiles(shuffled.reset_index(drop=True), fields, most=most)
    assert sorted(seen[-1]) == sorted(sample)
    bucketed = index_matcher.train_on_profiles(
        _store(profiles, tmp_path / "b", bucket_rows=300), fields, most=most)
    assert list(seen[-1]) == list(sample)
    assert _flat(bucketed.level_weights) == pytest.approx(_flat(sampled.level_weights),
                                                         rel=1e-12)
    # what the sample learns is what the whole set learns: the agreement levels' weights to
    # within sampling error; a disagreement no true pair shows stays strongly against (its
    # weight rests on the smoothing of a zero count, so on the sample's size: log2(3) here)
    for key, weight in _flat(whole.level_weights).items():
        got = _flat(sampled.level_weights)[key]
        if weight > 0:
            assert got == pytest.approx(weight, abs=0.5), key
        else:
            assert (got < -1) == (weight < -1) and got <= weight + 2.5, key
    assert sampled.level_weights != whole.level_weights  # the sample is a sample


def _flat(weights: dict[str, dict[int, float]]) -> dict[tuple[str, int], float]:
    return {(name, level): w for name, levels in weights.items() for level, w in levels.items()}
