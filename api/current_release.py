"""The release in force for each purpose, held in memory and reloaded when it changes.

Which run answers a purpose, and whom it holds back, is decided by `pipeline.serving` (the
same answer the command line's export gets); this module keeps the loaded run
(api.scored_run) and notices a new run or new opt-outs, checked at most every
`refresh_seconds`. A loaded run carries the model that scored it and its approval
(`Release.provenance`), shown beside every list.

Two views of one run: `current` is the run less the persons an opt-out in force now withholds
(record-level answers: an opt-out is honoured at the moment of use), `as_scored` the run as it
was scored, with the opt-outs in force then applied and recorded with it (published tables:
a late opt-out takes effect there at the next run, never between, so comparing two answers
over time cannot single out whoever opted out).
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine

from api.scored_run import NoRun, Release, load_release, model_provenance
from governance.geography import Geography
from governance.model_approvals import get_model
from governance.settings import Settings
from pipeline.serving import ServingRun, optout_mark, serving_run, withheld_person_keys


class ReleaseStore:
    """The release in force for each purpose, reloaded when a newer run or opt-out appears."""

    def __init__(self, settings: Settings, engine: Engine, refresh_seconds: float) -> None:
        self.settings = settings
        self.engine = engine
        self.refresh_seconds = refresh_seconds
        # run id -> the run, every person. Keyed by id alone, safely: pipeline.score never
        # rewrites a complete run (its id digests the extracts, date, seed, purpose, model
        # and opt-outs applied; the same inputs return the run already made), so one id
        # names one content for good; a voided run stops serving and `forget` drops it.
        self._runs: dict[str, Release] = {}
        # purpose -> (checked at, (run, opt-out mark), the run less those withheld now,
        # the run as scored)
        self._views: dict[str, tuple[float, tuple[ServingRun | None, tuple],
                                     Release | None, Release | None]] = {}
        self._lock = threading.Lock()
        self._geography: tuple[float, Geography] | None = None

    def geography(self) -> Geography:
        """The geography table aggregates are published on (`policies/geography.csv` or an IG
        lead's version), read again at most every `refresh_seconds`."""
        found = self._geography
        if found is None or time.monotonic() - found[0] >= self.refresh_seconds:
            found = (time.monotonic(), Geography.load(engine=self.engine))
            self._geography = found
        return found[1]

    def forget(self) -> None:
        """Drop every loaded run, so the next request asks again which run serves (after a
        destruction voided runs: what it removed is not served from memory either)."""
        with self._lock:
            self._views.clear()
            self._runs.clear()

    def _load(self, run: ServingRun) -> Release:
        """A run read for serving, with the model that scored it and its approval."""
        release = load_release(self.settings, run.run_id, run.summary)
        model = run.summary.get("model_id")
        release.provenance = model_provenance(
            run.summary, get_model(self.engine, model) if model else None)
        return release

    def fresh(self, purpose: str) -> Release | None:
        """The release checked within `refresh_seconds` (no I/O), else None."""
        found = self._views.get(purpose)
        if found is not None and found[2] is not None \
                and time.monotonic() - found[0] < self.refresh_seconds:
            return found[2]
        return None

    def fresh_as_scored(self, purpose: str) -> Release | None:
        """The run as scored (`as_scored`) checked within `refresh_seconds` (no I/O), else
        None."""
        found = self._views.get(purpose)
        if found is not None and found[3] is not None \
                and time.monotonic() - found[0] < self.refresh_seconds:
            return found[3]
        return None

    def as_scored(self, purpose: str) -> Release:
        """The run answering `purpose` as it was scored: every person it scored, the opt-outs
        in force when it was made applied then (recorded with the run), none withheld since.
        Published (anonymous) tables are made from it, so one late opt-out changes none of
        them until the next run; raises NoRun when no run may answer the purpose."""
        while True:  # a `forget` between the two steps drops the view: ask again
            self.current(purpose)
            found = self._views.get(purpose)
            if found is not None and found[3] is not None:
                return found[3]

    def current(self, purpose: str) -> Release:
        """The release answering `purpose`; raises NoRun when no run may answer it."""
        release = self.fresh(purpose)
        if release is not None:
            return release
        with self._lock:
            release = self.fresh(purpose)  # another thread checked while this one waited
            if release is not None:
                return release
            run, mark = serving_run(self.engine, purpose), optout_mark(self.engine)
            previous = self._views.get(purpose)
            run_id = run.run_id if run is not None else None
            base: Release | None = None
            if previous is not None and previous[1][0] is not None \
                    and previous[1][0].run_id == run_id and previous[1][1] == mark:
                release, base = previous[2], previous[3]
            elif run is None:
                release = None
            else:
                base = self._runs.get(run.run_id) or self._load(run)
                in_use = {v[1][0].run_id for k, v in self._views.items()
                          if k != purpose and v[1][0] is not None}
                self._runs = {r: b for r, b in self._runs.items() if r in in_use}
                self._runs[run.run_id] = base
                withheld = withheld_person_keys(self.settings, self.engine, purpose, run)
                release = base.withholding(purpose, withheld)
            self._views[purpose] = (time.monotonic(), (run, mark), release, base)
            if release is None:
                raise NoRun(f"no score run for the {purpose} purpose has completed yet")
            return release
