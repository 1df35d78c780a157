"""The person index's probabilistic step: rows without a valid NHS number against person profiles.

A query row (no pseudonym) may belong to any profile (a register row with a pseudonym), and
several query rows may belong to one person, so this is not one-to-one linkage: each query
takes its most probable person when that probability reaches `UPPER`; a best probability
between `LOWER` and `UPPER` (weak evidence, or two persons alike) goes to the review list.

`estimate_quality` measures the method on labels the data gives for free: profile rows that do
carry a pseudonym are linked as if they did not, and their links are checked against it.

The profiles come as a `ProfileStore`: a bucket of persons at a time, so memory holds one
bucket's profiles and blocks, not the register. Blocks are sized on the whole register
(`_totals`, from each blocking pass's key tally, counted once per store: `register_tallies`);
a person's profiles share a bucket, so each query row's best pair per person is
found within one, and only its sum of evidence and its best pair are carried across buckets,
folded as each bucket's results come (`linkage.bucket_best`). A DataFrame of profiles is
taken as a store of one bucket.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from linkage.bucket_best import BestOverBuckets, best_in_part
from linkage.encodings import PREFIX
from linkage.probabilistic import (
    DEFAULT_PASSES,
    MISSING,
    Encoded,
    MatchModel,
    compare,
    fit_model,
)
from linkage.probabilistic.blocking import (
    BlockingPlan,
    KeyTally,
    pair_bounds,
    pairs_for_rows,
    plan_blocking,
    row_parts,
    usable_passes,
)
from linkage.probabilistic.encoded import pass_columns
from linkage.profile_store import ProfileStore
from linkage.pseudonym_table import dictionary_of, one_person_in

UPPER = 0.95
LOWER = 0.5
DEFAULT_COVERAGE = 0.95
ASSUMED_REGISTERED = 1.0 - 1e-3  # the quality estimate's prior for a source of no known prior
RANDOM_PAIRS = 200_000
# Query rows are scored a part at a time: at most QUERY_CHUNK rows and about CHUNK_PAIRS
# candidate pairs (`blocking.row_parts`). Pairs per row grow with the register (a block of one
# date of birth holds three times the persons at three million), so a part bounded in rows
# alone held more pairs the larger the population (0.9 GB at a million persons): bounded in
# pairs, a part's memory does not grow with it.
QUERY_CHUNK = 50_000
CHUNK_PAIRS = 1_000_000
MAX_BLOCK_PAIRS = 100_000  # a block of more pairs is skipped (counted on the whole register)
MIN_LABELLED = 50
# A model learnt from profile twins (`train_on_profiles`) is trained on at most about this
# many of their profiles: persons sampled by pseudonym, all of a sampled person's profiles
# kept. Twins grow with the register (62,000 profiles at a million persons, 185,000 at three)
# and training on all of them was the peak of a large link; the model's few dozen level
# weights are learnt as well from a sample of this size.
TWIN_PROFILES = 100_000
# The engine's passes, with the registered practice (`identifier`) paired with parts of the
# date of birth instead of alone (a practice alone is a block of thousands).
INDEX_PASSES = tuple(p for p in DEFAULT_PASSES if p != ("identifier",)) + (
    ("identifier", "date_of_birth__ym"), ("identifier", "date_of_birth__md"),
    ("identifier", "date_of_birth__yd"), ("identifier", "sex", "postcode__sector"))


def person_codes(persons: pd.Series) -> tuple[np.ndarray, pa.Array]:
    """The profiles' pseudonyms as int64 codes (equal pseudonyms, equal codes; -1 for none)
    and the pseudonyms coded, in Arrow: comparing and grouping integers, never a million
    Python strings, keeps matching fast and small at a whole population."""
    encoded = dictionary_of(_strings(persons))
    return _filled(encoded.indices), encoded.dictionary


def codes_for(persons: pd.Series, uniques: pa.Array) -> np.ndarray:
    """Pseudonyms in the code space of `person_codes` (-1, no profile's code, for a
    pseudonym no profile has)."""
    return _filled(pc.index_in(_strings(persons), value_set=uniques))


def _strings(persons: pd.Series) -> pa.Array | pa.ChunkedArray:
    if isinstance(persons.dtype, pd.ArrowDtype):
        return pc.cast(pa.array(persons.array), pa.string())
    return pa.array(persons.to_numpy(dtype=object), type=pa.string(), from_pandas=True)


def _filled(codes: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(codes, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _has_twin(codes: np.ndarray) -> np.ndarray:
    """Mask of profiles whose person (a `person_codes` code) has another profile too."""
    known = codes >= 0
    counts = np.bincount(codes[known], minlength=int(codes.max(initial=-1)) + 1)
    return known & (counts[np.where(known, codes, 0)] > 1) if len(counts) else known


def _as_store(profile: pd.DataFrame | ProfileStore) -> ProfileStore:
    return profile if isinstance(profile, ProfileStore) else ProfileStore.from_frame(profile)


def _totals(query: Encoded, store: ProfileStore, fields: list[str]) -> list[np.ndarray] | None:
    """Each blocking pass's count of the whole register's profiles per query key (None for a
    store of one bucket): with several buckets, blocks are sized on the whole register, so
    the blocks skipped as oversized are those one plan over every profile would skip."""
    if len(store.buckets) <= 1:
        return None
    passes = usable_passes(query, Encoded(pd.DataFrame(columns=fields)), INDEX_PASSES)
    tallies = register_tallies(store, passes)
    return [tallies[cols].counts_for(query.pass_key(cols)) for cols in passes]


@dataclass(frozen=True)
class BucketJob:
    """What one bucket's task needs beside the bucket's number: the same for every bucket of
    a match, so an engine ships it once (a broadcast) and runs `task(job, i)` per bucket."""

    query: Encoded
    store: ProfileStore  # the view's buckets and exclusions, without its memo
    fields: list[str]
    totals: list[np.ndarray] | None
    model: MatchModel | None = None
    persons: int = 1  # the view's persons: a pair's prior odds are 1 in this many
    person_q: pd.Series | None = None  # each query row's pseudonym (training)
    exclude_self: np.ndarray | None = None  # each query row's own profile position (training)
    # read on the driver: an executor's copy of this module has its own globals
    max_block_pairs: int = MAX_BLOCK_PAIRS


# How the buckets' tasks are run: `map_buckets(task, count)` gives task(0), ..., task(count-1)
# in bucket order; the embedded engine runs each here when the caller comes to it (`in_turn`),
# the Spark engine on executors (pipeline/engines/spark_link.py). A task reads its bucket itself.
BucketMap = Callable[[Callable[[int], Any], int], Iterable[Any]]


def in_order(task: Callable[[int], Any], count: int) -> list[Any]:
    """Each task in this process, one after the other: the list of their results."""
    return [task(index) for index in range(count)]


def in_turn(task: Callable[[int], Any], count: int) -> Iterator[Any]:
    """Each bucket's task in this process as the caller comes to its result: a caller that
    folds the results holds one bucket's at a time (a list would hold every bucket's)."""
    return (task(index) for index in range(count))


def _job(query: Encoded, store: ProfileStore, fields: list[str], **extra: Any) -> BucketJob:
    return BucketJob(query, store.shipped(), fields, _totals(query, store, fields),
                     max_block_pairs=MAX_BLOCK_PAIRS, **extra)


def _bucket_plan(job: BucketJob, index: int
                 ) -> tuple[np.ndarray, pd.DataFrame, Encoded, BlockingPlan]:
    """Bucket `index`'s profile positions, frame (`person_id` and the fields), encodings and
    the query's blocking plan against them."""
    positions, frame = job.store.bucket(index, ["person_id", *job.fields])
    profiles = Encoded(frame)
    return positions, frame, profiles, plan_blocking(
        job.query, profiles, INDEX_PASSES, max_block_pairs=job.max_block_pairs,
        right_totals=job.totals)


