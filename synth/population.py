"""The synthetic population: who people are, their conditions, frailty, latent risk and deaths.

Time runs in four years Y0..Y3 (1 April to 31 March): Y0-Y2 are the history, Y3 the outcome
year. For every person alive in year y (exposure from max(year start, birth) to min(year end,
death)) the generator fixes, at the start of the year:

* conditions_y: long-term conditions with onset before the year start;
* frailty f_y = softplus((age_y - 78) / 7 + sum_c w_c * conditions_y[c] + 0.6 * z - 0.5),
  z ~ N(0, 1) a person's lasting frailty tendency (recorded only through its manifestations);
* the emergency admission rate (per year)
      lambda_y = exp(eta_y + u + v_y),
      eta_y = B0 + g(age_y) + sex + deprivation + sum_c b_c * conditions_y[c] + B_F * f_y,
  u ~ N(-S_U^2 / 2, S_U^2) person-level noise (lasting, never recorded; S_U = 0.8 unless
  `build(..., s_u=)` asks for another spread),
  v_y ~ N(-S_V^2 / 2, S_V^2) person-year noise (never recorded);
* the death hazard (per year) h_y = exp(d_y + D_U * u), d_y from age (Gompertz), conditions
  and frailty.

Within a year, death time T ~ Exponential(h_y); emergency admissions are a Poisson process of
rate lambda_y on [start, min(T, year end)); a person who dies that year dies in hospital with
probability P_HOSP, in which case a terminal emergency admission (admitted at most a few days
before death, never before the year start) ends in the death. Nothing happens after death.

Hence, for a person alive at the score date (start of Y3), with L = length of Y3 in years,
a = lambda_3 and h = h_3:

    true_risk = P(>= 1 emergency admission in Y3)
              = 1 - [exp(-(a + h) L) + (1 - P_HOSP) * h / (a + h) * (1 - exp(-(a + h) L))]

observable_risk is the same expression averaged over the prior of the unrecorded noise
(u, v_3) by Gauss-Hermite quadrature, with everything else (age, sex, deprivation, conditions,
frailty) fixed at the person's values: what a model could know from perfect recording of the
covariates without the person's own noise. Past activity is driven by the same u, so a model
using history can move towards true_risk. People who died before the score date have both
risks 0 and alive_at_score_date False.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synth import nhs
from synth.codes import CONDITIONS

EPOCH = np.datetime64("1970-01-01", "D")


def day(iso: str) -> int:
    """Days since 1970-01-01 of an ISO date."""
    return int((np.datetime64(iso, "D") - EPOCH).astype(np.int64))


HISTORY_START = day("2022-04-01")
SCORE_DATE = day("2025-04-01")
PERIOD_END = day("2026-03-31")
YEAR_STARTS = np.array([day("2022-04-01"), day("2023-04-01"), day("2024-04-01"),
                        day("2025-04-01"), day("2026-04-01")], dtype=np.int64)
YEARS = 4
NEVER = 10**7                      # a day number after everything (no death, no onset)
DAYS_PER_YEAR = 365.25

# emergency admission model
B0 = -3.35
AGE_KNOTS = (0, 1, 5, 15, 20, 30, 45, 60, 70, 80, 90, 105)
AGE_EFFECT = (0.9, 0.2, -0.5, -0.5, -0.1, -0.1, 0.0, 0.15, 0.35, 0.65, 0.95, 1.1)
B_MALE = 0.05
B_DEPRIVATION = 0.09               # per quintile more deprived than 5 (least deprived)
B_F = 0.45
S_U = 0.8
S_V = 0.35
# death model
D0 = -3.3
D_AGE = 0.092
D_U = 0.3
P_HOSP = 0.45
FRAIL_OFFSET = -0.5

# age structure: 5-year bands 0-4 ... 85-89, then 90+ (thousands, England mid-2022-like)
BAND_SIZES = (3200, 3450, 3550, 3350, 3550, 3800, 3950, 3850, 3650, 3550, 3900, 3850, 3350,
              2900, 2850, 2200, 1450, 850, 560)
BAND_MALE = (0.512, 0.512, 0.512, 0.513, 0.51, 0.50, 0.50, 0.50, 0.50, 0.495, 0.495, 0.49,
             0.49, 0.48, 0.475, 0.46, 0.44, 0.40, 0.32)
DEP_SLOPE = {"diabetes": 0.15, "copd": 0.25, "asthma": 0.08, "heart_failure": 0.12,
             "chd": 0.15, "af": 0.02, "hypertension": 0.08, "ckd": 0.08, "dementia": 0.05,
             "depression": 0.15, "cancer": 0.02, "stroke": 0.12}

# areas: postcode districts, the council that serves them (None: not sending) and the practices
AREAS = (("LS", 29, "E08000035"), ("WF", 17, "E08000036"), ("BD", 24, None), ("HX", 7, None))
INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"


@dataclass(frozen=True)
class Practice:
    code: str
    area: int
    districts: tuple[tuple[int, int], ...]   # (area, district number)
    weights: tuple[float, ...]
    deprivation: float
    size: float


def practices() -> tuple[Practice, ...]:
    """25 practices (18 in Leeds, 7 in Wakefield), fixed whatever the seed."""
    rng = np.random.default_rng(20220401)
    out = []
    codes = set()
    for i in range(25):
        area = 0 if i < 18 else 1
        prefix = "B86" if area == 0 else "B87"
        while True:
            code = f"{prefix}{rng.integers(1, 700):03d}"
            if code not in codes:
                codes.add(code)
                break
        top = AREAS[area][1]
        picks = rng.choice(np.arange(1, top + 1), size=3, replace=False)
        districts = [(area, int(p)) for p in picks]
        weights = [0.5, 0.3, 0.2]
        if i in (3, 11):                      # practices near Bradford
            districts.append((2, int(rng.integers(1, 25))))
            weights = [0.4, 0.25, 0.15, 0.2]
        if i == 21:                           # near Calderdale
            districts.append((3, int(rng.integers(1, 8))))
            weights = [0.4, 0.25, 0.15, 0.2]
        out.append(Practice(code, area, tuple(districts), tuple(weights),
                            float(rng.uniform(1.3, 4.7)), float(rng.lognormal(0, 0.45))))
    return tuple(out)


@dataclass
class Population:
    """Every person-level array the extracts are drawn from (index = person id)."""

    n: int
    nhs: np.ndarray            # int64, valid 999-range
    sex: np.ndarray            # int8 1 male, 2 female
    dob: np.ndarray            # int64 day
    dep: np.ndarray            # int8 quintile, 1 most deprived
    practice: np.ndarray       # int16 index into PRACTICES
    district: np.ndarray       # (n, 2) int16 index into DISTRICTS: before / after a move
    inward: np.ndarray         # (n, 2) int16: inward code digit*400 + letters
    move_day: np.ndarray       # int64 day of the move, NEVER if none
    onset: np.ndarray          # (n, C) int64 onset day, NEVER if none
    variant: np.ndarray        # (n, C) int8 which code variant a person's record uses
    z: np.ndarray              # lasting frailty tendency
    u: np.ndarray              # person-level noise on the emergency rate
    v: np.ndarray              # (n, 4) person-year noise
    age: np.ndarray            # (n, 4) age at exposure start
    frailty: np.ndarray        # (n, 4)
    lam: np.ndarray            # (n, 4) emergency admission rate per year
    hazard: np.ndarray         # (n, 4) death hazard per year
    start: np.ndarray          # (n, 4) exposure start (day, float)
    exposure: np.ndarray       # (n, 4) days exposed
    death_t: np.ndarray        # float day of death, inf if none
    death_day: np.ndarray      # int64 day, NEVER if none
    hosp_death: np.ndarray     # bool: died in hospital (terminal emergency admission)
    ed_death: np.ndarray       # bool: died in the emergency department
    registration: np.ndarray   # int64 day registered with the practice
    true_risk: np.ndarray
    observable_risk: np.ndarray
    cache: dict[str, Any] = field(default_factory=dict)   # rendered text, made once
    s_u: float = S_U           # the spread of the persistent person-level effect u
    part: int = 0              # which chunk of the population these persons are (0: first)

    def rng(self, seed: int, stream: int) -> np.random.Generator:
        """The random stream `stream` for this chunk of persons (see `stream_rng`)."""
        return stream_rng(seed, stream, self.part)

    def conditions_at(self, persons: np.ndarray, days: np.ndarray) -> np.ndarray:
        """(rows, C) bool: conditions diagnosed before each row's day."""
        return self.onset[persons] < np.asarray(days)[:, None]

    def age_at(self, persons: np.ndarray, days: np.ndarray) -> np.ndarray:
        return (np.asarray(days) - self.dob[persons]) / DAYS_PER_YEAR

    def year_of(self, days: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(YEAR_STARTS, days, side="right") - 1, 0, YEARS - 1)

    def frailty_at(self, persons: np.ndarray, days: np.ndarray) -> np.ndarray:
        return self.frailty[persons, self.year_of(days)]


