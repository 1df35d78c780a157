"""The person index's probabilistic step: rows without a valid NHS number against person profiles.

A query row (no pseudonym) may belong to any profile (a register row with a pseudonym), and
several query rows may belong to one person, so this is not one-to-one linkage: each query
takes its most probable person when that probability reaches `UPPER`; a best probability
between `LOWER` and `UPPER` (weak evidence, or two persons alike) goes to the review list.

`estimate_quality` measures the method on labels the data gives for free: profile rows that do
carry a pseudonym are linked as if they did not, and their links are checked against it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from linkage.probabilistic import (
    DEFAULT_PASSES,
    MISSING,
    Encoded,
    MatchModel,
    compare,
    fit_model,
)
from linkage.probabilistic.blocking import (
    pair_bounds,
    pairs_for_rows,
    plan_blocking,
    row_parts,
)

UPPER = 0.95
LOWER = 0.5
DEFAULT_COVERAGE = 0.95
RANDOM_PAIRS = 200_000
# Query rows are scored a part at a time: at most QUERY_CHUNK rows and about CHUNK_PAIRS
# candidate pairs (`blocking.row_parts`). Pairs per row grow with the register (a block of one
# date of birth holds three times the persons at three million), so a part bounded in rows
# alone held more pairs the larger the population (0.9 GB at a million persons): bounded in
# pairs, a part's memory does not grow with it.
QUERY_CHUNK = 50_000
CHUNK_PAIRS = 1_000_000
MIN_LABELLED = 50
# The engine's passes, with the registered practice (`identifier`) paired with parts of the
# date of birth instead of alone (a practice alone is a block of thousands).
INDEX_PASSES = tuple(p for p in DEFAULT_PASSES if p != ("identifier",)) + (
    ("identifier", "date_of_birth__ym"), ("identifier", "date_of_birth__md"),
    ("identifier", "date_of_birth__yd"), ("identifier", "sex", "postcode__sector"))


def person_codes(persons: pd.Series) -> tuple[np.ndarray, pa.Array]:
    """The profiles' pseudonyms as int64 codes (equal pseudonyms, equal codes; -1 for none)
    and the pseudonyms coded, in Arrow: comparing and grouping integers, never a million
    Python strings, keeps matching fast and small at a whole population."""
    encoded = pc.dictionary_encode(_strings(persons))
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.unify_dictionaries().combine_chunks()
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


def fit_supervised(query: Encoded, profile: Encoded, person_q: np.ndarray,
                   person_p: np.ndarray, exclude_self: np.ndarray | None = None,
                   seed: int = 0) -> MatchModel | None:
    """Fellegi-Sunter m and u from labels the data gives for free (recordlinkage NaiveBayes).

    m: levels among candidate pairs of the same person (pseudonyms equal); u: levels among
    random pairs of different persons, so u is what chance agreement looks like in the whole
    register, not among blocked pairs (which already agree on something). None when there are
    too few labelled matches to fit.
    """
    import recordlinkage

    # Candidate pairs a chunk of query rows at a time: only the positives are kept.
    plan = plan_blocking(query, profile, INDEX_PASSES)
    found = []
    for rows in row_parts(pair_bounds(plan), CHUNK_PAIRS, QUERY_CHUNK):
        pairs = pairs_for_rows(plan, rows, sort=True)
        if exclude_self is not None and len(pairs):
            pairs = pairs[exclude_self[pairs["left"].to_numpy()] != pairs["right"].to_numpy()]
        same = person_q[pairs["left"].to_numpy()] == person_p[pairs["right"].to_numpy()]
        found.append(pairs[same])
    positives = (pd.concat(found, ignore_index=True) if found
                 else pd.DataFrame({"left": [], "right": []}, dtype=np.int64))
    if len(positives) < MIN_LABELLED:
        return None
    rng = np.random.default_rng(seed)
    size = min(RANDOM_PAIRS, len(person_q) * len(person_p))
    random_pairs = pd.DataFrame({"left": rng.integers(0, len(person_q), size),
                                 "right": rng.integers(0, len(person_p), size)})
    different = person_q[random_pairs["left"]] != person_p[random_pairs["right"]]
    negatives = random_pairs[different]
    vectors = pd.concat([compare(query, profile, positives), compare(query, profile, negatives)],
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


def _score_pairs(query: pd.DataFrame, profile: pd.DataFrame, model: MatchModel | None = None
                 ) -> Iterator[pd.DataFrame]:
    """Scored candidate pairs, a part of query rows at a time (every pair of a query row in
    one part: `QUERY_CHUNK`, `CHUNK_PAIRS`), so memory holds one part's pairs, not all of
    them. Blocking is planned once over every query row (the same pairs as one pass over
    all). A model fitted here (ECM, when none is given) needs every pair at once, so then
    there is one part."""
    q, p = Encoded(query), Encoded(profile)
    plan = plan_blocking(q, p, INDEX_PASSES)
    parts = (row_parts(pair_bounds(plan), CHUNK_PAIRS, QUERY_CHUNK) if model is not None
             else [None])
    for rows in parts:
        pairs = pairs_for_rows(plan, rows, sort=True)
        if len(pairs) == 0:
            continue
        vectors = compare(q, p, pairs)
        if model is None:
            model = fit_model(q, p, pairs, vectors, method="ecm")
        weight = model.weight(vectors)
        scored = pd.DataFrame({"query": pairs["left"].to_numpy(),
                               "profile": pairs["right"].to_numpy(),
                               "weight": weight, "probability": model.probability(weight)})
        for name in vectors.columns:
            scored[f"cmp_{name}"] = vectors[name].to_numpy()
        yield scored


def train_on_profiles(profile: pd.DataFrame, fields: list[str]) -> MatchModel | None:
    """A supervised model for queries carrying `fields`, trained on profiles with twins.

    Profiles of persons who have more than one (a social care row with an NHS number and the
    person's GP registration) are linked against the others with their own row left out.
    """
    person, _ = person_codes(profile["person_id"])
    twins = np.flatnonzero(_has_twin(person))
    if len(twins) < MIN_LABELLED:
        return None
    columns = ["extract_id", "row", *fields]
    query = profile.iloc[twins][columns].reset_index(drop=True)
    return fit_supervised(Encoded(query), Encoded(profile[columns]), person[twins], person,
                          exclude_self=twins)


def match_profiles(query: pd.DataFrame, profile: pd.DataFrame,
                   coverage: float = DEFAULT_COVERAGE,
                   examples: pd.DataFrame | None = None) -> pd.DataFrame:
    """Best profile per query row: columns query, profile, weight, probability, band, cmp_*.

    `weight` is the pair's Fellegi-Sunter match weight (log2 Bayes factor). `probability` is
    the posterior that the row belongs to that profile's person, given that it belongs to some
    person of the register with probability `coverage` (measured by the caller on rows that do
    carry an NHS number) and to each of the register's N persons alike a priori:
        p_i = c BF_i / N / (c sum_j BF_j / N + 1 - c)
    so the same agreement is conclusive in a small register and not in a national one, and two
    similar candidates share the probability between them (and go to review).
    The model is trained on `examples` (labelled rows of the query's own source) when there
    are enough, else on profile twins, else fitted unsupervised (ECM).
    """
    # Compare only the fields the query rows carry (an all-null column is not evidence).
    fields = [c for c in query.columns if c.startswith("lk_") and query[c].notna().any()]
    query = query[["extract_id", "row", *fields]]
    profile = profile[["extract_id", "row", "person_id", *fields]]
    model = None
    person, uniques = person_codes(profile["person_id"])
    if examples is not None and len(examples) >= MIN_LABELLED:
        columns = ["extract_id", "row", *fields]
        model = fit_supervised(Encoded(examples[columns].reset_index(drop=True)),
                               Encoded(profile[columns]),
                               codes_for(examples["person_id"], uniques), person)
    if model is None:
        model = train_on_profiles(profile, fields)
    persons = max(len(uniques), 1)
    best = [_best(scored, person, persons, coverage)
            for scored in _score_pairs(query, profile, model)]
    if not best:
        return pd.DataFrame(columns=["query", "profile", "weight", "probability", "band"])
    return pd.concat(best, ignore_index=True)


def _best(scored: pd.DataFrame, person: np.ndarray, persons: int, coverage: float
          ) -> pd.DataFrame:
    """Each query's most probable person, banded (`scored` holds every pair of its queries)."""
    scored["person"] = person[scored["profile"].to_numpy()]
    scored = scored.sort_values(["query", "weight"], ascending=[True, False], kind="stable")
    # The best pair per (query, person) speaks for that person.
    per_person = scored.drop_duplicates(["query", "person"]).copy()
    factor = np.exp2(np.clip(per_person["weight"].to_numpy(), -60, 60)) / persons
    per_person["factor"] = factor
    total = per_person.groupby("query")["factor"].transform("sum").to_numpy()
    per_person["probability"] = coverage * factor / (coverage * total + (1 - coverage))
    best = per_person.drop_duplicates("query", keep="first")
    band = np.where(best["probability"] >= UPPER, "link",
                    np.where(best["probability"] >= LOWER, "review", "none"))
    out = best.assign(band=band)
    return out[out["band"] != "none"].drop(columns=["person", "factor"]).reset_index(drop=True)


def _rates(matches: pd.DataFrame, truth: np.ndarray, found_person: np.ndarray,
           evaluated: int) -> dict[str, float | int]:
    linked = matches[matches["band"] == "link"]
    # positions as integers: a source with no match at all gives empty object columns
    correct = int((truth[linked["query"].to_numpy(dtype=np.int64)] ==
                   found_person[linked["profile"].to_numpy(dtype=np.int64)]).sum())
    return {"evaluated_rows": evaluated,
            "false_match_rate": round((len(linked) - correct) / max(len(linked), 1), 5),
            "missed_match_rate": round(1 - correct / max(evaluated, 1), 5),
            "review": int((matches["band"] == "review").sum())}


def estimate_quality(profile: pd.DataFrame, examples: pd.DataFrame | None = None,
                     sample: int = 5000, seed: int = 0) -> dict:
    """False-match and missed-match rates, measured on rows whose pseudonym is known.

    Per source with labelled examples (the sampled NHS-numbered rows): half the persons train
    the model, the other half are linked with their pseudonym hidden. For social care, rows
    that carry an NHS number are linked against the other profiles with their own row left
    out. A link to another person is a false match; a row not linked to its own person is a
    missed match.
    """
    out: dict[str, dict] = {}
    person_p, uniques = person_codes(profile["person_id"])
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
            matches = match_profiles(test[["extract_id", "row", *fields]],
                                     profile[["extract_id", "row", "person_id", *fields]],
                                     1.0 - 1e-3, train)
            out[str(source)] = _rates(matches, codes_for(test["person_id"], uniques),
                                      person_p, len(test))
    if "source" in profile:
        twin = _has_twin(person_p)
        candidates = np.flatnonzero(twin & (profile["source"] == "social_care").to_numpy())
        if len(candidates):
            chosen = np.sort(rng.choice(candidates, size=min(sample, len(candidates)),
                                        replace=False))
            query = profile.iloc[chosen].reset_index(drop=True)
            # Only the columns `match_profiles` reads (the fields these rows carry) are copied
            # into the register without them: three million rows' other columns are not.
            fields = [c for c in query.columns if c.startswith("lk_") and query[c].notna().any()]
            columns = ["extract_id", "row", "person_id", *fields]
            keep = np.ones(len(profile), dtype=bool)
            keep[chosen] = False
            rest = profile[columns][keep].reset_index(drop=True)
            matches = match_profiles(query[columns].drop(columns=["person_id"]), rest,
                                     1.0 - 1e-3)
            out["social_care"] = _rates(matches, person_p[chosen],
                                        np.delete(person_p, chosen), len(query))
    return out
