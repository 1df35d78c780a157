"""Turn numeric row arrays into text columns (pyarrow), including the mess real feeds carry.

Everything is vectorised: values are built as numpy arrays of indices or numbers and turned into
strings by pyarrow compute kernels, so tens of millions of rows cost seconds, not minutes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth import nhs
from synth.population import (
    DISTRICT_AREA,
    DISTRICTS,
    INWARD_LETTERS,
    PRACTICES,
    Population,
)

NHS_VALID, NHS_BLANK, NHS_MISTYPED = 0, 1, 2


def vocab(values: Sequence[str]) -> pa.Array:
    """A pyarrow string array to index into."""
    return pa.array(list(values), type=pa.string())


def take(values: pa.Array, index: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """values[index] as text, null where `null`."""
    idx = pa.array(np.asarray(index, dtype=np.int32), mask=null)
    return pc.take(values, idx)


def _lookup(values: np.ndarray, null: np.ndarray | None,
            render: Callable[[np.ndarray], pa.Array]) -> pa.Array:
    """Render each distinct value in range once, then index: far cheaper than casting rows."""
    values = np.asarray(values, dtype=np.int64)
    present = values if null is None else values[~null]
    lo = int(present.min()) if present.size else 0
    hi = int(present.max()) if present.size else 0
    table = render(np.arange(lo, hi + 1, dtype=np.int64))
    index = np.clip(values - lo, 0, hi - lo)
    return take(table, index, null)


def _dates_cast(days: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(days.astype(np.int32)).cast(pa.date32()), pa.string())


def dates(days: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """ISO dates (YYYY-MM-DD) from day numbers."""
    return _lookup(days, null, _dates_cast)


def datetimes(seconds: np.ndarray) -> pa.Array:
    """ISO 8601 date-times (YYYY-MM-DDTHH:MM:SS) from seconds since 1970."""
    arr = pa.array(np.asarray(seconds, dtype=np.int64)).cast(pa.timestamp("s"))
    return pc.strftime(arr, format="%Y-%m-%dT%H:%M:%S")


def integers(values: np.ndarray, width: int = 0, prefix: str = "",
             null: np.ndarray | None = None) -> pa.Array:
    """Integers as text, zero-padded to `width`, with an optional prefix."""
    values = np.asarray(values, dtype=np.int64)
    present = values if null is None else values[~null]
    if not width and not prefix and present.size and present.min() >= 0 \
            and present.max() < 1 << 16:
        return _lookup(values, null, lambda v: pc.cast(pa.array(v), pa.string()))
    text = pc.cast(pa.array(values, mask=null), pa.string())
    if width:
        text = pc.utf8_lpad(text, width=width, padding="0")
    if prefix:
        text = pc.binary_join_element_wise(prefix, text, "")
    return text


def decimals(values: np.ndarray, places: int, null: np.ndarray | None = None) -> pa.Array:
    """Non-negative numbers with a fixed number of decimal places."""
    scaled = np.rint(np.asarray(values, dtype=float) * 10**places).astype(np.int64)
    whole = integers(scaled // 10**places, null=null)
    if places == 0:
        return whole
    frac = integers(scaled % 10**places, width=places, null=null)
    return pc.binary_join_element_wise(whole, frac, ".")


def constant(value: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)),
                                          vocab([value])).cast(pa.string())


def swap_day_month(days: np.ndarray) -> np.ndarray:
    """The date with day and month exchanged (caller ensures the day is <= 12)."""
    d = np.asarray(days).astype("int64").astype("M8[D]")
    year = d.astype("M8[Y]")
    month_start = d.astype("M8[M]")
    month = (month_start - year.astype("M8[M]")).astype(np.int64) + 1
    dom = (d - month_start.astype("M8[D]")).astype(np.int64) + 1
    swapped = (year.astype("M8[M]") + (dom - 1)).astype("M8[D]") + (month - 1)
    return swapped.astype(np.int64)


def day_of_month(days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(days).astype("int64").astype("M8[D]")
    month_start = d.astype("M8[M]")
    month = (month_start - d.astype("M8[Y]").astype("M8[M]")).astype(np.int64) + 1
    return (d - month_start.astype("M8[D]")).astype(np.int64) + 1, month


@dataclass(frozen=True)
class Mess:
    """How untidy a source's person fields are (fractions of rows)."""

    nhs_blank: float = 0.01
    nhs_mistype: float = 0.005          # of the non-blank
    nhs_spaced: float = 0.05
    nhs_hyphen: float = 0.01
    dob_swap: float = 0.01
    dob_blank: float = 0.0005           # a required field blank: landing rejects the row
    postcode_blank: float = 0.02
    postcode_typo: float = 0.01
    postcode_format: float = 0.03       # lower case or no space: valid, just untidy
    practice_blank: float = 0.02
    sex_unknown: float = 0.002


