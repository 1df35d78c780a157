"""Ids made from digests never look like an NHS number to the audit log (governance/identifiers)."""

from __future__ import annotations

import hashlib
import itertools

from governance.audit import holds_identifier
from governance.identifiers import digest_letters


def test_a_hex_run_id_can_look_like_an_nhs_number_and_a_lettered_one_never_does():
    """The hazard: a 12-hex digest id is by chance refused by the audit log; the same digest in
    letters never is, and it is as distinct as the hex one (the same 48 bits)."""
    clashing = next(text for text in (f"run {i}" for i in itertools.count())
                    if holds_identifier(
                        f"score-2025-04-01-{hashlib.sha256(text.encode()).hexdigest()[:12]}"))
    lettered = digest_letters(clashing)
    assert not holds_identifier(f"score-2025-04-01-{lettered}")
    assert len(lettered) == 12 and set(lettered) <= set("abcdefghijklmnop")
    texts = [f"run {i}" for i in range(5000)]
    assert len({digest_letters(t) for t in texts}) == len(
        {hashlib.sha256(t.encode()).hexdigest()[:12] for t in texts}) == 5000
    assert not any(holds_identifier(f"score-2025-04-01-{digest_letters(t)}") for t in texts)
