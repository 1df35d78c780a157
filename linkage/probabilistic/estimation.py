"""Estimation: a `MatchModel` (a log2 Bayes factor per field level, and a prior) fitted by
unsupervised Fellegi-Sunter (u from random pairs, m by EM within blocking passes) or logistic."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from linkage.encodings import SEP, field_kind
from linkage.probabilistic.blocking import DEFAULT_PASSES, usable_passes
from linkage.probabilistic.comparison import (
    DIFFERENT,
    MISSING,
    TOP_LEVEL,
    VARIANT_LEVEL,
    compare,
)
from linkage.probabilistic.encoded import Encoded, pass_columns
from linkage.probabilistic.term_frequencies import TF_KINDS, pair_weights

LOG_FLOOR = math.log(1e-12)
CONDITION_FIELD = "postcode"  # address parts are weighed given agreement on this field
M_PSEUDO = 1.0  # pseudo-matches per level when averaging m (see fit_fellegi_sunter)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@dataclass
class MatchModel:
    """Fellegi-Sunter style scores: a log2 Bayes factor for each level of each field.

    `weight(vectors)` = bias + sum of level weights (log2 of P(levels | match) / P(levels |
    non-match)); `probability` adds the prior log-odds (ecm: P(match) for two random records;
    logistic: the labelled candidates' match rate) and gives P(match | candidate pair).
    Serialisable with `to_dict`/`from_dict` (or `to_json`/`from_json`), so one fitted model can
    score every partition; `notes` lists blocking passes whose ECM fit was set aside as
    implausible. `tf` maps a field to the u of its exact level: exact agreement on that field is
    then weighed by how common the agreed value is (`pair_weights`), as Splink's
    term-frequency adjustments do.
    """

    fields: tuple[str, ...]
    level_weights: dict[str, dict[int, float]]
    prior: float
    method: str
    bias: float = 0.0
    m: dict[str, dict[int, float]] = field(default_factory=dict)
    u: dict[str, dict[int, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tf: dict[str, float] = field(default_factory=dict)
    # field -> level weights that replace `level_weights[field]` where the postcode agrees
    # exactly (`CONDITION_FIELD` at its top level): see `conditional_location_weights`
    given_postcode: dict[str, dict[int, float]] = field(default_factory=dict)
    # the same where the postcodes are both present but differ (a move: the address differs too)
    postcode_apart: dict[str, dict[int, float]] = field(default_factory=dict)

    def implausible_fields(self, margin: float = 1.0) -> list[str]:
        """Fields whose closest level does not favour a match (weight < -margin, or below the
        weight of disagreement).

        A Fellegi-Sunter match class must make agreement more likely for every identifier. EM
        always finds two classes, even when the inputs share no person (it then splits the
        candidate pairs by which blocking pass made them); this check catches that.
        """
        bad = []
        for f in self.fields:
            levels = {k: v for k, v in self.level_weights.get(f, {}).items() if k != MISSING}
            if len(levels) < 2 or DIFFERENT not in levels:
                continue
            top = levels[max(levels)]
            if top < -margin or top < levels[DIFFERENT]:
                bad.append(f)
        return bad

    def weight(self, vectors: pd.DataFrame) -> np.ndarray:
        """Match weight (log2 Bayes factor) of each comparison vector."""
        total = np.full(len(vectors), self.bias, dtype=np.float64)
        same_postcode = apart = same_place = apart_place = None
        if (self.given_postcode or self.postcode_apart) and CONDITION_FIELD in vectors.columns:
            pc = vectors[CONDITION_FIELD].to_numpy()
            same_postcode = pc == TOP_LEVEL[CONDITION_FIELD]
            apart = (pc != MISSING) & ~same_postcode
            same_place, apart_place = same_postcode, apart
            line = _first_address(self.fields)
            if line is not None and line in vectors.columns:
                # postcode missing: the address line stands for it. Agreeing exactly, the same
                # place, so a town or suburb there is weighed as within one postcode (else a
                # household's shared address line and town would count twice); present and
                # different, a move, so a town is weighed as for a different postcode (else a
                # mover's different line and town would count against them twice)
                lv = vectors[line].to_numpy()
                no_pc = pc == MISSING
                same_place = same_postcode | (no_pc & (lv == TOP_LEVEL["address"]))
                apart_place = apart | (no_pc & (lv != MISSING) & (lv != TOP_LEVEL["address"]))
        supplementary = _supplementary_address(self.fields)
        for f in self.fields:
            if f not in vectors.columns:
                continue
            levels = vectors[f].to_numpy(dtype=np.int64)
            table = np.zeros(128, dtype=np.float64)
            for level, w in self.level_weights[f].items():
                table[int(level)] = w
            weights = table[levels]
            same, moved = ((same_place, apart_place) if f in supplementary
                           else (same_postcode, apart))
            for mask, tables in ((same, self.given_postcode),
                                 (moved, self.postcode_apart)):
                if mask is not None and f in tables:
                    given = np.zeros(128, dtype=np.float64)
                    for level, w in tables[f].items():
                        given[int(level)] = w
                    weights = np.where(mask, given[levels], weights)
            total += weights
        return total

    def probability(self, weights: np.ndarray) -> np.ndarray:
        """Posterior probability of a match from weights and the prior."""
        log_odds = np.asarray(weights) * math.log(2) + _logit(self.prior)
        return 1.0 / (1.0 + np.exp(-np.clip(log_odds, -700, 700)))

    def to_dict(self) -> dict[str, Any]:
        return {"fields": list(self.fields), "prior": self.prior, "method": self.method,
                "bias": self.bias,
                "level_weights": {f: {str(k): v for k, v in w.items()}
                                  for f, w in self.level_weights.items()},
                "m": {f: {str(k): v for k, v in w.items()} for f, w in self.m.items()},
                "u": {f: {str(k): v for k, v in w.items()} for f, w in self.u.items()},
                "notes": list(self.notes), "tf": dict(self.tf),
                "given_postcode": {f: {str(k): v for k, v in w.items()}
                                   for f, w in self.given_postcode.items()},
                "postcode_apart": {f: {str(k): v for k, v in w.items()}
                                   for f, w in self.postcode_apart.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MatchModel:
        def levels(d: dict[str, dict[str, float]]) -> dict[str, dict[int, float]]:
            return {f: {int(k): float(v) for k, v in w.items()} for f, w in d.items()}
        return cls(fields=tuple(data["fields"]), prior=float(data["prior"]),
                   method=data["method"], bias=float(data.get("bias", 0.0)),
                   level_weights=levels(data["level_weights"]), m=levels(data.get("m", {})),
                   u=levels(data.get("u", {})), notes=list(data.get("notes", [])),
                   tf={f: float(v) for f, v in data.get("tf", {}).items()},
                   given_postcode=levels(data.get("given_postcode", {})),
                   postcode_apart=levels(data.get("postcode_apart", {})))

    def to_json(self) -> str:
        """`to_dict` as JSON (m, u and weight per level, prior, term frequencies): a fitted model
        saved beside a run's `LinkageSettings` scores the same pairs the same way when loaded."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> MatchModel:
        return cls.from_dict(json.loads(text))


PHONETIC_LEVEL = 2  # a name's lowest agreeing level: keyed Soundex equal (or Dice >= 0.5)


def enforce_monotone(level_weights: dict[str, dict[int, float]]) -> list[str]:
    """Make each forename's weights monotone where the ordering is known, in place: a name
    variant never weighs less than a phonetic match, exact agreement never less than a variant.

    Estimated weights can break the order by chance (a level few matches reach), and a
    variant weighing more than exact agreement would make a clerk's "William" for "William"
    less convincing than "Bill". Raised levels take the weight of the level below them.
    Returns the fields changed.
    """
    changed = []
    for f, w in level_weights.items():
        if field_kind(f) != "forename":
            continue
        before = dict(w)
        top = TOP_LEVEL["forename"]
        if VARIANT_LEVEL in w and PHONETIC_LEVEL in w:
            w[VARIANT_LEVEL] = max(w[VARIANT_LEVEL], w[PHONETIC_LEVEL])
        if top in w and VARIANT_LEVEL in w:
            w[top] = max(w[top], w[VARIANT_LEVEL])
        if w != before:
            changed.append(f)
    return changed


def _seeded_ecm_kernel(max_iter: int, atol: float) -> Any:
    """recordlinkage's ECM kernel with an ordered start for multi-level features."""
    from recordlinkage.algorithms.nb_sklearn import ECM

    class OrderedStartECM(ECM):
        """ECM whose start favours higher levels for matches (stock 'jaro' is binary-only)."""

        def _init_parameters_jaro(self, X_bin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            m_parts, u_parts = [], []
            for binarizer in self._binarizers:
                levels = np.asarray(binarizer.classes_, dtype=np.float64)
                rank = np.where(levels == MISSING, 0.0, levels)
                m = np.exp(rank)
                u = np.exp(-rank)
                m[levels == MISSING] = u[levels == MISSING] = 0.05
                if len(levels) == 1:
                    m, u = np.ones(1), np.ones(1)
                m_parts.append(m / m.sum())
                u_parts.append(u / u.sum())
            feature = np.vstack([np.concatenate(u_parts), np.concatenate(m_parts)])
            return np.log(np.array([0.99, 0.01])), np.log(feature)

        def fit(self, X: np.ndarray) -> Any:
            try:
                return super().fit(X)
            finally:
                self._binarised = None

        def _transform_data(self, X: np.ndarray) -> np.ndarray:
            # EM re-binarises the same distinct patterns every iteration with sklearn's
            # LabelBinarizer, whose per-call checks dominate the fit: remember the last one.
            key = (X.__array_interface__["data"][0], X.shape, X.strides)
            cached = getattr(self, "_binarised", None)
            if cached is not None and cached[0] == key:
                return cached[1]
            out = super()._transform_data(X).astype(np.float64)
            # A missing field is no evidence either way: zero its one-hot column, so it adds
            # nothing to either class's likelihood (rather than being a level EM can exploit).
            offset = 0
            for binarizer in self._binarizers:
                classes = np.asarray(binarizer.classes_)
                out[:, offset + np.flatnonzero(classes == MISSING)] = 0.0
                offset += len(classes)
            self._binarised = (key, out)
            return out

        def _joint_log_likelihood(self, X: np.ndarray) -> np.ndarray:
            # A level with no mass in a class has log-probability -inf, and -inf * 0 in the
            # one-hot dot product is NaN, which would poison every later EM step: floor it.
            saved = self.feature_log_prob_
            self.feature_log_prob_ = np.maximum(saved, LOG_FLOOR)
            try:
                return super()._joint_log_likelihood(X)
            finally:
                self.feature_log_prob_ = saved

    return OrderedStartECM(init="jaro", max_iter=max_iter, atol=atol, binarize=None)


def _sample(vectors: pd.DataFrame, labels: np.ndarray | None, max_pairs: int, seed: int
            ) -> tuple[pd.DataFrame, np.ndarray | None]:
    if len(vectors) <= max_pairs:
        return vectors, labels
    pick = np.sort(np.random.default_rng(seed).choice(len(vectors), max_pairs, replace=False))
    return vectors.iloc[pick], None if labels is None else labels[pick]


def fit_ecm(vectors: pd.DataFrame, *, max_pairs: int = 500_000, max_iter: int = 200,
            seed: int = 0) -> MatchModel:
    """Unsupervised Fellegi-Sunter fit with recordlinkage's ECMClassifier (EM on levels)."""
    import recordlinkage

    if len(vectors) == 0:
        raise ValueError("no candidate pairs to fit a model on")
    sample, _ = _sample(vectors, None, max_pairs, seed)
    clf = recordlinkage.ECMClassifier(init="jaro", binarize=None, max_iter=max_iter, atol=1e-6)
    clf.kernel = _seeded_ecm_kernel(max_iter, 1e-6)
    with np.errstate(divide="ignore", invalid="ignore"):
        clf.fit(sample.astype(np.int8))
    log_m, log_u = clf.log_m_probs, clf.log_u_probs
    weights: dict[str, dict[int, float]] = {}
    ms: dict[str, dict[int, float]] = {}
    us: dict[str, dict[int, float]] = {}
    for f in vectors.columns:
        weights[f], ms[f], us[f] = {}, {}, {}
        for level in log_m[f]:
            m = float(np.clip(np.exp(log_m[f][level]), 1e-6, 1.0))
            u = float(np.clip(np.exp(log_u[f][level]), 1e-6, 1.0))
            ms[f][int(level)], us[f][int(level)] = m, u
            weights[f][int(level)] = 0.0 if level == MISSING else math.log2(m / u)
    prior = float(np.clip(np.exp(clf.log_p), 1e-9, 1 - 1e-9))
    return MatchModel(fields=tuple(vectors.columns), level_weights=weights, prior=prior,
                      method="ecm", m=ms, u=us)


def fit_logistic(vectors: pd.DataFrame, labels: np.ndarray, *, max_pairs: int = 2_000_000,
                 seed: int = 0) -> MatchModel:
    """Supervised fit with recordlinkage's LogisticRegressionClassifier on one-hot levels.

    `labels`: 1 match, 0 non-match, -1 unknown (ignored), e.g. from `nhs_labels`.
    """
    import recordlinkage

    known = np.asarray(labels) >= 0
    sample, y = _sample(vectors[known], np.asarray(labels)[known], max_pairs, seed)
    assert y is not None
    if y.min() == y.max():
        raise ValueError("logistic fit needs labelled matches and non-matches")
    columns: list[tuple[str, int]] = []
    parts = []
    for f in vectors.columns:
        values = sample[f].to_numpy()
        for level in np.unique(vectors[f].to_numpy()):
            columns.append((f, int(level)))
            parts.append(values == level)
    onehot = pd.DataFrame(np.column_stack(parts).astype(np.float64), index=sample.index)
    clf = recordlinkage.LogisticRegressionClassifier(C=10.0, max_iter=2000)
    matches = sample.index[y == 1]
    clf.fit(onehot, matches)
    prior = float(np.clip(y.mean(), 1e-9, 1 - 1e-9))
    coef = np.asarray(clf.coefficients, dtype=np.float64)
    weights: dict[str, dict[int, float]] = {f: {} for f in vectors.columns}
    for (f, level), c in zip(columns, coef, strict=True):
        weights[f][level] = c / math.log(2)
    bias = (float(clf.intercept) - _logit(prior)) / math.log(2)
    enforce_monotone(weights)
    return MatchModel(fields=tuple(vectors.columns), level_weights=weights, prior=prior,
                      method="logistic", bias=bias)


def random_pairs(n_left: int, n_right: int | None, count: int, seed: int = 0) -> pd.DataFrame:
    """Uniform random pairs of positions (every pair when there are fewer than `count`).

    `n_right` None: pairs within one frame (left < right).
    """
    rng = np.random.default_rng(seed)
    if n_right is None:
        if n_left * (n_left - 1) // 2 <= count:
            a, b = np.triu_indices(n_left, 1)
            return pd.DataFrame({"left": a.astype(np.int64), "right": b.astype(np.int64)})
        a, b = rng.integers(0, n_left, count), rng.integers(0, n_left - 1, count)
        b = b + (b >= a)  # uniform over b != a
        return pd.DataFrame({"left": np.minimum(a, b), "right": np.maximum(a, b)})
    if n_left * n_right <= count:
        a, b = np.divmod(np.arange(n_left * n_right, dtype=np.int64), n_right)
        return pd.DataFrame({"left": a, "right": b})
    return pd.DataFrame({"left": rng.integers(0, n_left, count),
                         "right": rng.integers(0, n_right, count)})


def _exact_agreement(L: Encoded, R: Encoded | None, name: str) -> float:
    """P(two random records agree exactly on `name`), from the keyed values' frequencies."""
    lk = L.key(name)
    lv, lc = np.unique(lk[lk != 0], return_counts=True)
    if R is None:
        n = L.n
        return float((lc * (lc - 1)).sum() / max(1, n * (n - 1)))
    rk = R.key(name)
    rv, rc = np.unique(rk[rk != 0], return_counts=True)
    _, li, ri = np.intersect1d(lv, rv, assume_unique=True, return_indices=True)
    return float((lc[li] * rc[ri]).sum() / max(1, L.n * R.n))


def estimate_u(left: pd.DataFrame | Encoded, right: pd.DataFrame | Encoded | None,
               fields: Sequence[str], *, count: int = 300_000, seed: int = 0
               ) -> dict[str, dict[int, float]]:
    """u = P(level | non-match) per field, from random pairs (nearly all non-matches).

    The exact-agreement level uses the exact frequency formula (sum over values of the product
    of their frequencies) instead of the sample, so rare agreements (full date of birth) are
    estimated precisely; the other levels share the rest in their sampled proportions.
    """
    L = left if isinstance(left, Encoded) else Encoded(left)
    R = None if right is None else (right if isinstance(right, Encoded) else Encoded(right))
    sample = random_pairs(L.n, None if R is None else R.n, count, seed)
    vectors = compare(L, R, sample, fields=fields)
    out: dict[str, dict[int, float]] = {}
    for f in fields:
        kind = field_kind(f)
        top = TOP_LEVEL.get(kind or "", 2)
        counts = np.bincount(vectors[f].to_numpy(dtype=np.int64), minlength=top + 1)
        counts = counts.astype(np.float64) + 0.5  # smoothing: no level has u = 0
        u = counts / counts.sum()
        exact = max(_exact_agreement(L, R, f), 0.5 / max(1, len(sample)))
        rest = u.sum() - u[top]
        u[:top] *= (1.0 - exact) / rest
        u[top] = exact
        out[f] = {level: float(u[level]) for level in range(len(u))}
    return out


def _pass_fields(cols: Sequence[str]) -> set[str]:
    return {c.split(SEP)[0] for c in pass_columns(cols)}


def _first_address(fields: Sequence[str]) -> str | None:
    """The first address part (the address line): `address` if present, else the lowest."""
    parts = sorted((f for f in fields if field_kind(f) == "address"),
                   key=lambda f: (f != "address", f))
    return parts[0] if parts else None


def _supplementary_address(fields: Sequence[str]) -> set[str]:
    """Address parts after the first (`address_2`, ...: a town, a suburb, a state).

    Passes that block on one of these are for recall only (a record whose names, date and
    postcode are all corrupted is still found through its address) and are not used to estimate
    m: a coarse part such as a town joined with a name makes a pass of mostly relatives and
    neighbours, whose EM splits households from the rest rather than matches from non-matches.
    """
    first = _first_address(fields)
    return {f for f in fields if field_kind(f) == "address" and f != first}


def _coarse(cols: Sequence[str]) -> bool:
    """A pass on part of a postcode (its district or sector): for recall only, like passes on
    a town, since a name within a district is mostly relatives and neighbours (see
    `_supplementary_address`)."""
    return any(c.split(SEP)[0] == CONDITION_FIELD and c.split(SEP)[1:] in (["district"],
               ["sector"]) for c in pass_columns(cols))


def _is_location(f: str) -> bool:
    return f == CONDITION_FIELD or field_kind(f) == "address"


def _free_fields(fields: Sequence[str], blocked: set[str]) -> list[str]:
    """The fields a pass's EM is fitted on: those it does not block on, less the location
    fields (postcode, address parts) when it blocks on one.

    Members of a household share every location field, so among pairs already agreeing on one
    location field the others agree for relatives as often as for matches: EM then splits the
    pass by household rather than by person (a pass on town + surname found more "matches"
    than there were records, and its m of forename and date-of-birth disagreement swamped the
    other passes'). Location fields get their m from the passes that block on none of them.
    """
    free = [f for f in fields if f not in blocked]
    if any(_is_location(f) for f in blocked):
        free = [f for f in free if not _is_location(f)]
    return free


def pass_membership(left: pd.DataFrame | Encoded, right: pd.DataFrame | Encoded | None,
                    pairs: pd.DataFrame, passes: Iterable[Sequence[str]]
                    ) -> dict[tuple[str, ...], np.ndarray]:
    """For each usable pass, which candidate pairs agree on all its keys."""
    L = left if isinstance(left, Encoded) else Encoded(left)
    R = L if right is None else (right if isinstance(right, Encoded) else Encoded(right))
    li, ri = pairs["left"].to_numpy(), pairs["right"].to_numpy()
    out = {}
    for cols in usable_passes(L, R, passes):
        lk, rk = L.pass_key(cols)[li], R.pass_key(cols)[ri]
        out[cols] = (lk == rk) & (lk != 0)
    return out


def estimate_prior(weights: np.ndarray, comparisons: float, iterations: int = 100) -> float:
    """P(match) for two random records: fixed point of expected matches among the candidates.

    `comparisons`: size of the comparison space (n_left * n_right, or n(n-1)/2).
    """
    w = np.asarray(weights, dtype=np.float64) * math.log(2)
    lam = min(0.5, 1.0 / max(comparisons, 2.0))
    for _ in range(iterations):
        post = 1.0 / (1.0 + np.exp(-np.clip(w + _logit(lam), -700, 700)))
        new = float(np.clip(post.sum() / comparisons, 1e-15, 0.5))
        if abs(new - lam) <= 1e-6 * lam:
            return new
        lam = new
    return lam


def fit_fellegi_sunter(left: pd.DataFrame | Encoded, right: pd.DataFrame | Encoded | None,
                       pairs: pd.DataFrame, vectors: pd.DataFrame, *,
                       passes: Iterable[Sequence[str]] = DEFAULT_PASSES,
                       u: dict[str, dict[int, float]] | None = None,
                       max_pairs_per_pass: int = 100_000, min_pass_pairs: int = 30,
                       seed: int = 0, comparisons: float | None = None,
                       term_frequency: bool = True) -> MatchModel:
    """Unsupervised Fellegi-Sunter: u from random pairs, m from ECM within each blocking pass.

    Within one pass the blocked fields agree by construction, so recordlinkage's ECM is run on
    the pass's pairs with those fields left out, and gives m for the others; each field's m is
    the average over the passes that leave it free, weighted by the matches each pass found.
    Why not one ECM over all candidates: its u would be conditional on blocking (agreement on a
    blocked field looks common among non-matches, and the union of passes makes fields look
    negatively correlated), which underweights exactly the agreements that matter and, when
    matches are a small share of candidates, can make EM pick the wrong class entirely.
    `comparisons`: the size of the space `pairs` were drawn from, when they are the candidates
    of a sample of left records (the prior is P(match) for two random records).
    `term_frequency`: weigh exact agreement on names by the value's frequency (`TF_KINDS`).
    """
    L = left if isinstance(left, Encoded) else Encoded(left)
    R = None if right is None else (right if isinstance(right, Encoded) else Encoded(right))
    fields = list(vectors.columns)
    if u is None:
        u = estimate_u(L, R, fields, seed=seed)
    supplementary = _supplementary_address(fields)
    sums: dict[str, dict[int, float]] = {f: {} for f in fields}
    totals: dict[str, float] = dict.fromkeys(fields, 0.0)
    notes: list[str] = []
    for cols, mask in pass_membership(L, R, pairs, passes).items():
        blocked = _pass_fields(cols)
        free = _free_fields(fields, blocked)
        n = int(mask.sum())
        if not free or n < min_pass_pairs or blocked & supplementary or _coarse(cols):
            continue
        base = [f for f in free if f not in supplementary]
        extra = [f for f in free if f in supplementary]
        # supplementary address parts are fitted in a second EM of their own, so that adding
        # one (a town) leaves every other field's m exactly as it was: their correlation with
        # the postcode and the address line (one move changes all three) would otherwise
        # tighten the match class on location and make a mover's postcode count against it
        fits = ([(base, set(base))] if base else []) + (
            [(base + extra, set(extra))] if extra else [])
        in_pass = vectors.loc[mask]
        for fit_fields, taken in fits:
            fitted, used = _fit_pass(in_pass, fit_fields, max_pairs_per_pass, seed)
            if fitted is None:
                notes.append("+".join(cols) + ("" if taken == set(base) else " (address parts)"))
                continue
            found = fitted.prior * n
            for f in used:
                if f not in taken:
                    continue
                totals[f] += found
                for level, m in fitted.m[f].items():
                    sums[f][level] = sums[f].get(level, 0.0) + found * m
    missing = [f for f in fields if totals[f] <= 0]
    if missing:  # fields no pass could estimate: one ECM over all candidates
        fitted = fit_ecm(vectors, max_pairs=max_pairs_per_pass, seed=seed)
        for f in missing:
            totals[f] = 1.0
            sums[f] = dict(fitted.m[f])
    m_all: dict[str, dict[int, float]] = {}
    weights: dict[str, dict[int, float]] = {}
    for f in fields:
        m_all[f], weights[f] = {}, {}
        # m and u both conditional on the field being present in both records; m smoothed
        # with one pseudo-match per level (a level never seen among a few hundred matches is
        # rare, not impossible), negligible once thousands of matches are found
        levels = [lvl for lvl in u[f] if lvl != MISSING]
        found_f = totals[f] if f not in missing else 1000.0
        counts = {lvl: sums[f].get(lvl, 0.0) / totals[f] * found_f for lvl in levels}
        norm = sum(counts.values()) + M_PSEUDO * len(levels)
        u_norm = sum(u[f][lvl] for lvl in levels) or 1.0
        for level, uu in u[f].items():
            if level == MISSING:
                m_all[f][level], weights[f][level] = 0.0, 0.0
                continue
            m = float(np.clip((counts[level] + M_PSEUDO) / norm, 1e-6, 1.0))
            m_all[f][level] = m
            weights[f][level] = math.log2(m / (uu / u_norm))
    tf = {}
    for f in fields:
        top = TOP_LEVEL.get(field_kind(f) or "", 2)
        present = sum(uu for lvl, uu in u[f].items() if lvl != MISSING)
        if term_frequency and field_kind(f) in TF_KINDS and top in u[f] and present > 0:
            tf[f] = u[f][top] / present
    model = MatchModel(fields=tuple(fields), level_weights=weights, prior=0.5, method="ecm",
                       m=m_all, u=u, notes=notes, tf=tf)
    for f in model.implausible_fields():
        if field_kind(f) == "address":
            # an extra address part (a town, a suburb) whose fitted weights make no sense is
            # left out rather than vetoing every link: adding a field must not make it worse
            model.level_weights[f] = dict.fromkeys(model.level_weights[f], 0.0)
            model.notes.append(f"{f}: implausible weights, left out")
    for f in enforce_monotone(model.level_weights):
        model.notes.append(f"{f}: weights made monotone (exact >= variant >= phonetic)")
    model.given_postcode, model.postcode_apart = conditional_location_weights(
        model, L, R, pairs, vectors, seed=seed)
    space = L.n * (L.n - 1) / 2 if R is None else float(L.n) * R.n
    model.prior = estimate_prior(pair_weights(model, L, R, pairs, vectors),
                                 comparisons or space)
    # u came from random pairs, which include the true matches: take them out and fit again
    if remove_matches_from_u(model, u, m_all):
        enforce_monotone(model.level_weights)
        model.given_postcode, model.postcode_apart = conditional_location_weights(
            model, L, R, pairs, vectors, seed=seed)
        model.prior = estimate_prior(pair_weights(model, L, R, pairs, vectors),
                                     comparisons or space)
    return model


Tables = dict[str, dict[int, float]]
U_FLOOR_BITS = 3.0  # removing matches from u may raise a level's weight by at most this much


def remove_matches_from_u(model: MatchModel, u: Tables, m: Tables) -> bool:
    """Correct u = P(level | non-match) for the true matches among the random pairs it was
    counted on, in place: u' = (u - prior * m) / (1 - prior), at least u / 2^U_FLOOR_BITS; the
    level weights and the term frequencies' reference u are recomputed from it.

    Random pairs are pairs of records, not of non-matches: with most records of one file in
    the other, a good share of the random pairs agreeing exactly on a date of birth or a full
    address are the same person (prior * m is of the order of 1 / n, as is chance agreement
    on an identifier with about n values), so u was too large and exact agreement weighed too
    little, most for the most specific identifiers. A field's weights that were set aside
    (an implausible address part: all zero) stay so. Returns whether anything changed.
    """
    lam = model.prior
    if not 0.0 < lam < 1.0:
        return False
    changed = False
    for f in model.fields:
        weights = model.level_weights.get(f, {})
        if not any(w != 0 for w in weights.values()):
            continue
        levels = [lvl for lvl in u.get(f, {}) if lvl != MISSING and lvl in m.get(f, {})]
        total = sum(u[f][lvl] for lvl in levels) or 1.0
        top = TOP_LEVEL.get(field_kind(f) or "", 2)
        for lvl in levels:
            observed = u[f][lvl] / total
            corrected = max((observed - lam * m[f][lvl]) / (1.0 - lam),
                            observed / 2.0 ** U_FLOOR_BITS)
            if m[f][lvl] <= 0 or corrected <= 0:
                continue
            new = math.log2(m[f][lvl] / corrected)
            changed |= not math.isclose(new, weights[lvl])
            weights[lvl] = new
            if lvl == top and f in model.tf:
                model.tf[f] = corrected
    return changed


def _fit_pass(pairs: pd.DataFrame, free: list[str], max_pairs: int, seed: int
              ) -> tuple[MatchModel | None, list[str]]:
    """ECM on one pass's pairs over the fields `free`: (model, fields it was fitted on), or
    (None, []) if nothing varies or the match class is implausible. An address part whose
    weights make no sense in this pass is left out and the pass refitted (as in the whole
    model); an implausible name, date or sex sets the pass aside."""
    while free:
        sub = pairs[free]
        if all(sub[f].nunique() < 2 for f in free):
            return None, []
        fitted = fit_ecm(sub, max_pairs=max_pairs, seed=seed)
        bad = fitted.implausible_fields()
        if not bad:
            return fitted, free
        if any(field_kind(f) != "address" for f in bad):
            return None, []
        free = [f for f in free if f not in bad]
    return None, []


def _posterior_from_others(model: MatchModel, vectors: pd.DataFrame, others: list[str]
                           ) -> np.ndarray:
    """P(match) of each pair from the fields in `others` alone, with the prior odds among
    these pairs found by fixed point (expected matches / pairs), as `estimate_prior` does."""
    sub = MatchModel(fields=tuple(others), prior=model.prior, method=model.method,
                     level_weights={f: model.level_weights[f] for f in others})
    w = sub.weight(vectors) * math.log(2)
    lam = 0.01
    post = np.full(len(w), lam)
    for _ in range(100):
        post = 1.0 / (1.0 + np.exp(-np.clip(w + _logit(lam), -700, 700)))
        new = float(np.clip(post.mean(), 1e-9, 0.5))
        if abs(new - lam) <= 1e-6 * lam:
            break
        lam = new
    return post


def _level_shares(levels: np.ndarray, weight: np.ndarray, top: int) -> np.ndarray | None:
    """Weighted share of each level among present levels (0.5 smoothing), None if too few."""
    present = levels != MISSING
    if weight[present].sum() < 50:
        return None
    mass = np.bincount(levels[present], weights=weight[present], minlength=top + 1) + 0.5
    mass[MISSING] = 0.0
    return mass / mass.sum()


def conditional_location_weights(model: MatchModel, L: Encoded, R: Encoded | None,
                                 pairs: pd.DataFrame, candidates: pd.DataFrame, *,
                                 sample_rows: int = 50_000, max_pairs: int = 300_000,
                                 seed: int = 0) -> tuple[Tables, Tables]:
    """Weights of the address parts where the postcodes agree exactly, and where they differ.

    Members of one household share a postcode *and* an address (and a town, which the postcode
    district implies): Fellegi-Sunter's independence would count that one fact two or three
    times, so two relatives at one address outweigh their different names and dates of birth,
    and an extra address part (a town) makes linkage worse where it should not matter. Here an
    address part's u, where the postcodes agree, is P(level | non-match, same postcode): the
    levels among pairs of records sharing a postcode (a sample of left records joined on the
    postcode), each pair counted as a non-match with the probability the model's other fields
    (names, date of birth, sex) give it, so true matches hardly count; m likewise, each pair
    counted as a match with that probability. A town within one postcode then agrees among
    non-matches too and weighs about nothing; a shared address line weighs what it says beyond
    the postcode. Where both postcodes are present and differ (a move), m of each address level
    comes from the candidate pairs with different postcodes, weighted the same way (a mover's
    address differs too, which the unconditional m counts as a second disagreement); u as
    fitted. Missing postcode: the unconditional weights. Returns (same, apart): field ->
    level -> log2 weight; empty when there is no postcode or no address part.
    """
    location = [f for f in model.fields if field_kind(f) == "address"
                and any(w != 0 for w in model.level_weights.get(f, {}).values())]
    if CONDITION_FIELD not in model.fields or not location:
        return {}, {}
    right = L if R is None else R
    if not (L.has(CONDITION_FIELD) and right.has(CONDITION_FIELD)):
        return {}, {}
    from linkage.probabilistic.blocking import block_pairs

    others = [f for f in model.fields if f not in location and f != CONDITION_FIELD]
    rng = np.random.default_rng(seed)
    same: Tables = {}
    apart: Tables = {}
    # same postcode: pairs of records sharing one (a sample of left records joined on it)
    rows = np.sort(rng.choice(L.n, size=min(L.n, sample_rows), replace=False))
    a, b, _ = block_pairs(L.key(CONDITION_FIELD)[rows], right.key(CONDITION_FIELD),
                          max_block_pairs=10_000)
    a = rows[a]
    keep = a != b if R is None else np.ones(len(a), dtype=bool)
    a, b = a[keep], b[keep]
    if len(a) > max_pairs:
        pick = np.sort(rng.choice(len(a), size=max_pairs, replace=False))
        a, b = a[pick], b[pick]
    if len(a) >= 100 and others:
        vectors = compare(L, R, pd.DataFrame({"left": a, "right": b}), fields=list(model.fields))
        post = _posterior_from_others(model, vectors, others)
        for f in location:
            top = TOP_LEVEL.get(field_kind(f) or "", 2)
            levels = vectors[f].to_numpy(dtype=np.int64)
            u_given = _level_shares(levels, 1.0 - post, top)
            m_given = _level_shares(levels, post, top)
            if u_given is None:
                continue
            if m_given is None:  # too few matches here to say: the fitted m
                m = model.m.get(f, {})
                total = sum(v for lvl, v in m.items() if lvl != MISSING) or 1.0
                m_given = np.array([m.get(lvl, 0.0) / total for lvl in range(top + 1)])
            same[f] = {MISSING: 0.0} | {
                lvl: math.log2(max(m_given[lvl], 1e-6) / u_given[lvl])
                for lvl in range(1, top + 1)}
    # postcodes present and different: m among candidate pairs (by the other fields'
    # posterior); u as fitted (random pairs nearly all have different postcodes)
    pc = candidates[CONDITION_FIELD].to_numpy() if CONDITION_FIELD in candidates else None
    if pc is not None and others:
        differ = (pc != MISSING) & (pc != TOP_LEVEL[CONDITION_FIELD])
        sub = candidates.loc[differ]
        if len(sub) >= 100:
            post = _posterior_from_others(model, sub, others)
            for f in location:
                top = TOP_LEVEL.get(field_kind(f) or "", 2)
                m_given = _level_shares(sub[f].to_numpy(dtype=np.int64), post, top)
                u = model.u.get(f, {})
                u_total = sum(v for lvl, v in u.items() if lvl != MISSING) or 1.0
                if m_given is None or not u:
                    continue
                apart[f] = {MISSING: 0.0} | {
                    lvl: math.log2(max(m_given[lvl], 1e-6) / max(u.get(lvl, 0.0) / u_total,
                                                                   1e-9))
                    for lvl in range(1, top + 1)}
    return same, apart


def resolve_method(method: str, labels: np.ndarray | None) -> str:
    """The fit `method` stands for: `auto` is logistic when there are >= 200 labelled matches
    and non-matches, else ecm; any other method is itself."""
    if method != "auto":
        return method
    enough = labels is not None and min(int((labels == 1).sum()),
                                        int((labels == 0).sum())) >= 200
    return "logistic" if enough else "ecm"


def fit_model(left: pd.DataFrame | Encoded, right: pd.DataFrame | Encoded | None,
              pairs: pd.DataFrame, vectors: pd.DataFrame, *, labels: np.ndarray | None = None,
              method: str = "ecm", passes: Iterable[Sequence[str]] = DEFAULT_PASSES,
              **kwargs: Any) -> MatchModel:
    """`ecm` (default: `fit_fellegi_sunter`), `logistic` (needs labels) or `auto` (see
    `resolve_method`)."""
    method = resolve_method(method, labels)
    if method == "ecm":
        return fit_fellegi_sunter(left, right, pairs, vectors, passes=passes, **kwargs)
    if method == "logistic":
        if labels is None:
            raise ValueError("logistic fit needs labels")
        return fit_logistic(vectors, labels, **kwargs)
    raise ValueError(f"unknown method {method!r}")


def nhs_labels(left: pd.DataFrame, right: pd.DataFrame | None, pairs: pd.DataFrame,
               column_name: str = "person_id") -> np.ndarray | None:
    """Free labels from the NHS-number pseudonym: 1 equal, 0 different, -1 unknown; None if absent.
    """
    r = left if right is None else right
    if column_name not in left.columns or column_name not in r.columns:
        return None
    a = left[column_name].to_numpy(dtype=object)[pairs["left"].to_numpy()]
    b = r[column_name].to_numpy(dtype=object)[pairs["right"].to_numpy()]
    known = pd.notna(a) & pd.notna(b)
    return np.where(known, (a == b).astype(np.int8), -1).astype(np.int8)
