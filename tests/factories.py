"""Small synthetic extracts for tests: 999-range NHS numbers, generated names and postcodes."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from governance.schema import extracts
from governance.schema import vault as vault_table
from governance.settings import Settings
from linkage.landing.contracts import CONTRACTS
from linkage.landing.land import LandingContext, land_file
from pipeline.context import Context


def nhs_numbers(count: int, seed: int = 0) -> list[str]:
    """Valid synthetic NHS numbers from the 999 range (never issued to a person)."""
    rng = random.Random(seed)
    found: list[str] = []
    seen: set[str] = set()
    while len(found) < count:
        body = "999" + f"{rng.randrange(10**6):06d}"
        total = sum(int(d) * (10 - i) for i, d in enumerate(body))
        check = 11 - total % 11
        if check == 10:
            continue
        number = body + str(0 if check == 11 else check)
        if number not in seen:
            seen.add(number)
            found.append(number)
    return found


def invalid_nhs(number: str) -> str:
    """The same number with its check digit changed so it fails modulus 11."""
    return number[:-1] + str((int(number[-1]) + 1) % 10)


def person(i: int, nhs: str) -> dict[str, str]:
    return {
        "nhs_number": nhs,
        "date_of_birth": f"19{40 + i % 50:02d}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "sex": "1" if i % 2 else "2",
        "postcode": f"LS{1 + i % 20} {1 + i % 9}A{'BDEFGHJ'[i % 7]}",
        "gp_practice_code": f"B8600{i % 5}",
    }


def rows_for(source: str, count: int, seed: int = 0) -> list[dict[str, str]]:
    """Valid rows of `source`, every contract column present."""
    numbers = nhs_numbers(count, seed)
    rows = []
    for i, nhs in enumerate(numbers):
        p = person(i, nhs)
        extra: dict[str, str] = {
            "apc": {"spell_id": f"S{i:06d}", "provider_code": "RR8",
                    "admission_date": "2024-03-01", "discharge_date": "2024-03-04",
                    "admission_method": "21", "discharge_destination": "19",
                    "primary_diagnosis": "J44.1", "secondary_diagnoses": "E119;I10",
                    "primary_procedure": ""},
            "ae": {"attendance_id": f"A{i:06d}", "provider_code": "RR8",
                   "arrival_datetime": "2024-03-01T10:15:00", "arrival_mode": "ambulance",
                   "acuity": "2", "chief_complaint": "21522001", "discharge_status": "admitted"},
            "op": {"appointment_id": f"O{i:06d}", "provider_code": "RR8",
                   "appointment_date": "2024-02-01", "attendance_status": "5",
                   "first_attendance": "1", "treatment_function_code": "300"},
            "gp_patients": {"registration_date": "2010-01-01"},
            "gp_events": {"event_date": "2023-05-01", "code_system": "snomed",
                          "code": "44054006", "event_type": "diagnosis", "value": ""},
            "gp_medications": {"issue_date": "2024-01-10", "bnf_code": "0601022B0AAABAB",
                               "quantity": "56"},
            "community": {"contact_id": f"C{i:06d}", "contact_date": "2024-01-10",
                          "service": "district_nursing"},
            "social_care": {"client_id": f"CL{i:05d}", "forename": "Ann", "surname": "Smith",
                            "service_type": "home_care", "start_date": "2023-01-01",
                            "end_date": "", "weekly_cost": "250.50", "consent": "Y"},
            "deaths": {"date_of_death": "2024-06-01"},
            "optouts": {"optout_type": "ndoo", "effective_date": "2023-01-01",
                        "withdrawn": "N"},
        }[source]
        merged = {**p, **extra}
        rows.append({name: merged.get(name, "") for name in CONTRACTS[source].names})
    return rows


def write_extract(folder: Path, source: str, rows: list[dict[str, Any]], *,
                  name: str | None = None, sender: str = "RR8",
                  columns: list[str] | None = None, manifest: dict[str, Any] | None = None,
                  raw: bytes | None = None) -> Path:
    """Write a CSV extract and its manifest; `manifest` overrides computed fields."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{source}.csv")
    if raw is None:
        columns = columns or CONTRACTS[source].names
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_bytes(raw)
    write_manifest(path, source, len(rows), sender=sender, overrides=manifest)
    return path