HOSPITAL = Mess()
GP = Mess(nhs_blank=0.0, nhs_mistype=0.0, nhs_spaced=0.0, nhs_hyphen=0.0, dob_swap=0.002,
          postcode_blank=0.005, practice_blank=0.0, sex_unknown=0.0)
SOCIAL = Mess(nhs_blank=0.35, nhs_spaced=0.15, nhs_hyphen=0.02, postcode_blank=0.03,
              practice_blank=1.0, sex_unknown=0.005)
REQUIRED = Mess(nhs_blank=0.0, nhs_mistype=0.0, nhs_spaced=0.0, nhs_hyphen=0.0, dob_swap=0.0,
                dob_blank=0.0, postcode_blank=1.0, practice_blank=1.0, sex_unknown=0.0)

_INWARD = vocab([f"{d}{a}{b}" for d in range(10) for a in INWARD_LETTERS
                 for b in INWARD_LETTERS])
_DISTRICTS = vocab(DISTRICTS)
_PRACTICE_CODES = vocab([p.code for p in PRACTICES])
_SEX = vocab(["0", "1", "2", "9"])
_L = len(INWARD_LETTERS)


def nhs_style(plain: pa.Array, rng: np.random.Generator, spaced: float, hyphen: float,
              null: np.ndarray | None = None) -> pa.Array:
    """NHS numbers as written: mostly 10 digits, some `999 123 4567`, some `999-123-4567`."""
    if null is not None and null.any():
        plain = pc.if_else(pa.array(null), pa.scalar(None, pa.string()), plain)
    if spaced <= 0 and hyphen <= 0:
        return plain
    style = rng.random(len(plain))
    parts = [pc.utf8_slice_codeunits(plain, a, b) for a, b in ((0, 3), (3, 6), (6, 10))]
    with_spaces = pc.binary_join_element_wise(*parts, " ")
    with_hyphens = pc.binary_join_element_wise(*parts, "-")
    out = pc.if_else(pa.array(style < spaced), with_spaces, plain)
    return pc.if_else(pa.array((style >= spaced) & (style < spaced + hyphen)), with_hyphens, out)


def nhs_plain(pop: Population, persons: np.ndarray) -> pa.Array:
    """Each row's person's true NHS number as 10 digits (strings made once per person)."""
    if "nhs_text" not in pop.cache:
        pop.cache["nhs_text"] = pc.cast(pa.array(pop.nhs), pa.string())
    return take(pop.cache["nhs_text"], persons)


def nhs_column(pop: Population, persons: np.ndarray, rng: np.random.Generator,
               mess: Mess) -> tuple[pa.Array, np.ndarray]:
    """The nhs_number column and each row's status (valid / blank / mistyped)."""
    n = persons.size
    blank = rng.random(n) < mess.nhs_blank
    wrong = ~blank & (rng.random(n) < mess.nhs_mistype)
    text = nhs_plain(pop, persons)
    if wrong.any():
        typed = pc.cast(pa.array(nhs.mistype(pop.nhs[persons[wrong]], rng)), pa.string())
        text = pc.replace_with_mask(text, pa.array(wrong), typed)
    status = np.where(blank, NHS_BLANK, np.where(wrong, NHS_MISTYPED, NHS_VALID)).astype(np.int8)
    return nhs_style(text, rng, mess.nhs_spaced, mess.nhs_hyphen, null=blank), status


def dob_column(pop: Population, persons: np.ndarray, rng: np.random.Generator,
               mess: Mess) -> tuple[pa.Array, np.ndarray]:
    """date_of_birth with some day/month swaps and a very few blanks (rejected rows)."""
    n = persons.size
    dob = pop.dob[persons]
    dom, month = day_of_month(dob)
    swap = (rng.random(n) < mess.dob_swap) & (dom <= 12) & (dom != month)
    if swap.any():
        dob = dob.copy()
        dob[swap] = swap_day_month(dob[swap])
    blank = rng.random(n) < mess.dob_blank
    return dates(dob, null=blank), blank


