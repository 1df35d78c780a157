"""The person index's probabilistic step: rows without a valid NHS number against person profiles.

A query row (no pseudonym) may belong to any profile (a register row with a pseudonym), and
several query rows may belong to one person, so this is not one-to-one linkage: each query
takes its best-scoring profile when that profile is clearly the best. A query whose best
probability is in the review band, or whose best two profiles belong to different persons with
weights within `AMBIGUITY_BITS` of each other, goes to the review list instead.

`estimate_quality` measures the method on labels the data gives for free: profile rows that do
carry a pseudonym are linked as if they did not, and their links are checked against it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from linkage.probabilistic import Encoded, candidate_pairs, compare, fit_model

UPPER = 0.95
LOWER = 0.5
AMBIGUITY_BITS = 2.0


def _score_pairs(query: pd.DataFrame, profile: pd.DataFrame) -> pd.DataFrame:
    q, p = Encoded(query), Encoded(profile)
    pairs = candidate_pairs(q, p)
    if len(pairs) == 0:
        return pd.DataFrame(columns=["query", "profile", "weight", "probability"])
    vectors = compare(q, p, pairs)
    model = fit_model(vectors, None, method="ecm")
    weight = model.weight(vectors)
    scored = pd.DataFrame({"query": pairs["left"].to_numpy(), "profile": pairs["right"].to_numpy(),
                           "weight": weight, "probability": model.probability(weight)})
    for name in vectors.columns:
        scored[f"cmp_{name}"] = vectors[name].to_numpy()
    return scored


def match_profiles(query: pd.DataFrame, profile: pd.DataFrame) -> pd.DataFrame:
    """Best profile per query row: columns query, profile, weight, probability, band, cmp_*."""
    scored = _score_pairs(query, profile)
    if scored.empty:
        return scored.assign(band=pd.Series(dtype=str))
    person = profile["person_id"].astype(object).to_numpy()
    scored["person"] = person[scored["profile"].to_numpy()]
    scored = scored.sort_values(["query", "weight"], ascending=[True, False], kind="stable")
    # Best weight per (query, person), then the best and runner-up persons per query.
    per_person = scored.drop_duplicates(["query", "person"])
    best = per_person.drop_duplicates("query", keep="first").set_index("query")
    runner = per_person[per_person.duplicated("query", keep="first")] \
        .drop_duplicates("query", keep="first").set_index("query")["weight"]
    gap = best["weight"] - runner.reindex(best.index).fillna(-np.inf)
    band = np.where(best["probability"] < LOWER, "none",
                    np.where((best["probability"] >= UPPER) & (gap >= AMBIGUITY_BITS), "link",
                             "review"))
    out = best.reset_index().assign(band=band)
    return out[out["band"] != "none"].drop(columns=["person"]).reset_index(drop=True)


def estimate_quality(profile: pd.DataFrame, sample: int = 5000, seed: int = 0) -> dict:
    """False-match and missed-match rates on profile rows whose pseudonym is known.

    A sample of profile rows is linked against the other profiles with its pseudonym hidden;
    a link to a profile of another person is a false match, no link where the person has
    another profile is a missed match. Rows whose person has no other profile are left out.
    """
    if len(profile) < 2 or "person_id" not in profile:
        return {}
    counts = profile["person_id"].value_counts()
    has_twin = profile["person_id"].map(counts).to_numpy() > 1
    candidates = np.flatnonzero(has_twin)
    if len(candidates) == 0:
        return {"evaluated_rows": 0}
    rng = np.random.default_rng(seed)
    chosen = rng.choice(candidates, size=min(sample, len(candidates)), replace=False)
    query = profile.iloc[chosen].reset_index(drop=True)
    rest = profile.drop(index=profile.index[chosen]).reset_index(drop=True)
    matches = match_profiles(query.drop(columns=["person_id"]), rest)
    linked = matches[matches["band"] == "link"]
    truth = query["person_id"].to_numpy(dtype=object)
    found = rest["person_id"].to_numpy(dtype=object)[linked["profile"].to_numpy()]
    correct = int((truth[linked["query"].to_numpy()] == found).sum())
    false_matches = len(linked) - correct
    evaluated = len(query)
    return {
        "evaluated_rows": evaluated,
        "linked": len(linked),
        "false_match_rate": round(false_matches / max(len(linked), 1), 5),
        "missed_match_rate": round((evaluated - correct) / evaluated, 5),
        "review": int((matches["band"] == "review").sum()),
    }
