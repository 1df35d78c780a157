"""Ids made from digests never look like an NHS number to the audit log, and the loose NHS number
check of free-text reasons catches any grouping (governance/identifiers)."""

from __future__ import annotations

import hashlib
import itertools

import nhs_number
import pytest

from governance.audit import holds_identifier
from governance.identifiers import digest_letters, holds_nhs_number_loosely


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


NUMBER = "9992375973"  # synthetic, 999 range, passes the modulus-11 check
HIDDEN = ["Mrs X 99 92 37 59 73 LS15 0 needs oxygen", "Mrs X 9992 375 973",
          "Mrs X 9 9 9 2 3 7 5 9 7 3", "Mrs X ref 9992375973abcdef", "Mrs X 999 237 5973",
          "#9992375973#", "999.237.5973", "999/237/5973", "9992-375-973", "ref 12 9992375973 4",
          "x9992375973"]
PLAIN = ["flood on 2026-12-04 12:30 at the depot", "ticket 123456789012 raised",
         "Mrs X 9992375974 needs oxygen", "99 92 37 59 7", "LS15 0 and LS16 1 flooded",
         "phone 0113 243 3144", "99923759731", "", "calibration poor"]


def test_the_forms_are_a_valid_number_and_the_plain_ones_hold_none_whole():
    """The fixtures mean what they say: the number passes the check, its neighbour fails."""
    assert nhs_number.is_valid(NUMBER) and not nhs_number.is_valid(NUMBER[:-1] + "4")


@pytest.mark.parametrize("text", HIDDEN)
def test_an_nhs_number_in_any_grouping_is_caught(text):
    """Red-team R5: spaced pairs, 4-3-3, one digit at a time, glued to letters, other
    separators, and beside other groups in the same run are all read as the number."""
    assert holds_nhs_number_loosely(text)


@pytest.mark.parametrize("text", PLAIN)
def test_dates_references_and_failing_numbers_are_not_caught(text):
    """A date-time, a 12-digit reference, ten digits failing the check, nine digits, postcode
    sectors, a phone number and eleven digits in one group are left alone."""
    assert not holds_nhs_number_loosely(text)
