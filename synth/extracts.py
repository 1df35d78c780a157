"""Render activity rows into contract-shaped extracts: text columns, ids, sort order, mess.

An `Extract` is one file to be written: its contract columns (pyarrow text arrays, null for
blank), the true person behind each row, and row facts kept for evaluation only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth import activity as act
from synth import primary as gp
from synth import render as r
from synth.names import (
    FEMALE_NAMES,
    FEMALE_OLDER,
    MALE_NAMES,
    MALE_OLDER,
    NICKNAMES,
    SURNAME_LIST,
)
from synth.population import AREAS, DAYS_PER_YEAR, PERIOD_END, Population

# contract column order, per source
COLUMNS: dict[str, tuple[str, ...]] = {
    "apc": ("spell_id", "nhs_number", "date_of_birth", "sex", "postcode", "gp_practice_code",
            "provider_code", "admission_date", "discharge_date", "admission_method",
            "discharge_destination", "primary_diagnosis", "secondary_diagnoses",
            "primary_procedure"),
    "ae": ("attendance_id", "nhs_number", "date_of_birth", "sex", "postcode",
           "gp_practice_code", "provider_code", "arrival_datetime", "arrival_mode", "acuity",
           "chief_complaint", "discharge_status"),
    "op": ("appointment_id", "nhs_number", "date_of_birth", "sex", "postcode",
           "gp_practice_code", "provider_code", "appointment_date", "attendance_status",
           "first_attendance", "treatment_function_code"),
    "gp_patients": ("nhs_number", "date_of_birth", "sex", "postcode", "gp_practice_code",
                    "registration_date"),
    "gp_events": ("nhs_number", "event_date", "code_system", "code", "event_type", "value"),
    "gp_medications": ("nhs_number", "issue_date", "bnf_code", "quantity"),
    "community": ("contact_id", "nhs_number", "date_of_birth", "sex", "postcode",
                  "gp_practice_code", "contact_date", "service"),
    "social_care": ("client_id", "nhs_number", "forename", "surname", "date_of_birth", "sex",
                    "postcode", "service_type", "start_date", "end_date", "weekly_cost",
                    "consent"),
    "deaths": ("nhs_number", "date_of_birth", "date_of_death"),
    "optouts": ("nhs_number", "optout_type", "effective_date", "withdrawn"),
}
SENDERS = {"apc": "RR8", "ae": "RR8", "op": "RR8", "community": "RY6", "gp_patients": "0AR",
           "gp_events": "0AR", "gp_medications": "0AR", "deaths": "X26", "optouts": "X26"}
PROVIDER = "RR8"
REJECT_RATE = 0.0005           # rows with a required date blank, in sources without a DOB


@dataclass
class Extract:
    """One file to write: contract columns as text, and the truth behind each row."""

    file: str
    source: str
    sender: str
    columns: dict[str, pa.Array]
    person: np.ndarray
    nhs_status: np.ndarray
    required_blank: np.ndarray
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.person.size)


def order_by(*keys: np.ndarray) -> np.ndarray:
    """Stable order by integer keys, first most significant (as np.lexsort, but faster:
    one combined key when the ranges allow)."""
    combined = np.zeros(keys[0].size, dtype=np.int64)
    span = 1
    for key in keys:
        key = np.asarray(key, dtype=np.int64)
        lo = int(key.min()) if key.size else 0
        width = (int(key.max()) - lo + 1) if key.size else 1
        span *= width
        if span >= 1 << 62:
            return np.lexsort(tuple(np.asarray(k) for k in reversed(keys)))
        combined = combined * width + (key - lo)
    return np.argsort(combined, kind="stable")


def _sorted(rows: act.Rows, *keys: str) -> act.Rows:
    """Rows ordered by keys (first key most significant); CSR-style keys are left alone."""
    order = order_by(*(rows[k] for k in keys))
    n = order.size
    return {k: (v[order] if isinstance(v, np.ndarray) and v.shape[:1] == (n,) else v)
            for k, v in rows.items()}


@dataclass
class Across:
    """What must stay distinct across the chunks of one population (generator.generate writes
    a population a chunk of persons at a time): the row ids of each file, which continue from
    one chunk to the next, and each council's client ids, which no two chunks share. A fresh
    one (the default everywhere) draws exactly what an unchunked population always drew."""

    next_id: dict[str, int] = field(default_factory=dict)
    clients_used: dict[str, np.ndarray] = field(default_factory=dict)

    def first_id(self, name: str, drawn: int, n: int) -> int:
        """The first of `n` row ids for `name`: `drawn` the first time, else where the last
        chunk's ids stopped."""
        start = self.next_id.get(name, drawn)
        self.next_id[name] = start + n
        return start

    def client_ids(self, council: str, space: int, count: int,
                   rng: np.random.Generator) -> np.ndarray:
        """`count` distinct client ids in [0, space) that no earlier chunk used (the first
        chunk's draw is rng.choice(space, count, replace=False), as it always was)."""
        used = self.clients_used.setdefault(council, np.zeros(space, dtype=bool))
        free = np.flatnonzero(~used)
        if count > free.size:
            raise ValueError(f"social care {council}: {count} more client ids needed, only "
                             f"{free.size} of {space} left; generate fewer persons")
        ids = free[rng.choice(free.size, size=count, replace=False)]
        used[ids] = True
        return ids


