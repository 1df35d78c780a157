"""Ids made from a digest (runs, models): the digest written in the letters a-p.

A 12-character hex digest holds ten digits in a row about once in 40 ids, and one in eleven of
those passes the NHS number check, so by chance a run id would be refused by the audit log (which
refuses anything shaped like an NHS number, governance/audit.py) or withheld from its trail.
Letters carry the same 48 bits and can never be read as a number.
"""

from __future__ import annotations

import hashlib


def digest_letters(text: str, length: int = 12) -> str:
    """The first `length` half-bytes of the SHA-256 of `text`, as letters a-p (0 -> a, f -> p)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:length]
    return "".join(chr(ord("a") + int(c, 16)) for c in digest)
