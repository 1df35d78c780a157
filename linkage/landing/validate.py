"""Check a batch of text columns against its contract, row by row, with Arrow compute.

Each failing row gets one reason naming the field and the rule it broke, never the value:
reasons are stored and shown, and a value may be an identifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nhs_number
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from linkage.landing import contracts as c
from linkage.landing.contracts import Contract

MIN_BIRTH = "1890-01-01"
# Scotland's CHI range as first six digits, from the nhs-number package itself.
CHI_FIRST = min(r.start for r in nhs_number.REGION_SCOTLAND.ranges) // 10_000
CHI_LAST = max(r.end for r in nhs_number.REGION_SCOTLAND.ranges) // 10_000
_ICD = r"[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?"


@dataclass
class Checked:
    """The outcome of checking one batch."""

    table: pa.Table          # cleaned text columns (trimmed, blanks as null)
    rows: pa.Array           # 1-based data row numbers
    reasons: np.ndarray      # per row: None when the row is good, else why not
    nhs_valid: np.ndarray    # per row: NHS number present and valid
    nhs_invalid: np.ndarray  # per row: NHS number present but fails the check
    nhs_normalised: pa.Array | None = None  # 10-digit text where valid, else null
    parsed: dict[str, pa.Array] = field(default_factory=dict)  # typed columns (dates, numbers)

    @property
    def good(self) -> np.ndarray:
        return pd.isna(self.reasons)


def _blank_to_null(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    trimmed = pc.utf8_trim_whitespace(column)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)


def _parse_dates(column: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Parse `YYYY-MM-DD` text; returns (dates, bad mask where text was given but is no date)."""
    shaped = pc.match_substring_regex(column, r"^\d{4}-\d{2}-\d{2}$")
    text = pc.if_else(shaped, column, pa.scalar(None, pa.string()))
    parsed = pc.strptime(text, format="%Y-%m-%d", unit="s", error_is_null=True)
    # strptime rolls 2023-02-30 over to 2023-03-02: the day and month must survive parsing.
    same_day = pc.equal(pc.day(parsed), pc.cast(pc.utf8_slice_codeunits(text, 8, 10), pa.int64()))
    same_month = pc.equal(pc.month(parsed),
                          pc.cast(pc.utf8_slice_codeunits(text, 5, 7), pa.int64()))
    real = pc.fill_null(pc.and_(same_day, same_month), False)
    dates = pc.if_else(real, pc.cast(parsed, pa.date32()), pa.scalar(None, pa.date32()))
    bad = pc.and_(pc.is_valid(column), pc.is_null(dates))
    return dates, bad


def _parse_datetimes(column: pa.Array) -> tuple[pa.Array, pa.Array]:
    text = pc.replace_substring(column, " ", "T")
    text = pc.replace_substring_regex(text, r"(Z|[+-]\d{2}:?\d{2})$", "")
    shaped = pc.match_substring_regex(text, r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
    text = pc.if_else(shaped, text, pa.scalar(None, pa.string()))
    text = pc.replace_substring_regex(text, r"\.\d+$", "")
    text = pc.if_else(pc.equal(pc.utf8_length(text), 16), pc.binary_join_element_wise(
        text, ":00", ""), text)
    parsed = pc.strptime(text, format="%Y-%m-%dT%H:%M:%S", unit="s", error_is_null=True)
    bad = pc.and_(pc.is_valid(column), pc.is_null(parsed))
    return parsed, bad


def nhs_checksum_ok(digits: pa.Array) -> np.ndarray:
    """Modulus-11 check of 10-digit text, vectorised; False where not 10 digits.

    Same rule as the `nhs-number` package (a property test holds them equal); that package
    checks one value per call, too slow for a million rows, so landing uses this.
    """
    out = np.zeros(len(digits), dtype=bool)
    # Ten bytes that are all ASCII digits (read from the Arrow buffers: no regex, no objects).
    flags = pc.fill_null(pc.equal(pc.binary_length(digits), 10), False).to_numpy(
        zero_copy_only=False)
    if not flags.any():
        return out
    values = pc.filter(digits, pa.array(flags))
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset:]
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)
    matrix = data[offsets[0]:offsets[0] + 10 * len(values)].reshape(-1, 10).astype(np.int64) - 48
    numeric = ((matrix >= 0) & (matrix <= 9)).all(axis=1)
    if not numeric.all():
        flags[np.flatnonzero(flags)[~numeric]] = False
        values = pc.filter(values, pa.array(numeric))
        matrix = matrix[numeric]
    if not flags.any():
        return out
    check = 11 - (matrix[:, :9] @ np.arange(10, 1, -1)) % 11
    check[check == 11] = 0
    out[flags] = (check != 10) & (check == matrix[:, 9])
    # Numbers in Scotland's CHI range must also start with a real date (DDMMYY): that rule is
    # the package's own, so it decides the few such numbers, one distinct value at a time.
    first6 = matrix[:, :6] @ (10 ** np.arange(5, -1, -1))
    chi = (first6 >= CHI_FIRST) & (first6 <= CHI_LAST) & out[flags]
    if chi.any():
        where = np.flatnonzero(flags)[chi]
        texts = np.asarray(values.to_numpy(zero_copy_only=False), dtype=object)[chi]
        verdict = {t: nhs_number.is_valid(t) for t in set(texts.tolist())}
        out[where] = [verdict[t] for t in texts.tolist()]
    return out