def _ids(rng: np.random.Generator, n: int, width: int, prefix: str = "",
         across: Across | None = None) -> pa.Array:
    base = int(rng.integers(10 ** (width - 4), 10 ** (width - 2)))
    if across is not None:
        base = across.first_id(f"{prefix}{width}", base, n)
    return r.integers(base + np.arange(n), width=width, prefix=prefix)


_ICD_TEXT = r.vocab(act.ICD10 + [c.replace(".", "") for c in act.ICD10])
_OPCS_TEXT = r.vocab(act.OPCS + [c.replace(".", "") for c in act.OPCS])


def apc(pop: Population, rows: act.Rows, seed: int,
        across: Across | None = None) -> Extract:
    rng = pop.rng(seed, 30)
    n = rows["person"].size
    order = order_by(rows["day"], rows["person"])
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    counts = np.diff(rows["secondary_offsets"])
    item_spell = np.repeat(np.arange(n), counts)
    item_order = np.argsort(position[item_spell], kind="stable")
    items = rows["secondary"][item_order]
    item_spell = position[item_spell[item_order]]
    offsets = np.concatenate([[0], np.cumsum(counts[order])])
    s = {k: v[order] for k, v in rows.items() if k not in ("secondary", "secondary_offsets")}
    undotted = (~s["dot"]).astype(np.int64)
    person_cols, facts = r.person_columns(pop, s["person"], s["day"], rng, r.HOSPITAL)
    cols = {
        "spell_id": _ids(rng, n, 12, across=across),
        **person_cols,
        "provider_code": r.constant(PROVIDER, n),
        "admission_date": r.dates(s["day"]),
        "discharge_date": r.dates(s["discharge"], null=s["discharge"] < 0),
        "admission_method": r.take(r.vocab(act.METHODS), s["method"]),
        "discharge_destination": r.take(r.vocab(act.DESTINATIONS), s["destination"]),
        "primary_diagnosis": r.take(_ICD_TEXT, s["primary"] + len(act.ICD10) * undotted),
        "secondary_diagnoses": r.lists(offsets, r.take(
            _ICD_TEXT, items + len(act.ICD10) * undotted[item_spell])),
        "primary_procedure": r.take(_OPCS_TEXT, np.maximum(s["procedure"], 0)
                                    + len(act.OPCS) * undotted, null=s["procedure"] < 0),
    }
    return Extract("apc.csv", "apc", SENDERS["apc"], cols, s["person"], facts["nhs_status"],
                   facts["required_blank"])


def ae(pop: Population, rows: act.Rows, seed: int,
       across: Across | None = None) -> Extract:
    rng = pop.rng(seed, 31)
    s = _sorted(rows, "seconds", "person")
    n = s["person"].size
    person_cols, facts = r.person_columns(pop, s["person"], s["day"], rng, r.HOSPITAL)
    complaint_codes = r.vocab([act.codes.COMPLAINT[k] for k in act.COMPLAINTS])
    cols = {
        "attendance_id": _ids(rng, n, 10, prefix="ED", across=across),
        **person_cols,
        "provider_code": r.constant(PROVIDER, n),
        "arrival_datetime": r.datetimes(s["seconds"]),
        "arrival_mode": r.take(r.vocab(act.AE_MODES), s["mode"]),
        "acuity": r.integers(s["acuity"], null=s["acuity"] == 0),
        "chief_complaint": r.take(complaint_codes, np.maximum(s["complaint"], 0),
                                  null=s["complaint"] < 0),
        "discharge_status": r.take(r.vocab(act.AE_STATUS), s["status"]),
    }
    return Extract("ae.csv", "ae", SENDERS["ae"], cols, s["person"], facts["nhs_status"],
                   facts["required_blank"])


