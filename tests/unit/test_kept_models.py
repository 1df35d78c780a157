"""Kept linkage models (`linkage.kept_models`): written and read back to the bit, the
policy's limits on reusing one, what makes one stale, and files that are not what they
should be (each refused with the file named, never half-read)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from governance.drift_policy import parse_drift
from linkage import kept_models
from linkage.probabilistic import MatchModel

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2026, 1, 2, tzinfo=UTC)
MODEL = MatchModel(fields=("a", "b"),
                   level_weights={"a": {0: -1.0 / 3, 3: 7.123456789012345}, "b": {1: 2.0 ** -40}},
                   prior=0.1 / 7, method="supervised", m={"a": {3: 0.9}}, u={"a": {3: 1e-9}})


def _kept(**models: dict[str, int]) -> kept_models.KeptModels:
    return kept_models.KeptModels(models={
        name: kept_models.KeptModel(("lk_a", "lk_b"), MODEL, 1234, AT, trained_on)
        for name, trained_on in models.items()})


def test_a_kept_model_scores_as_the_trained_one_did(tmp_path):
    """JSON keeps every level weight to the bit, so a reused model weighs pairs the same."""
    path = tmp_path / "models.json"
    kept_models.write(path, _kept(**{"ae:lk_a,lk_b": {"x": 10}}))
    back = kept_models.read(path)
    assert back.models["ae:lk_a,lk_b"].model == MODEL
    assert back.models["ae:lk_a,lk_b"].trained_on == {"x": 10}
    later = AT + timedelta(days=30)
    assert back.usable("ae", ["lk_a", "lk_b"], 1300, later)
    assert back.usable("ae", ["lk_a", "lk_b"], 1400, later) is None  # register grew > 10%
    assert back.usable("ae", ["lk_a"], 1300, later) is None  # other fields
    assert back.usable("op", ["lk_a", "lk_b"], 1300, later) is None  # other source
    assert back.usable("ae", ["lk_a", "lk_b"], 1234, AT + timedelta(days=93)) is None
    assert back.usable("ae", ["lk_a", "lk_b"], 1234, AT - timedelta(hours=1)) is None  # future
    kept_models.write(path, kept_models.KeptModels())
    assert not path.exists()  # nothing kept: no file


def test_a_model_goes_stale_when_an_extract_it_read_goes_or_changes():
    kept = _kept(**{"ae:x": {"reg": 100, "ae1": 50}, "op:x": {"reg": 100, "op1": 70}})
    kept.quality, kept.quality_at = {"ae": {"review": 1}}, AT
    assert kept.holding({"ae1"}) == 1 and kept.holding({"reg"}) == 2
    assert kept.drop_stale({"reg": 100, "ae1": 50, "op1": 70}) == []
    assert kept.quality  # nothing dropped: the quality stays
    assert kept.drop_stale({"reg": 100, "ae1": 49, "op1": 70}) == ["ae:x"]  # rows purged
    assert not kept.quality and kept.quality_at is None  # measured with a model now gone
    assert kept.drop_stale({"op1": 70}) == ["op:x"]  # the register destroyed
    assert kept.models == {}
    again = _kept(**{"ae:x": {"reg": 100, "ae1": 50}})
    assert again.drop({"ae1"}) == ["ae:x"]


@pytest.mark.parametrize("change", [
    lambda m: m.update(models=[]),
    lambda m: m["models"]["ae"].update(trained_on=["x"]),
    lambda m: m["models"]["ae"].update(trained_on={}),
    lambda m: m["models"]["ae"].update(trained_on={"x": "10"}),
    lambda m: m["models"]["ae"].update(trained_at="2026-01-02T00:00:00"),  # no time zone
    lambda m: m["models"]["ae"].update(fields="lk_a"),
    lambda m: m["models"]["ae"].update(profiles=-1),
    lambda m: m["models"]["ae"]["model"].update(level_weights=[1, 2]),
    lambda m: m["models"]["ae"].pop("model"),
])
def test_a_malformed_file_is_refused_naming_it(tmp_path, change):
    path = tmp_path / "models.json"
    kept_models.write(path, _kept(ae={"x": 10}))
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="models.json: the kept linkage models cannot be read"):
        kept_models.read(path)


def _policy(**changed: object) -> str:
    base = json.loads((ROOT / "policies" / "drift.json").read_text(encoding="utf-8"))
    base.update(changed)
    return json.dumps(base, allow_nan=True)


def test_the_policy_bounds_the_retraining_limits():
    shipped = parse_drift(_policy())
    assert (shipped["linkage_retrain_register_change"], shipped["linkage_retrain_days"]) == (
        0.1, 92.0)
    older = json.loads(_policy())
    del older["linkage_retrain_register_change"], older["linkage_retrain_days"]
    assert parse_drift(json.dumps(older))["linkage_retrain_days"] == 92.0  # stored before them
    for name, bad in [("linkage_retrain_days", 1e10), ("linkage_retrain_days", math.inf),
                      ("linkage_retrain_days", math.nan), ("linkage_retrain_days", -1),
                      ("linkage_retrain_register_change", 1.5),
                      ("linkage_retrain_register_change", math.nan),
                      ("linkage_retrain_register_change", True)]:
        with pytest.raises(ValueError, match=name):
            parse_drift(_policy(**{name: bad}))
    kept = kept_models.read(Path("/nonexistent/models.json"),
                            parse_drift(_policy(linkage_retrain_days=0)))
    assert kept.days == 0.0
