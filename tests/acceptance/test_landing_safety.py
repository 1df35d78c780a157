"""Landing's two promises beyond correctness: nothing identifiable kept, and crash-safe."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from sqlalchemy import inspect, select, text

from factories import nhs_numbers, rows_for, write_extract
from governance import store
from governance.schema import extracts
from linkage.landing.contracts import CONTRACTS
from linkage.landing.land import land_path

ROOT = Path(__file__).resolve().parents[2]


def identifiers_of(rows: list[dict[str, str]]) -> set[str]:
    """Every form in which a row's identifiers could leak: numbers, dates, postcodes, names."""
    found: set[str] = set()
    for row in rows:
        nhs = row.get("nhs_number", "").replace(" ", "").replace("-", "")
        if nhs:
            found |= {nhs, f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}"}
        dob = row.get("date_of_birth", "")
        if dob:  # (its compact form, 8 digits, turns up by chance in hex pseudonyms)
            found.add(dob)
        postcode = row.get("postcode", "")
        if postcode:
            found |= {postcode, postcode.replace(" ", "")}
        for name in ("forename", "surname"):
            if row.get(name):
                found.add(row[name])
    return found


def stored_text(haven) -> str:
    """Everything Haven keeps, as text: every file (Parquet decoded) and every database table."""
    parts = []
    for path in haven.settings.home.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            parts.append(pq.read_table(path).to_pandas().to_csv())
        parts.append(path.read_bytes().decode("latin-1"))
    with haven.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                parts.append(repr(tuple(row)))
    return "\n".join(parts)


def test_no_identifier_is_kept_anywhere(haven, landing, inbox):
    numbers = nhs_numbers(60, seed=7)
    forenames = ["Quillon", "Ysolde", "Thaddeus", "Wilhelmina", "Oriel", "Peregrine"]
    surnames = ["Featherstonehaugh", "Ashbrook", "Wraxall", "Quennell", "Penhaligon", "Ormerod"]
    all_rows = []
    for source in CONTRACTS:
        rows = rows_for(source, 60, seed=7)
        for i, row in enumerate(rows):
            if "nhs_number" in row:
                row["nhs_number"] = numbers[i]
            if source == "social_care":
                row["forename"], row["surname"] = forenames[i % 6], surnames[i % 6] + str(i)
                row["nhs_number"] = "" if i % 3 == 0 else numbers[i]
            if source in ("apc", "ae", "op", "community") and i % 10 == 0:
                row["nhs_number"] = ""  # these rows get linkage encodings
        write_extract(inbox, source, rows, sender="E08000035")
        all_rows.extend(rows)
    receipts = land_path(landing, inbox)
    assert {r.status for r in receipts} == {"landed"}
    kept = stored_text(haven)
    leaked = sorted(v for v in identifiers_of(all_rows) if v in kept)
    assert leaked == [], f"{len(leaked)} identifier values found in stored data"


def test_no_identifier_from_synthetic_extracts_is_kept(haven, landing, tmp_path):
    """The same scan over every source of a synthetic population, names and all."""
    import csv

    from synth import generate

    out = tmp_path / "synthetic"
    generate(400, 5, out, progress=False)
    rows: list[dict[str, str]] = []
    for path in sorted(out.glob("*.csv")):
        with path.open(encoding="utf-8") as handle:
            rows.extend(csv.DictReader(handle))
    receipts = land_path(landing, out)
    assert {r.status for r in receipts} == {"landed"}
    # Event dates are kept by design; a birth date that is also some event's date says nothing.
    event_dates = {value for row in rows for name, value in row.items()
                   if name != "date_of_birth" and name.endswith(("_date", "_datetime"))}
    values = {v for v in identifiers_of(rows) if len(v) >= 4} - event_dates
    kept = stored_text(haven)
    leaked = sorted(v for v in values if v in kept)
    assert len(values) > 1000
    assert leaked == [], f"{len(leaked)} identifier values found in stored data"


def _land_in_subprocess(home: Path, inbox: Path, key_env: dict[str, str],
                        stderr: int = subprocess.DEVNULL) -> subprocess.Popen:
    env = {**os.environ, **key_env, "HAVEN_HOME": str(home), "HAVEN_BATCH_ROWS": "500"}
    code = "import sys; from cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "land", str(inbox)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def test_killed_landing_then_rerun_lands_each_extract_exactly_once(tmp_path, inbox):
    from conftest import key_environment
    from governance.settings import Settings
    from pipeline.context import Context as Haven

    rows = 20_000
    for source in ("apc", "ae", "gp_events"):
        write_extract(inbox, source, rows_for(source, rows, seed=3))
    key_env = key_environment()
    home = tmp_path / "home"
    rng = random.Random(11)
    kills = attempts = 0
    # Kill at random moments (start-up, mid-file, between files, at commit) until three runs
    # have been cut short; a run that finishes first just lands what it can.
    while kills < 3 and attempts < 15:
        attempts += 1
        process = _land_in_subprocess(home, inbox, key_env)
        time.sleep(rng.uniform(0.2, 2.5))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 3, "too few runs were killed part-way: the test would prove little"
    final = _land_in_subprocess(home, inbox, key_env, stderr=subprocess.PIPE)
    _, error = final.communicate(timeout=300)
    assert final.returncode == 0, error  # what the rerun said, if it could not go on
    haven = Haven(Settings(home=home, key_env=key_env))
    with haven.engine.connect() as connection:
        landed = connection.execute(select(extracts.c.extract_id, extracts.c.source,
                                           extracts.c.rows_landed)
                                    .where(extracts.c.status == "landed")).all()
    assert sorted(r.source for r in landed) == ["ae", "apc", "gp_events"]
    assert all(r.rows_landed == rows for r in landed)
    assert store.landed_folders(haven.settings) == sorted(r.extract_id for r in landed)
    for r in landed:
        assert pq.read_metadata(haven.settings.layout.rows(r.extract_id)).num_rows == rows
    assert not any(haven.settings.layout.staging_dir.iterdir())
    haven.engine.dispose()
