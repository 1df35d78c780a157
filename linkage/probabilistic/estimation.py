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
from linkage.probabilistic.comparison import DIFFERENT, MISSING, TOP_LEVEL, compare
from linkage.probabilistic.encoded import Encoded, pass_columns
from linkage.probabilistic.term_frequencies import TF_KINDS, pair_weights

LOG_FLOOR = math.log(1e-12)
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
        for f in self.fields:
            if f not in vectors.columns:
                continue
            table = np.zeros(128, dtype=np.float64)
            for level, w in self.level_weights[f].items():
                table[int(level)] = w
            total += table[vectors[f].to_numpy(dtype=np.int64)]
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
                "notes": list(self.notes), "tf": dict(self.tf)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MatchModel:
        def levels(d: dict[str, dict[str, float]]) -> dict[str, dict[int, float]]:
            return {f: {int(k): float(v) for k, v in w.items()} for f, w in d.items()}
        return cls(fields=tuple(data["fields"]), prior=float(data["prior"]),
                   method=data["method"], bias=float(data.get("bias", 0.0)),
                   level_weights=levels(data["level_weights"]), m=levels(data.get("m", {})),
                   u=levels(data.get("u", {})), notes=list(data.get("notes", [])),
                   tf={f: float(v) for f, v in data.get("tf", {}).items()})

    def to_json(self) -> str:
        """`to_dict` as JSON (m, u and weight per level, prior, term frequencies): a fitted model
        saved beside a run's `LinkageSettings` scores the same pairs the same way when loaded."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> MatchModel:
        return cls.from_dict(json.loads(text))


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
    sums: dict[str, dict[int, float]] = {f: {} for f in fields}
    totals: dict[str, float] = dict.fromkeys(fields, 0.0)
    notes: list[str] = []
    for cols, mask in pass_membership(L, R, pairs, passes).items():
        free = [f for f in fields if f not in _pass_fields(cols)]
        n = int(mask.sum())
        if not free or n < min_pass_pairs:
            continue
        sub = vectors.loc[mask, free]
        if all(sub[f].nunique() < 2 for f in free):
            continue
        fitted = fit_ecm(sub, max_pairs=max_pairs_per_pass, seed=seed)
        if fitted.implausible_fields():
            notes.append("+".join(cols))
            continue
        found = fitted.prior * n
        for f in free:
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
    space = L.n * (L.n - 1) / 2 if R is None else float(L.n) * R.n
    model.prior = estimate_prior(pair_weights(model, L, R, pairs, vectors),
                                 comparisons or space)
    return model


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