def register_tallies(store: ProfileStore, passes: list[tuple[str, ...]]
                     ) -> dict[tuple[str, ...], KeyTally]:
    """The whole register's key tally of each blocking pass in `passes`, kept in the store's
    memo: the buckets are read for it once per store (for every index pass the register's
    columns allow, so the next source's passes are there too), not once per match call.

    A tally is small beside a bucket (two int64 per distinct key: at a million persons,
    1,038,438 profiles, 19.4 MB over 13 passes, 15.2 MB of it the one pass whose keys are
    nearly unique), and holding it is what lets each match read the buckets once instead of
    twice: that link's 20 plans on the register read its keys twice (the register, and the
    quality estimate's view less its held-out rows), 1.7 s in all, not 20 times (about 17 s).
    """
    memo: dict[tuple[str, ...], KeyTally] = store.memo.setdefault("tallies", {})
    missing = [cols for cols in passes if cols not in memo]
    if missing:
        held = set(store.columns)
        missing += [tuple(cols) for cols in INDEX_PASSES if tuple(cols) not in memo
                    and tuple(cols) not in missing
                    and all(PREFIX + c in held for c in pass_columns(cols))]
        # only the blocking keys' columns are read for this count (not the Bloom filters)
        keyed = sorted({PREFIX + c for cols in missing for c in pass_columns(cols)})
        parts: dict[tuple[str, ...], list[KeyTally]] = {cols: [] for cols in missing}
        for _, frame in store.frames(keyed):
            profiles = Encoded(frame)
            for cols in missing:
                parts[cols].append(KeyTally.of(profiles.pass_key(cols)))
        for cols in missing:
            memo[cols] = KeyTally.merged(parts[cols])
    return {cols: memo[cols] for cols in passes}


