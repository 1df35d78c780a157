"""Linkage and scoring jobs started through the API, run in a background thread.

A job calls the pipeline (`pipeline.link.link`, `pipeline.score.score`) with the caller as the
acting user, so the stage audits the run under their name. Its state is a small JSON file under
the data directory (governance.layout), readable by every API process; one job runs at a time,
across processes (a file lock covers the check and the start). A job whose process died is
reported as failed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from governance import store
from governance.audit import Actor
from pipeline.context import Context
from pipeline.link import link
from pipeline.score import score

JOB_ID = re.compile(r"^job-\d{14}-[0-9a-f]{6}$")
PROGRESS_LINES = 20
SERVER_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:\\|~?/)\S*")


class JobRefused(Exception):
    """The job cannot start (another is running)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process
        return True
    return True


class JobRunner:
    """Starts pipeline stages in a thread and keeps each job's state as a file."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.settings = context.settings
        self.folder = context.settings.layout.jobs_dir
        self._lock = threading.Lock()
        self.threads: dict[str, threading.Thread] = {}

    def _save(self, job: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.settings.layout.job(job["job_id"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(job), encoding="utf-8")
        os.replace(tmp, path)

    def get(self, job_id: str) -> dict[str, Any] | None:
        if not JOB_ID.match(job_id):
            return None
        try:
            job = json.loads(self.settings.layout.job(job_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if job["status"] in ("queued", "running") and not _alive(job.get("pid", 0)):
            job.update(status="failed", error="the process running the job stopped",
                       finished_at=job.get("finished_at") or _now())
            self._save(job)
        return job

    def _busy(self) -> bool:
        if not self.folder.exists():
            return False
        for path in self.folder.glob("job-*.json"):
            job = self.get(path.stem)
            if job and job["status"] in ("queued", "running"):
                return True
        return False

    def start_link(self, actor: Actor, retrain: bool = False) -> dict[str, Any]:
        """Update the person index as `actor` (`retrain`: every kept linkage model
        forgotten, as `haven link --retrain`)."""
        ctx = self.context.acting_as(actor)
        return self._start("link", actor, lambda say: link(ctx, progress=say, retrain=retrain),
                           {"retrain": retrain})

    def start_score(self, actor: Actor, at: dt.date, seed: int = 0,
                    purpose: str = "commissioning", model: str | None = None
                    ) -> dict[str, Any]:
        """Score at `at` for `purpose` as `actor` (with `model` instead of the validation's
        choice when given)."""
        ctx = self.context.acting_as(actor)
        return self._start("score", actor, lambda say: score(
            ctx, at, seed=seed, purpose=purpose, model=model, progress=say))

    def _start(self, kind: str, actor: Actor, work: Callable[[Callable[[str], None]], Any],
               options: dict[str, Any] | None = None) -> dict[str, Any]:
        # The thread lock for this process, the file lock for the API's other processes.
        with self._lock, store.data_lock(self.settings, "jobs"):
            if self._busy():
                raise JobRefused("a job is already running")
            job = {"job_id": f"job-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}",
                   "kind": kind, "status": "queued", "org": actor.org, "user": actor.user,
                   "created_at": _now(), "finished_at": None, "result": None, "error": None,
                   "pid": os.getpid(), "options": options or {}}
            self._save(job)
        thread = threading.Thread(target=self._run, args=(job, work),
                                  name=f"haven-{job['job_id']}", daemon=True)
        self.threads[job["job_id"]] = thread
        thread.start()
        return job

    def _run(self, job: dict[str, Any], work: Callable[[Callable[[str], None]], Any]) -> None:
        job["status"] = "running"
        job["progress"] = []
        self._save(job)

        def say(line: str) -> None:  # the stage's progress lines, the latest few kept
            job["progress"] = [*job["progress"], _progress_line(line)][-PROGRESS_LINES:]
            self._save(job)

        try:
            result = work(say)
        except Exception as exc:  # noqa: BLE001 - reported on the job, by kind only
            job.update(status="failed", error=f"{type(exc).__name__} in the {job['kind']} stage")
        else:
            job.update(status="complete", result=_summary(result))
        job["finished_at"] = _now()
        self._save(job)


def _progress_line(line: str) -> str:
    """A stage's progress line as a job may keep it: no path on the server's disks."""
    return SERVER_PATH.sub("(on the server)", line.strip())[:300]


def _summary(result: Any) -> dict[str, Any]:
    """Counts and ids from a stage's result (JSON-safe, nothing row-level, and no path on the
    server's disks)."""
    data = result.to_json() if hasattr(result, "to_json") else result
    if not isinstance(data, dict):
        return {}

    def plain(value: Any) -> bool:
        if isinstance(value, dict):
            return all(isinstance(v, (int, float)) for v in value.values())
        return value is None or isinstance(value, (str, int, float, bool))

    def server_path(value: Any) -> bool:
        return isinstance(value, str) and (value.startswith(("/", "~")) or ":\\" in value)

    return {key: value for key, value in data.items()
            if plain(value) and not server_path(value)}
