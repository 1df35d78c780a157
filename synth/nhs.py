"""Synthetic NHS numbers: the 999 range only (never issued to a person), modulus-11 valid.

A 10-digit NHS number is 9 digits plus a check digit: 11 - (sum of digit_i * (11 - i)) mod 11,
with 11 -> 0 and 10 -> invalid (such prefixes are never used). Starting with 999 leaves six free
digits: 909,091 valid numbers. Larger populations also take numbers starting 990 to 998, which
are in the same never-issued range (9000000000-9999999999, `nhs_number.REGION_SYNTHETIC`):
about nine million in all (`capacity()`). A population that fits in 999 gets exactly the
numbers it always did; the generator refuses more than `capacity()` rather than leave the
never-issued range.
"""

from __future__ import annotations

from functools import cache

import numpy as np

PREFIX = 999_000_000          # the first 9 digits are PREFIX + six free digits
WIDER = 990_000_000           # then 990 000 000 to 998 999 999: never issued either
WIDER_SPAN = 9_000_000
_WEIGHTS = np.array([10, 9, 8, 7, 6, 5, 4, 3, 2], dtype=np.int64)


def digits(numbers: np.ndarray, width: int = 10) -> np.ndarray:
    """Split integers into a (n, width) array of decimal digits, most significant first."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return (np.asarray(numbers, dtype=np.int64)[:, None] // powers) % 10


def from_digits(d: np.ndarray) -> np.ndarray:
    """Inverse of `digits`."""
    powers = 10 ** np.arange(d.shape[1] - 1, -1, -1, dtype=np.int64)
    return (d.astype(np.int64) * powers).sum(axis=1)


def check_digit(prefix9: np.ndarray) -> np.ndarray:
    """Check digit for 9-digit prefixes; 10 means the prefix cannot be a valid number."""
    total = (digits(prefix9, 9) * _WEIGHTS).sum(axis=1)
    check = 11 - total % 11
    return np.where(check == 11, 0, check)


def is_valid(numbers: np.ndarray) -> np.ndarray:
    """Modulus-11 validity of 10-digit integers."""
    numbers = np.asarray(numbers, dtype=np.int64)
    check = check_digit(numbers // 10)
    return (check != 10) & (check == numbers % 10)


@cache
def _free_digit_sums() -> np.ndarray:
    """The weighted sum of the six free digits (weights 7 to 2), for 000000 to 999999."""
    return (digits(np.arange(1_000_000, dtype=np.int64), 6) * _WEIGHTS[3:]).sum(axis=1)


def _valid_prefixes(start: int = PREFIX, span: int = 1_000_000) -> np.ndarray:
    """Prefixes in [start, start + span) (whole millions) with a usable check digit, ascending.

    The check digit is 10 (unusable) exactly when the weighted sum is 1 modulo 11; within a
    million the first three digits add a constant to the free digits' sums.
    """
    free = _free_digit_sums()
    blocks = []
    for at in range(start, start + span, 1_000_000):
        fixed = int((digits(np.array([at]), 9)[0] * _WEIGHTS).sum())
        blocks.append(at + np.flatnonzero((fixed + free) % 11 != 1))
    return np.concatenate(blocks)


@cache
def capacity() -> int:
    """How many distinct valid never-issued NHS numbers the generator can hand out."""
    return int(_valid_prefixes().size + _valid_prefixes(WIDER, WIDER_SPAN).size)


def allocate(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` distinct valid never-issued NHS numbers in random order; 999 ones while they last."""
    prefixes = _valid_prefixes()
    if n <= prefixes.size:
        chosen = rng.choice(prefixes, size=n, replace=False)
        return chosen * 10 + check_digit(chosen)
    wider = _valid_prefixes(WIDER, WIDER_SPAN)
    if n > prefixes.size + wider.size:
        raise ValueError(f"at most {prefixes.size + wider.size} persons: the never-issued "
                         "NHS number range used here holds no more valid numbers")
    chosen = rng.permutation(np.concatenate(
        [prefixes, rng.choice(wider, size=n - prefixes.size, replace=False)]))
    return chosen * 10 + check_digit(chosen)


def mistype(numbers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keyboard errors that fail modulus 11: one digit changed, or two neighbours transposed.

    Only digits 4-10 are touched, so the result stays inside the 999 range. A single changed
    digit or a transposition of two different neighbouring digits always breaks the check;
    anything that happens to survive (e.g. equal neighbours) is retried.
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    out = numbers.copy()
    todo = np.arange(out.size)
    while todo.size:
        d = digits(numbers[todo])
        rows = np.arange(todo.size)
        transpose = rng.random(todo.size) < 0.4
        pos = rng.integers(3, 9, size=todo.size)           # transpose pos and pos+1 (<= 9)
        a, b = d[rows, pos], d[rows, pos + 1]
        d[rows[transpose], pos[transpose]] = b[transpose]
        d[rows[transpose], pos[transpose] + 1] = a[transpose]
        change = ~transpose
        cpos = rng.integers(3, 10, size=todo.size)
        delta = rng.integers(1, 10, size=todo.size)
        d[rows[change], cpos[change]] = (d[rows[change], cpos[change]] + delta[change]) % 10
        out[todo] = from_digits(d)
        todo = todo[is_valid(out[todo]) | (out[todo] == numbers[todo])]
    return out