def fit_supervised(query: Encoded, person_q: pd.Series, store: ProfileStore, fields: list[str],
                   exclude_self: np.ndarray | None = None, seed: int = 0,
                   map_buckets: BucketMap = in_turn) -> MatchModel | None:
    """Fellegi-Sunter m and u from labels the data gives for free (recordlinkage NaiveBayes).

    m: levels among candidate pairs of the same person (pseudonyms equal); u: levels among
    random pairs of different persons, so u is what chance agreement looks like in the whole
    register, not among blocked pairs (which already agree on something). None when there are
    too few labelled matches to fit. `exclude_self`: each query row's own profile position.
    The candidate pairs are found a bucket at a time through `map_buckets`.
    """
    import recordlinkage

    # Candidate pairs a bucket and a chunk of query rows at a time: only positives are kept.
    job = _job(query, store, fields, person_q=person_q, exclude_self=exclude_self)
    found = [part for parts in map_buckets(functools.partial(_positives_in_bucket, job),
                                           len(store.buckets)) for part in parts]
    if not found or sum(len(f) for f in found) < MIN_LABELLED:
        return None
    positives = pd.concat(found, ignore_index=True).sort_values(
        ["left", "right"], kind="stable").drop(columns=["left", "right"])
    rng = np.random.default_rng(seed)
    size = min(RANDOM_PAIRS, len(person_q) * store.n)
    left = rng.integers(0, len(person_q), size)
    right = rng.integers(0, store.n, size)
    drawn = store.gather(right, ["person_id", *fields])
    different = (np.asarray(person_q, dtype=object)[left]
                 != drawn["person_id"].to_numpy(dtype=object))
    drawn = drawn[different].reset_index(drop=True)
    negatives = pd.DataFrame({"left": left[different],
                              "right": np.arange(len(drawn), dtype=np.int64)})
    vectors = pd.concat([positives.reset_index(drop=True),
                         compare(query, Encoded(drawn), negatives)],
                        ignore_index=True).astype(np.int8)
    ids = np.arange(len(vectors))
    vectors.index = pd.MultiIndex.from_arrays([ids, ids])  # recordlinkage wants pair indexes
    classifier = recordlinkage.NaiveBayesClassifier(binarize=None, alpha=1.0)
    classifier.fit(vectors, vectors.index[:len(positives)])
    log_m, log_u = classifier.log_m_probs, classifier.log_u_probs
    weights: dict[str, dict[int, float]] = {}
    for name in vectors.columns:
        weights[name] = {int(level): 0.0 if int(level) == MISSING
                         else float((log_m[name][level] - log_u[name][level]) / np.log(2))
                         for level in log_m[name]}
    return MatchModel(fields=tuple(vectors.columns), level_weights=weights,
                      prior=len(positives) / max(len(positives) + len(negatives), 1),
                      method="supervised")


