"""GP records (coded events, prescriptions), death registrations and opt-outs.

GP events carry conditions (re-coded over time, some never coded), observations with values,
frailty and its manifestations, and minor illness; prescriptions are repeat issues of drugs for
each condition and for age, plus acute courses. Rows are numpy arrays as in `synth.activity`.
"""

from __future__ import annotations

import numpy as np

from synth import codes
from synth.activity import COND_INDEX, Rows, code_table, poisson_rows
from synth.codes import CONDITIONS
from synth.population import (
    DAYS_PER_YEAR,
    HISTORY_START,
    NEVER,
    PERIOD_END,
    YEAR_STARTS,
    YEARS,
    Population,
)

C = len(CONDITIONS)


def _unique(seq: list[str]) -> list[str]:
    return list(dict.fromkeys(seq))


# gp_events code vocabulary: SNOMED codes, then ICD-10 codes (dotted, then undotted)
_SNOMED = _unique([x for c in CONDITIONS for x in c.snomed]
                  + [k for k, _, _ in codes.FRAILTY_GP] + [k for k, _ in codes.EFI_CODES]
                  + [codes.OBS_HBA1C, codes.OBS_SYSTOLIC, codes.OBS_EGFR, codes.OBS_BMI,
                     codes.OBS_SMOKER, codes.OBS_EX_SMOKER, "8392000"] + list(codes.GP_MINOR))
_ICD_GP = _unique([x for c in CONDITIONS for x in c.icd10_chronic])
EVENT_CODES = _SNOMED + _ICD_GP + [c.replace(".", "") for c in _ICD_GP]
SNO = {k: i for i, k in enumerate(_SNOMED)}
ICD_GP = {k: len(_SNOMED) + i for i, k in enumerate(_ICD_GP)}
ICD_UNDOTTED = len(_ICD_GP)


SNOMED_TABLE, SNOMED_LEN = code_table([c.snomed for c in CONDITIONS], SNO)
ICD_TABLE, ICD_LEN = code_table([c.icd10_chronic for c in CONDITIONS], ICD_GP)