def op(pop: Population, rows: act.Rows, seed: int,
       across: Across | None = None) -> Extract:
    rng = pop.rng(seed, 32)
    s = _sorted(rows, "day", "person")
    n = s["person"].size
    person_cols, facts = r.person_columns(pop, s["person"], s["day"], rng, r.HOSPITAL)
    cols = {
        "appointment_id": _ids(rng, n, 10, prefix="OP", across=across),
        **person_cols,
        "provider_code": r.constant(PROVIDER, n),
        "appointment_date": r.dates(s["day"]),
        "attendance_status": r.take(r.vocab(act.OP_STATUS), s["status"]),
        "first_attendance": r.take(r.vocab(["2", "1"]), s["first"].astype(np.int64)),
        "treatment_function_code": r.take(r.vocab(act.TFCS), s["tfc"]),
    }
    return Extract("op.csv", "op", SENDERS["op"], cols, s["person"], facts["nhs_status"],
                   facts["required_blank"])


def community(pop: Population, rows: act.Rows, seed: int,
              across: Across | None = None) -> Extract:
    rng = pop.rng(seed, 33)
    s = _sorted(rows, "day", "person")
    n = s["person"].size
    person_cols, facts = r.person_columns(pop, s["person"], s["day"], rng, r.HOSPITAL)
    cols = {
        "contact_id": _ids(rng, n, 10, prefix="RY6", across=across),
        **person_cols,
        "contact_date": r.dates(s["day"]),
        "service": r.take(r.vocab(act.SERVICES), s["service"]),
    }
    return Extract("community.csv", "community", SENDERS["community"], cols, s["person"],
                   facts["nhs_status"], facts["required_blank"])


def gp_patients(pop: Population, seed: int) -> Extract:
    rng = pop.rng(seed, 34)
    person = order_by(pop.practice, pop.nhs)
    last = np.minimum(pop.death_day[person], PERIOD_END)
    person_cols, facts = r.person_columns(pop, person, last, rng, r.GP)
    cols = {**person_cols, "registration_date": r.dates(pop.registration[person])}
    return Extract("gp_patients.csv", "gp_patients", SENDERS["gp_patients"], cols, person,
                   facts["nhs_status"], facts["required_blank"])


def _required_nhs(pop: Population, person: np.ndarray) -> pa.Array:
    return r.nhs_plain(pop, person)


def gp_events(pop: Population, rows: act.Rows, seed: int) -> Extract:
    rng = pop.rng(seed, 35)
    s = _sorted(rows, "person", "day")
    n = s["person"].size
    blank = rng.random(n) < REJECT_RATE
    value = s["value"]
    missing = np.isnan(value)
    value = np.where(missing, 0, value)
    text = pc.if_else(pa.array(s["decimals"] > 0), r.decimals(value, 1, null=missing),
                      r.integers(np.rint(value), null=missing))
    cols = {
        "nhs_number": _required_nhs(pop, s["person"]),
        "event_date": r.dates(s["day"], null=blank),
        "code_system": r.take(r.vocab(["snomed", "icd10"]), s["icd10"].astype(np.int64)),
        "code": r.take(r.vocab(gp.EVENT_CODES), s["code"]),
        "event_type": r.take(r.vocab(["diagnosis", "observation"]),
                             s["observation"].astype(np.int64)),
        "value": text,
    }
    return Extract("gp_events.csv", "gp_events", SENDERS["gp_events"], cols, s["person"],
                   np.zeros(n, np.int8), blank)


def gp_medications(pop: Population, rows: act.Rows, seed: int) -> Extract:
    rng = pop.rng(seed, 36)
    s = _sorted(rows, "person", "day")
    n = s["person"].size
    blank = rng.random(n) < REJECT_RATE
    cols = {
        "nhs_number": _required_nhs(pop, s["person"]),
        "issue_date": r.dates(s["day"], null=blank),
        "bnf_code": r.take(r.vocab(gp.BNF_CODES), s["bnf"]),
        "quantity": r.integers(s["quantity"], null=s["quantity_null"]),
    }
    return Extract("gp_medications.csv", "gp_medications", SENDERS["gp_medications"], cols,
                   s["person"], np.zeros(n, np.int8), blank)