def postcode_column(pop: Population, persons: np.ndarray, days: np.ndarray,
                    rng: np.random.Generator, mess: Mess) -> pa.Array:
    """The postcode where the person lived on the row's day, with blanks, typos and styles."""
    n = persons.size
    after = np.asarray(days) >= pop.move_day[persons]
    district = np.where(after, pop.district[persons, 1], pop.district[persons, 0])
    inward = np.where(after, pop.inward[persons, 1], pop.inward[persons, 0]).astype(np.int64)
    typo = rng.random(n) < mess.postcode_typo
    if typo.any():
        digit, a, b = inward // (_L * _L), (inward // _L) % _L, inward % _L
        kind = rng.integers(0, 3, n)
        shift = rng.integers(1, _L, n)
        a2 = np.where(typo & (kind == 0), (a + shift) % _L, a)
        b2 = np.where(typo & (kind == 1), (b + shift) % _L, b)
        swap = typo & (kind == 2) & (a != b)
        a2, b2 = np.where(swap, b, a2), np.where(swap, a, b2)
        digit = np.where(typo & (kind == 2) & (a == b), (digit + 1) % 10, digit)
        inward = digit * _L * _L + a2 * _L + b2
    blank = rng.random(n) < mess.postcode_blank
    text = pc.binary_join_element_wise(take(_DISTRICTS, district, blank),
                                       take(_INWARD, inward, blank), " ")
    style = rng.random(n)
    if mess.postcode_format > 0:
        text = pc.if_else(pa.array(style < mess.postcode_format / 3), pc.utf8_lower(text), text)
        squash = (style >= mess.postcode_format / 3) & (style < mess.postcode_format)
        text = pc.if_else(pa.array(squash), pc.replace_substring(text, " ", ""), text)
    return text


def area_on(pop: Population, persons: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Index into AREAS of where the person lived on each day."""
    after = np.asarray(days) >= pop.move_day[persons]
    district = np.where(after, pop.district[persons, 1], pop.district[persons, 0])
    return DISTRICT_AREA[district]


def person_columns(pop: Population, persons: np.ndarray, days: np.ndarray,
                   rng: np.random.Generator, mess: Mess,
                   fields: Sequence[str] = ("nhs_number", "date_of_birth", "sex", "postcode",
                                            "gp_practice_code"),
                   ) -> tuple[dict[str, pa.Array], dict[str, np.ndarray]]:
    """The contract's common person fields for rows of `persons` dated `days`.

    Returns the columns and the row facts evaluation needs (NHS status, required-field blank).
    """
    n = persons.size
    cols: dict[str, pa.Array] = {}
    facts: dict[str, np.ndarray] = {"nhs_status": np.zeros(n, dtype=np.int8),
                                    "required_blank": np.zeros(n, dtype=bool)}
    if "nhs_number" in fields:
        cols["nhs_number"], facts["nhs_status"] = nhs_column(pop, persons, rng, mess)
    if "date_of_birth" in fields:
        cols["date_of_birth"], facts["required_blank"] = dob_column(pop, persons, rng, mess)
    if "sex" in fields:
        sex = pop.sex[persons].astype(np.int64)
        odd = rng.random(n) < mess.sex_unknown
        sex = np.where(odd, np.where(rng.random(n) < 0.7, 3, 0), sex)
        cols["sex"] = take(_SEX, sex)
    if "postcode" in fields:
        cols["postcode"] = postcode_column(pop, persons, days, rng, mess)
    if "gp_practice_code" in fields:
        blank = rng.random(n) < mess.practice_blank
        cols["gp_practice_code"] = take(_PRACTICE_CODES, pop.practice[persons], blank)
    return cols, facts


def lists(offsets: np.ndarray, items: pa.Array, sep: str = ";") -> pa.Array:
    """Join variable-length groups of strings (CSR offsets) with `sep`; empty groups -> null."""
    listed = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), items)
    joined = pc.binary_join(listed, sep)
    empty = np.diff(offsets) == 0
    return pc.if_else(pa.array(empty), pa.scalar(None, pa.string()), joined)