def _nhs(column: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Normalise NHS numbers (spaces and hyphens allowed) and check their modulus 11."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    # Only values not already 10 characters long can become 10 digits by losing separators.
    other = pc.fill_null(pc.not_equal(pc.binary_length(column), 10), False)
    digits = column
    if pc.any(other).as_py():
        digits = pc.replace_with_mask(column, other, pc.replace_substring(
            pc.replace_substring(pc.filter(column, other), " ", ""), "-", ""))
    present = pc.is_valid(column).to_numpy(zero_copy_only=False)
    valid = nhs_checksum_ok(digits) & present
    invalid = present & ~valid
    normalised = pc.if_else(pa.array(valid), digits, pa.scalar(None, pa.string()))
    return normalised, valid, invalid


# Columns with at most this share of distinct values are checked once per distinct value.
DISTINCT_SHARE = 0.5


@dataclass
class _Column:
    """One column checked: cleaned text, typed values, and its failures in the order checked."""

    cleaned: pa.Array
    parsed: pa.Array | None
    failures: list[tuple[np.ndarray, str]]


def check_batch(table: pa.Table, rows: pa.Array, contract: Contract) -> Checked:
    """Check every contract column of a batch; the first failure of each row is its reason.

    A column's checks depend on each value alone, so a column with few distinct values (codes,
    dates) is checked once per distinct value and the outcome spread back to its rows.
    """
    n = table.num_rows
    reasons = np.full(n, None, dtype=object)
    unset = np.ones(n, dtype=bool)
    cleaned: dict[str, pa.Array] = {}
    parsed: dict[str, pa.Array] = {}
    nhs_valid = np.zeros(n, dtype=bool)
    nhs_invalid = np.zeros(n, dtype=bool)
    nhs_normalised = None
    for col in contract.columns:
        raw = table.column(col.name)
        if isinstance(raw, pa.ChunkedArray):
            raw = raw.combine_chunks()
        if col.kind == c.NHS:
            checked = _check_column(col, raw)
            value = checked.cleaned
            nhs_normalised, nhs_valid, nhs_invalid = _nhs(value)
            if col.required:
                checked.failures.append((pc.is_null(value).to_numpy(zero_copy_only=False),
                                         f"{col.name}: required but blank"))
                checked.failures.append((nhs_invalid, f"{col.name}: fails the modulus-11 check"))
        else:
            checked = _check_distinct(col, raw)
        cleaned[col.name] = checked.cleaned
        if checked.parsed is not None:
            parsed[col.name] = checked.parsed
        for flags, reason in checked.failures:
            first = flags & unset
            if first.any():
                reasons[first] = reason
                unset &= ~first
    return Checked(pa.table(cleaned), rows, reasons, nhs_valid, nhs_invalid, nhs_normalised,
                   parsed)


def _check_distinct(col: c.Column, raw: pa.Array) -> _Column:
    """`_check_column` once per distinct value when there are few, else on every row."""
    if col.kind in (c.RECORD_ID, c.POSTCODE) or len(raw) < 64:
        return _check_column(col, raw)
    encoded = pc.dictionary_encode(raw, null_encoding="encode")
    if len(encoded.dictionary) > DISTINCT_SHARE * len(raw):
        return _check_column(col, raw)
    distinct = _check_column(col, encoded.dictionary)
    indices = encoded.indices
    at = indices.to_numpy(zero_copy_only=False)
    unchanged = pc.all(pc.fill_null(pc.equal(distinct.cleaned, encoded.dictionary), False))
    return _Column(raw if unchanged.as_py() else pc.take(distinct.cleaned, indices),
                   pc.take(distinct.parsed, indices) if distinct.parsed is not None else None,
                   [(flags[at], reason) for flags, reason in distinct.failures if flags.any()])


def _check_column(col: c.Column, raw: pa.Array) -> _Column:
    """The checks of one column, value by value (the NHS number's own checks aside)."""
    failures: list[tuple[np.ndarray, str]] = []
    parsed = None

    def fail(mask: pa.Array | np.ndarray, reason: str) -> None:
        flags = mask if isinstance(mask, np.ndarray) else \
            pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
        failures.append((np.asarray(flags, dtype=bool), reason))

    too_long = pc.greater(pc.utf8_length(raw), col.max_length)
    fail(too_long, f"{col.name}: longer than {col.max_length} characters")
    value = _blank_to_null(raw)
    if failures[-1][0].any():
        value = pc.if_else(pc.fill_null(too_long, False), pa.scalar(None, pa.string()), value)
    cleaned = value
    if col.required and col.kind != c.NHS:
        fail(pc.and_(pc.is_null(value), pc.invert(too_long)), f"{col.name}: required but blank")
    if col.kind in (c.DATE, c.DOB):
        dates, bad = _parse_dates(value)
        fail(bad, f"{col.name}: not a date (YYYY-MM-DD)")
        if col.kind == c.DOB:
            implausible = pc.or_(pc.less(dates, pa.scalar(_date(MIN_BIRTH))),
                                 pc.greater(dates, pc.cast(pc.strptime(
                                     pa.scalar("2100-01-01"), "%Y-%m-%d", "s"),
                                     pa.date32())))
            fail(implausible, f"{col.name}: not a plausible date of birth")
        parsed = dates
    elif col.kind == c.DATETIME:
        stamps, bad = _parse_datetimes(value)
        fail(bad, f"{col.name}: not an ISO 8601 date-time")
        parsed = stamps
    elif col.kind == c.NUMBER:
        numbers = pc.cast(pc.if_else(pc.match_substring_regex(
            value, r"^-?\d+(\.\d+)?$"), value, pa.scalar(None, pa.string())), pa.float64())
        fail(pc.and_(pc.is_valid(value), pc.is_null(numbers)), f"{col.name}: not a number")
        parsed = numbers
    elif col.kind in (c.SEX, c.CODE, c.INTEGER) and col.values is not None:
        if col.kind == c.CODE:
            value = pc.if_else(pc.is_in(value, pa.array(sorted(col.values))), value,
                               _case_folded(value, col.values))
            cleaned = value
        fail(pc.and_(pc.is_valid(value),
                     pc.invert(pc.is_in(value, pa.array(sorted(col.values))))),
             f"{col.name}: not one of the allowed codes")
    elif col.kind in (c.ICD10, c.PRACTICE, c.ODS, c.TEXT):
        upper = pc.utf8_upper(value) if col.kind != c.TEXT or col.pattern else value
        if col.pattern is not None:
            ok = pc.match_substring_regex(upper, col.pattern.pattern)
            fail(pc.and_(pc.is_valid(value), pc.invert(ok)),
                 f"{col.name}: not a valid {_describe(col)}")
        cleaned = upper
    elif col.kind == c.ICD10_LIST:
        upper = pc.utf8_upper(value)
        pattern = rf"^{_ICD}(;{_ICD}){{0,19}}$"
        ok = pc.match_substring_regex(pc.replace_substring(upper, " ", ""), pattern)
        fail(pc.and_(pc.is_valid(value), pc.invert(ok)),
             f"{col.name}: not up to 20 ICD-10 codes separated by ';'")
        cleaned = pc.replace_substring(upper, " ", "")
    return _Column(cleaned, parsed, failures)


def _case_folded(value: pa.Array, allowed: frozenset[str]) -> pa.Array:
    """Accept codes in another case (`Y`/`y`, `Ambulance`) by mapping to the contract's case."""
    lower = {v.lower(): v for v in allowed}
    folded = pc.utf8_lower(value)
    keys = pa.array(list(lower))
    index = pc.index_in(folded, keys)
    mapped = pc.take(pa.array(list(lower.values())), index)
    return pc.if_else(pc.is_valid(mapped), mapped, value)


def _describe(col: c.Column) -> str:
    return {c.ICD10: "ICD-10 code", c.PRACTICE: "practice code (letter and 5 digits)",
            c.ODS: "ODS code"}.get(col.kind, "code")


def _date(text: str) -> pa.Scalar:
    return pc.cast(pc.strptime(pa.scalar(text), "%Y-%m-%d", "s"), pa.date32())
