"""`LinkageSettings`: what `link`/`dedupe` are told besides the data, saved and reloaded as JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from linkage.link_files import link_files
from linkage.probabilistic import DEFAULT_PASSES, PARTITION_PAIRS, LinkageSettings

CHANGED = LinkageSettings(
    upper=0.95, lower=0.3, passes=[["surname__ph", "date_of_birth__ym"], ["postcode"]],
    method="auto", assignment="best_right", max_block_pairs=5_000, max_pairs=1_000_000,
    partition_pairs=250_000, workers=2, seed=7, term_frequency=False, max_pairs_per_pass=20_000,
    min_pass_pairs=10)


def test_defaults_are_what_link_used_to_default_to() -> None:
    s = LinkageSettings()
    assert (s.upper, s.lower, s.method, s.assignment) == (0.9, 0.5, "ecm", "one_to_one")
    assert s.passes == DEFAULT_PASSES
    assert (s.max_block_pairs, s.max_pairs, s.partition_pairs) == (100_000, 50_000_000,
                                                                  PARTITION_PAIRS)
    assert (s.workers, s.seed, s.term_frequency) == (None, 0, True)
    assert (s.max_pairs_per_pass, s.min_pass_pairs) == (100_000, 30)


@pytest.mark.parametrize("settings", [LinkageSettings(), CHANGED,
                                      LinkageSettings(passes=(), upper=1.0, lower=0.0)])
def test_json_round_trip_is_exact(settings: LinkageSettings, tmp_path: Path) -> None:
    text = settings.to_json()
    again = LinkageSettings.from_json(text)
    assert again == settings and hash(again) == hash(settings)
    assert again.to_json() == text
    data = json.loads(text)
    assert list(data) == [f.name for f in dataclasses.fields(LinkageSettings)
                          if f.name != "passes"] + ["passes"]
    assert LinkageSettings.from_dict(settings.to_dict()) == settings
    path = settings.save(tmp_path / "linkage.json")
    assert path.read_text() == text + "\n"
    assert LinkageSettings.load(path) == settings


def test_json_diffs_line_by_line() -> None:
    a = LinkageSettings().to_json().splitlines()
    b = LinkageSettings(upper=0.95).to_json().splitlines()
    assert [(x, y) for x, y in zip(a, b, strict=True) if x != y] == [
        ('  "upper": 0.9,', '  "upper": 0.95,')]


def test_equal_settings_are_equal_however_written() -> None:
    listed = LinkageSettings(passes=[list(p) for p in DEFAULT_PASSES], upper=1, workers=None)
    assert listed == LinkageSettings(upper=1.0)
    assert isinstance(listed.upper, float) and listed.passes == DEFAULT_PASSES
    assert listed.to_json() == LinkageSettings(upper=1.0).to_json()


def test_a_missing_setting_takes_its_default_and_an_unknown_one_is_refused() -> None:
    assert LinkageSettings.from_json('{"upper": 0.99}') == LinkageSettings(upper=0.99)
    with pytest.raises(ValueError, match="uper"):
        LinkageSettings.from_json('{"uper": 0.99}')
    with pytest.raises(ValueError, match="JSON object"):
        LinkageSettings.from_json("[]")


@pytest.mark.parametrize("changes, error", [
    ({"lower": 0.95}, "lower"),
    ({"upper": 1.5}, "upper"),
    ({"lower": float("nan")}, "lower"),
    ({"method": "em"}, "method"),
    ({"assignment": "greedy"}, "assignment"),
    ({"partition_pairs": 0}, "partition_pairs"),
    ({"workers": 0}, "workers"),
    ({"seed": 1.5}, "seed"),
    ({"max_pairs": True}, "max_pairs"),
    ({"passes": "date_of_birth"}, "passes"),
    ({"passes": ["date_of_birth"]}, "passes"),
    ({"term_frequency": "yes"}, "term_frequency"),
])
def test_nonsense_is_refused(changes: dict, error: str) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        LinkageSettings(**changes)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LinkageSettings().upper = 0.5  # type: ignore[misc]


def test_link_files_reports_the_settings_it_used(tmp_path: Path) -> None:
    people = pd.DataFrame({"id": ["a", "b", "c"], "first": ["Anna", "Ben", "Cara"],
                           "last": ["Smith", "Jones", "Brown"],
                           "dob": ["1970-01-02", "1980-03-04", "1990-05-06"]})
    people.to_csv(tmp_path / "l.csv", index=False)
    people.to_csv(tmp_path / "r.csv", index=False)
    fields = {"forename": "first", "surname": "last", "date_of_birth": "dob"}
    summary = link_files(tmp_path / "l.csv", tmp_path / "r.csv", "id", fields,
                         tmp_path / "out.csv")
    assert LinkageSettings.from_dict(summary["settings"]) == LinkageSettings()
    chosen = LinkageSettings(upper=0.99, seed=3)
    summary = link_files(tmp_path / "l.csv", tmp_path / "r.csv", "id", fields,
                         tmp_path / "out.csv", settings=chosen, lower=0.2)
    assert LinkageSettings.from_dict(summary["settings"]) == dataclasses.replace(chosen,
                                                                                 lower=0.2)
