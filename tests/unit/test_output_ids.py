"""Impact output ids are audited as resources, so none may read as an NHS number: a time
ending `071034` and a digest opening `5821` did, by chance, and the audit refused the run."""

from __future__ import annotations

import datetime as real_dt

from governance import audit
from pipeline import impact


class _FrozenClock:
    """Stands in for the `datetime` module in pipeline.impact: always 07:10:34 UTC."""

    UTC = real_dt.UTC

    class datetime:  # noqa: N801 - the name the module uses
        @staticmethod
        def now(tz=None) -> real_dt.datetime:
            return real_dt.datetime(2026, 12, 5, 7, 10, 34, tzinfo=tz)


def test_no_output_id_reads_as_an_nhs_number(monkeypatch):
    monkeypatch.setattr(impact, "dt", _FrozenClock)
    ids = [impact.output_id("vulnerable", str(i)) for i in range(3000)]
    assert all(i.startswith("vulnerable-20261205T071034-") and len(i) <= 40 for i in ids)
    assert not [i for i in ids if audit.holds_identifier(i)]
    assert len(set(ids)) == len(ids)