def _positives_in_bucket(job: BucketJob, index: int) -> list[pd.DataFrame]:
    """Comparison vectors (with `left`, `right`: query row, profile position) of bucket
    `index`'s candidate pairs of one person, a query rows' part at a time."""
    positions, frame, profiles, plan = _bucket_plan(job, index)
    person_p, uniques = person_codes(frame["person_id"])
    mine = codes_for(job.person_q, uniques)
    found = []
    for rows in row_parts(pair_bounds(plan), CHUNK_PAIRS, QUERY_CHUNK):
        pairs = pairs_for_rows(plan, rows, sort=True)
        left, right = pairs["left"].to_numpy(), pairs["right"].to_numpy()
        keep = mine[left] == person_p[right]
        if job.exclude_self is not None:
            keep &= job.exclude_self[left] != positions[right]
        if keep.any():
            chosen = pairs[keep]
            vectors = compare(job.query, profiles, chosen)
            vectors.insert(0, "left", left[keep])
            vectors.insert(1, "right", positions[right[keep]])
            found.append(vectors.reset_index(drop=True))
    return found


def _scored_in_bucket(job: BucketJob, index: int) -> Iterator[pd.DataFrame]:
    """Scored candidate pairs of bucket `index` (query, profile position, weight,
    probability, cmp_*, person: a code within the bucket), a part of query rows at a time
    (every pair of a query row and the bucket in one part: `QUERY_CHUNK`, `CHUNK_PAIRS`). A
    model fitted here (ECM, when the job has none) needs every pair at once: then the store
    is one bucket and there is one part."""
    positions, frame, profiles, plan = _bucket_plan(job, index)
    person, _ = person_codes(frame["person_id"])
    model = job.model
    parts = (row_parts(pair_bounds(plan), CHUNK_PAIRS, QUERY_CHUNK) if model is not None
             else [None])
    for rows in parts:
        pairs = pairs_for_rows(plan, rows, sort=True)
        if len(pairs) == 0:
            continue
        vectors = compare(job.query, profiles, pairs)
        if model is None:
            model = fit_model(job.query, profiles, pairs, vectors, method="ecm")
        weight = model.weight(vectors)
        right = pairs["right"].to_numpy()
        scored = pd.DataFrame({"query": pairs["left"].to_numpy(),
                               "profile": positions[right],
                               "weight": weight, "probability": model.probability(weight)})
        for name in vectors.columns:
            scored[f"cmp_{name}"] = vectors[name].to_numpy()
        scored["person"] = person[right]
        yield scored


def _best_in_bucket(job: BucketJob, index: int) -> list[pd.DataFrame]:
    """Each query row's best pair in bucket `index`, a part at a time (`best_in_part`)."""
    return [best_in_part(scored, job.persons) for scored in _scored_in_bucket(job, index)]


