"""The person index's probabilistic step: rows without a valid NHS number against person profiles.

A query row (no pseudonym) may belong to any profile (a register row with a pseudonym), and
several query rows may belong to one person, so this is not one-to-one linkage: each query
takes its most probable person when that probability reaches `UPPER`; a best probability
between `LOWER` and `UPPER` (weak evidence, or two persons alike) goes to the review list.

`estimate_quality` measures the method on labels the data gives for free: profile rows that do
carry a pseudonym are linked as if they did not, and their links are checked against it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from linkage.probabilistic import MISSING, Encoded, MatchModel, candidate_pairs, compare, fit_model

UPPER = 0.95
LOWER = 0.5
DEFAULT_COVERAGE = 0.95
RANDOM_PAIRS = 200_000
MIN_LABELLED = 50


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

    pairs = candidate_pairs(query, profile)
    if exclude_self is not None and len(pairs):
        pairs = pairs[exclude_self[pairs["left"].to_numpy()] != pairs["right"].to_numpy()]
    same = person_q[pairs["left"].to_numpy()] == person_p[pairs["right"].to_numpy()]
    positives = pairs[same]
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


def _score_pairs(query: pd.DataFrame, profile: pd.DataFrame,
                 model: MatchModel | None = None) -> pd.DataFrame:
    q, p = Encoded(query), Encoded(profile)
    pairs = candidate_pairs(q, p)
    if len(pairs) == 0:
        return pd.DataFrame(columns=["query", "profile", "weight", "probability"])
    vectors = compare(q, p, pairs)
    if model is None:
        model = fit_model(q, p, pairs, vectors, method="ecm")
    weight = model.weight(vectors)
    scored = pd.DataFrame({"query": pairs["left"].to_numpy(), "profile": pairs["right"].to_numpy(),
                           "weight": weight, "probability": model.probability(weight)})
    for name in vectors.columns:
        scored[f"cmp_{name}"] = vectors[name].to_numpy()
    return scored


def train_on_profiles(profile: pd.DataFrame, fields: list[str]) -> MatchModel | None:
    """A supervised model for queries carrying `fields`, trained on profiles with twins.

    Profiles of persons who have more than one (a social care row with an NHS number and the
    person's GP registration) are linked against the others with their own row left out.
    """
    person = profile["person_id"].astype(object).to_numpy()
    counts = pd.Series(person).value_counts()
    twins = np.flatnonzero(pd.Series(person).map(counts).to_numpy() > 1)
    if len(twins) < MIN_LABELLED:
        return None
    columns = ["extract_id", "row", *fields]
    query = profile.iloc[twins][columns].reset_index(drop=True)
    return fit_supervised(Encoded(query), Encoded(profile[columns]), person[twins], person,
                          exclude_self=twins)


def match_profiles(query: pd.DataFrame, profile: pd.DataFrame,
                   coverage: float = DEFAULT_COVERAGE) -> pd.DataFrame:
    """Best profile per query row: columns query, profile, weight, probability, band, cmp_*.

    `weight` is the pair's Fellegi-Sunter match weight (log2 Bayes factor). `probability` is
    the posterior that the row belongs to that profile's person, given that it belongs to some
    person of the register with probability `coverage` (measured by the caller on rows that do
    carry an NHS number) and to each of the register's N persons alike a priori:
        p_i = c BF_i / N / (c sum_j BF_j / N + 1 - c)
    so the same agreement is conclusive in a small register and not in a national one, and two
    similar candidates share the probability between them (and go to review).
    """
    fields = [c for c in query.columns if c.startswith("lk_")]
    scored = _score_pairs(query, profile, train_on_profiles(profile, fields))
    if scored.empty:
        return scored.assign(band=pd.Series(dtype=str))
    person = profile["person_id"].astype(object).to_numpy()
    scored["person"] = person[scored["profile"].to_numpy()]
    scored = scored.sort_values(["query", "weight"], ascending=[True, False], kind="stable")
    # The best pair per (query, person) speaks for that person.
    per_person = scored.drop_duplicates(["query", "person"]).copy()
    persons = max(len(pd.unique(person)), 1)
    factor = np.exp2(np.clip(per_person["weight"].to_numpy(), -60, 60)) / persons
    per_person["factor"] = factor
    total = per_person.groupby("query")["factor"].transform("sum").to_numpy()
    per_person["probability"] = coverage * factor / (coverage * total + (1 - coverage))
    best = per_person.drop_duplicates("query", keep="first")
    band = np.where(best["probability"] >= UPPER, "link",
                    np.where(best["probability"] >= LOWER, "review", "none"))
    out = best.assign(band=band)
    return out[out["band"] != "none"].drop(columns=["person", "factor"]).reset_index(drop=True)


def estimate_quality(profile: pd.DataFrame, sample: int = 5000, seed: int = 0) -> dict:
    """False-match and missed-match rates, measured on rows whose pseudonym is known.

    Social care rows that carry an NHS number are linked as if they did not (pseudonym hidden,
    the row itself left out of the profiles), once with every encoding (the social care task)
    and once with only date of birth, sex and postcode (the task of hospital and community
    rows, which carry no names). A link to another person's profile is a false match; no link
    (or a wrong one) where the person has another profile is a missed match.
    """
    if "source" not in profile or "person_id" not in profile:
        return {}
    counts = profile["person_id"].value_counts()
    twin = profile["person_id"].map(counts).to_numpy() > 1
    candidates = np.flatnonzero(twin & (profile["source"] == "social_care").to_numpy())
    if len(candidates) == 0:
        return {"evaluated_rows": 0}
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(candidates, size=min(sample, len(candidates)), replace=False))
    query = profile.iloc[chosen].reset_index(drop=True)
    rest = profile.drop(index=profile.index[chosen]).reset_index(drop=True)
    names = [c for c in query.columns if c.startswith(("lk_forename", "lk_surname"))]
    out: dict[str, float | int] = {"evaluated_rows": len(query)}
    for task, columns in (("all_fields", []), ("dob_sex_postcode", names)):
        q = query.drop(columns=["person_id", *columns])
        r = rest.drop(columns=columns)
        matches = match_profiles(q, r, coverage=1.0 - 1e-3)
        linked = matches[matches["band"] == "link"]
        truth = query["person_id"].to_numpy(dtype=object)[linked["query"].to_numpy()]
        found = rest["person_id"].to_numpy(dtype=object)[linked["profile"].to_numpy()]
        correct = int((truth == found).sum())
        out[f"{task}_false_match_rate"] = round((len(linked) - correct) / max(len(linked), 1), 5)
        out[f"{task}_missed_match_rate"] = round(1 - correct / len(query), 5)
        out[f"{task}_review"] = int((matches["band"] == "review").sum())
    return out
