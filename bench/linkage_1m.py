"""The 1,000,000 x 1,000,000 person-file linkage benchmark: Haven (keyed encodings) vs Splink.

Two person files are generated deterministically from `--seed` (vectorised numpy; every value
synthetic), written as all-text CSV, then linked in the same run by
* Haven (keyed encodings only, fresh key, ECM): `linkage.link_files.link_files`, the code of
  `haven link-files`, with its default blocking passes. It plans blocking on the whole files,
  then scores the left file in partitions of about 4M candidate pairs, two at a time in
  threads (2 cores);
* Splink (DuckDB backend, plaintext; the `bench` extra; written against Splink 4's API, run
  with the installed 5.0), a standard setup: NameComparison on forename and surname (term
  frequency adjusted), DateOfBirthComparison, PostcodeComparison, ExactMatch on sex; blocking
  on date of birth, surname + forename initial + birth year, forename + surname initial + birth
  year, postcode; prior from a deterministic rule (recall 0.7), u by random sampling (1e7
  pairs), EM blocked on forename + surname and on date of birth, as Splink's tutorials do.
Each linker runs in a fresh child process, so its wall time (CSV in to matched pairs out) and
peak RSS (`ru_maxrss` of that child) are its own. Both use the same decisions: pairs with
probability >= 0.5, greedy one-to-one assignment by match weight, then probability >= 0.9.
Ground truth: same `person_id` (the linkers never see it). Prints a side-by-side table with
ratios. The machine is shared (2 cores; others run tests), so times are noisy by +-10-20%.

Population (what both files are drawn from): persons in households (sizes 1-5, mean 2.4); a
household shares a postcode unit and, for 85% of members, a surname; 2% of households of two
or more have twins (same date of birth, surname and postcode). Ages follow synth.population's
England pyramid; sex its per-band male share; forenames the synth.names lists by sex and
cohort (older lists for births before 1990), Zipf-weighted, 8% from a generated tail of rarer
names; surnames 55% from synth.names (Zipf), 45% from a generated tail of ~19,000 English-style
surnames (real registers have a long tail; 330 surnames alone would make names near useless).
Postcodes: units in synth.population's West Yorkshire districts (LS, WF, BD, HX), about 14
households per unit.

Files: population P = n + n/10 persons. left = n persons drawn at random. right = n rows:
90% of left's persons (0.9 n true matches) plus every person not in left (0.1 n; many are
relatives of left persons, the hard non-matches), shuffled.
left errors (light): forename missing 0.3%, postcode missing 0.5%.
right errors, each independent, per record (realised rates are printed by each run):
* forename: nickname 20% of those with one in synth.names.NICKNAMES (~6% of all), typo 5%
  (insert/delete/substitute/transpose, equally), missing 1%, upper-cased 10% (harmless);
* surname: married-name change 4% of women aged 18-65 (~1.2% of all), hyphenation 1.5%
  (`Smith-Jones`), typo 4%, missing 0.5%; forename/surname swapped 0.3%;
* date of birth: day/month swapped 1% where day <= 12 and day != month (~0.4% of all), one
  digit of day, month or year-of-decade changed 2% (may make an invalid date such as
  1956-02-31), missing 0.5%;
* postcode: moved 7% (half within the district), typo 2% (inward letter changed, inward letters
  transposed, or sector digit changed), missing 3%, lower case or no space 6% (harmless);
* sex: unknown (`U`) 1%, wrong 0.2%.

Usage: .venv/bin/python bench/linkage_1m.py [--rows 1000000] [--seed 1] [--no-splink]
       [--only haven|splink] [--splink-memory 8GB] [--keep DIR]
Target (the issue): Haven F1 > Splink's, time <= 1/2 and peak memory <= 1/3 of Splink's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth.names import (  # noqa: E402
    FEMALE_NAMES,
    FEMALE_OLDER,
    MALE_NAMES,
    MALE_OLDER,
    NICKNAMES,
    SURNAME_LIST,
)
from synth.population import (  # noqa: E402
    DAYS_PER_YEAR,
    DISTRICTS,
    INWARD_LETTERS,
    SCORE_DATE,
    ages_and_sex,
)

UPPER, LOWER = 0.9, 0.5
COLUMNS = ["person_id", "forename", "surname", "date_of_birth", "sex", "postcode"]
FIELDS = {"forename": "forename", "surname": "surname", "date_of_birth": "date_of_birth",
          "sex": "sex", "postcode": "postcode"}
EPOCH = np.datetime64("1970-01-01", "D")

# Generated tails of rarer names (fixed vocabularies, whatever the seed).
_SUR_PREFIX = ["Ash", "Bar", "Black", "Brad", "Brook", "Bur", "Cald", "Carl", "Chad", "Clay",
               "Cold", "Cres", "Dal", "Dew", "Elm", "Fair", "Farn", "Gar", "Gold", "Green", "Hal",
               "Hart", "Hol", "Hux", "Kirk", "Lang", "Lid", "Mar", "Mid", "Mill", "Mor", "Nor",
               "Oak", "Pen", "Rad", "Rams", "Red", "Ros", "Sal", "Shel", "Stan", "Sut", "Thorn",
               "Tod", "Wal", "Wes", "Whit", "Wil", "Wood", "Wy", "Ack", "Bent", "Birk", "Bram",
               "Brig", "Cat", "Cow", "Drig", "Ecc", "Fen", "Gilm", "Hep", "Ing", "Kel", "Lock",
               "Mat", "Ott", "Pick", "Rish", "Sow"]
_SUR_MIDDLE = ["", "er", "ing", "in", "an", "el", "en", "ham", "s"]
_SUR_SUFFIX = ["worth", "ley", "ton", "field", "by", "ham", "well", "shaw", "wood", "croft",
               "hurst", "stone", "ridge", "dale", "man", "son", "thwaite", "borough", "cliffe",
               "gate", "house", "land", "more", "wick", "ford", "bury", "combe", "den", "hill",
               "low"]
_FORE_SYL = ["ka", "ya", "li", "an", "el", "ro", "sa", "mi", "na", "ja", "de", "ri", "ta", "le",
             "vi", "zo", "bi", "ne", "ra", "mo", "lu", "fa", "ke", "si"]


def _surname_tail() -> np.ndarray:
    return np.array([p + m + s for p in _SUR_PREFIX for m in _SUR_MIDDLE for s in _SUR_SUFFIX],
                    dtype=object)


def _forename_tail() -> np.ndarray:
    return np.array([(a + b + c).capitalize() for a in _FORE_SYL for b in _FORE_SYL
                     for c in ("", "h", "n", "a")], dtype=object)


def _zipf(rng: np.random.Generator, k: int, size: int, s: float = 0.9) -> np.ndarray:
    w = 1.0 / np.arange(1, k + 1) ** s
    return rng.choice(k, size=size, p=w / w.sum())


def _pick(rng: np.random.Generator, head: tuple[str, ...] | np.ndarray, tail: np.ndarray,
          size: int, tail_share: float) -> np.ndarray:
    """Names: Zipf over the (frequency-ordered) head list, uniform-ish over the tail."""
    head_arr = np.asarray(head, dtype=object)
    out = head_arr[_zipf(rng, len(head_arr), size)]
    use_tail = rng.random(size) < tail_share
    out[use_tail] = tail[_zipf(rng, len(tail), int(use_tail.sum()), s=0.5)]
    return out


def _forenames(rng: np.random.Generator, male: np.ndarray, born: np.ndarray) -> np.ndarray:
    n = len(male)
    tail = _forename_tail()
    out = np.empty(n, dtype=object)
    older = born < 1990
    for is_male, new, old in ((True, MALE_NAMES, MALE_OLDER), (False, FEMALE_NAMES,
                                                               FEMALE_OLDER)):
        for is_old in (True, False):
            sel = (male == is_male) & (older == is_old)
            k = int(sel.sum())
            main, other = (old, new) if is_old else (new, old)
            names = _pick(rng, main, tail, k, 0.08)
            cross = rng.random(k) < 0.15  # some older people have "new" names and vice versa
            names[cross] = np.asarray(other, dtype=object)[_zipf(rng, len(other),
                                                                 int(cross.sum()))]
            out[sel] = names
    return out


def _postcode_text(unit: np.ndarray) -> np.ndarray:
    """Unit code (district * 4000 + sector * 400 + a * 20 + b) -> `LS12 3AB`."""
    letters = np.array(list(INWARD_LETTERS), dtype=object)
    district = np.asarray(DISTRICTS, dtype=object)[unit // 4000]
    sector = (unit // 400) % 10
    inward = (sector.astype(str).astype(object) + letters[(unit // 20) % 20]
              + letters[unit % 20])
    return district + " " + inward


def population(size: int, seed: int) -> pd.DataFrame:
    """Persons in households: person_id, forename, surname, dob (day number), male, unit."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 2, 3, 4, 5], p=[0.30, 0.34, 0.15, 0.14, 0.07],
                       size=size // 2 + 10)
    ends = np.cumsum(sizes)
    sizes = sizes[:np.searchsorted(ends, size) + 1]
    household = np.repeat(np.arange(len(sizes)), sizes)[:size]
    first = np.concatenate(([True], household[1:] != household[:-1]))
    age, sex = ages_and_sex(size, rng)  # from synth's England pyramid
    male = sex == 1
    dob = (SCORE_DATE - age * DAYS_PER_YEAR).astype(np.int64)
    # twins: the second member of 2% of multi-person households shares the first's birth
    second = np.flatnonzero(~first & np.concatenate(([False], first[:-1])))
    twins = second[rng.random(len(second)) < 0.02]
    dob[twins] = dob[twins - 1]
    born = 1970 + dob / DAYS_PER_YEAR
    # surnames: per household, 85% of members share it
    n_units = max(1, len(sizes) // 14)
    units = rng.choice(len(DISTRICTS) * 4000, size=n_units, replace=False)
    house_surname = _pick(rng, SURNAME_LIST, _surname_tail(), len(sizes), 0.45)
    surname = house_surname[household]
    own = rng.random(size) < 0.15
    surname[own] = _pick(rng, SURNAME_LIST, _surname_tail(), int(own.sum()), 0.45)
    frame = pd.DataFrame({
        "person_id": np.char.add("P", np.char.zfill(
            rng.permutation(size).astype(str), 8)).astype(object),
        "forename": _forenames(rng, male, born),
        "surname": surname,
        "dob": dob,
        "male": male,
        "unit": units[rng.integers(0, n_units, len(sizes))][household],
        "household": household,
    })
    return frame


# --------------------------------------------------------------------------------------------
# Errors

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _typos(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One insertion, deletion, substitution or transposition per value (equally likely)."""
    n = len(values)
    op, where, letter = rng.integers(0, 4, n), rng.random(n), _LETTERS[rng.integers(0, 26, n)]
    out = np.empty(n, dtype=object)
    for i, (v, o, w, c) in enumerate(zip(values, op, where, letter, strict=True)):
        if not isinstance(v, str) or len(v) < 2:
            out[i] = v
            continue
        p = 1 + int(w * (len(v) - 1))  # keep the first letter as often as clerks do
        p = min(p, len(v) - 1)
        if o == 0:
            out[i] = v[:p] + c + v[p:]
        elif o == 1:
            out[i] = v[:p] + v[p + 1:]
        elif o == 2:
            c = c if c != v[p].lower() else ("e" if c != "e" else "a")
            out[i] = v[:p] + c + v[p + 1:]
        else:
            out[i] = v[:p - 1] + v[p] + v[p - 1] + v[p + 1:]
    return out


def _iso(dob: np.ndarray) -> np.ndarray:
    return (EPOCH + dob.astype("timedelta64[D]")).astype("datetime64[D]").astype("U10")


def _date_errors(text: np.ndarray, rng: np.random.Generator, swap_rate: float,
                 digit_rate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Day/month swaps and single-digit changes on `YYYY-MM-DD` strings (vectorised)."""
    arr = np.array(text, dtype="U10")
    codes = arr.view(np.uint32).reshape(len(arr), 10).copy()
    digit = codes - ord("0")
    day = digit[:, 8] * 10 + digit[:, 9]
    month = digit[:, 5] * 10 + digit[:, 6]
    n = len(arr)
    swap = (rng.random(n) < swap_rate) & (day <= 12) & (day != month)
    codes[swap, 5:7], codes[swap, 8:10] = codes[swap, 8:10], codes[swap, 5:7].copy()
    slip = (rng.random(n) < digit_rate) & ~swap
    pos = np.array([3, 5, 6, 8, 9])[rng.integers(0, 5, n)]  # year of decade, month, day
    rows = np.flatnonzero(slip)
    old = codes[rows, pos[rows]]
    new = (old - ord("0") + rng.integers(1, 10, len(rows))) % 10 + ord("0")
    codes[rows, pos[rows]] = new
    return codes.view("U10").ravel().astype(object), swap, slip


def files(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """(left, right, realised error rates of right): all-text frames with COLUMNS."""
    extra = n // 10
    pop = population(n + extra, seed)
    rng = np.random.default_rng(seed + 1)
    in_left = np.zeros(len(pop), dtype=bool)
    in_left[rng.choice(len(pop), n, replace=False)] = True
    left_idx = np.flatnonzero(in_left)
    shared = rng.choice(left_idx, n - extra, replace=False)
    right_idx = rng.permutation(np.concatenate([shared, np.flatnonzero(~in_left)]))
    sex_text = np.where(pop["male"].to_numpy(), "M", "F").astype(object)
    dob_text = _iso(pop["dob"].to_numpy()).astype(object)
    pc_text = _postcode_text(pop["unit"].to_numpy())

    def base(idx: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"person_id": pop["person_id"].to_numpy()[idx],
                             "forename": pop["forename"].to_numpy()[idx],
                             "surname": pop["surname"].to_numpy()[idx],
                             "date_of_birth": dob_text[idx], "sex": sex_text[idx],
                             "postcode": pc_text[idx]})

    left = base(left_idx)
    left.loc[rng.random(len(left)) < 0.003, "forename"] = ""
    left.loc[rng.random(len(left)) < 0.005, "postcode"] = ""
    left = left.sample(frac=1.0, random_state=seed).reset_index(drop=True)

    right = base(right_idx)
    m = len(right)
    rates: dict[str, float] = {}
    fore = right["forename"].to_numpy().copy()
    has_nick = np.array([f in NICKNAMES for f in fore])
    nick = has_nick & (rng.random(m) < 0.20)
    fore[nick] = [NICKNAMES[f][int(r * len(NICKNAMES[f]))]
                  for f, r in zip(fore[nick], rng.random(int(nick.sum())), strict=True)]
    typo_f = rng.random(m) < 0.05
    fore[typo_f] = _typos(fore[typo_f], rng)
    upper = rng.random(m) < 0.10
    fore[upper] = [f.upper() for f in fore[upper]]
    rates.update(forename_nickname=nick.mean(), forename_typo=typo_f.mean())

    sur = right["surname"].to_numpy().copy()
    age = (SCORE_DATE - pop["dob"].to_numpy()[right_idx]) / DAYS_PER_YEAR
    female = ~pop["male"].to_numpy()[right_idx]
    married = female & (age >= 18) & (age <= 65) & (rng.random(m) < 0.04)
    sur[married] = _pick(rng, SURNAME_LIST, _surname_tail(), int(married.sum()), 0.45)
    hyphen = ~married & (rng.random(m) < 0.015)
    sur[hyphen] = sur[hyphen] + "-" + _pick(rng, SURNAME_LIST, _surname_tail(),
                                            int(hyphen.sum()), 0.45)
    typo_s = rng.random(m) < 0.04
    sur[typo_s] = _typos(sur[typo_s], rng)
    sur[upper] = [s.upper() for s in sur[upper]]
    swap_names = rng.random(m) < 0.003
    fore[swap_names], sur[swap_names] = sur[swap_names], fore[swap_names].copy()
    rates.update(surname_married=married.mean(), surname_hyphen=hyphen.mean(),
                 surname_typo=typo_s.mean(), names_swapped=swap_names.mean())

    dob, swap, slip = _date_errors(right["date_of_birth"].to_numpy(), rng, 0.01, 0.02)
    rates.update(dob_day_month_swap=swap.mean(), dob_digit=slip.mean())

    unit = pop["unit"].to_numpy()[right_idx].copy()
    moved = rng.random(m) < 0.07
    same_district = moved & (rng.random(m) < 0.5)
    other_units = pop["unit"].to_numpy()[rng.integers(0, len(pop), m)]
    unit[moved] = other_units[moved]
    unit[same_district] = (unit[same_district] // 4000) * 4000 + other_units[same_district] % 4000
    typo_p = rng.random(m) < 0.02
    kind = rng.integers(0, 3, m)
    a, b = (unit // 20) % 20, unit % 20
    shift = rng.integers(1, 20, m)
    a2 = np.where(typo_p & (kind == 0), (a + shift) % 20, a)
    a2, b2 = np.where(typo_p & (kind == 1), b, a2), np.where(typo_p & (kind == 1), a, b)
    sector = (unit // 400) % 10
    sector = np.where(typo_p & (kind == 2), (sector + rng.integers(1, 10, m)) % 10, sector)
    unit = (unit // 4000) * 4000 + sector * 400 + a2 * 20 + b2
    pc = _postcode_text(unit)
    style = rng.random(m)
    low, squash = style < 0.03, (style >= 0.03) & (style < 0.06)
    pc[low] = [p.lower() for p in pc[low]]
    pc[squash] = [p.replace(" ", "") for p in pc[squash]]
    rates.update(postcode_moved=moved.mean(), postcode_typo=typo_p.mean())

    sex = right["sex"].to_numpy().copy()
    unknown = rng.random(m) < 0.01
    wrong = ~unknown & (rng.random(m) < 0.002)
    sex[wrong] = np.where(sex[wrong] == "M", "F", "M")
    sex[unknown] = "U"

    for name, values, rate in (("forename", fore, 0.01), ("surname", sur, 0.005),
                               ("date_of_birth", dob, 0.005), ("postcode", pc, 0.03)):
        blank = rng.random(m) < rate
        values[blank] = ""
        right[name] = values
        rates[f"{name}_missing"] = blank.mean()
    right["sex"] = sex
    return left, right, rates


# --------------------------------------------------------------------------------------------
# Linkers (each in a child process)

def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def score_pairs(left_ids: np.ndarray, right_ids: np.ndarray, n_true: int) -> dict[str, float]:
    """Precision, recall, F1 of matched (left_id, right_id) pairs: correct iff ids are equal."""
    tp = int((np.asarray(left_ids) == np.asarray(right_ids)).sum())
    found = len(left_ids)
    p = tp / found if found else 0.0
    r = tp / n_true if n_true else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "matches": found, "true_positives": tp}


def run_haven(left: Path, right: Path, out: Path) -> dict:
    """Haven: `linkage.link_files.link_files`, the function behind `haven link-files` (fresh
    key, keyed encodings only, ECM; it partitions the left file and scores partitions in
    threads). Decisions read back from its two outputs: matches (p >= UPPER) and the review
    list (LOWER <= p < UPPER), both after its one-to-one assignment."""
    from linkage.link_files import link_files

    started = time.perf_counter()
    summary = link_files(left, right, "person_id", FIELDS, out, upper=UPPER, lower=LOWER)
    seconds = time.perf_counter() - started
    found = pd.concat([
        pd.read_csv(out, dtype={"left_id": str, "right_id": str}).assign(probability=1.0),
        pd.read_csv(summary["review_out"], dtype={"left_id": str, "right_id": str})])
    return {"seconds": seconds, "peak_mb": _peak_mb(), "left_ids": found["left_id"].to_numpy(),
            "right_ids": found["right_id"].to_numpy(),
            "probability": found["probability"].to_numpy(),
            "candidate_pairs": summary["candidate_pairs"], "warnings": summary["warnings"]}


def _clean_for_splink(frame: pd.DataFrame) -> pd.DataFrame:
    """Usual Splink preparation: upper case, letters only in names, canonical postcodes,
    blanks and unknown sex as null (Haven does the same normalisation inside its encoder)."""
    out = pd.DataFrame({"person_id": frame["person_id"]})
    for col in ("forename", "surname"):
        out[col] = frame[col].str.upper().str.replace(r"[^A-Z]", "", regex=True)
    out["date_of_birth"] = frame["date_of_birth"]
    out["sex"] = frame["sex"].where(frame["sex"].isin(["M", "F"]), "")
    pc = frame["postcode"].str.upper().str.replace(r"[^A-Z0-9]", "", regex=True)
    out["postcode"] = pc.str[:-3] + " " + pc.str[-3:]
    out["postcode"] = out["postcode"].where(pc.str.len() >= 5, "")
    return out.replace("", None)


def run_splink(left: Path, right: Path, memory_limit: str, spill: Path) -> dict:
    """Plaintext Splink, DuckDB backend: standard comparisons, blocking, training; decisions
    as Haven's (p >= LOWER, one-to-one by match weight, p >= UPPER). DuckDB is given a memory
    limit and a spill directory: without them it was killed by the OOM killer at 1M x 1M
    (17 GB resident on this 24 GB machine)."""
    import logging

    import duckdb
    import splink.comparison_library as cl
    from splink import DuckDBAPI, SettingsCreator, block_on
    from splink_reference import train_and_link

    logging.getLogger("splink").setLevel(logging.ERROR)
    started = time.perf_counter()
    frames = [_clean_for_splink(pd.read_csv(p, dtype=str, keep_default_na=False))
              for p in (left, right)]
    spill.mkdir(parents=True, exist_ok=True)
    db = DuckDBAPI(duckdb.connect(config={"memory_limit": memory_limit,
                                          "temp_directory": str(spill)}))
    tables = [db.register(f, dataset_display_name=name)
              for name, f in zip(("a_left", "b_right"), frames, strict=True)]
    del frames
    settings = SettingsCreator(
        link_type="link_only",
        unique_id_column_name="person_id",
        blocking_rules_to_generate_predictions=[
            # surname + forename initial alone: 470M pairs at 1M x 1M (Smith, Jones...), which
            # DuckDB cannot hold in 24 GB; within the birth year it is ~6M
            block_on("date_of_birth"),
            block_on("surname", "substr(forename, 1, 1)", "substr(date_of_birth, 1, 4)"),
            block_on("forename", "substr(surname, 1, 1)", "substr(date_of_birth, 1, 4)"),
            block_on("postcode"),
        ],
        comparisons=[
            cl.NameComparison("forename").configure(term_frequency_adjustments=True),
            cl.NameComparison("surname").configure(term_frequency_adjustments=True),
            cl.DateOfBirthComparison("date_of_birth", input_is_string=True),
            cl.PostcodeComparison("postcode"),
            cl.ExactMatch("sex"),
        ],
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,
    )
    lid, rid, probability, predictions = train_and_link(tables, settings, LOWER)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_mb": _peak_mb(), "left_ids": lid, "right_ids": rid,
            "probability": probability, "candidate_pairs": None, "predictions": predictions,
            "warnings": []}


def child(args: argparse.Namespace) -> None:
    if args.child == "haven":
        result = run_haven(args.left, args.right, args.out)
    else:
        result = run_splink(args.left, args.right, args.splink_memory,
                            args.out.parent / "splink_spill")
    lid, rid = np.asarray(result.pop("left_ids")), np.asarray(result.pop("right_ids"))
    prob = np.asarray(result.pop("probability"))
    result.update(score_pairs(lid[prob >= UPPER], rid[prob >= UPPER], args.n_true))
    low = score_pairs(lid, rid, args.n_true)  # the whole one-to-one set, p >= LOWER
    result.update({f"{k}_low": v for k, v in low.items()})
    print("RESULT " + json.dumps(result, default=str), flush=True)


def spawn(which: str, left: Path, right: Path, out: Path, n_true: int,
          args: argparse.Namespace) -> dict | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", which, "--left", str(left),
           "--right", str(right), "--out", str(out), "--n-true", str(n_true),
           "--splink-memory", args.splink_memory]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"{which} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return None


def table(haven: dict | None, splink: dict | None) -> None:
    rows = [(f"precision p>={UPPER}", "precision", "{:.4f}"),
            (f"recall p>={UPPER}", "recall", "{:.4f}"), (f"F1 p>={UPPER}", "f1", "{:.4f}"),
            (f"matches p>={UPPER}", "matches", "{:,}"),
            (f"precision p>={LOWER}", "precision_low", "{:.4f}"),
            (f"recall p>={LOWER}", "recall_low", "{:.4f}"), (f"F1 p>={LOWER}", "f1_low", "{:.4f}"),
            ("candidate pairs", "candidate_pairs", "{:,}"), ("wall seconds", "seconds", "{:.1f}"),
            ("peak RSS MB", "peak_mb", "{:,.0f}")]

    def fmt(res: dict | None, key: str, spec: str) -> str:
        if res is None or res.get(key) is None:
            return "-"
        return spec.format(res[key])

    print("after one-to-one assignment of pairs with p >= 0.5; then p >= 0.9 (headline) or all")
    print(f"{'':18s}{'Haven (encoded)':>18s}{'Splink (plain)':>18s}{'Haven/Splink':>16s}")
    for label, key, spec in rows:
        ratio = ""
        if haven and splink and haven.get(key) is not None and splink.get(key) is not None:
            if key.startswith("f1"):
                ratio = f"{haven[key] - splink[key]:+.4f}"
            elif key in ("seconds", "peak_mb"):
                ratio = f"{haven[key] / splink[key]:.2f}x"
        print(f"{label:18s}{fmt(haven, key, spec):>18s}{fmt(splink, key, spec):>18s}"
              f"{ratio:>16s}")
    if haven and splink:
        ok = (haven["f1"] > splink["f1"], haven["seconds"] <= splink["seconds"] / 2,
              haven["peak_mb"] <= splink["peak_mb"] / 3)
        print("targets: F1 > Splink's {}, time <= 1/2 {}, memory <= 1/3 {}".format(
            *("met" if x else "MISSED" for x in ok)))
    for name, res in (("Haven", haven), ("Splink", splink)):
        if res and res.get("warnings"):
            print(f"{name} warnings: {res['warnings']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-splink", action="store_true")
    parser.add_argument("--keep", type=Path, help="write the files here and keep them (reused "
                        "by a later run with the same --rows, --seed and --keep)")
    parser.add_argument("--splink-memory", default="8GB",
                        help="DuckDB memory_limit for Splink (it spills to disk beyond it)")
    parser.add_argument("--only", choices=("haven", "splink"),
                        help="run one linker only")
    parser.add_argument("--child", choices=("haven", "splink"), help=argparse.SUPPRESS)
    parser.add_argument("--left", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--right", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n-true", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = args.keep or Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        lpath, rpath, meta = tmp / "left.csv", tmp / "right.csv", tmp / "files.json"
        wanted = {"rows": args.rows, "seed": args.seed}
        if meta.exists() and json.loads(meta.read_text()).get("rows") == args.rows \
                and json.loads(meta.read_text()).get("seed") == args.seed:
            info = json.loads(meta.read_text())
            n_true, rates = info["n_true"], info["rates"]
            print(f"reusing {lpath} and {rpath} (rows {args.rows:,}, seed {args.seed})")
        else:
            t0 = time.perf_counter()
            left, right, rates = files(args.rows, args.seed)
            n_true = int(right["person_id"].isin(left["person_id"]).sum())
            left.to_csv(lpath, index=False)
            right.to_csv(rpath, index=False)
            rates = {k: float(v) for k, v in rates.items()}
            meta.write_text(json.dumps({**wanted, "n_true": n_true, "rates": rates}))
            print(f"generated left {len(left):,} x right {len(right):,} persons, {n_true:,} "
                  f"true matches, seed {args.seed}, in {time.perf_counter() - t0:.1f}s")
            del left, right
        print("right-file error rates (realised): " + ", ".join(
            f"{k} {v:.2%}" for k, v in rates.items()))
        haven = None
        if args.only != "splink":
            haven = spawn("haven", lpath, rpath, tmp / "haven_links.csv", n_true, args)
        splink = None
        if not args.no_splink and args.only != "haven":
            import importlib.util

            if importlib.util.find_spec("splink") is None:
                print("splink not installed: Haven side only (pip install splink)")
            else:
                splink = spawn("splink", lpath, rpath, tmp / "splink_links.csv", n_true, args)
        print("Haven: link_files (as `haven link-files`); Splink: DuckDB, plaintext; each in "
              f"a fresh child process (2 shared cores, load average {os.getloadavg()[0]:.1f}; "
              "times noisy)")
        table(haven, splink)


if __name__ == "__main__":
    main()
