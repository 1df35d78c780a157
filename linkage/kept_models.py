"""Linkage models kept between runs, so a monthly refresh links its rows without training again.

Each run that trains a source's model (`index_matcher.match_profiles`) keeps it here, in the
index folder, with the fields it compares, the register's size when it was trained, when, and
the extracts whose rows it was trained on (the register's and the labelled examples'). A later
run reuses it for that source while all of these hold:

- it compares the same fields (the query rows carry the same keyed encodings: a source's
  model is kept for each set of fields it was trained on);
- the register's profiles have changed by at most `register_change` of their number since;
- it is at most `days` old;
- every extract it was trained on is still landed with the rows it had then (`drop_stale`):
  a model learnt from rows destroyed or purged since is not used again, and `leftovers`
  measures what destruction leaves.

Training, and the quality estimate that goes with it, were most of a month's link at a
million persons; a month adds a few per cent to the register, which moves a model's few dozen
level weights less than their own sampling error. The quality measured when the models were
trained is kept with them and reported, with its date, while every model used is a kept one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from governance.drift_policy import LINKAGE_RETRAIN
from linkage.probabilistic import MatchModel

# When a kept model is trained again (policies/drift.json's linkage_retrain_* keys).
REGISTER_CHANGE = LINKAGE_RETRAIN["linkage_retrain_register_change"]
RETRAIN_DAYS = LINKAGE_RETRAIN["linkage_retrain_days"]


@dataclass(frozen=True)
class KeptModel:
    """One source's model and what it was trained on: `trained_on` maps each extract whose
    rows it read (the register's and the labelled examples') to that extract's landed row
    count then, so a purge (which lowers the count) is seen even by a run that did not do it."""

    fields: tuple[str, ...]
    model: MatchModel
    profiles: int
    trained_at: datetime
    trained_on: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"fields": list(self.fields), "model": self.model.to_dict(),
                "profiles": self.profiles, "trained_at": self.trained_at.isoformat(),
                "trained_on": dict(sorted(self.trained_on.items()))}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeptModel:
        trained_on, fields = data["trained_on"], data["fields"]
        if not (isinstance(trained_on, dict) and trained_on and all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                for k, v in trained_on.items())):
            raise ValueError("trained_on must map extract ids to row counts")
        if not (isinstance(fields, list) and fields and all(isinstance(f, str) for f in fields)):
            raise ValueError("fields must be a list of field names")
        at = datetime.fromisoformat(data["trained_at"])
        if at.tzinfo is None:
            raise ValueError("trained_at must carry its time zone")
        profiles = data["profiles"]
        if isinstance(profiles, bool) or not isinstance(profiles, int) or profiles < 0:
            raise ValueError("profiles must be a count")
        return cls(tuple(fields), MatchModel.from_dict(data["model"]), profiles, at,
                   dict(trained_on))


@dataclass
class KeptModels:
    """The models a link may reuse ({`name`: KeptModel}) and the quality measured with them."""

    models: dict[str, KeptModel] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    quality_at: datetime | None = None
    register_change: float = REGISTER_CHANGE
    days: float = RETRAIN_DAYS

    def usable(self, source: str, fields: Iterable[str], profiles: int,
               now: datetime) -> KeptModel | None:
        """The source's kept model for rows carrying `fields` if it may link them against a
        register of `profiles` profiles now, else None (trained again). A model dated in the
        future (a clock set back, a planted file) is not used."""
        kept = self.models.get(name(source, fields))
        if kept is None:
            return None
        if abs(profiles - kept.profiles) > self.register_change * max(kept.profiles, 1):
            return None
        age_days = (now - kept.trained_at).total_seconds() / 86_400
        if not 0 <= age_days <= self.days:
            return None
        return kept

    def drop_stale(self, landed_rows: dict[str, int]) -> list[str]:
        """Forget the models trained on an extract that is no longer landed (`landed_rows`:
        each landed extract's row count) or whose rows changed since (an opt-out purge) and,
        with any of them, the quality measured beside them; the models' names."""
        dropped = [n for n, kept in self.models.items()
                   if any(landed_rows.get(e) != rows for e, rows in kept.trained_on.items())]
        return self.forget(dropped)

    def drop(self, extract_ids: Iterable[str]) -> list[str]:
        """Forget the models trained on any of `extract_ids` (rows purged from them)."""
        gone = set(extract_ids)
        return self.forget([n for n, kept in self.models.items()
                            if gone.intersection(kept.trained_on)])

    def forget(self, names: list[str]) -> list[str]:
        """Forget the models `names` and, with any of them, the quality measured with them."""
        for model_name in names:
            del self.models[model_name]
        if names:
            self.forget_quality()
        return names

    def forget_quality(self) -> None:
        """The quality measured with the kept models no longer describes the models used."""
        self.quality, self.quality_at = {}, None

    def holding(self, extract_ids: Iterable[str]) -> int:
        """How many kept models were trained on any of `extract_ids` (destruction's check)."""
        wanted = set(extract_ids)
        return sum(1 for kept in self.models.values() if wanted.intersection(kept.trained_on))


def name(source: str, fields: Iterable[str]) -> str:
    """A kept model's name: its source and the fields it compares (two councils' extracts
    may carry different fields: each set has its own model, as training gives it)."""
    return f"{source}:{','.join(fields)}"


def read(path: Path, policy: dict[str, Any] | None = None) -> KeptModels:
    """The kept models at `path` (none if it is absent), with the retraining thresholds of
    `policy` (policies/drift.json's `linkage_retrain_register_change`, `linkage_retrain_days`);
    ValueError naming the file if it cannot be read."""
    policy = policy or {}
    kept = KeptModels(register_change=float(policy.get("linkage_retrain_register_change",
                                                       REGISTER_CHANGE)),
                      days=float(policy.get("linkage_retrain_days", RETRAIN_DAYS)))
    if not path.exists():
        return kept
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        kept.models = {str(s): KeptModel.from_json(m) for s, m in data["models"].items()}
        kept.quality = dict(data.get("quality") or {})
        at = data.get("quality_at")
        kept.quality_at = datetime.fromisoformat(at) if at else None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path.name}: the kept linkage models cannot be read "
                         f"({type(exc).__name__}); remove it to train again") from exc
    return kept


def write(path: Path, kept: KeptModels) -> None:
    """Write the kept models (replacing the file whole: a reader sees the old or the new)."""
    if not kept.models:
        path.unlink(missing_ok=True)
        return
    data = {"models": {s: m.to_json() for s, m in sorted(kept.models.items())},
            "quality": kept.quality,
            "quality_at": kept.quality_at.isoformat() if kept.quality_at else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)
