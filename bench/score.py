"""Benchmark: features and scores for 1,000,000 persons, with seconds and peak memory per stage.

Usage: `.venv/bin/python bench/score.py [--persons 1000000] [--seed 0] [--train 300000]`

The data are made here, directly in landed form (person_key, dates, codes), with volumes like
a real system's (about 30 prescription items, 15 GP coded events and 0.5 spells per person over
three years), because writing and landing CSV files for a million persons would measure landing,
not scoring. Stages: make data; features at the reference date; training (features at the two
earlier dates, outcomes, fitting on a subsample); scoring (probabilities, tiers, reasons).
Peak memory is the process's resident high-water mark (ru_maxrss) after each stage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stratify.features import connect, features_from  # noqa: E402
from stratify.scoring import score  # noqa: E402
from stratify.train import train  # noqa: E402

START = np.datetime64("2022-04-01")
END = np.datetime64("2026-04-01")
AT = dt.date(2025, 4, 1)

# condition: (ICD-10 code, SNOMED id, BNF chemicals, age at which prevalence is 10%)
CONDITIONS = {
    "diabetes": ("E119", "44054006", ("0601022B0", "0601023AN"), 62),
    "copd": ("J449", "13645005", ("0301011R0", "0302000C0"), 78),
    "asthma": ("J459", "195967001", ("0301011R0",), 40),
    "heart_failure": ("I509", "84114007", ("0202020L0", "0205051R0"), 85),
    "chd": ("I251", "53741008", ("0209000A0", "0212000B0"), 72),
    "af": ("I489", "49436004", ("0208020Z0",), 80),
    "hypertension": ("I10", "38341003", ("0206020A0", "0205051R0"), 55),
    "ckd": ("N183", "709044004", (), 78),
    "dementia": ("F03", "52448006", ("0411000D0",), 88),
    "depression": ("F329", "35489007", ("0403030E0",), 45),
    "cancer": ("C509", "363346000", (), 75),
    "stroke": ("I639", "230690007", ("0209000C0",), 84),
}
ACUTE = np.array(["J189", "N390", "R074", "W19", "R55", "A099", "L039", "K590", "E86", "S720"])


def _mem() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def _dates(rng: np.random.Generator, n: int, lo: np.datetime64 = START,
           hi: np.datetime64 = END) -> np.ndarray:
    span = int((hi - lo).astype(int))
    return (lo + rng.integers(0, span, n).astype("timedelta64[D]")).astype("datetime64[us]")


def make_sources(persons: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Landed-form frames for `persons` synthetic persons (history 2022-04 to 2026-03)."""
    rng = np.random.default_rng(seed)
    n = persons
    keys = np.array([f"P{i:020x}" for i in range(n)], dtype=object)
    age = np.clip(rng.gamma(2.2, 19, n), 0, 104)
    birth = (AT.year - age).astype(int)
    month = rng.integers(1, 13, n)
    birth_ym = np.array([f"{y:04d}-{m:02d}" for y, m in zip(birth, month, strict=True)],
                        dtype=object)
    sex = np.where(rng.random(n) < 0.5, "1", "2").astype(object)
    frail = rng.normal(0, 1, n) + 0.04 * np.clip(age - 60, 0, None)
    flags = {}
    for name, (_, _, _, age10) in CONDITIONS.items():
        logit = -2.2 + 0.08 * (age - age10) + 0.3 * frail
        flags[name] = rng.random(n) < 1 / (1 + np.exp(-logit))
    n_ltc = np.sum(list(flags.values()), axis=0)
    rate = np.exp(-3.4 + 0.025 * (age - 50) + 0.35 * n_ltc + 0.45 * frail
                  + rng.normal(0, 0.5, n))
    years = 4
    out: dict[str, pd.DataFrame] = {}
    # GP registrations
    out["gp_patients"] = pd.DataFrame({
        "extract_id": "bench-gp", "person_key": keys, "birth_ym": birth_ym, "sex": sex,
        "gp_practice_code": np.array([f"A{80000 + i % 300:05d}" for i in range(n)], dtype=object),
        "registration_date": np.datetime64("2000-01-01", "us")})
    # APC: emergency (rate) and elective
    count = rng.poisson(rate * years)
    idx = np.repeat(np.arange(n), count)
    adm = _dates(rng, len(idx))
    los = rng.geometric(0.25, len(idx)).astype("timedelta64[D]")
    first_ltc = np.array([next((CONDITIONS[c][0] for c in CONDITIONS if flags[c][i]), "R69")
                          for i in idx], dtype=object)
    acute = ACUTE[rng.integers(0, len(ACUTE), len(idx))]
    primary = np.where(rng.random(len(idx)) < 0.5, first_ltc, acute)
    el_count = rng.poisson(0.05 * years * (1 + n_ltc))
    el_idx = np.repeat(np.arange(n), el_count)
    out["apc"] = pd.DataFrame({
        "extract_id": "bench-apc",
        "person_key": np.concatenate([keys[idx], keys[el_idx]]),
        "admission_date": np.concatenate([adm, _dates(rng, len(el_idx))]),
        "discharge_date": np.concatenate([adm + los, _dates(rng, len(el_idx))]),
        "admission_method": np.concatenate([np.full(len(idx), "21", dtype=object),
                                            np.full(len(el_idx), "11", dtype=object)]),
        "discharge_destination": "19",
        "primary_diagnosis": np.concatenate([primary, np.full(len(el_idx), "M179",
                                                              dtype=object)]),
        "secondary_diagnoses": np.concatenate([np.where(first_ltc == "R69", None, "I10;E119"),
                                               np.full(len(el_idx), None)]),
    })
    out["apc"]["discharge_date"] = out["apc"][["admission_date", "discharge_date"]].max(axis=1)
    # A&E
    count = rng.poisson((0.2 + 2.0 * rate) * years)
    idx = np.repeat(np.arange(n), count)
    out["ae"] = pd.DataFrame({
        "extract_id": "bench-ae", "person_key": keys[idx],
        "arrival_datetime": _dates(rng, len(idx)),
        "arrival_mode": np.where(rng.random(len(idx)) < 0.3, "ambulance", "walk_in"),
        "acuity": rng.integers(1, 6, len(idx)).astype(float),
        "discharge_status": np.where(rng.random(len(idx)) < 0.3, "admitted", "discharged")})
    # Outpatients
    count = rng.poisson((0.5 + 0.8 * n_ltc) * years)
    idx = np.repeat(np.arange(n), count)
    out["op"] = pd.DataFrame({
        "extract_id": "bench-op", "person_key": keys[idx],
        "appointment_date": _dates(rng, len(idx)),
        "attendance_status": np.where(rng.random(len(idx)) < 0.08, "3", "5"),
        "treatment_function_code": np.array(["300", "320", "340", "430", "110"],
                                            dtype=object)[rng.integers(0, 5, len(idx))]})
    # GP events: a diagnosis record per condition, then consultations
    ev_keys, ev_dates, ev_codes, ev_system = [], [], [], []
    for name, (_, snomed, _, _) in CONDITIONS.items():
        who = np.flatnonzero(flags[name])
        ev_keys.append(keys[who])
        ev_dates.append(_dates(rng, len(who), np.datetime64("2005-01-01"), START))
        ev_codes.append(np.full(len(who), snomed, dtype=object))
    count = rng.poisson((2.0 + 1.2 * n_ltc + 0.5 * np.clip(frail, 0, None)) * years)
    idx = np.repeat(np.arange(n), count)
    ev_keys.append(keys[idx])
    ev_dates.append(_dates(rng, len(idx)))
    ev_codes.append(np.array(["185347001", "271649006", "162864005", "386661006"],
                             dtype=object)[rng.integers(0, 4, len(idx))])
    events = pd.DataFrame({"extract_id": "bench-gpe", "person_key": np.concatenate(ev_keys),
                           "event_date": np.concatenate(ev_dates),
                           "code": np.concatenate(ev_codes)})
    events["code_system"] = "snomed"
    events["event_type"] = "diagnosis"
    events["value"] = np.nan
    out["gp_events"] = events
    del ev_keys, ev_dates, ev_codes, ev_system
    # Prescriptions: each condition's chemicals every 8 weeks, plus acute items
    med_keys, med_dates, med_codes = [], [], []
    for name, (_, _, chemicals, _) in CONDITIONS.items():
        who = np.flatnonzero(flags[name])
        for chemical in chemicals:
            issues = int(years * 365 / 56)
            rep = np.repeat(who, issues)
            offset = np.tile(np.arange(issues) * 56, len(who)) + rng.integers(0, 56, len(rep))
            med_keys.append(keys[rep])
            med_dates.append((START + offset.astype("timedelta64[D]")).astype("datetime64[us]"))
            med_codes.append(np.full(len(rep), chemical + "AAAAAA", dtype=object))
    count = rng.poisson((0.8 + 0.5 * n_ltc) * years)
    idx = np.repeat(np.arange(n), count)
    med_keys.append(keys[idx])
    med_dates.append(_dates(rng, len(idx)))
    med_codes.append(np.array(["0501013B0AAAAAA", "0407010H0AAAAAA", "0103050P0AAAAAA"],
                              dtype=object)[rng.integers(0, 3, len(idx))])
    out["gp_medications"] = pd.DataFrame({
        "extract_id": "bench-gpm", "person_key": np.concatenate(med_keys),
        "issue_date": np.concatenate(med_dates), "bnf_code": np.concatenate(med_codes)})
    del med_keys, med_dates, med_codes
    # Community and social care for frailer people
    count = rng.poisson(np.clip(frail, 0, None) * 2.0 * years)
    idx = np.repeat(np.arange(n), count)
    out["community"] = pd.DataFrame({
        "extract_id": "bench-csds", "person_key": keys[idx], "contact_date": _dates(rng, len(idx)),
        "service": np.array(["district_nursing", "therapy", "rapid_response", "reablement",
                             "other"], dtype=object)[rng.integers(0, 5, len(idx))]})
    who = np.flatnonzero(rng.random(n) < 1 / (1 + np.exp(-(-4.5 + 1.2 * frail))))
    out["social_care"] = pd.DataFrame({
        "extract_id": "bench-asc", "person_key": keys[who], "start_date": _dates(rng, len(who)),
        "end_date": pd.NaT, "service_type": np.array(["home_care", "residential", "reablement"],
                                                     dtype=object)[rng.integers(0, 3, len(who))],
        "weekly_cost": rng.gamma(2, 150, len(who))})
    dead = np.flatnonzero(rng.random(n) < 0.02 * rate)
    out["deaths"] = pd.DataFrame({"extract_id": "bench-deaths", "person_key": keys[dead],
                                  "date_of_death": _dates(rng, len(dead))})
    return out


