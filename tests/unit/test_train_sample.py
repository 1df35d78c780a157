"""Training on a fixed-size sample (issue #12: training memory independent of the population).

Above `stratify.train.SAMPLE_PERSONS` persons a training date is sampled down before any
feature is fetched; at or below it training reads everyone exactly as before. The sample's
order is made from the rows' content in column chunks, so it must be exactly `stable_order`'s;
a sampled run must still be the same whatever keys pseudonymised the data, and calibrated to
the population (the sample is unweighted and the calibration hold-out comes from it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from factories import bench_score
from stratify import train as train_module
from stratify.catalogue import NAMES
from stratify.features import connect, features_from
from stratify.models import logit
from stratify.outcomes import outcomes_from
from stratify.scoring import score
from stratify.sources import add_months
from stratify.train import _sampled_rows, _training_rows, stable_order, train

AT = dt.date(2025, 4, 1)
T1 = add_months(AT, -12)


@pytest.fixture(scope="module")
def sources() -> dict[str, pd.DataFrame]:
    return bench_score().make_sources(1500, seed=11)


def _keyed(sources: dict[str, pd.DataFrame], key: bytes
           ) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """The sources under person keys made with `key` (as another data directory would)."""
    def pseudonym(person: str) -> str:
        return "P" + hmac.new(key, person.encode(), hashlib.sha256).hexdigest()[:20]

    persons = pd.unique(pd.concat([f["person_key"] for f in sources.values()]).astype(str))
    forward = {p: pseudonym(p) for p in persons}
    out = {name: frame.assign(person_key=frame["person_key"].astype(str).map(forward))
           for name, frame in sources.items()}
    return out, {k: p for p, k in forward.items()}


def test_the_chunked_order_is_stable_order_and_fetches_the_same_rows(sources) -> None:
    """The sampled path asked for everyone gives exactly the in-memory path's frame: the
    column-chunk hashes order as `stable_order`, and fetching by keys fetches those rows."""
    con = connect(sources)
    try:
        names = list(reversed(NAMES))  # hashed in the order training is given, not NAMES'
        X, y, persons = _training_rows(con, T1, None, names, 10**9, 0, 4)
        assert persons == len(X) > 1000
        everyone = features_from(con, T1)[names]
        outcome = outcomes_from(con, everyone.index, T1)["emergency"].to_numpy()
        expected = everyone.iloc[stable_order(everyone, outcome)]
        pd.testing.assert_frame_equal(X, expected)
        chunked, y_chunked = _sampled_rows(con, T1, names, persons, 0, 4)
        pd.testing.assert_frame_equal(chunked, X)
        np.testing.assert_array_equal(y_chunked, y)
        assert 0 < y.sum() < len(y)
        part, _ = _sampled_rows(con, T1, names, 300, 0, 4)
        other, _ = _sampled_rows(con, T1, names, 300, 1, 4)
        assert len(part) == len(other) == 300
        assert set(part.index) < set(X.index)
        assert set(part.index) != set(other.index)  # the seed draws the sample
        # the sample keeps the content order: its rows appear as in the whole order
        position = pd.Series(np.arange(len(X)), index=X.index)
        assert position[part.index].is_monotonic_increasing
    finally:
        con.close()


def test_a_sample_size_below_one_is_refused(sources) -> None:
    con = connect(sources)
    try:
        with pytest.raises(ValueError, match="sample_persons must be 1 or more"):
            train(con, AT, sample_persons=0)
    finally:
        con.close()


def test_above_the_cap_training_uses_exactly_the_cap_whatever_the_keys(sources, monkeypatch
                                                                       ) -> None:
    cap = 600
    monkeypatch.setattr(train_module, "SAMPLE_PERSONS", cap)
    runs = []
    for _ in range(2):
        keyed, back = _keyed(sources, secrets.token_bytes(32))
        run = score(keyed, AT, seed=0)
        p = pd.Series(run.scores["probability"].to_numpy(),
                      index=run.scores["person_key"].map(back).to_numpy()).sort_index()
        runs.append((run, p))
    (one, p1), (two, p2) = runs
    sampling = one.metrics["training"]["sampling"]
    assert sampling["sampled"] is True and sampling["sample_persons"] == cap
    assert sampling["population"] > 2 * cap
    training = one.metrics["training"]
    assert training["train_persons"] + training["calibration_persons"] == cap
    assert training["calibration_persons"] == round(cap * train_module.CALIBRATION_SHARE)
    # everyone is still scored, and identically under either key
    assert p1.index.equals(p2.index) and len(p1) > 2 * cap
    np.testing.assert_array_equal(p1.to_numpy(), p2.to_numpy())
    assert one.metrics["training"] == two.metrics["training"]
    assert one.metrics["selection"] == two.metrics["selection"]
    assert one.thresholds == two.thresholds and one.model == two.model

    # Calibrated on the whole training-date population, not only the sample it learnt from:
    # the mean probability within three standard errors of the hold-out's event rate, and a
    # calibration slope near 1.
    bundle = one.bundle
    assert bundle is not None
    keyed, _ = _keyed(sources, secrets.token_bytes(32))
    con = connect(keyed)
    try:
        X = features_from(con, T1, bundle.lookback_months)
        y = outcomes_from(con, X.index, T1)["emergency"].to_numpy()
    finally:
        con.close()
    probability = bundle.probability(X)
    rate = y.mean()
    held = training["calibration_persons"]
    assert abs(probability.mean() - rate) < 3 * np.sqrt(rate * (1 - rate) / held)
    slope = LogisticRegression(C=1e6).fit(logit(probability).reshape(-1, 1), y).coef_[0, 0]
    assert 0.7 < slope < 1.3


def test_at_or_below_the_cap_everyone_is_used_as_before(sources, monkeypatch) -> None:
    con = connect(sources)
    try:
        persons = len(features_from(con, T1, columns=["age"]))
        bundle = train(con, AT, seed=0, sample_persons=persons,
                       candidates=("rule", "logistic"), history_gain_check=False)
    finally:
        con.close()
    sampling = bundle.metrics["sampling"]
    assert sampling["sampled"] is False and sampling["population"] == persons
    assert bundle.metrics["train_persons"] + bundle.metrics["calibration_persons"] == persons