def write_manifest(path: Path, source: str, rows: int, *, sender: str = "RR8",
                   overrides: dict[str, Any] | None = None) -> Path:
    data = {"source": source, "sender": sender, "period_start": "2022-04-01",
            "period_end": "2026-03-31", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "rows": rows}
    data.update(overrides or {})
    target = path.with_name(path.name + ".manifest.json")
    target.write_text(json.dumps(data), encoding="utf-8")
    return target


def upload_form(source: str, rows: list[dict[str, Any]], sender: str
                ) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]]]:
    """`POST /extracts` form fields (the manifest) and file for `rows` of `source` as CSV."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CONTRACTS[source].names)
    writer.writeheader()
    writer.writerows(rows)
    data = buffer.getvalue().encode()
    fields = {"source": source, "sender": sender, "period_start": "2025-01-01",
              "period_end": "2025-03-31", "sha256": hashlib.sha256(data).hexdigest(),
              "rows": str(len(rows))}
    return fields, {"file": (f"{source}.csv", data, "text/csv")}


def approve_candidates(engine: Any, reason: str = "approved for the test") -> list[str]:
    """Approve every candidate model as a clinical safety officer (a model serves only once
    approved: governance/model_approvals.py); returns the ids approved."""
    from governance import model_approvals
    from governance.audit import Actor

    officer = Actor("cara.cso", model_approvals.CLINICAL_SAFETY_ROLE, "X26", "clinical_safety")
    waiting = [m["model_id"] for m in model_approvals.list_models(engine)
               if m["status"] == "candidate"]
    for model in waiting:
        model_approvals.decide(engine, officer, model, "approve", reason)
    return waiting


def bench_score() -> Any:
    """bench/score.py as a module: its `make_sources` builds the scoring tests' populations."""
    path = Path(__file__).parents[1] / "bench" / "score.py"
    spec = importlib.util.spec_from_file_location("bench_score", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parquet_extract(folder: Path, rows: list[dict[str, Any]]) -> Path:
    """An `apc` extract written as Parquet: read in batches of exactly `batch_rows` (a small
    CSV is one block)."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return write_extract(folder, "apc", rows, name="apc.parquet",
                         raw=sink.getvalue().to_pybytes())


def landing_fails_leaving_nothing(settings: Settings, path: Path, match: str) -> None:
    """Landing `path` fails with a RuntimeError matching `match`, and nothing of it is kept:
    no extract, no vault entry, nothing staged."""
    haven = Context(settings)
    try:
        with pytest.raises(RuntimeError, match=match):
            land_file(LandingContext(settings, haven.engine, haven.keys), path)
        with haven.engine.connect() as connection:
            assert connection.scalar(select(extracts.c.extract_id)) is None
            assert connection.scalar(select(vault_table.c.person_id)) is None
        assert not any(settings.layout.staging_dir.glob("*"))
    finally:
        haven.close()


def later_ae_extract(synthetic: Path, folder: Path) -> Path:
    """A later A&E extract of a `haven synth` world, written to `folder`: the world's rows
    without an NHS number (the rows a first link matched probabilistically, so they carry the
    same fields) and every other row (enough rows with an NHS number that landing's 2%
    sample of persons labels some whatever the keys: with one row in ten, now and then none)."""
    with (synthetic / "ae.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [r for i, r in enumerate(rows) if not r["nhs_number"] or i % 2 == 0]
    sender = json.loads((synthetic / "ae.csv.manifest.json").read_text())["sender"]
    return write_extract(folder, "ae", chosen, name="ae_month.csv", sender=sender)