def stage(name: str, timings: list[tuple[str, float, float]], fn: Callable[[], Any]) -> Any:
    """Run one stage, print and record its seconds and the peak memory so far."""
    began = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - began
    timings.append((name, seconds, _mem()))
    print(f"{name:<32} {seconds:8.1f} s   peak RSS {_mem():6.2f} GiB", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints one line per stage and the total of features + scoring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=300_000,
                        help="persons sampled for model fitting")
    args = parser.parse_args(argv)
    timings: list[tuple[str, float, float]] = []
    sources = stage("make data", timings, lambda: make_sources(args.persons, args.seed))
    rows = {k: len(v) for k, v in sources.items()}
    print("rows:", ", ".join(f"{k}={v:,}" for k, v in rows.items()), flush=True)
    con = connect(sources)
    X = stage("features at reference date", timings, lambda: features_from(con, AT))
    print(f"persons scored: {len(X):,}; features: {X.shape[1]}", flush=True)
    bundle = stage("training (2 dates, 4 candidates)", timings,
                   lambda: train(con, AT, args.seed, max_train_persons=args.train))
    con.close()
    run = stage("score run (features+score+reasons)", timings,
                lambda: score(sources, AT, args.seed, bundle=bundle))
    print(f"chosen model: {bundle.chosen}; tiers: {run.metrics['tiers']}", flush=True)
    print("score run stages (s):", run.metrics["seconds"], flush=True)
    print(f"features + scoring for {len(run.scores):,} persons: {timings[-1][1]:.1f} s "
          f"(target < 120 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
