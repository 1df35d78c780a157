"""The geographies aggregates are published on (`policies/geography.csv`).

Four levels, each a grouping of the one below: practice, Primary Care Network (PCN), locality
and the whole area. The table names each practice's PCN and each PCN's locality; a practice it
does not list (or a person without one) is counted under `unknown` at every level below the
area, so every person is in exactly one unit of every level and each unit's count is the sum of
its children's. An IG lead changes the table with `haven policy set` (checked here, audited).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import Engine

POLICY = "geography.csv"
LEVELS = ("practice", "pcn", "locality", "area")  # finest first; each groups the one before
AREA = "all"  # the one unit of the area level
UNKNOWN = "unknown"
HEADER = ["practice", "pcn", "locality"]
_PRACTICE = re.compile(r"^[A-Z0-9]{3,10}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,39}$")


@dataclass(frozen=True)
class Geography:
    """Practice -> PCN and PCN -> locality, as (key, value) pairs so the table is hashable
    (answers are kept per geography)."""

    pcn_of: tuple[tuple[str, str], ...] = ()
    locality_of: tuple[tuple[str, str], ...] = ()
    _maps: dict[str, Mapping[str, str]] = field(default_factory=dict, compare=False,
                                                hash=False, repr=False)

    @classmethod
    def load(cls, text: str | None = None, engine: Engine | None = None) -> Geography:
        """The table from `text`, else the one in force (an IG lead's override when an engine
        is given, else the shipped `policies/geography.csv`)."""
        if text is None:
            from governance.policy_tables import policy_text

            text = policy_text(POLICY, engine)
        return cls.parse(text)

    @classmethod
    def parse(cls, text: str) -> Geography:
        """Read and check the CSV (comment lines start with #); ValueError says what is wrong."""
        lines = [line for line in io.StringIO(text) if not line.lstrip().startswith("#")]
        reader = csv.reader(lines)
        header = [c.strip() for c in next(reader, [])]
        if header != HEADER:
            raise ValueError(f"{POLICY}: the header must be {','.join(HEADER)}")
        pcn_of: dict[str, str] = {}
        locality_of: dict[str, str] = {}
        for number, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != 3:
                raise ValueError(f"{POLICY}: row {number} must have 3 fields")
            practice, pcn, locality = (cell.strip() for cell in row)
            if not _PRACTICE.match(practice):
                raise ValueError(f"{POLICY}: row {number}: a practice is an ODS code")
            if not (_NAME.match(pcn) and _NAME.match(locality)) or \
                    {pcn, locality} & {UNKNOWN, AREA}:
                raise ValueError(f"{POLICY}: row {number}: PCN and locality are names of up "
                                 f"to 40 letters, digits, spaces, '.', '_' or '-' (not "
                                 f"{UNKNOWN!r} or {AREA!r})")
            if practice in pcn_of:
                raise ValueError(f"{POLICY}: row {number}: practice listed twice")
            if locality_of.setdefault(pcn, locality) != locality:
                raise ValueError(f"{POLICY}: row {number}: a PCN is in one locality")
            pcn_of[practice] = pcn
        return cls(tuple(sorted(pcn_of.items())), tuple(sorted(locality_of.items())))

    def unit(self, level: str, practice: str) -> str:
        """The unit of `level` a practice's persons are counted in."""
        if level == "practice":
            return practice
        if level == "area":
            return AREA
        if not self._maps:
            self._maps.update(pcn=dict(self.pcn_of), locality=dict(self.locality_of))
        pcn = self._maps["pcn"].get(practice, UNKNOWN)
        if level == "pcn":
            return pcn
        if level == "locality":
            return self._maps["locality"].get(pcn, UNKNOWN)
        raise ValueError(f"no geography level {level!r}")


def validate_geography(content: str, _engine: Engine | None = None) -> None:
    """Raise ValueError unless `content` is a usable geography table."""
    Geography.parse(content)