def _window_events(person: np.ndarray, lo: np.ndarray, hi: np.ndarray, rate: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Poisson(rate per year) events uniformly in [lo, hi] for each (person, window)."""
    length = np.clip(hi - lo, 0, None)
    counts = rng.poisson(rate * length / DAYS_PER_YEAR)
    idx = np.repeat(np.arange(person.size), counts)
    days = (lo[idx] + rng.random(idx.size) * length[idx]).astype(np.int64)
    return person[idx], days


def _year_matrix(pop: Population, cond: str) -> np.ndarray:
    j = COND_INDEX[cond]
    return np.stack([pop.onset[:, j] < YEAR_STARTS[y] for y in range(YEARS)], axis=1)


def gp_events(pop: Population, seed: int) -> Rows:
    """Coded GP events: diagnoses, observations (with values), frailty, minor illness."""
    rng = pop.rng(seed, 20)
    persons, days, code, obs, value, decimals = [], [], [], [], [], []

    def add(p: np.ndarray, d: np.ndarray, c: np.ndarray, is_obs: bool,
            v: np.ndarray | None = None, dp: int = 0) -> None:
        persons.append(p)
        days.append(d)
        code.append(c)
        obs.append(np.full(p.size, is_obs))
        value.append(np.full(p.size, np.nan) if v is None else v)
        decimals.append(np.full(p.size, dp, dtype=np.int8))

    # diagnoses: at onset when it falls in the period, then re-coded at reviews
    end = np.minimum(pop.death_day, PERIOD_END)
    p, c = np.nonzero(pop.onset <= end[:, None])
    onset = pop.onset[p, c]
    coded = rng.random(p.size) >= 0.08                  # some conditions are never coded
    p, c, onset = p[coded], c[coded], onset[coded]
    at_onset = (onset >= HISTORY_START) & (rng.random(p.size) < 0.92)
    rp, rd = _window_events(np.arange(p.size), np.maximum(onset, HISTORY_START), end[p], 0.5,
                            rng)
    which = np.concatenate([np.flatnonzero(at_onset), rp])
    d = np.concatenate([onset[at_onset], rd])
    cp, cc = p[which], c[which]
    variant = pop.variant[cp, cc].astype(np.int64)
    variant = np.where(rng.random(cp.size) < 0.2, rng.integers(0, 100, cp.size), variant)
    sno = SNOMED_TABLE[cc, variant % SNOMED_LEN[cc]]
    icd = ICD_TABLE[cc, variant % ICD_LEN[cc]]
    icd = np.where(rng.random(cp.size) < 0.4, icd + ICD_UNDOTTED, icd)
    add(cp, d, np.where(rng.random(cp.size) < 0.05, icd, sno), False)

    # observations
    adult = pop.age >= 18
    diabetes, htn, ckd = (_year_matrix(pop, k) for k in ("diabetes", "hypertension", "ckd"))
    hba1c_level = rng.normal(0, 1, pop.n)
    rate = np.where(diabetes, 2.0, 0.15 * (pop.age >= 40))
    p, d, y = poisson_rows(pop, rate, rng)
    v = np.where(diabetes[p, y], np.clip(58 + 9 * hba1c_level[p] + rng.normal(0, 7, p.size),
                                         32, 140),
                 np.clip(38 + rng.normal(0, 4, p.size), 25, 47))
    add(p, d, np.full(p.size, SNO[codes.OBS_HBA1C]), True, np.rint(v))
    rate = np.where(htn, 2.0, np.where(pop.age >= 40, 0.4, 0.1 * adult))
    p, d, y = poisson_rows(pop, rate, rng)
    v = np.where(htn[p, y], rng.normal(138, 14, p.size), rng.normal(126, 14, p.size))
    add(p, d, np.full(p.size, SNO[codes.OBS_SYSTOLIC]), True, np.rint(np.clip(v, 85, 220)))
    rate = np.where(ckd, 2.0, np.where(diabetes | htn, 1.0, 0.3 * (pop.age >= 65)))
    p, d, y = poisson_rows(pop, rate, rng)
    v = np.where(ckd[p, y], np.clip(rng.normal(42, 11, p.size), 6, 59),
                 np.clip(rng.normal(80, 13, p.size), 45, 120))
    add(p, d, np.full(p.size, SNO[codes.OBS_EGFR]), True, np.rint(v))
    p, d, _ = poisson_rows(pop, 0.25 * adult, rng)
    add(p, d, np.full(p.size, SNO[codes.OBS_BMI]), True,
        np.clip(rng.normal(27.5, 5, p.size), 14, 60), 1)
    smoker = rng.choice(3, pop.n, p=[0.13, 0.25, 0.62])
    p, d, _ = poisson_rows(pop, 0.3 * adult, rng)
    smoke_codes = np.array([SNO[codes.OBS_SMOKER], SNO[codes.OBS_EX_SMOKER], SNO["8392000"]])
    add(p, d, smoke_codes[smoker[p]], True)

    # frailty manifestations and electronic frailty index categories
    older = np.where(pop.age >= 60, 1.0, 0.1)
    for k, base, slope in codes.FRAILTY_GP:
        p, d, _ = poisson_rows(pop, base * np.exp(slope * pop.frailty) * older, rng)
        add(p, d, np.full(p.size, SNO[k]), False)
    efi = np.zeros(pop.frailty.shape, dtype=np.int64) - 1
    for i, (_, threshold) in enumerate(codes.EFI_CODES):
        efi = np.where(pop.frailty >= threshold, i, efi)
    assessed = (efi >= 0) & (pop.age >= 65) & (pop.exposure > 0) \
        & (rng.random(efi.shape) < 0.6)
    p, y = np.nonzero(assessed)
    d = (pop.start[p, y] + rng.random(p.size) * pop.exposure[p, y]).astype(np.int64)
    efi_codes = np.array([SNO[k] for k, _ in codes.EFI_CODES])
    add(p, d, efi_codes[efi[p, y]], True)

    # minor illness
    p, d, _ = poisson_rows(pop, np.full(pop.frailty.shape, 0.3), rng)
    minor = np.array([SNO[k] for k in codes.GP_MINOR])
    add(p, d, minor[rng.integers(0, minor.size, p.size)], False)

    rows = {"person": np.concatenate(persons), "day": np.concatenate(days),
            "code": np.concatenate(code), "observation": np.concatenate(obs),
            "value": np.concatenate(value), "decimals": np.concatenate(decimals)}
    keep = (rows["day"] >= HISTORY_START) & (rows["day"] <= end[rows["person"]])
    rows = {k: v[keep] for k, v in rows.items()}
    n = rows["person"].size
    rows["value"] = np.where(rng.random(n) < 0.02, np.nan, rows["value"])
    rows["icd10"] = rows["code"] >= len(_SNOMED)
    return rows


# ------------------------------------------------------------------------------------------
# prescribing
# ------------------------------------------------------------------------------------------
CHEMICALS = tuple(codes.BNF_STRENGTHS)
CHEM = {k: i for i, k in enumerate(CHEMICALS)}
BNF_CODES = [f"{chem}AA{s}{s}" for chem in CHEMICALS for s in codes.BNF_STRENGTHS[chem]]
_FIRST = np.cumsum([0] + [len(codes.BNF_STRENGTHS[c]) for c in CHEMICALS])[:-1]
_COUNT = np.array([len(codes.BNF_STRENGTHS[c]) for c in CHEMICALS])
_DAILY = np.array([codes.BNF_DAILY.get(c, 1) for c in CHEMICALS])
_PACK = np.array([codes.BNF_PACKS.get(c, 0) for c in CHEMICALS])


def gp_medications(pop: Population, seed: int) -> Rows:
    """Repeat prescriptions (every 28/56/84 days) for conditions and age, and acute courses."""
    rng = pop.rng(seed, 21)
    person, chem, start, stop = [], [], [], []
    end_of = np.minimum(pop.death_day, PERIOD_END)
    for j, c in enumerate(CONDITIONS):
        has = np.flatnonzero(pop.onset[:, j] <= end_of)
        for drug, prob in c.meds:
            p = has[rng.random(has.size) < prob]
            s = pop.onset[p, j] + rng.integers(0, 60, p.size)
            person.append(p)
            chem.append(np.full(p.size, CHEM[drug]))
            start.append(s)
            stop.append(np.maximum(s, HISTORY_START) + rng.exponential(12 * DAYS_PER_YEAR,
                                                                       p.size))
    last = np.clip(pop.year_of(end_of), 0, YEARS - 1)
    idx = np.arange(pop.n)
    age = pop.age[idx, last]
    frail = pop.frailty[idx, last]
    adult_from = pop.dob + 18 * DAYS_PER_YEAR
    for drug, base, slope, fslope, sex in codes.BACKGROUND_MEDS:
        prob = np.clip(base + slope * np.clip(age - 40, 0, None) + fslope * frail, 0, 0.6)
        prob = np.where((sex == 0) | (pop.sex == sex), prob, 0) * (age >= 18)
        p = np.flatnonzero(rng.random(pop.n) < prob)
        s = np.maximum(HISTORY_START - rng.random(p.size) * 6 * DAYS_PER_YEAR
                       + rng.random(p.size) * 4 * DAYS_PER_YEAR, adult_from[p])
        person.append(p)
        chem.append(np.full(p.size, CHEM[drug]))
        start.append(s.astype(np.int64))
        stop.append(np.maximum(s, HISTORY_START) + rng.exponential(5 * DAYS_PER_YEAR, p.size))
    women = np.flatnonzero((pop.sex == 2) & (age >= 16) & (age <= 45)
                           & (rng.random(pop.n) < 0.12))
    s = np.maximum(HISTORY_START + (rng.random(women.size) * 7 - 3) * DAYS_PER_YEAR,
                   pop.dob[women] + 16 * DAYS_PER_YEAR)
    person.append(women)
    chem.append(np.full(women.size, CHEM[codes.CONTRACEPTIVE]))
    start.append(s.astype(np.int64))
    stop.append(s + rng.exponential(3 * DAYS_PER_YEAR, women.size))

    person_a = np.concatenate(person)
    chem_a = np.concatenate(chem)
    start_a = np.concatenate(start).astype(np.int64)
    stop_a = np.concatenate(stop).astype(np.int64)
    # one course per (person, drug): the earliest
    order = np.lexsort((start_a, chem_a, person_a))
    person_a, chem_a, start_a, stop_a = (x[order] for x in (person_a, chem_a, start_a, stop_a))
    first_of = np.ones(person_a.size, dtype=bool)
    first_of[1:] = (person_a[1:] != person_a[:-1]) | (chem_a[1:] != chem_a[:-1])
    person_a, chem_a, start_a, stop_a = (x[first_of] for x in (person_a, chem_a, start_a,
                                                                stop_a))
    m = person_a.size
    interval = rng.choice(np.array([28, 56, 84]), m, p=[0.55, 0.35, 0.10])
    strength = _FIRST[chem_a] + rng.integers(0, 1 << 30, m) % _COUNT[chem_a]
    first = np.where(start_a < HISTORY_START,
                     HISTORY_START + rng.integers(0, interval), start_a)
    last_day = np.minimum(stop_a, end_of[person_a])
    issues = np.where(last_day >= first, (last_day - first) // interval + 1, 0)
    pair = np.repeat(np.arange(m), issues)
    k = np.arange(pair.size) - np.repeat(np.cumsum(issues) - issues, issues)
    day = first[pair] + k * interval[pair] + rng.integers(-3, 4, pair.size)
    keep = (day >= HISTORY_START) & (day <= end_of[person_a[pair]]) \
        & (rng.random(pair.size) >= 0.07)
    pair, day = pair[keep], day[keep]
    c = chem_a[pair]
    quantity = np.where(_PACK[c] > 0, _PACK[c], interval[pair] * _DAILY[c])
    rep = {"person": person_a[pair], "day": day, "bnf": strength[pair], "quantity": quantity}

    # acute courses: antibiotics for anyone, steroids for COPD exacerbations
    rate = 0.25 + 0.2 * pop.frailty + 0.3 * (pop.age < 5)
    p, d, _ = poisson_rows(pop, rate, rng)
    drug = rng.choice(np.array([CHEM[x] for x in codes.ACUTE_MEDS[:3]]), p.size,
                      p=[0.5, 0.2, 0.3])
    acute_q = np.where(drug == CHEM["0501130R0"], 6, 21)
    rate = 0.6 * _year_matrix(pop, "copd")
    p2, d2, _ = poisson_rows(pop, rate, rng)
    drug = np.concatenate([drug, np.full(p2.size, CHEM["0603020T0"])])
    acu = {"person": np.concatenate([p, p2]), "day": np.concatenate([d, d2]),
           "bnf": _FIRST[drug], "quantity": np.concatenate([acute_q, np.full(p2.size, 30)])}
    rows = {k: np.concatenate([rep[k], acu[k]]) for k in rep}
    rows["quantity_null"] = rng.random(rows["person"].size) < 0.02
    return rows


# ------------------------------------------------------------------------------------------
# deaths and opt-outs
# ------------------------------------------------------------------------------------------
def deaths(pop: Population) -> Rows:
    person = np.flatnonzero(pop.death_day < NEVER)
    return {"person": person, "day": pop.death_day[person]}


OPTOUT_TYPES = ("ndoo", "type1", "consent_withdrawn")


def optouts(pop: Population, social_care_persons: np.ndarray, seed: int) -> Rows:
    """National data opt-outs (~3%), type 1 objections (~0.5%), social care consent
    withdrawals (~2% of clients); a few later withdrawn (opted back in)."""
    rng = pop.rng(seed, 22)
    ndoo = np.flatnonzero(rng.random(pop.n) < 0.03)
    type1 = np.flatnonzero(rng.random(pop.n) < 0.005)
    clients = np.unique(social_care_persons)
    consent = clients[rng.random(clients.size) < 0.02]
    person = np.concatenate([ndoo, type1, consent])
    kind = np.concatenate([np.zeros(ndoo.size, int), np.ones(type1.size, int),
                           np.full(consent.size, 2)])
    end = np.minimum(pop.death_day[person], PERIOD_END)
    lo = np.maximum(HISTORY_START, pop.dob[person])
    day = (lo + rng.random(person.size) * np.clip(end - lo, 0, None)).astype(np.int64)
    withdrawn = rng.random(person.size) < 0.05
    return {"person": person, "day": day, "kind": kind, "withdrawn": withdrawn}
