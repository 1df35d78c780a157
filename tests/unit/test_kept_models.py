"""Kept linkage models (`linkage.kept_models`): written and read back to the bit, and the
policy's limits on reusing one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from linkage import kept_models
from linkage.probabilistic import MatchModel


def test_a_kept_model_scores_as_the_trained_one_did(tmp_path):
    """JSON keeps every level weight to the bit, so a reused model weighs pairs the same."""
    model = MatchModel(
        fields=("a", "b"), level_weights={"a": {0: -1.0 / 3, 3: 7.123456789012345},
                                          "b": {1: 2.0 ** -40}},
        prior=0.1 / 7, method="supervised", m={"a": {3: 0.9}}, u={"a": {3: 1e-9}})
    kept = kept_models.KeptModels(models={"ae:lk_a,lk_b": kept_models.KeptModel(
        ("lk_a", "lk_b"), model, 1234, datetime(2026, 1, 2, tzinfo=UTC), frozenset({"x"}))})
    path = tmp_path / "models.json"
    kept_models.write(path, kept)
    back = kept_models.read(path)
    assert back.models["ae:lk_a,lk_b"].model == model
    assert back.usable("ae", ["lk_a", "lk_b"], 1300, datetime(2026, 2, 1, tzinfo=UTC))
    assert back.usable("ae", ["lk_a", "lk_b"], 1400, datetime(2026, 2, 1, tzinfo=UTC)) is None
    assert back.usable("ae", ["lk_a"], 1300, datetime(2026, 2, 1, tzinfo=UTC)) is None
    assert back.usable("op", ["lk_a", "lk_b"], 1300, datetime(2026, 2, 1, tzinfo=UTC)) is None
    path.write_text("{")
    with pytest.raises(ValueError, match="models.json"):
        kept_models.read(path)