def train_on_profiles(profile: pd.DataFrame | ProfileStore, fields: list[str],
                      map_buckets: BucketMap = in_turn,
                      most: int = TWIN_PROFILES) -> MatchModel | None:
    """A supervised model for queries carrying `fields`, trained on profiles with twins.

    Profiles of persons who have more than one (a social care row with an NHS number and the
    person's GP registration) are linked against the others with their own row left out.
    When there are more than `most` such profiles, one person in k is kept (chosen by a hash
    of the pseudonym, so the sample is the same whatever the order or bucketing of the
    register), k the smallest that keeps about `most`.
    """
    store = _as_store(profile)
    twin_rows = sum(int(_has_twin(person_codes(frame["person_id"])[0]).sum())
                    for _, frame in store.frames(["person_id"]))
    every = -(-twin_rows // max(most, 1))
    at, rows = [], []
    for positions, frame in store.frames(["person_id", *fields]):
        person, _ = person_codes(frame["person_id"])
        twin = _has_twin(person)
        if every > 1 and twin.any():
            twin &= one_person_in(pa.array(frame["person_id"], pa.string()).fill_null(""),
                                  every)
        at.append(positions[twin])
        rows.append(frame[twin])
    twins = np.concatenate(at) if at else np.zeros(0, dtype=np.int64)
    if len(twins) < MIN_LABELLED:
        return None
    order = np.argsort(twins, kind="stable")
    query = pd.concat(rows, ignore_index=True).iloc[order].reset_index(drop=True)
    return fit_supervised(Encoded(query[fields]), query["person_id"], store, fields,
                          exclude_self=twins[order], map_buckets=map_buckets)


def match_profiles(query: pd.DataFrame, profile: pd.DataFrame | ProfileStore,
                   coverage: float = DEFAULT_COVERAGE,
                   examples: pd.DataFrame | None = None,
                   map_buckets: BucketMap = in_turn,
                   model: MatchModel | None = None) -> pd.DataFrame:
    """Best profile per query row: columns query, profile, weight, probability, band, cmp_*.

    `weight` is the pair's Fellegi-Sunter match weight (log2 Bayes factor). `probability` is
    the posterior that the row belongs to that profile's person, given that it belongs to some
    person of the register with probability `coverage` (measured by the caller on rows that do
    carry an NHS number) and to each of the register's N persons alike a priori:
        p_i = c BF_i / N / (c sum_j BF_j / N + 1 - c)
    so the same agreement is conclusive in a small register and not in a national one, and two
    similar candidates share the probability between them (and go to review).
    The model is trained on `examples` (labelled rows of the query's own source) when there
    are enough, else on profile twins, else fitted unsupervised (ECM). `profile` is a
    `ProfileStore` (or a frame of profiles: one bucket); `profile` in the result is a position.
    Each bucket's pairs are found and scored by a task of its own, run by `map_buckets`.
    `model`: one trained before on the same fields (`linkage.kept_models`), used as it is.
    The model used is the result's `attrs["model"]` (None for an ECM fit: not kept).
    """
    # Compare only the fields the query rows carry (an all-null column is not evidence).
    fields = [c for c in query.columns if c.startswith("lk_") and query[c].notna().any()]
    store = _as_store(profile)
    encoded = Encoded(query[["extract_id", "row", *fields]])
    if model is None and examples is not None and len(examples) >= MIN_LABELLED:
        columns = ["extract_id", "row", *fields]
        model = fit_supervised(Encoded(examples[columns].reset_index(drop=True)),
                               examples["person_id"], store, fields, map_buckets=map_buckets)
    if model is None:
        model = train_on_profiles(store, fields, map_buckets)
    if model is None and len(store.buckets) > 1:
        # ECM fits on every candidate pair at once: the one step that holds the register
        # (only when it has too few persons with twins to learn from: never a large one)
        store = ProfileStore.from_frame(store.whole(["person_id", *fields]))
    job = _job(encoded, store, fields, model=model, persons=max(store.persons, 1))
    run = map_buckets if model is not None else in_turn  # ECM: one bucket, fitted here
    folded = BestOverBuckets(several=len(store.buckets) > 1)
    for parts in run(functools.partial(_best_in_bucket, job), len(store.buckets)):
        if parts:  # a bucket's parts hold other query rows: folded once, in one frame
            folded.add(pd.concat(parts, ignore_index=True))
    found = folded.found()
    out = (_banded(found, coverage) if found is not None else
           pd.DataFrame(columns=["query", "profile", "weight", "probability", "band"]))
    out.attrs["model"] = model
    return out


def _banded(found: pd.DataFrame, coverage: float) -> pd.DataFrame:
    """Each query's most probable person, banded: its best pair with `factor` (the person's
    evidence) and `total` (every person's of the register, summed over the buckets)."""
    factor, total = found["factor"].to_numpy(), found["total"].to_numpy()
    found["probability"] = coverage * factor / (coverage * total + (1 - coverage))
    band = np.where(found["probability"] >= UPPER, "link",
                    np.where(found["probability"] >= LOWER, "review", "none"))
    out = found.assign(band=band)
    return out[out["band"] != "none"].drop(columns=["person", "factor", "total"]).reset_index(
        drop=True)


def _rates(matches: pd.DataFrame, truth: np.ndarray, store: ProfileStore,
           evaluated: int) -> dict[str, float | int]:
    """False-match rate over the links made; missed-match rate over the rows whose person has
    a profile in `store` (a row of a person the register does not hold cannot be found: left
    unlinked it is right, and it is counted apart, as `unregistered_rows`)."""
    linked = matches[matches["band"] == "link"]
    # positions as integers: a source with no match at all gives empty object columns
    found = store.gather(linked["profile"].to_numpy(dtype=np.int64), ["person_id"])
    correct = int((truth[linked["query"].to_numpy(dtype=np.int64)] ==
                   found["person_id"].to_numpy(dtype=object)).sum())
    findable = int(_registered(truth, store).sum())
    return {"evaluated_rows": evaluated,
            "unregistered_rows": evaluated - findable,
            "false_match_rate": round((len(linked) - correct) / max(len(linked), 1), 5),
            "missed_match_rate": round(1 - correct / max(findable, 1), 5),
            "review": int((matches["band"] == "review").sum())}


def _registered(persons: np.ndarray, store: ProfileStore) -> np.ndarray:
    """Mask of `persons` (pseudonyms) that have a profile in `store`."""
    wanted = pa.array(persons, type=pa.string())
    found = np.zeros(len(persons), dtype=bool)
    for _, frame in store.frames(["person_id"]):
        held = pc.unique(_strings(frame["person_id"]))
        found |= np.asarray(pc.is_in(wanted, value_set=held).to_numpy(zero_copy_only=False),
                            dtype=bool)
    return found


def estimate_quality(profile: pd.DataFrame | ProfileStore,
                     examples: pd.DataFrame | None = None,
                     priors: dict[str, float] | None = None, sample: int = 5000,
                     seed: int = 0, map_buckets: BucketMap = in_turn) -> dict:
    """False-match and missed-match rates, measured on rows whose pseudonym is known.

    Per source with labelled examples (the sampled NHS-numbered rows): half the persons train
    the model, the other half are linked with their pseudonym hidden. For social care, rows
    that carry an NHS number are linked against the other profiles with their own row left
    out. A link to another person is a false match; a row of a registered person not linked
    to that person is a missed match (see `_rates`).

    Each source's held-out rows are linked at the prior production linked that source at
    (`priors`: `Matched.priors`, the share of its NHS-numbered rows whose person is
    registered). The labelled sample is a fixed share of a source's persons chosen by
    pseudonym, not by registration, so its held-out rows are registered in the proportion
    the source's rows are: they are the production mix, and the production prior is theirs.
    Linked at 0.999 instead, a row of an unregistered person is pushed onto a lookalike that
    production (at, say, 0.949) leaves unlinked, and the estimate reports false matches
    production does not make. A source missing from `priors` (a caller that measured no
    coverage) is linked at `ASSUMED_REGISTERED`: every row registered but one in a thousand,
    the prior of rows known to be registered and the figure earlier runs reported.
    """
    store = _as_store(profile)
    priors = priors or {}
    out: dict[str, dict] = {}
    rng = np.random.default_rng(seed)
    if examples is not None and len(examples):
        for source, rows in examples.groupby("source", sort=True):
            fields = [c for c in rows.columns if c.startswith("lk_") and rows[c].notna().any()]
            person = rows["person_id"].astype(object)
            half = person.map(lambda p: int(str(p)[6:10], 16) % 2 == 0).to_numpy()
            train, test = rows[half], rows[~half].reset_index(drop=True)
            if len(train) < MIN_LABELLED or len(test) == 0:
                continue
            if len(test) > sample:
                test = test.iloc[np.sort(rng.choice(len(test), sample, replace=False))]
                test = test.reset_index(drop=True)
            matches = match_profiles(test[["extract_id", "row", *fields]], store,
                                     priors.get(str(source), ASSUMED_REGISTERED), train,
                                     map_buckets)
            out[str(source)] = _rates(matches, test["person_id"].to_numpy(dtype=object), store,
                                      len(test))
    if "source" in store.columns:
        found = []
        for positions, frame in store.frames(["person_id", "source"]):
            person, _ = person_codes(frame["person_id"])
            social = (frame["source"] == "social_care").to_numpy(dtype=bool, na_value=False)
            found.append(positions[_has_twin(person) & social])
        candidates = np.sort(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
        if len(candidates):
            chosen = np.sort(rng.choice(candidates, size=min(sample, len(candidates)),
                                        replace=False))
            lk = [c for c in store.columns if c.startswith("lk_")]
            query = store.gather(chosen, ["extract_id", "row", "person_id", *lk])
            fields = [c for c in query.columns if c.startswith("lk_") and query[c].notna().any()]
            rest = store.without(chosen)
            matches = match_profiles(query[["extract_id", "row", *fields]], rest,
                                     priors.get("social_care", ASSUMED_REGISTERED),
                                     map_buckets=map_buckets)
            out["social_care"] = _rates(matches, query["person_id"].to_numpy(dtype=object),
                                        rest, len(query))
    return out
