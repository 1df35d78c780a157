"""Secondary, community and social care activity drawn from the population's latent state.

Each function returns a `Rows` table: numpy arrays with one entry per row, always including
`person` (true person id) and `day` (the row's date, a day number), plus source fields as
numbers or vocabulary indices. Rendering to text happens in `synth.extracts`.

Emergency admissions follow the Poisson process and terminal admissions defined in
`synth.population` exactly (the truth depends on it); other activity is driven by the same
covariates and, to a lesser degree, the same person noise u, so history is informative.
"""

from __future__ import annotations

import numpy as np

from synth import codes
from synth.codes import CONDITIONS
from synth.population import (
    DAYS_PER_YEAR,
    HISTORY_START,
    PERIOD_END,
    YEAR_STARTS,
    YEARS,
    Population,
)

Rows = dict[str, np.ndarray]
C = len(CONDITIONS)
COND_INDEX = {c.name: j for j, c in enumerate(CONDITIONS)}


def _unique(seq: list[str]) -> list[str]:
    return list(dict.fromkeys(seq))


ICD10 = _unique(
    [x for c in CONDITIONS for x in (*c.icd10_chronic, *c.icd10_acute)]
    + list(codes.FRAILTY_PRIMARY) + list(codes.FRAILTY_SECONDARY) + list(codes.ADULT_ACUTE)
    + list(codes.CHILD_ACUTE) + [m for m, _ in codes.MISC_SECONDARY] + list(codes.MATERNITY)
    + list(codes.BIRTH) + [e[0] for e in codes.ELECTIVE] + [codes.CHEMO[0], "Z37.0"])
ICD = {code: i for i, code in enumerate(ICD10)}
OPCS = _unique([e[1] for e in codes.ELECTIVE] + list(codes.EMERGENCY_PROCEDURES.values())
               + [codes.CHEMO[1], "R17.9", "R18.9", "R24.9"])
OPC = {code: i for i, code in enumerate(OPCS)}
METHODS = _unique([m for m, _ in codes.EMERGENCY_METHODS] + [m for m, _ in
                                                              codes.ELECTIVE_METHODS]
                  + ["31", "32", "81", "82"])
METHOD = {m: i for i, m in enumerate(METHODS)}
DESTINATIONS = ("19", "54", "51", "29", "79", "98", "65")
DEST = {d: i for i, d in enumerate(DESTINATIONS)}
KIND_EMERGENCY, KIND_ELECTIVE, KIND_MATERNITY, KIND_BIRTH, KIND_TRANSFER = range(5)
EMERGENCY_METHOD_IDX = np.array([METHOD[m] for m, _ in codes.EMERGENCY_METHODS])
EMERGENCY_METHOD_P = np.array([p for _, p in codes.EMERGENCY_METHODS])
EMERGENCY_METHOD_P = EMERGENCY_METHOD_P / EMERGENCY_METHOD_P.sum()


def code_table(lists: list[tuple[str, ...]], lookup: dict[str, int]) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Ragged lists of codes as a padded index table and lengths."""
    width = max(len(x) for x in lists)
    table = np.zeros((len(lists), width), dtype=np.int64)
    for i, x in enumerate(lists):
        table[i, :len(x)] = [lookup[c] for c in x]
        table[i, len(x):] = lookup[x[0]]
    return table, np.array([len(x) for x in lists])


ACUTE_TABLE, ACUTE_LEN = code_table([c.icd10_acute for c in CONDITIONS], ICD)
CHRONIC_TABLE, CHRONIC_LEN = code_table([c.icd10_chronic for c in CONDITIONS], ICD)
ACUTE_WEIGHT = np.array([c.acute_weight for c in CONDITIONS])
FRAILTY_PRIMARY = np.array([ICD[c] for c in codes.FRAILTY_PRIMARY])
FRAILTY_SECONDARY = np.array([ICD[c] for c in codes.FRAILTY_SECONDARY])
ADULT_ACUTE = np.array([ICD[c] for c in codes.ADULT_ACUTE])
CHILD_ACUTE = np.array([ICD[c] for c in codes.CHILD_ACUTE])
PROCEDURE_OF = np.full(len(ICD10), -1)
for _dx, _op in codes.EMERGENCY_PROCEDURES.items():
    PROCEDURE_OF[ICD[_dx]] = OPC[_op]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def choose(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One category per row of a (rows, k) non-negative weight matrix."""
    cum = np.cumsum(weights, axis=1)
    draw = rng.random(weights.shape[0]) * cum[:, -1]
    return np.minimum((draw[:, None] >= cum).sum(axis=1), weights.shape[1] - 1)


def pick(rng: np.random.Generator, items: np.ndarray, n: int) -> np.ndarray:
    return items[rng.integers(0, items.size, n)]