def deaths(pop: Population, rows: act.Rows, seed: int) -> Extract:
    rng = pop.rng(seed, 37)
    s = _sorted(rows, "day", "person")
    n = s["person"].size
    dob, _ = r.dob_column(pop, s["person"], rng, r.Mess(dob_swap=0.005, dob_blank=0.03))
    cols = {"nhs_number": _required_nhs(pop, s["person"]), "date_of_birth": dob,
            "date_of_death": r.dates(s["day"])}
    return Extract("deaths.csv", "deaths", SENDERS["deaths"], cols, s["person"],
                   np.zeros(n, np.int8), np.zeros(n, bool))


def optouts(pop: Population, rows: act.Rows, seed: int,
            council_of: dict[int, str] | None = None) -> list[Extract]:
    """National data opt-outs and type 1 objections from the national register (`optouts.csv`);
    each council's consent withdrawals from that council (`optouts_<council>.csv`), since only
    a council may assert them (policies/optout_senders.csv). `council_of`: the council whose
    social care file holds each person; a withdrawal goes to that council."""
    rng = pop.rng(seed, 38)
    s = _sorted(rows, "day", "person")
    n = s["person"].size
    blank = rng.random(n) < REJECT_RATE
    cols = {"nhs_number": _required_nhs(pop, s["person"]),
            "optout_type": r.take(r.vocab(gp.OPTOUT_TYPES), s["kind"]),
            "effective_date": r.dates(s["day"], null=blank),
            "withdrawn": r.take(r.vocab(["N", "Y"]), s["withdrawn"].astype(np.int64))}
    consent = s["kind"] == gp.OPTOUT_TYPES.index("consent_withdrawn")
    owner = np.array([(council_of or {}).get(int(p), "") for p in s["person"]], dtype=object)
    senders = [(SENDERS["optouts"], "optouts.csv", ~consent)] + [
        (c, f"optouts_{c}.csv", consent & (owner == c)) for c in sorted(set(owner[consent]))
        if c]
    out = []
    for sender, file, mask in senders:
        if sender != SENDERS["optouts"] and not mask.any():
            continue
        keep = pa.array(mask)
        out.append(Extract(file, "optouts", sender, {k: v.filter(keep) for k, v in cols.items()},
                           s["person"][mask], np.zeros(int(mask.sum()), np.int8), blank[mask]))
    return out


# ------------------------------------------------------------------------------------------
# social care: one file per council, names and council client ids
# ------------------------------------------------------------------------------------------
_VOWELS = "aeiou"


def _typo(name: str, kind: int, pos: int, letter: int) -> str:
    """A keying error in a name: drop, double, swap or replace one letter."""
    if len(name) < 3:
        return name + name[-1]
    i = 1 + pos % (len(name) - 2)
    if kind == 0:
        return name[:i] + name[i + 1:]
    if kind == 1:
        return name[:i] + name[i] + name[i:]
    if kind == 2:
        return name[:i] + name[i + 1] + name[i] + name[i + 2:]
    return name[:i] + _VOWELS[letter % 5] + name[i + 1:]


def _zipf(rng: np.random.Generator, size: int, n: int, power: float = 1.1) -> np.ndarray:
    w = 1 / (np.arange(size) + 8.0) ** power
    return rng.choice(size, n, p=w / w.sum())


