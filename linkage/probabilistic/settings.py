"""Linkage settings: everything `link` and `dedupe` are told besides the data, as one frozen value
that saves to JSON beside a run, diffs, and loads back equal (as Splink's settings do)."""

from __future__ import annotations

import dataclasses
import json
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linkage.probabilistic.blocking import DEFAULT_PASSES

PARTITION_PAIRS = 4_000_000  # candidate pairs per partition: bounds memory, feeds the threads
METHODS = ("ecm", "logistic", "auto")
ASSIGNMENTS = ("one_to_one", "best_right")


@dataclass(frozen=True)
class LinkageSettings:
    """How to link: thresholds, blocking, partitioning, the model's fit. The defaults are what
    `link-files` uses.

    upper, lower: pairs with P(match) >= `upper` are linked; `lower <= P < upper` go to review.
    passes: blocking passes, each a tuple of encoding columns that must all agree (see
      `blocking.DEFAULT_PASSES`).
    method: "ecm" (unsupervised Fellegi-Sunter), "logistic" (NHS-number labels) or "auto"
      (`estimation.resolve_method`).
    assignment: two files only: "one_to_one" or "best_right" (each left record's best; many
      left records may share a right one). `dedupe` clusters instead.
    max_block_pairs: a block with more pairs than this (on the whole inputs) is skipped for
      its pass.
    max_pairs: at most this many candidate pairs in one partition (MemoryError beyond).
    partition_pairs: about this many candidate pairs per partition of left records.
    workers: threads scoring partitions; None: up to 4, by CPU count. Results do not depend on it.
    seed: the random choices: which left records a partitioned run fits its model on, and the
      fit's own samples.
    term_frequency, max_pairs_per_pass, min_pass_pairs: the ecm fit's options
      (`estimation.fit_fellegi_sunter`).
    """

    upper: float = 0.9
    lower: float = 0.5
    passes: tuple[tuple[str, ...], ...] = DEFAULT_PASSES
    method: str = "ecm"
    assignment: str = "one_to_one"
    max_block_pairs: int = 100_000
    max_pairs: int = 50_000_000
    partition_pairs: int = PARTITION_PAIRS
    workers: int | None = None
    seed: int = 0
    term_frequency: bool = True
    max_pairs_per_pass: int = 100_000
    min_pass_pairs: int = 30

    def __post_init__(self) -> None:
        # normal forms, so that equal settings compare and serialise equal
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if isinstance(self.passes, str) or any(isinstance(p, str) for p in self.passes):
            raise TypeError("passes: a sequence of passes, each a sequence of column names")
        put("passes", tuple(tuple(str(c) for c in p) for p in self.passes))
        for name in ("upper", "lower"):
            value = float(getattr(self, name))
            if not (0.0 <= value <= 1.0) or math.isnan(value):
                raise ValueError(f"{name} must be a probability, not {value!r}")
            put(name, value)
        if self.lower > self.upper:
            raise ValueError(f"lower ({self.lower}) is above upper ({self.upper})")
        for name in ("max_block_pairs", "max_pairs", "partition_pairs", "seed",
                     "max_pairs_per_pass", "min_pass_pairs"):
            put(name, _integer(name, getattr(self, name)))
        if self.workers is not None:
            put("workers", _integer("workers", self.workers))
        for name in ("max_block_pairs", "partition_pairs", "max_pairs_per_pass"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be at least 1 (or None)")
        if not isinstance(self.term_frequency, bool):
            raise TypeError("term_frequency must be true or false")
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r}: one of {', '.join(METHODS)}")
        if self.assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment {self.assignment!r}: one of {', '.join(ASSIGNMENTS)}")

    def ecm_options(self) -> dict[str, Any]:
        """Keyword arguments of `estimation.fit_fellegi_sunter` that these settings choose."""
        return {"seed": self.seed, "term_frequency": self.term_frequency,
                "max_pairs_per_pass": self.max_pairs_per_pass,
                "min_pass_pairs": self.min_pass_pairs}

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON types only (passes as lists of lists)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["passes"] = [list(p) for p in self.passes]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinkageSettings:
        """Settings from `to_dict` output; a field left out takes its default, an unknown name
        is an error (a misspelt setting must not be silently ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown linkage setting(s): {', '.join(unknown)}")
        return cls(**dict(data))

    def to_json(self) -> str:
        """Indented JSON, one field per line in a fixed order (diffs read line by line)."""
        fields = self.to_dict()
        passes = fields.pop("passes")
        body = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in fields.items()]
        body.append('  "passes": [\n' + ",\n".join(f"    {json.dumps(p)}" for p in passes)
                    + ("\n  ]" if passes else "]"))
        return "{\n" + ",\n".join(body) + "\n}"

    @classmethod
    def from_json(cls, text: str) -> LinkageSettings:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("linkage settings: a JSON object expected")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write `to_json()` to `path` (a text file, newline-terminated); returns the path."""
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LinkageSettings:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {value!r}") from None
