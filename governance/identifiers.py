"""Ids made from a digest (runs, models), and the loose NHS number check of free-text reasons.

Ids made from a digest are written in the letters a-p.

A 12-character hex digest holds ten digits in a row about once in 40 ids, and one in eleven of
those passes the NHS number check, so by chance a run id would be refused by the audit log (which
refuses anything shaped like an NHS number, governance/audit.py) or withheld from its trail.
Letters carry the same 48 bits and can never be read as a number.

A free-text reason (an incident's, a model decision's) is read by people and kept, so it may not
hold an NHS number however it is written: `holds_nhs_number_loosely` (red-team R5) reads digits
separated by single spaces, dots, hyphens or slashes as one number, and a letter as the end of
one, where the audit log's own redaction (governance/audit.py) only knows 3-3-4 grouping.
"""

from __future__ import annotations

import hashlib
import re

import nhs_number

# Digits with at most one separator between two of them; anything else (a letter, two spaces,
# a colon) ends the run.
_RUN = re.compile(r"\d(?:[ ./-]?\d)*")
_GROUP = re.compile(r"\d+")
NHS_DIGITS = 10


def digest_letters(text: str, length: int = 12) -> str:
    """The first `length` half-bytes of the SHA-256 of `text`, as letters a-p (0 -> a, f -> p)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:length]
    return "".join(chr(ord("a") + int(c, 16)) for c in digest)


def holds_nhs_number_loosely(text: str) -> bool:
    """Whether `text` holds ten digits that pass the NHS number check (modulus 11), written in
    any grouping: within a run of digits joined by single separators (space, dot, hyphen,
    slash; a letter ends a run), any consecutive whole groups of exactly ten digits. So
    "99 92 37 59 73", "9 9 9 2 3 7 5 9 7 3" and "ref 9992375973abcdef" are caught, while a
    date-time ("2026-12-04 12:30") or a 12-digit reference is not (unless ten of its whole
    groups happen to pass the check)."""
    for run in _RUN.finditer(text or ""):
        groups = _GROUP.findall(run.group(0))
        for start in range(len(groups)):
            digits = ""
            for group in groups[start:]:
                digits += group
                if len(digits) >= NHS_DIGITS:
                    break
            if len(digits) == NHS_DIGITS and nhs_number.is_valid(digits):
                return True
    return False