def _names(pop: Population, person: np.ndarray, seed: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Forename (by sex and birth era) and surname of each row's person, fixed per person."""
    people, inverse = np.unique(person, return_inverse=True)
    rng = pop.rng(seed, 39)
    k = people.size
    born = 1970 + pop.dob[people] / DAYS_PER_YEAR
    modern = rng.random(k) < 1 / (1 + np.exp(-(born - 1988) / 6))
    fore = np.empty(k, dtype=object)
    for is_male, recent, older in ((True, MALE_NAMES, MALE_OLDER),
                                   (False, FEMALE_NAMES, FEMALE_OLDER)):
        for is_modern, names in ((True, recent), (False, older)):
            mask = ((pop.sex[people] == 1) == is_male) & (modern == is_modern)
            fore[mask] = np.array(names, dtype=object)[_zipf(rng, len(names), int(mask.sum()),
                                                             0.8)]
    surname = np.array(SURNAME_LIST, dtype=object)[_zipf(rng, len(SURNAME_LIST), k)]
    return fore[inverse], surname[inverse]


def _name_variants(fore: np.ndarray, sur: np.ndarray, rng: np.random.Generator
                   ) -> tuple[list[str], list[str]]:
    """~5% of rows: nickname, typo, hyphenated surname; ~2% surname in capitals."""
    n = fore.size
    fore, sur = fore.copy(), sur.copy()
    vary = np.flatnonzero(rng.random(n) < 0.05)
    kind = rng.integers(0, 4, vary.size)
    pos = rng.integers(0, 1000, (vary.size, 3))
    other = np.array(SURNAME_LIST, dtype=object)[rng.integers(0, len(SURNAME_LIST),
                                                              vary.size)]
    for j, i in enumerate(vary):
        k = int(kind[j])
        if k == 0 and fore[i] in NICKNAMES:
            options = NICKNAMES[fore[i]]
            fore[i] = options[int(pos[j, 0]) % len(options)]
        elif k in (0, 1):
            fore[i] = _typo(fore[i], int(pos[j, 0]) % 4, int(pos[j, 1]), int(pos[j, 2]))
        elif k == 2:
            sur[i] = _typo(sur[i], int(pos[j, 0]) % 4, int(pos[j, 1]), int(pos[j, 2]))
        else:
            sur[i] = f"{sur[i]}-{other[j]}" if pos[j, 0] % 2 else f"{other[j]}-{sur[i]}"
    caps = np.flatnonzero(rng.random(n) < 0.02)
    for i in caps:
        sur[i] = sur[i].upper()
    return fore.tolist(), sur.tolist()


def social_care(pop: Population, rows: act.Rows, seed: int,
                across: Across | None = None) -> list[Extract]:
    """One extract per council; rows for people living outside both councils are not sent.
    `across`: client ids already given to earlier chunks' persons (none by default)."""
    rng = pop.rng(seed, 40)
    area = r.area_on(pop, rows["person"], rows["day"])
    out = []
    councils = [(a, code) for a, (_, _, code) in enumerate(AREAS) if code]
    for a, council in councils:
        s = {k: v[area == a] for k, v in rows.items()}
        people, inverse = np.unique(s["person"], return_inverse=True)
        width = 7 if a == 0 else 6
        # Leeds ids are 7 digits, often with leading zeros; Wakefield's are W + 6 digits
        ids = (across or Across()).client_ids(council, 2 * 10**6 if a == 0 else 10**6,
                                              2 * people.size, rng)
        dup = (rng.random(people.size) < 0.01)[inverse] & (rng.random(inverse.size) < 0.5)
        client = np.where(dup, ids[people.size + inverse], ids[inverse])
        consent_no = (rng.random(people.size) < 0.03)[inverse]
        s["client"] = client
        s["consent_no"] = consent_no
        s = _sorted(s, "day", "client")
        person_cols, facts = r.person_columns(
            pop, s["person"], s["day"], rng, r.SOCIAL,
            fields=("nhs_number", "date_of_birth", "sex", "postcode"))
        fore, sur = _names(pop, s["person"], seed)
        fore_l, sur_l = _name_variants(fore, sur, rng)
        cols = {
            "client_id": r.integers(s["client"], width=width, prefix="" if a == 0 else "W"),
            "nhs_number": person_cols["nhs_number"],
            "forename": pa.array(fore_l, type=pa.string()),
            "surname": pa.array(sur_l, type=pa.string()),
            "date_of_birth": person_cols["date_of_birth"],
            "sex": person_cols["sex"],
            "postcode": person_cols["postcode"],
            "service_type": r.take(r.vocab(act.SC_TYPES), s["stype"]),
            "start_date": r.dates(s["day"]),
            "end_date": r.dates(s["end"], null=s["end"] < 0),
            "weekly_cost": r.decimals(s["cost"], 2, null=s["cost_null"]),
            "consent": r.take(r.vocab(["Y", "N"]), s["consent_no"].astype(np.int64)),
        }
        out.append(Extract(f"social_care_{council}.csv", "social_care", council, cols,
                           s["person"], facts["nhs_status"], facts["required_blank"],
                           {"consent_no": s["consent_no"]}))
    return out
