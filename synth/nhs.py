"""Synthetic NHS numbers: the 999 range only (never issued to a person), modulus-11 valid.

A 10-digit NHS number is 9 digits plus a check digit: 11 - (sum of digit_i * (11 - i)) mod 11,
with 11 -> 0 and 10 -> invalid (such prefixes are never used). Starting with 999 leaves six free
digits, so at most `capacity()` distinct valid numbers exist; the generator refuses larger
populations rather than leave the safe range.
"""

from __future__ import annotations

import numpy as np

PREFIX = 999_000_000          # the first 9 digits are PREFIX + six free digits
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


def _valid_prefixes() -> np.ndarray:
    prefixes = PREFIX + np.arange(1_000_000, dtype=np.int64)
    return prefixes[check_digit(prefixes) != 10]


def capacity() -> int:
    """How many distinct valid NHS numbers the 999 range holds."""
    return int(_valid_prefixes().size)


def allocate(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` distinct valid 999-range NHS numbers in random order."""
    prefixes = _valid_prefixes()
    if n > prefixes.size:
        raise ValueError(f"at most {prefixes.size} persons: the 999 NHS number range holds "
                         f"no more valid numbers")
    chosen = rng.choice(prefixes, size=n, replace=False)
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
