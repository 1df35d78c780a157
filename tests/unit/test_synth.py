"""The synthetic data generator: determinism, manifests, contracts, NHS numbers, truth, realism.

Checks are written against the contract text and an independent modulus-11 check, not against
the generator's own helpers, so a generator bug cannot vouch for itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from synth import generate, nhs

PERSONS = 2000
# the contract columns, in order, copied from shared/contracts.md
PERSON = ["nhs_number", "date_of_birth", "sex", "postcode", "gp_practice_code"]
CONTRACT = {
    "apc": ["spell_id", *PERSON, "provider_code", "admission_date", "discharge_date",
            "admission_method", "discharge_destination", "primary_diagnosis",
            "secondary_diagnoses", "primary_procedure"],
    "ae": ["attendance_id", *PERSON, "provider_code", "arrival_datetime", "arrival_mode",
           "acuity", "chief_complaint", "discharge_status"],
    "op": ["appointment_id", *PERSON, "provider_code", "appointment_date", "attendance_status",
           "first_attendance", "treatment_function_code"],
    "gp_patients": [*PERSON, "registration_date"],
    "gp_events": ["nhs_number", "event_date", "code_system", "code", "event_type", "value"],
    "gp_medications": ["nhs_number", "issue_date", "bnf_code", "quantity"],
    "community": ["contact_id", *PERSON, "contact_date", "service"],
    "social_care": ["client_id", "nhs_number", "forename", "surname", "date_of_birth", "sex",
                    "postcode", "service_type", "start_date", "end_date", "weekly_cost",
                    "consent"],
    "deaths": ["nhs_number", "date_of_birth", "date_of_death"],
    "optouts": ["nhs_number", "optout_type", "effective_date", "withdrawn"],
}
BLANK_ALLOWED = {"apc", "ae", "op", "community", "social_care"}
EMERGENCY = {"21", "22", "23", "24", "25", "2A", "2B", "2C", "2D", "28"}
SCORE_DATE = "2025-04-01"
POSTCODE_RE = re.compile(r"^(LS|WF|BD|HX)[0-9]{1,2} ?[0-9][A-Z]{2}$")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    out = {}
    for name, seed in (("first", 1), ("again", 1), ("other", 2)):
        folder = tmp_path_factory.mktemp(name)
        out[name] = (folder, generate(PERSONS, seed, folder, progress=False))
    return out


@pytest.fixture(scope="module")
def out(runs: dict[str, tuple[Path, dict[str, Any]]]) -> Path:
    return runs["first"][0]


@pytest.fixture(scope="module")
def frames(out: Path) -> dict[str, pd.DataFrame]:
    """Every extract as text, with the true person of each row attached from the truth."""
    rows = pq.read_table(out / "truth" / "rows.parquet").to_pandas()
    result = {}
    for path in sorted(out.glob("*.csv")):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        truth = rows[rows["file"] == path.name].sort_values("row")
        assert truth["row"].tolist() == list(range(1, len(frame) + 1))
        frame["_person"] = truth["person"].to_numpy()
        frame["_nhs_status"] = truth["nhs_status"].astype(str).to_numpy()
        frame["_source"] = json.loads((out / f"{path.name}.manifest.json").read_text())["source"]
        result[path.name] = frame
    return result


@pytest.fixture(scope="module")
def persons(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "truth" / "persons.parquet").to_pandas().set_index("person")


def mod11_valid(number: str) -> bool:
    if not re.fullmatch(r"[0-9]{10}", number):
        return False
    total = sum(int(d) * (10 - i) for i, d in enumerate(number[:9]))
    check = 11 - total % 11
    return check != 10 and (0 if check == 11 else check) == int(number[9])


def one_keying_error(typed: str, true: str) -> bool:
    """A single changed digit or two neighbouring digits transposed."""
    diff = [i for i in range(10) if typed[i] != true[i]]
    if len(diff) == 1:
        return True
    return (len(diff) == 2 and diff[1] == diff[0] + 1
            and typed[diff[0]] == true[diff[1]] and typed[diff[1]] == true[diff[0]])


def test_same_seed_gives_identical_bytes(runs: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    first, again = runs["first"][0], runs["again"][0]
    names = sorted(p.name for p in first.glob("*.csv*"))
    # 11 sources, plus an opt-out file from each council with consent withdrawals
    assert len(names) == 2 * len(runs["first"][1]["files"]) >= 2 * 11
    assert names == sorted(p.name for p in again.glob("*.csv*"))
    for name in names:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    for name in ("rows.parquet", "persons.parquet"):
        assert pq.read_table(first / "truth" / name).equals(pq.read_table(again / "truth" / name))


def test_different_seed_gives_different_data(
        runs: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    first, other = runs["first"][0], runs["other"][0]
    for name in ("apc.csv", "gp_patients.csv", "gp_medications.csv"):
        assert (first / name).read_bytes() != (other / name).read_bytes(), name
    a = pq.read_table(first / "truth" / "persons.parquet").column("nhs_number").to_pylist()
    b = pq.read_table(other / "truth" / "persons.parquet").column("nhs_number").to_pylist()
    assert len(set(a) & set(b)) < PERSONS // 10


def test_manifests_match_files(out: Path, runs: dict[str, tuple[Path, dict[str, Any]]]
                               ) -> None:
    summary = runs["first"][1]
    assert {f["file"] for f in summary["files"]} == {p.name for p in out.glob("*.csv")}
    for path in out.glob("*.csv"):
        manifest = json.loads((out / f"{path.name}.manifest.json").read_text())
        data = path.read_bytes()
        assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
        assert manifest["rows"] == data.count(b"\n") - 1 > 0, path.name
        assert manifest["period_start"] == "2022-04-01"
        assert manifest["period_end"] == "2026-03-31"
        assert re.fullmatch(r"[A-Z0-9]{3,10}", manifest["sender"])
        if manifest["source"] == "social_care":
            assert path.stem == f"social_care_{manifest['sender']}"
        elif manifest["source"] == "optouts" and manifest["sender"] != "X26":
            # consent withdrawals, only from the council itself (policies/optout_senders.csv)
            assert path.stem == f"optouts_{manifest['sender']}"
            assert set(pd.read_csv(path, dtype=str)["optout_type"]) == {"consent_withdrawn"}
        else:
            assert path.stem == manifest["source"]
            if manifest["source"] == "optouts":  # the national register's: no council's consent
                assert "consent_withdrawn" not in set(pd.read_csv(path, dtype=str)["optout_type"])
    senders = {json.loads((out / f"{p}.manifest.json").read_text())["sender"]
               for p in ("social_care_E08000035.csv", "social_care_E08000036.csv")}
    assert senders == {"E08000035", "E08000036"}
    meta = json.loads((out / "truth" / "meta.json").read_text())
    assert (meta["history_start"], meta["score_date"], meta["period_end"]) == (
        "2022-04-01", SCORE_DATE, "2026-03-31")
    assert (meta["seed"], meta["persons"]) == (1, PERSONS)


def test_columns_match_contracts(out: Path, frames: dict[str, pd.DataFrame]) -> None:
    sources = set()
    for name, frame in frames.items():
        source = frame["_source"].iloc[0]
        sources.add(source)
        header = (out / name).read_text(encoding="utf-8").split("\n", 1)[0].split(",")
        assert header == CONTRACT[source], name
    assert sources == set(CONTRACT)


def test_columns_match_linkage_contracts(out: Path, frames: dict[str, pd.DataFrame]) -> None:
    contracts = pytest.importorskip("linkage.landing.contracts").CONTRACTS
    for name, frame in frames.items():
        header = (out / name).read_text(encoding="utf-8").split("\n", 1)[0].split(",")
        assert header == contracts[frame["_source"].iloc[0]].names


def test_values_are_text_in_contract_form(frames: dict[str, pd.DataFrame]) -> None:
    apc = frames["apc.csv"]
    assert apc["spell_id"].str.fullmatch(r"0[0-9]{11}").all()      # leading zeros kept
    assert apc["spell_id"].is_unique
    assert set(apc["admission_method"]) <= EMERGENCY | {"11", "12", "13", "31", "32", "81",
                                                        "82", "83"}
    assert apc["primary_diagnosis"].str.fullmatch(r"[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?").all()
    assert apc["primary_diagnosis"].str.contains(".", regex=False).any()
    assert (apc["primary_diagnosis"].str.len().ge(4)
            & ~apc["primary_diagnosis"].str.contains(".", regex=False)).any()
    secondary = apc["secondary_diagnoses"][apc["secondary_diagnoses"] != ""].str.split(";")
    assert secondary.map(len).max() <= 20
    assert (apc["discharge_destination"] == "79").any()
    women = apc[apc["admission_method"].isin(["31", "32"])]
    assert (women["sex"] == "2").all()
    for frame in frames.values():
        for column in frame.columns:
            if column.endswith("_date") or column in ("date_of_birth",):
                values = frame[column][frame[column] != ""]
                assert values.str.fullmatch(r"\d{4}-\d{2}-\d{2}").all(), column
                pd.to_datetime(values, format="%Y-%m-%d")        # real dates
        if "postcode" in frame:
            values = frame["postcode"][frame["postcode"] != ""].str.upper()
            assert values.map(lambda v: bool(POSTCODE_RE.match(v))).all()
    ae = frames["ae.csv"]
    assert ae["arrival_datetime"].str.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}").all()
    assert {"admitted", "discharged"} <= set(ae["discharge_status"])
    meds = frames["gp_medications.csv"]
    assert meds["bnf_code"].str.fullmatch(r"[0-9A-Z]{15}").all()
    assert meds["bnf_code"].str[:9].nunique() > 30
    events = frames["gp_events.csv"]
    assert set(events["code_system"]) == {"snomed", "icd10"}
    assert events.loc[events["event_type"] == "observation", "value"].ne("").mean() > 0.5
    assert {"44054006", "13645005", "84114007", "49436004"} <= set(events["code"])
    social = pd.concat([f for n, f in frames.items() if n.startswith("social_care_")])
    assert social["consent"].isin(["Y", "N"]).all()
    leeds = frames["social_care_E08000035.csv"]["client_id"]
    assert leeds.str.fullmatch(r"[0-9]{7}").all() and leeds.str.startswith("0").any()
    assert frames["social_care_E08000036.csv"]["client_id"].str.fullmatch(r"W[0-9]{6}").all()


def test_nhs_numbers_valid_blank_or_mistyped(frames: dict[str, pd.DataFrame],
                                             persons: pd.DataFrame) -> None:
    counts = {"blank": 0, "valid": 0, "mistyped": 0}
    for name, frame in frames.items():
        source = frame["_source"].iloc[0]
        raw = frame["nhs_number"]
        digits = raw.str.replace(r"[ -]", "", regex=True)
        true = persons.loc[frame["_person"], "nhs_number"].to_numpy()
        for value, typed, real, status in zip(raw, digits, true, frame["_nhs_status"],
                                              strict=True):
            if value == "":
                assert source in BLANK_ALLOWED and status == "missing", name
                counts["blank"] += source != "social_care"
                continue
            assert re.fullmatch(r"999[0-9]{7}|999 [0-9]{3} [0-9]{4}|999-[0-9]{3}-[0-9]{4}",
                                value), (name, value)
            if mod11_valid(typed):
                assert typed == real and status == "valid", name
                counts["valid"] += source in BLANK_ALLOWED and source != "social_care"
            else:
                assert source in BLANK_ALLOWED and status == "invalid", name
                assert one_keying_error(typed, real), (typed, real)
                counts["mistyped"] += source != "social_care"
    typed = counts["valid"] + counts["mistyped"]
    assert 0.0025 < counts["mistyped"] / typed < 0.01          # configured 0.5%
    assert 0.005 < counts["blank"] / (typed + counts["blank"]) < 0.02   # configured 1%
    social = pd.concat([f for n, f in frames.items() if n.startswith("social_care_")])
    assert 0.2 < (social["nhs_number"] == "").mean() < 0.5        # configured 35%
    assert persons["nhs_number"].map(mod11_valid).all()
    assert persons["nhs_number"].is_unique


def test_truth_covers_every_row(out: Path, frames: dict[str, pd.DataFrame],
                                persons: pd.DataFrame) -> None:
    rows = pq.read_table(out / "truth" / "rows.parquet").to_pandas()
    assert len(rows) == sum(len(f) for f in frames.values())
    assert rows["person"].between(0, PERSONS - 1).all()
    registered = frames["gp_patients.csv"]["_person"]
    assert sorted(registered) == list(range(PERSONS))
    # rows agree with the person they are attributed to
    gp = frames["gp_patients.csv"]
    assert (gp["nhs_number"].to_numpy() == persons.loc[gp["_person"], "nhs_number"]).all()
    deaths = frames["deaths.csv"]
    truth_death = persons.loc[deaths["_person"], "date_of_death"].astype(str).to_numpy()
    assert (deaths["date_of_death"].to_numpy() == truth_death).all()
    assert len(deaths) == int(persons["died"].sum())


def test_no_activity_outside_the_period_or_after_death(frames: dict[str, pd.DataFrame],
                                                       persons: pd.DataFrame) -> None:
    death = persons["date_of_death"].astype(str).where(persons["died"], "9999-12-31")
    dated = {"apc.csv": ["admission_date", "discharge_date"], "ae.csv": ["arrival_datetime"],
             "op.csv": ["appointment_date"], "community.csv": ["contact_date"],
             "gp_events.csv": ["event_date"], "gp_medications.csv": ["issue_date"]}
    for name, columns in dated.items():
        frame = frames[name]
        limit = death.loc[frame["_person"]].to_numpy()
        for column in columns:
            value = frame[column].str[:10]
            present = value != ""
            assert (value[present] >= "2022-04-01").all(), (name, column)
            assert (value[present] <= "2026-03-31").all(), (name, column)
            assert (value[present].to_numpy() <= limit[present.to_numpy()]).all(), (name, column)


def test_dates_of_birth_mostly_true_with_some_swaps(frames: dict[str, pd.DataFrame],
                                                    persons: pd.DataFrame) -> None:
    swapped = total = 0
    for name in ("apc.csv", "ae.csv", "op.csv", "community.csv"):
        frame = frames[name]
        true = persons.loc[frame["_person"], "date_of_birth"].astype(str).to_numpy()
        given = frame["date_of_birth"].to_numpy()
        differs = (given != true) & (given != "")
        for g, t in zip(given[differs], true[differs], strict=True):
            assert g == f"{t[:4]}-{t[8:10]}-{t[5:7]}", (g, t)      # day and month swapped
        swapped += int(differs.sum())
        total += len(frame)
    assert 0.002 < swapped / total < 0.012                         # configured 1% of day<=12


def test_history_predicts_outcome(frames: dict[str, pd.DataFrame],
                                  persons: pd.DataFrame) -> None:
    apc = frames["apc.csv"]
    emergency = apc[apc["admission_method"].isin(EMERGENCY)]
    past = set(emergency.loc[emergency["admission_date"] < SCORE_DATE, "_person"])
    future = set(emergency.loc[emergency["admission_date"] >= SCORE_DATE, "_person"])
    alive = persons[persons["alive_at_score_date"]]
    outcome = alive.index.isin(list(future))
    # the realised outcome in truth is what the apc file says
    assert (alive["emergency_in_outcome_year"].to_numpy() == outcome).all()
    had = alive.index.isin(list(past))
    assert had.sum() > 100
    assert outcome[had].mean() > 1.5 * outcome[~had].mean()
    # realised rate consistent with the stated probabilities (within 4 standard errors)
    risk = alive["true_risk"].to_numpy()
    se = np.sqrt((risk * (1 - risk)).sum()) / len(risk)
    assert abs(outcome.mean() - risk.mean()) < 4 * se
    assert abs(alive["observable_risk"].mean() - risk.mean()) < 0.01
    assert np.corrcoef(alive["observable_risk"], risk)[0, 1] > 0.5
    top = risk >= np.quantile(risk, 0.9)
    assert outcome[top].mean() > 2 * outcome[~top].mean()
    dead = persons[~persons["alive_at_score_date"]]
    assert (dead["true_risk"] == 0).all() and not dead["emergency_in_outcome_year"].any()


def test_older_and_frailer_use_more_care(frames: dict[str, pd.DataFrame],
                                         persons: pd.DataFrame) -> None:
    old = persons["age_at_score_date"] >= 75
    social = pd.concat([f for n, f in frames.items() if n.startswith("social_care_")])
    clients = persons.index.isin(social["_person"].unique())
    assert clients[old].mean() > 4 * clients[~old].mean()
    meds = frames["gp_medications.csv"]
    drugs = meds.assign(chem=meds["bnf_code"].str[:9]).groupby("_person")["chem"].nunique()
    drugs = drugs.reindex(persons.index, fill_value=0)
    assert drugs[old].mean() > 2 * drugs[~old].mean()
    ae = frames["ae.csv"]
    age = persons.loc[ae["_person"], "age_at_score_date"].to_numpy()
    ambulance = (ae["arrival_mode"] == "ambulance").to_numpy()
    assert ambulance[age >= 75].mean() > ambulance[age < 50].mean() + 0.2


def test_refuses_more_people_than_the_999_range_holds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="999"):  # 999 and 990-998: see test_nhs_range
        generate(nhs.capacity() + 1, 1, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_cli_writes_and_reports(tmp_path: Path) -> None:
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from cli.synth_cmd import synth_command

    app = typer.Typer()
    app.command("synth")(synth_command)

    @app.callback()
    def _root() -> None:
        """Group so that `synth` is a subcommand, as under `haven`."""

    result = CliRunner().invoke(app, ["synth", "--persons", "150", "--seed", "3", "--out",
                                      str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "wrote 11 extracts" in result.output and str(tmp_path / "truth") in result.output
    assert json.loads((tmp_path / "apc.csv.manifest.json").read_text())["rows"] > 0
    from synth import nhs

    result = CliRunner().invoke(app, ["synth", "--persons", str(nhs.capacity() + 1), "--out",
                                      str(tmp_path / "big")])
    assert result.exit_code != 0 and f"at most {nhs.capacity()} persons" in result.output
    assert not (tmp_path / "big").exists() or not any((tmp_path / "big").iterdir())


def test_synthetic_files_land(landing: Any, out: Path) -> None:
    """Every file lands, and landing's counts are exactly the truth's deliberate defects."""
    from linkage.landing.land import land_path

    rows = pq.read_table(out / "truth" / "rows.parquet").to_pandas()
    receipts = land_path(landing, out)
    assert len(receipts) == len(list(out.glob("*.csv"))) >= 11
    for receipt in receipts:
        assert receipt.status == "landed", (receipt.file, receipt.reason)
        truth = rows[rows["file"] == receipt.file]
        assert receipt.counts["rejected"] == int(truth["required_blank"].sum()), receipt.file
        assert receipt.counts["nhs_invalid"] == int((truth["nhs_status"] == "invalid").sum())
        assert receipt.counts["nhs_missing"] == int((truth["nhs_status"] == "missing").sum())