PRACTICES = practices()
DISTRICTS: tuple[str, ...] = tuple(f"{p}{k}" for p, top, _ in AREAS for k in range(1, top + 1))
DISTRICT_AREA = np.array([a for a, (_, top, _) in enumerate(AREAS) for _ in range(top)])
_DISTRICT_INDEX = {d: i for i, d in enumerate(DISTRICTS)}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


COND_FRAILTY = np.array([c.frailty_weight for c in CONDITIONS])
COND_EMERGENCY = np.array([c.emergency_log_rr for c in CONDITIONS])
COND_DEATH = np.array([c.death_log_hr for c in CONDITIONS])


def frailty_of(age: np.ndarray, conditions: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Latent frailty from age, conditions (bool matrix) and the lasting tendency z."""
    return _softplus((age - 78.0) / 7.0 + conditions @ COND_FRAILTY + 0.6 * z + FRAIL_OFFSET)


def emergency_eta(age: np.ndarray, sex: np.ndarray, dep: np.ndarray, conditions: np.ndarray,
                  frailty: np.ndarray) -> np.ndarray:
    """Log emergency admission rate per year without the noise terms."""
    return (B0 + np.interp(age, AGE_KNOTS, AGE_EFFECT) + B_MALE * (sex == 1)
            + B_DEPRIVATION * (5 - dep) + conditions @ COND_EMERGENCY + B_F * frailty)


def death_eta(age: np.ndarray, conditions: np.ndarray, frailty: np.ndarray) -> np.ndarray:
    """Log death hazard per year without the person noise."""
    infant = np.where(age < 1, 1.2, 0.0)
    return (D0 + D_AGE * (np.minimum(age, 105) - 80) + infant + conditions @ COND_DEATH
            + 0.35 * frailty) - 0.3


def any_admission_probability(lam: np.ndarray, hazard: np.ndarray,
                              length: float) -> np.ndarray:
    """P(>= 1 emergency admission in a year of `length` years) under the death/terminal model."""
    total = lam + hazard
    survive_all = np.exp(-total * length)
    died_first = np.where(total > 0, hazard / np.where(total > 0, total, 1.0), 0.0) \
        * (1 - survive_all)
    return 1 - (survive_all + (1 - P_HOSP) * died_first)


def observable_probability(eta_lam: np.ndarray, eta_death: np.ndarray, length: float,
                           nodes: int = 12, s_u: float = S_U) -> np.ndarray:
    """any_admission_probability averaged over the priors of u (spread `s_u`) and v
    (Gauss-Hermite)."""
    x, w = np.polynomial.hermite.hermgauss(nodes)
    w = w / np.sqrt(np.pi)
    u_nodes = -s_u**2 / 2 + s_u * np.sqrt(2) * x
    v_nodes = -S_V**2 / 2 + S_V * np.sqrt(2) * x
    out = np.zeros_like(eta_lam)
    for ui, wu in zip(u_nodes, w, strict=True):
        hazard = np.exp(eta_death + D_U * ui)
        for vi, wv in zip(v_nodes, w, strict=True):
            out += wu * wv * any_admission_probability(np.exp(eta_lam + ui + vi), hazard,
                                                       length)
    return out


def ages_and_sex(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Age at the score date (years, continuous) and sex, from the pyramid."""
    sizes = np.array(BAND_SIZES, dtype=float)
    band = rng.choice(sizes.size, size=n, p=sizes / sizes.sum())
    age = band * 5 + rng.random(n) * 5
    old = band == sizes.size - 1
    age[old] = 90 + np.minimum(rng.exponential(3.5, old.sum()), 15) + rng.random(old.sum())
    male = rng.random(n) < np.array(BAND_MALE)[band]
    return age, np.where(male, 1, 2).astype(np.int8)


def _places(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Practice, deprivation, postcode district and inward code per person, with moves."""
    sizes = np.array([p.size for p in PRACTICES])
    practice = rng.choice(len(PRACTICES), size=n, p=sizes / sizes.sum()).astype(np.int16)
    depmean = np.array([p.deprivation for p in PRACTICES])[practice]
    dep = np.clip(np.rint(depmean + rng.normal(0, 1.0, n)), 1, 5).astype(np.int8)
    # district from the practice's catchment
    width = max(len(p.districts) for p in PRACTICES)
    table = np.zeros((len(PRACTICES), width), dtype=np.int16)
    cum = np.ones((len(PRACTICES), width))
    for i, p in enumerate(PRACTICES):
        idx = [_DISTRICT_INDEX[f"{AREAS[a][0]}{k}"] for a, k in p.districts]
        table[i, :len(idx)] = idx
        table[i, len(idx):] = idx[-1]
        cum[i, :len(idx)] = np.cumsum(p.weights)
    pick = (rng.random(n)[:, None] > cum[practice]).sum(axis=1)
    first = table[practice, np.minimum(pick, width - 1)]
    moved = rng.random(n) < 0.08
    move_day = np.where(moved, rng.integers(HISTORY_START + 30, PERIOD_END - 30, n), NEVER)
    pick2 = (rng.random(n)[:, None] > cum[practice]).sum(axis=1)
    second = np.where(moved, table[practice, np.minimum(pick2, width - 1)], first)
    inward = rng.integers(0, 4000, size=(n, 2)).astype(np.int16)
    inward[:, 1] = np.where(moved, inward[:, 1], inward[:, 0])
    return {"practice": practice, "dep": dep, "district": np.stack([first, second], axis=1),
            "inward": inward, "move_day": move_day.astype(np.int64)}


def _conditions(dob: np.ndarray, sex: np.ndarray, dep: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Onset day per condition (NEVER if none), from prevalence at the period end."""
    n = dob.size
    age_end = (PERIOD_END - dob) / DAYS_PER_YEAR
    morbidity = rng.normal(0, 0.6, n)
    onset = np.full((n, len(CONDITIONS)), NEVER, dtype=np.int64)
    for j, c in enumerate(CONDITIONS):
        logit = (np.interp(age_end, c.prev_ages, _logit(np.array(c.prev)))
                 + c.male_log_odds * ((sex == 1) - 0.5) + DEP_SLOPE[c.name] * (3 - dep)
                 + morbidity - 0.15)
        has = rng.random(n) < 1 / (1 + np.exp(-logit))
        earliest = dob + c.min_onset_age * DAYS_PER_YEAR
        has &= earliest < PERIOD_END
        since = rng.exponential(c.mean_duration * DAYS_PER_YEAR, n)
        day_ = PERIOD_END - since
        early = day_ < earliest
        day_ = np.where(early, earliest + rng.random(n) * (PERIOD_END - earliest), day_)
        onset[has, j] = day_[has].astype(np.int64)
    variant = rng.integers(0, 100, size=onset.shape).astype(np.int8)
    return onset, variant


def stream_rng(seed: int, stream: int, part: int = 0) -> np.random.Generator:
    """Random stream `stream` of chunk `part`: chunk 0 draws exactly what an unchunked
    population always drew ([seed, stream]); later chunks have streams of their own
    ([seed, stream, part], never equal to a two-word seed since part >= 1, for seeds below
    2**32, which numpy's SeedSequence takes as one word)."""
    if part < 0:
        raise ValueError(f"part (chunk number) must be >= 0, not {part}")
    return np.random.default_rng([seed, stream] if part == 0 else [seed, stream, part])


def build(n: int, seed: int, s_u: float = S_U, *, part: int = 0,
          numbers: np.ndarray | None = None) -> Population:
    """Draw the population and its latent trajectories through the four years.

    `s_u` is the spread of the persistent person-level effect u (default S_U, the standard
    population); a larger one makes more of each person's risk persist from year to year
    unrecorded, so that only their history reveals it. The random streams do not depend on
    it: only u (and what it drives) changes.

    `part` numbers a chunk of a population built a chunk at a time (its own random streams,
    `stream_rng`); `numbers` are its persons' NHS numbers, allocated once for the whole
    population so that they stay distinct across chunks (default: allocated here for `n`)."""
    if not 0 <= s_u <= 3:
        raise ValueError(f"s_u (persistent effect spread) must be within 0-3, not {s_u}")
    rng = stream_rng(seed, 1, part)
    age_score, sex = ages_and_sex(n, rng)
    dob = (SCORE_DATE - age_score * DAYS_PER_YEAR).astype(np.int64)
    places = _places(n, rng)
    dep = places["dep"]
    if numbers is None:
        numbers = nhs.allocate(n, stream_rng(seed, 2))
    elif numbers.size != n:
        raise ValueError(f"numbers: {numbers.size} NHS numbers for {n} persons")
    onset, variant = _conditions(dob, sex, dep, stream_rng(seed, 3, part))

    rng = stream_rng(seed, 4, part)
    z = rng.normal(0, 1, n)
    u = rng.normal(-s_u**2 / 2, s_u, n)
    v = rng.normal(-S_V**2 / 2, S_V, (n, YEARS))
    age = np.zeros((n, YEARS))
    frailty = np.zeros((n, YEARS))
    lam = np.zeros((n, YEARS))
    hazard = np.zeros((n, YEARS))
    start = np.zeros((n, YEARS))
    exposure = np.zeros((n, YEARS))
    death_t = np.full(n, np.inf)
    eta_l3 = eta_d3 = np.zeros(n)
    for y in range(YEARS):
        begin, end = YEAR_STARTS[y], YEAR_STARTS[y + 1]
        start[:, y] = np.maximum(begin, dob)
        age[:, y] = (start[:, y] - dob) / DAYS_PER_YEAR
        cond = (onset < begin).astype(float)
        frailty[:, y] = frailty_of(age[:, y], cond, z)
        eta_l = emergency_eta(age[:, y], sex, dep, cond, frailty[:, y])
        eta_d = death_eta(age[:, y], cond, frailty[:, y])
        lam[:, y] = np.exp(eta_l + u + v[:, y])
        hazard[:, y] = np.exp(eta_d + D_U * u)
        alive = (death_t > start[:, y]) & (dob < end)
        when = start[:, y] + rng.exponential(1.0, n) / hazard[:, y] * DAYS_PER_YEAR
        dies = alive & (when < end)
        death_t[dies] = when[dies]
        exposure[:, y] = np.where(alive, np.clip(np.minimum(death_t, end) - start[:, y], 0,
                                                 None), 0.0)
        if y == YEARS - 1:
            eta_l3, eta_d3 = eta_l, eta_d
    died = np.isfinite(death_t)
    death_day = np.where(died, np.floor(np.where(died, death_t, 0)), NEVER).astype(np.int64)
    onset = np.where(onset > death_day[:, None], NEVER, onset)
    hosp_death = died & (rng.random(n) < P_HOSP)
    ed_death = died & ~hosp_death & (rng.random(n) < 0.03)

    length = (YEAR_STARTS[4] - YEAR_STARTS[3]) / DAYS_PER_YEAR
    alive_score = death_t > SCORE_DATE
    true_risk = np.where(alive_score, any_admission_probability(lam[:, 3], hazard[:, 3],
                                                                length), 0.0)
    observable = np.where(alive_score, observable_probability(eta_l3, eta_d3, length,
                                                              s_u=s_u), 0.0)

    # registration with the practice: from birth for the young, else years before; some joined
    # during the period (moved into the area)
    since = rng.exponential(12 * DAYS_PER_YEAR, n)
    registration = np.maximum(PERIOD_END - 200 - since, dob + rng.integers(7, 60, n))
    joined = rng.random(n) < 0.06
    registration = np.where(joined, np.maximum(dob, rng.integers(HISTORY_START, PERIOD_END - 60,
                                                                 n)), registration)
    registration = np.minimum(registration, np.minimum(death_day, PERIOD_END)).astype(np.int64)

    return Population(
        n=n, nhs=numbers, sex=sex, dob=dob, dep=dep, practice=places["practice"],
        district=places["district"], inward=places["inward"], move_day=places["move_day"],
        onset=onset, variant=variant, z=z, u=u, v=v, age=age, frailty=frailty, lam=lam,
        hazard=hazard, start=start, exposure=exposure, death_t=death_t, death_day=death_day,
        hosp_death=hosp_death, ed_death=ed_death, registration=registration,
        true_risk=true_risk, observable_risk=observable, s_u=s_u, part=part)