def poisson_rows(pop: Population, rate: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events of a yearly-rate Poisson process over each person's exposure in each year."""
    counts = rng.poisson(rate * pop.exposure / DAYS_PER_YEAR).ravel()
    idx = np.repeat(np.arange(counts.size), counts)
    person, year = idx // YEARS, idx % YEARS
    days = np.floor(pop.start[person, year]
                    + rng.random(idx.size) * pop.exposure[person, year]).astype(np.int64)
    return person, days, year


def _concat(parts: list[Rows]) -> Rows:
    keys = parts[0].keys()
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def _age_rate(age: np.ndarray, knots: tuple[float, ...], values: tuple[float, ...]
              ) -> np.ndarray:
    return np.interp(age, knots, values)


def person_effects(pop: Population, seed: int) -> dict[str, np.ndarray]:
    """Lasting per-person tendencies for non-emergency services (independent of u)."""
    rng = pop.rng(seed, 10)
    n = pop.n
    return {"elective": rng.normal(0, 0.7, n), "ae": rng.normal(0, 0.5, n),
            "op": rng.normal(0, 0.6, n), "dna": rng.normal(0, 0.6, n),
            "community": rng.normal(0, 0.5, n)}


# ------------------------------------------------------------------------------------------
# admitted patient care
# ------------------------------------------------------------------------------------------
def _emergency_primary(pop: Population, person: np.ndarray, days: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    n = person.size
    cond = pop.conditions_at(person, days)
    frail = pop.frailty_at(person, days)
    age = pop.age_at(person, days)
    w_cond = cond * ACUTE_WEIGHT
    w_frail = 0.6 * frail * (age >= 60)
    weights = np.column_stack([w_cond, w_frail, np.ones(n)])
    cat = choose(rng, weights)
    out = np.where(age < 16, pick(rng, CHILD_ACUTE, n), pick(rng, ADULT_ACUTE, n))
    out = np.where(cat == C, pick(rng, FRAILTY_PRIMARY, n), out)
    is_cond = cat < C
    cc = np.minimum(cat, C - 1)
    k = rng.integers(0, 1 << 30, n) % ACUTE_LEN[cc]
    return np.where(is_cond, ACUTE_TABLE[cc, k], out)


def _emergency_los(pop: Population, person: np.ndarray, days: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    age = pop.age_at(person, days)
    mean = 1.0 + 0.07 * np.clip(age - 40, 0, None) + 1.5 * pop.frailty_at(person, days)
    mean = np.where(age < 16, 0.8, mean)
    los = 1 + np.floor(rng.exponential(mean))
    return np.where(rng.random(person.size) < 0.25, 0, los).astype(np.int64)


def spells(pop: Population, effects: dict[str, np.ndarray], seed: int) -> Rows:
    """All hospital spells: emergency (the truth process), elective, maternity, births, other."""
    rng = pop.rng(seed, 11)
    parts: list[Rows] = []

    # emergency: the Poisson process of population.py, then terminal admissions
    person, days, year = poisson_rows(pop, pop.lam, rng)
    los = _emergency_los(pop, person, days, rng)
    # a person dying in hospital whose last admission that year already covers the death
    # dies in that spell; everyone else dying in hospital gets a terminal admission
    dying = pop.hosp_death[person]
    death_year = pop.year_of(pop.death_day[person])
    covers = dying & (year == death_year) & (days + los >= pop.death_day[person])
    covered = np.zeros(pop.n, dtype=bool)
    covered[person[covers]] = True
    terminal = np.flatnonzero(pop.hosp_death & ~covered)
    t_year = pop.year_of(pop.death_day[terminal])
    t_los = np.minimum(rng.geometric(0.18, terminal.size) - 1, 40)
    t_day = np.maximum(pop.death_day[terminal] - t_los,
                       np.ceil(pop.start[terminal, t_year]).astype(np.int64))
    e_person = np.concatenate([person, terminal])
    e_day = np.concatenate([days, t_day])
    e_los = np.concatenate([los, pop.death_day[terminal] - t_day])
    m = e_person.size
    parts.append({
        "person": e_person, "day": e_day, "los": e_los,
        "kind": np.full(m, KIND_EMERGENCY),
        "method": EMERGENCY_METHOD_IDX[rng.choice(EMERGENCY_METHOD_P.size, m,
                                                  p=EMERGENCY_METHOD_P)],
        "primary": _emergency_primary(pop, e_person, e_day, rng)})

    # elective (day cases and inpatients), chemotherapy for people with cancer
    cancer = COND_INDEX["cancer"]
    cond_y = np.stack([(pop.onset < YEAR_STARTS[y]).sum(axis=1) for y in range(YEARS)], axis=1)
    has_cancer = np.stack([pop.onset[:, cancer] < YEAR_STARTS[y] for y in range(YEARS)], axis=1)
    rate = np.exp(-2.6 + _age_rate(pop.age, (0, 10, 20, 40, 60, 70, 80, 90),
                                   (-1.4, -1.4, -1.0, -0.5, 0.3, 0.6, 0.6, 0.2))
                  + 0.12 * cond_y + 1.8 * has_cancer + effects["elective"][:, None])
    person, days, _ = poisson_rows(pop, rate, rng)
    m = person.size
    age = pop.age_at(person, days)
    sex = pop.sex[person]
    elig = np.array([[e[3], e[4], e[5], e[6]] for e in codes.ELECTIVE], dtype=float)
    weights = ((age[:, None] >= elig[:, 0]) & (age[:, None] <= elig[:, 1])
               & ((elig[:, 2] == 0) | (elig[:, 2] == sex[:, None]))) * elig[:, 3]
    weights[:, 0] += 1e-9
    which = choose(rng, weights)
    primary = np.array([ICD[e[0]] for e in codes.ELECTIVE])[which]
    procedure = np.array([OPC[e[1]] for e in codes.ELECTIVE])[which]
    chemo = (pop.onset[person, cancer] < days) & (rng.random(m) < 0.55)
    primary = np.where(chemo, ICD[codes.CHEMO[0]], primary)
    procedure = np.where(chemo, OPC[codes.CHEMO[1]], procedure)
    procedure = np.where(rng.random(m) < 0.1, -1, procedure)
    day_case = rng.random(m) < np.where(chemo, 0.97, 0.72)
    parts.append({
        "person": person, "day": days,
        "los": np.where(day_case, 0, 1 + np.floor(rng.exponential(2.5, m))).astype(np.int64),
        "kind": np.full(m, KIND_ELECTIVE),
        "method": np.array([METHOD[x] for x, _ in codes.ELECTIVE_METHODS])[
            rng.choice(3, m, p=[p for _, p in codes.ELECTIVE_METHODS])],
        "primary": primary, "procedure": procedure})

    # maternity: women 16-45
    female = (pop.sex == 2)[:, None]
    rate = female * _age_rate(pop.age, (15.9, 16, 20, 25, 30, 35, 40, 45, 45.1),
                              (0, 0.015, 0.05, 0.09, 0.10, 0.06, 0.015, 0.004, 0))
    person, days, _ = poisson_rows(pop, rate, rng)
    m = person.size
    mat = np.array([ICD[c] for c in codes.MATERNITY])
    primary = mat[rng.choice(mat.size, m, p=[0.55, 0.2, 0.08, 0.05, 0.04, 0.03, 0.03, 0.02])]
    procedure = np.where(primary == ICD["O82"], np.where(rng.random(m) < 0.5, OPC["R17.9"],
                                                         OPC["R18.9"]),
                         np.where(primary == ICD["O80"], OPC["R24.9"], -1))
    parts.append({
        "person": person, "day": days, "los": rng.integers(0, 4, m),
        "kind": np.full(m, KIND_MATERNITY),
        "method": np.where(rng.random(m) < 0.75, METHOD["31"], METHOD["32"]),
        "primary": primary, "procedure": procedure})

    # births in this provider during the period (method 82)
    person = np.flatnonzero((pop.dob >= HISTORY_START) & (rng.random(pop.n) < 0.97))
    m = person.size
    birth = np.array([ICD[c] for c in codes.BIRTH])
    parts.append({
        "person": person, "day": pop.dob[person], "los": rng.integers(0, 3, m),
        "kind": np.full(m, KIND_BIRTH), "method": np.full(m, METHOD["82"]),
        "primary": birth[rng.integers(0, birth.size, m)]})

    # transfers in from other providers (method 81)
    rate = 0.004 * np.exp(0.8 * pop.frailty)
    person, days, _ = poisson_rows(pop, rate, rng)
    m = person.size
    parts.append({
        "person": person, "day": days, "los": 1 + np.floor(rng.exponential(8, m)).astype(
            np.int64),
        "kind": np.full(m, KIND_TRANSFER), "method": np.full(m, METHOD["81"]),
        "primary": _emergency_primary(pop, person, days, rng)})

    for p in parts:
        if "procedure" not in p:      # emergency, transfers, births: by the diagnosis
            p["procedure"] = PROCEDURE_OF[p["primary"]]
    rows = _concat(parts)
    rows["los"] = rows["los"].astype(np.int64)
    _discharge(pop, rows, rng)
    rows["secondary_offsets"], rows["secondary"] = _secondary(pop, rows, rng)
    rows["dot"] = rng.random(rows["person"].size) < 0.7
    return rows


def _discharge(pop: Population, rows: Rows, rng: np.random.Generator) -> None:
    """Discharge day and destination; deaths end the spell they happen in."""
    person, adm = rows["person"], rows["day"]
    n = person.size
    dis = adm + rows["los"]
    frail = pop.frailty_at(person, adm)
    older = pop.age_at(person, adm) >= 65
    # 19 home, 54 NHS care home, 51 another NHS hospital's general ward (a community hospital
    # or bedded intermediate care), 29 temporary residence, 65 council residential care: the
    # frailer and older go on to a bed or a care home more often (journeys after discharge).
    dest = choose(rng, np.column_stack([
        np.full(n, 0.9), 0.01 + 0.06 * (frail > 1.3) + 0.04 * (frail > 2.0),
        0.01 + older * (0.03 + 0.05 * (frail > 1.3)), np.full(n, 0.02), np.zeros(n),
        np.zeros(n), 0.01 * (frail > 1.3) + 0.02 * older * (frail > 2.0)]))
    death = pop.death_day[person]
    dies = dis >= death
    dis = np.minimum(dis, death)
    dest = np.where(dies, DEST["79"], dest)
    open_ = dis > PERIOD_END
    rows["discharge"] = np.where(open_, -1, dis)
    rows["destination"] = np.where(open_, DEST["98"], dest)


def _secondary(pop: Population, rows: Rows, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Secondary diagnoses (CSR: offsets, codes): conditions, frailty, common comorbidity."""
    person, adm, primary = rows["person"], rows["day"], rows["primary"]
    n = person.size
    cond = pop.conditions_at(person, adm)
    frail = pop.frailty_at(person, adm)
    age = pop.age_at(person, adm)
    spell_parts, code_parts = [], []
    recorded = cond & (rng.random(cond.shape) < 0.8)
    s, c = np.nonzero(recorded)
    variant = pop.variant[person[s], c].astype(np.int64)
    variant = np.where(rng.random(s.size) < 0.15, rng.integers(0, 100, s.size), variant)
    spell_parts.append(s)
    code_parts.append(CHRONIC_TABLE[c, variant % CHRONIC_LEN[c]])
    p_frail = sigmoid(-4.0 + 1.5 * frail) * (age >= 50)
    hits = rng.random((n, FRAILTY_SECONDARY.size)) < p_frail[:, None]
    s, k = np.nonzero(hits)
    spell_parts.append(s)
    code_parts.append(FRAILTY_SECONDARY[k])
    misc = np.array([ICD[m] for m, _ in codes.MISC_SECONDARY])
    p_misc = np.array([p for _, p in codes.MISC_SECONDARY])
    hits = rng.random((n, misc.size)) < p_misc[None, :] * (age >= 25)[:, None]
    s, k = np.nonzero(hits)
    spell_parts.append(s)
    code_parts.append(misc[k])
    s = np.flatnonzero(rows["kind"] == KIND_MATERNITY)
    spell_parts.append(s)
    code_parts.append(np.full(s.size, ICD["Z37.0"]))
    spell = np.concatenate(spell_parts)
    code = np.concatenate(code_parts)
    keep = code != primary[spell]
    spell, code = spell[keep], code[keep]
    key = np.unique(spell.astype(np.int64) * len(ICD10) + code)
    spell, code = key // len(ICD10), key % len(ICD10)
    order = np.lexsort((rng.random(spell.size), spell))
    spell, code = spell[order], code[order]
    counts = np.bincount(spell, minlength=n)
    rank = np.arange(spell.size) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = rank < 20
    spell, code = spell[keep], code[keep]
    counts = np.bincount(spell, minlength=n)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return offsets, code


# ------------------------------------------------------------------------------------------
# emergency department
# ------------------------------------------------------------------------------------------
AE_MODES = ("ambulance", "walk_in", "other")
AE_STATUS = ("admitted", "discharged", "transferred", "died", "left")
COMPLAINTS = tuple(codes.COMPLAINT)
_CX = {k: i for i, k in enumerate(COMPLAINTS)}
_GENERAL_CX = np.array([_CX[k] for k in codes.GENERAL_COMPLAINTS])
HOUR_WEIGHTS = np.array([2, 1.5, 1.2, 1, 1, 1, 1.3, 2, 3.5, 5, 6, 6.3, 6.2, 6, 5.8, 5.8, 5.9,
                         6, 6, 5.8, 5.2, 4.5, 3.5, 2.6])
HOUR_WEIGHTS = HOUR_WEIGHTS / HOUR_WEIGHTS.sum()


def _complaint_of_diagnosis() -> np.ndarray:
    """Chief complaint most likely behind an admission's primary diagnosis (-1: general)."""
    out = np.full(len(ICD10), -1)
    by_prefix = {"J44": "breathless", "J45": "breathless", "J46": "breathless",
                 "I50": "breathless", "J18": "cough", "J22": "cough", "J21": "breathless",
                 "I2": "chest_pain", "R07": "chest_pain", "I48": "palpitations",
                 "S72": "fall", "S32": "fall", "R29": "fall", "R26": "fall", "F05": "confusion",
                 "F03": "confusion", "G30": "confusion", "I6": "weakness", "G45": "weakness",
                 "R55": "collapse", "E16": "collapse", "R10": "abdominal_pain",
                 "K": "abdominal_pain", "A41": "fever", "N39": "fever", "R50": "fever",
                 "S06": "headache", "R51": "headache", "S52": "limb_injury",
                 "L03": "rash", "A0": "vomiting", "R11": "vomiting", "R06": "breathless"}
    for code, i in ICD.items():
        for prefix in sorted(by_prefix, key=len, reverse=True):
            if code.startswith(prefix):
                out[i] = _CX[by_prefix[prefix]]
                break
    return out


COMPLAINT_OF = _complaint_of_diagnosis()


def attendances(pop: Population, effects: dict[str, np.ndarray], apc: Rows,
                seed: int) -> Rows:
    """A&E attendances: those that led to an emergency admission (method 21), the many that
    did not, and deaths in the department."""
    rng = pop.rng(seed, 12)
    # admitted: from spells admitted via this A&E
    s = np.flatnonzero(apc["method"] == METHOD["21"])
    person_a, adm = apc["person"][s], apc["day"][s]
    hour_a = rng.choice(24, s.size, p=HOUR_WEIGHTS)
    before = (hour_a >= 19) & (rng.random(s.size) < 0.45) \
        & (adm - 1 >= np.maximum(pop.dob[person_a], HISTORY_START))
    day_a = adm - before
    cx_a = COMPLAINT_OF[apc["primary"][s]]
    # not admitted
    cond_n = np.stack([(pop.onset < YEAR_STARTS[y]).sum(axis=1) for y in range(YEARS)], axis=1)
    rate = np.exp(-1.75 + _age_rate(pop.age, (0, 2, 5, 16, 20, 30, 60, 80, 90),
                                    (0.6, 0.4, 0.0, 0.2, 0.35, 0.1, 0.0, 0.3, 0.5))
                  + 0.07 * (5 - pop.dep[:, None]) + 0.15 * cond_n + 0.3 * pop.frailty
                  + 0.6 * (pop.u[:, None] + 0.32) + 0.5 * pop.v + effects["ae"][:, None])
    person_n, day_n, _ = poisson_rows(pop, rate, rng)
    hour_n = rng.choice(24, person_n.size, p=HOUR_WEIGHTS)
    # deaths in the department
    person_d = np.flatnonzero(pop.ed_death)
    day_d = pop.death_day[person_d]
    hour_d = rng.choice(24, person_d.size, p=HOUR_WEIGHTS)

    person = np.concatenate([person_a, person_n, person_d])
    days = np.concatenate([day_a, day_n, day_d])
    hours = np.concatenate([hour_a, hour_n, hour_d])
    n = person.size
    na, nn = s.size, person_n.size
    group = np.concatenate([np.zeros(na, int), np.ones(nn, int), np.full(person_d.size, 2)])
    status = np.where(group == 0, 0, np.where(group == 2, 3, 1))
    r = rng.random(n)
    status = np.where((group == 1) & (r < 0.06), 4, np.where((group == 1) & (r > 0.95), 2,
                                                             status))
    age = pop.age_at(person, days)
    frail = pop.frailty_at(person, days)
    p_amb = sigmoid(-2.0 + 0.03 * np.clip(age - 40, 0, None) + 0.9 * frail
                    + 1.4 * (group != 1))
    mode = np.where(rng.random(n) < p_amb, 0, np.where(rng.random(n) < 0.04, 2, 1))
    acuity = np.where(group != 1,
                      rng.choice(5, n, p=[0.06, 0.36, 0.44, 0.12, 0.02]),
                      rng.choice(5, n, p=[0.005, 0.06, 0.45, 0.40, 0.085])) + 1
    acuity = np.where(group == 2, 1, acuity)
    acuity = np.where(rng.random(n) < 0.05, 0, acuity)       # 0: not recorded
    complaint = np.concatenate([cx_a, np.full(nn + person_d.size, -1)])
    general = pick(rng, _GENERAL_CX, n)
    old_fall = (age >= 70) & (rng.random(n) < 0.15 + 0.1 * frail)
    general = np.where(old_fall, _CX["fall"], general)
    complaint = np.where(complaint < 0, general, complaint)
    complaint = np.where(rng.random(n) < 0.08, -1, complaint)
    seconds = (days * 86400 + hours * 3600 + rng.integers(0, 3600, n)).astype(np.int64)
    return {"person": person, "day": days, "seconds": seconds, "mode": mode,
            "acuity": acuity, "complaint": complaint, "status": status}


# ------------------------------------------------------------------------------------------
# outpatients
# ------------------------------------------------------------------------------------------
TFCS = _unique([c.tfc for c in CONDITIONS] + [t for t, _, _ in codes.GENERAL_TFC]
               + [codes.PAEDIATRIC_TFC, codes.OBSTETRIC_TFC, "370", "800"])
TFC = {t: i for i, t in enumerate(TFCS)}
COND_TFC = np.array([TFC[c.tfc] for c in CONDITIONS])
COND_OP = np.array([c.op_rate for c in CONDITIONS])
OP_STATUS = ("5", "6", "7", "2", "3", "4")


def appointments(pop: Population, effects: dict[str, np.ndarray], apc: Rows,
                 seed: int) -> Rows:
    """Outpatient appointments, with did-not-attends more likely for the deprived and young."""
    rng = pop.rng(seed, 13)
    extra = np.stack([(pop.onset < YEAR_STARTS[y]) @ COND_OP for y in range(YEARS)], axis=1)
    rate = np.exp(-0.55 + _age_rate(pop.age, (0, 2, 16, 30, 50, 65, 80, 90),
                                    (0.0, -0.5, -0.6, -0.3, 0.0, 0.3, 0.4, 0.2))
                  + np.log1p(extra) + 0.3 * (pop.u[:, None] + 0.32) + effects["op"][:, None])
    person, days, _ = poisson_rows(pop, rate, rng)
    # antenatal clinics before each delivery
    mat = np.flatnonzero(apc["kind"] == KIND_MATERNITY)
    visits = rng.integers(2, 6, mat.size)
    m_person = np.repeat(apc["person"][mat], visits)
    m_day = np.repeat(apc["day"][mat], visits) - rng.integers(7, 210, visits.sum())
    keep = m_day >= HISTORY_START
    person = np.concatenate([person, m_person[keep]])
    days = np.concatenate([days, m_day[keep]])
    obstetric = np.concatenate([np.zeros(days.size - keep.sum(), bool),
                                np.ones(keep.sum(), bool)])
    n = person.size
    cond = pop.conditions_at(person, days)
    age = pop.age_at(person, days)
    w = np.column_stack([cond * COND_OP, np.ones(n)])
    cat = choose(rng, w)
    gen = np.array([TFC[t] for t, _, _ in codes.GENERAL_TFC])
    gen_w = np.array([w_ for _, w_, _ in codes.GENERAL_TFC])
    gen_min = np.array([a for _, _, a in codes.GENERAL_TFC])
    female = pop.sex[person] == 2
    weights = gen_w * ((gen_min >= 0) & (age[:, None] >= gen_min)
                       | (gen_min == -1) & female[:, None] & (age[:, None] >= 16))
    general = gen[choose(rng, weights + 1e-9)]
    general = np.where((age < 16) & (rng.random(n) < 0.6), TFC[codes.PAEDIATRIC_TFC], general)
    tfc = np.where(cat < C, COND_TFC[np.minimum(cat, C - 1)], general)
    cancer = cat == COND_INDEX["cancer"]
    tfc = np.where(cancer & (rng.random(n) < 0.4), TFC["800"], tfc)
    tfc = np.where(obstetric, TFC[codes.OBSTETRIC_TFC], tfc)
    p_dna = sigmoid(-3.1 + 0.17 * (5 - pop.dep[person]) + 0.5 * ((age > 16) & (age < 35))
                    + 0.35 * (pop.u[person] + 0.32) + effects["dna"][person])
    r = rng.random(n)
    other = rng.choice(np.array([0, 1, 2, 3, 5]), n, p=[0.86, 0.02, 0.01, 0.05, 0.06])
    status = np.where(r < p_dna, 4, other)
    first = rng.random(n) < 0.3
    return {"person": person, "day": days, "tfc": tfc, "status": status, "first": first}


# ------------------------------------------------------------------------------------------
# community services
# ------------------------------------------------------------------------------------------
SERVICES = ("district_nursing", "therapy", "rapid_response", "reablement", "other")


def _episodes(person: np.ndarray, first: np.ndarray, contacts: np.ndarray,
              spacing_lo: int, spacing_hi: int, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """Expand episodes into contacts spaced spacing_lo..spacing_hi days apart."""
    p = np.repeat(person, contacts)
    gaps = rng.integers(spacing_lo, spacing_hi + 1, p.size)
    nonempty = contacts > 0
    starts = (np.cumsum(contacts) - contacts)[nonempty]
    gaps[starts] = 0
    cum = np.cumsum(gaps)
    offset = cum - np.repeat(cum[starts], contacts[nonempty])
    return p, np.repeat(first, contacts) + offset


def community(pop: Population, effects: dict[str, np.ndarray], apc: Rows, seed: int) -> Rows:
    """Community contacts, mostly for older and frailer people, plus reablement after
    emergency discharges."""
    rng = pop.rng(seed, 14)
    f = pop.frailty
    older = pop.age >= 50
    base = effects["community"][:, None]
    stroke = np.stack([pop.onset[:, COND_INDEX["stroke"]] < YEAR_STARTS[y]
                       for y in range(YEARS)], axis=1)
    diabetes = np.stack([pop.onset[:, COND_INDEX["diabetes"]] < YEAR_STARTS[y]
                         for y in range(YEARS)], axis=1)
    plan = (
        (0, np.where(older, 0.012, 0.001) * np.exp(1.3 * f + base), 5, 2, 7),
        (1, (0.006 * np.exp(0.9 * f) + 0.15 * stroke) * np.exp(base), 3, 5, 9),
        (2, (pop.age >= 65) * 0.004 * np.exp(1.3 * f + 0.4 * (pop.u[:, None] + 0.32)),
         0.3, 1, 2),
        (4, (0.02 + 0.08 * diabetes + 0.01 * f) * np.exp(base), 1, 20, 45),
    )
    persons, days, services = [], [], []
    for service, rate, mean_contacts, lo, hi in plan:
        person, first, _ = poisson_rows(pop, rate, rng)
        contacts = 1 + rng.poisson(mean_contacts, person.size)
        p, d = _episodes(person, first, contacts, lo, hi, rng)
        persons.append(p)
        days.append(d)
        services.append(np.full(p.size, service))
    # reablement after an emergency spell of someone 65+ discharged home
    s = np.flatnonzero((apc["kind"] == KIND_EMERGENCY) & (apc["discharge"] >= 0)
                       & (apc["destination"] == DEST["19"]))
    age = pop.age_at(apc["person"][s], apc["day"][s])
    frail = pop.frailty_at(apc["person"][s], apc["day"][s])
    s = s[(age >= 65) & (rng.random(s.size) < sigmoid(-2.6 + 0.9 * frail))]
    contacts = 3 + rng.poisson(5, s.size)
    p, d = _episodes(apc["person"][s], apc["discharge"][s] + rng.integers(0, 3, s.size),
                     contacts, 1, 3, rng)
    persons.append(p)
    days.append(d)
    services.append(np.full(p.size, 3))
    person = np.concatenate(persons)
    days_ = np.concatenate(days)
    service = np.concatenate(services)
    keep = (days_ <= np.minimum(pop.death_day[person], PERIOD_END)) & (days_ >= HISTORY_START)
    return {"person": person[keep], "day": days_[keep], "service": service[keep]}


# ------------------------------------------------------------------------------------------
# adult social care
# ------------------------------------------------------------------------------------------
SC_TYPES = ("home_care", "residential", "nursing", "reablement", "direct_payment", "day_care",
            "equipment", "other")
_SC_MIX = np.array([
    # home, resid, nursing, reabl, dp, day, equip, other
    [0.25, 0.05, 0.00, 0.05, 0.30, 0.20, 0.10, 0.05],   # under 65
    [0.30, 0.00, 0.00, 0.10, 0.05, 0.15, 0.30, 0.10],   # 65+, fit
    [0.45, 0.10, 0.00, 0.10, 0.05, 0.10, 0.15, 0.05],   # mild
    [0.40, 0.20, 0.10, 0.10, 0.00, 0.05, 0.10, 0.05],   # moderate
    [0.30, 0.25, 0.25, 0.05, 0.00, 0.00, 0.10, 0.05],   # severe
])
_SC_DURATION = np.array([500, 1100, 800, 42, 800, 400, 1, 200], dtype=float)
_SC_COST = np.array([[11000, 55000], [70000, 110000], [85000, 140000], [0, 0], [10000, 45000],
                     [4000, 16000], [0, 0], [2000, 20000]], dtype=float)


def _sc_band(age: np.ndarray, frail: np.ndarray) -> np.ndarray:
    band = 1 + (frail > 0.7) + (frail > 1.3) + (frail > 2.0)
    return np.where(age < 65, 0, band)


def social_care(pop: Population, apc: Rows, seed: int) -> Rows:
    """Council services: long-term support for the older and frailer, and reablement or a
    care home placement after some hospital discharges."""
    rng = pop.rng(seed, 15)
    last = np.clip(pop.year_of(np.minimum(pop.death_day, PERIOD_END)), 0, YEARS - 1)
    idx = np.arange(pop.n)
    frail = pop.frailty[idx, last]
    age = pop.age[idx, last]
    dementia = pop.onset[:, COND_INDEX["dementia"]] < PERIOD_END
    stroke = pop.onset[:, COND_INDEX["stroke"]] < PERIOD_END
    p = sigmoid(-5.1 + 1.7 * frail + 0.05 * np.clip(age - 65, 0, None)
                + 0.15 * (3 - pop.dep) + 0.6 * dementia + 0.3 * stroke)
    client = np.flatnonzero(rng.random(pop.n) < p)
    end_of = np.minimum(pop.death_day, PERIOD_END)
    lo = np.maximum(HISTORY_START - 730, pop.dob + 18 * 365)
    first = (lo[client] + rng.random(client.size)
             * np.clip(end_of[client] - lo[client], 0, None)).astype(np.int64)
    extra = np.minimum(rng.poisson(0.6 + 0.4 * frail[client]), 5)
    person = np.concatenate([client, np.repeat(client, extra)])
    later = np.repeat(first, extra) + (rng.random(extra.sum())
                                       * np.clip(np.repeat(end_of[client] - first, extra), 0,
                                                 None)).astype(np.int64)
    start = np.concatenate([first, later])
    band = _sc_band(pop.age_at(person, start), pop.frailty_at(person, start))
    stype = choose(rng, _SC_MIX[band])
    # after emergency discharges of people 65+: reablement, or a placement if discharged to
    # a care home
    s = np.flatnonzero((apc["kind"] == KIND_EMERGENCY) & (apc["discharge"] >= 0)
                       & (apc["destination"] != DEST["79"]))
    a_age = pop.age_at(apc["person"][s], apc["day"][s])
    a_frail = pop.frailty_at(apc["person"][s], apc["day"][s])
    to_home = np.isin(apc["destination"][s], [DEST["54"], DEST["65"]])
    take_ = (a_age >= 65) & ((rng.random(s.size) < sigmoid(-3.4 + 1.0 * a_frail)) | to_home)
    s, to_home = s[take_], to_home[take_]
    person = np.concatenate([person, apc["person"][s]])
    start = np.concatenate([start, apc["discharge"][s]])
    stype = np.concatenate([stype, np.where(to_home, np.where(rng.random(s.size) < 0.5, 1, 2),
                                            3)])
    person, start, stype = _after_discharge(pop, apc, seed, person, start, stype)
    n = person.size
    duration = rng.exponential(_SC_DURATION[stype])
    duration = np.where(stype == 3, rng.integers(10, 43, n), duration)
    end = (start + duration).astype(np.int64)
    death = pop.death_day[person]
    end = np.minimum(end, death)
    equipment = stype == 6
    end = np.where(equipment & (rng.random(n) < 0.6), -1, end)
    end = np.where(end > PERIOD_END, -1, end)
    keep = ((end < 0) | (end >= HISTORY_START)) & (start <= np.minimum(death, PERIOD_END))
    person, start, end, stype = person[keep], start[keep], end[keep], stype[keep]
    n = person.size
    lo_c, hi_c = _SC_COST[stype, 0], _SC_COST[stype, 1]
    cost = np.round(lo_c + rng.random(n) * (hi_c - lo_c), -1) / 100
    cost_null = (hi_c == 0) | (rng.random(n) < 0.08)
    return {"person": person, "day": start, "end": end, "stype": stype, "cost": cost,
            "cost_null": cost_null}


def _after_discharge(pop: Population, apc: Rows, seed: int,
                     person: np.ndarray, start: np.ndarray, stype: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """More pathways after emergency discharges of people 65+ (journeys after discharge):
    home care starting within a fortnight of a discharge home (a few already running before
    the admission restart the day after), and after a stay in a community hospital or
    intermediate care bed (destination 51), home care or a care home placement some weeks
    later. Drawn from a stream of their own."""
    extra = pop.rng(seed, 16)
    s = np.flatnonzero((apc["kind"] == KIND_EMERGENCY) & (apc["discharge"] >= 0))
    who, when = apc["person"][s], apc["discharge"][s]
    age, frail = pop.age_at(who, apc["day"][s]), pop.frailty_at(who, apc["day"][s])
    dest = apc["destination"][s]
    home = (dest == DEST["19"]) & (age >= 65) & (extra.random(s.size)
                                                  < sigmoid(-3.0 + 0.9 * frail))
    lag = np.where(extra.random(s.size) < 0.1, -extra.integers(1, 30, s.size),
                   extra.integers(1, 15, s.size))
    bedded = (dest == DEST["51"]) & (age >= 65) & (extra.random(s.size) < 0.6)
    later = when + extra.integers(14, 60, s.size)
    placed = extra.random(s.size) < sigmoid(-1.5 + 0.8 * frail)
    kind = np.where(placed, np.where(extra.random(s.size) < 0.5, 1, 2), 0)
    return (np.concatenate([person, who[home], who[bedded]]),
            np.concatenate([start, when[home] + lag[home], later[bedded]]),
            np.concatenate([stype, np.zeros(int(home.sum()), dtype=stype.dtype),
                            kind[bedded].astype(stype.dtype)]))
