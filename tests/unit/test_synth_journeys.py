"""The synthetic generator makes the variety issue #14's tables need: every discharge pathway,
each outcome, every segment and spend in every setting, on a small population (keyed here by
the true NHS number, standing in for the person key linkage would give), and the policy tables
of the analyses are checked when an IG lead stores them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from governance.policy_tables import validate_policy
from policies import POLICIES_DIR
from stratify.costs import SETTINGS, parse_unit_costs, person_costs
from stratify.journeys import discharge_journeys
from stratify.segments import SEGMENTS, assign_segments
from synth import generate

PERSONS = 6000
AT = dt.date(2025, 4, 1)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("synth")
    generate(PERSONS, 3, folder, progress=False)
    out = {}
    for path in sorted(Path(folder).glob("*.csv")):
        source = path.stem.split("_E")[0] if path.stem.startswith(("social_care_",
                                                                    "optouts_")) else path.stem
        frame = pd.read_csv(path, dtype=str, keep_default_na=False).replace("", None)
        if source == "social_care":
            frame = frame[frame["consent"] == "Y"]
        frame = frame.dropna(subset=["nhs_number"])
        frame["person_key"] = frame["nhs_number"].str.replace(r"\D", "", regex=True)
        if "date_of_birth" in frame:
            frame["birth_ym"] = frame["date_of_birth"].str[:7]
        out[source] = pd.concat([out[source], frame]) if source in out else frame
    return out


def test_every_pathway_and_outcome_occurs(sources: dict[str, pd.DataFrame]) -> None:
    found = discharge_journeys(sources, dt.date(2024, 4, 1), AT)
    pathways = found["pathway"].value_counts()
    for pathway in ("pathway_0", "pathway_1", "pathway_2", "pathway_3", "died_in_hospital"):
        assert pathways.get(pathway, 0) >= 3, (pathway, pathways.to_dict())
    outcomes = found["outcome_91d"].value_counts()
    for outcome in ("at_home", "care_home", "died"):
        assert outcomes.get(outcome, 0) >= 3, (outcome, outcomes.to_dict())
    # readmissions are as frequent as the truth's emergency process makes them (no extra
    # hazard after discharge: synth.population owns that process), so few at this size
    assert found["readmitted_30d"].sum() >= 1 and found["readmitted_91d"].sum() >= 3
    assert found["long_term_care_12m"].sum() >= 3
    support = found.loc[found["pathway"] == "pathway_1", "support"].value_counts()
    assert len(support) >= 3, support.to_dict()  # council and community support both


def test_every_segment_and_setting_has_people_and_spend(sources: dict[str, pd.DataFrame]
                                                        ) -> None:
    segments = assign_segments(sources, AT)["segment"].value_counts()
    assert set(segments.index) == set(SEGMENTS), segments.to_dict()
    prices = parse_unit_costs((POLICIES_DIR / "unit_costs.csv").read_text(encoding="utf-8"))
    spend = person_costs(sources, 2024, prices)
    for setting in SETTINGS:
        assert spend[setting].sum() > 0, setting
    top = spend["total"].sort_values(ascending=False)
    assert top.iloc[: len(top) // 20].sum() > 0.3 * top.sum()  # spend is concentrated


def test_the_analyses_policy_tables_are_checked_when_stored() -> None:
    for name in ("unit_costs.csv", "segments.csv"):
        shipped = (POLICIES_DIR / name).read_text(encoding="utf-8")
        validate_policy(name, shipped)
    costs = (POLICIES_DIR / "unit_costs.csv").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="no row for ae_attendance"):
        validate_policy("unit_costs.csv", "\n".join(
            line for line in costs.splitlines() if not line.startswith("ae_attendance")))
    segments = (POLICIES_DIR / "segments.csv").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="unknown segment"):
        validate_policy("segments.csv", segments.replace("8,healthy", "8,well"))
