"""Linkage and scoring jobs started through the API, run in a background thread.

A job calls the stage's own function (`cli.link_cmd.run_link`, `cli.score_cmd.run_score`) with
the caller as the acting user, so the stage audits the run under their name. Its state is a
small JSON file under `$HAVEN_HOME/jobs/`, readable by every API process; one job runs at a
time, across processes (a file lock covers the check and the start). A job whose process died
is reported as failed.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from cli.context import Haven
from governance import store
from governance.audit import Actor
from governance.keys import KeyProvider
from governance.settings import Settings

JOB_ID = re.compile(r"^job-\d{14}-[0-9a-f]{6}$")
STAGES = {"link": ("cli.link_cmd", "run_link"), "score": ("cli.score_cmd", "run_score")}


class JobRefused(Exception):
    """The job cannot start (another is running, or the stage is not installed)."""


class ApiHaven(Haven):
    """The command line's handle, with the API's engine and keys and the caller as actor."""

    def __init__(self, settings: Settings, engine: Engine, keys: KeyProvider,
                 actor: Actor) -> None:
        super().__init__(settings)
        self.__dict__["engine"] = engine
        self.__dict__["keys"] = keys
        self._actor = actor

    @property
    def actor(self) -> Actor:
        return self._actor


def stage(kind: str) -> Callable[..., Any] | None:
    module, name = STAGES[kind]
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def accepts(function: Callable[..., Any], parameter: str) -> bool:
    return parameter in inspect.signature(function).parameters


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
    def __init__(self, settings: Settings, engine: Engine, keys: KeyProvider) -> None:
        self.settings = settings
        self.engine = engine
        self.keys = keys
        self.folder = settings.home / "jobs"
        self._lock = threading.Lock()
        self.threads: dict[str, threading.Thread] = {}

    def _path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.json"

    def _save(self, job: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(job["job_id"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(job), encoding="utf-8")
        os.replace(tmp, path)

    def get(self, job_id: str) -> dict[str, Any] | None:
        if not JOB_ID.match(job_id):
            return None
        try:
            job = json.loads(self._path(job_id).read_text(encoding="utf-8"))
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

    def start(self, kind: str, actor: Actor, **params: Any) -> dict[str, Any]:
        function = stage(kind)
        if function is None:
            raise JobRefused(f"the {kind} stage is not installed")
        unknown = [p for p, v in params.items() if v is not None and not accepts(function, p)]
        if unknown:
            raise JobRefused(f"the {kind} stage cannot take {', '.join(unknown)} yet")
        # The thread lock for this process, the file lock for the API's other processes.
        with self._lock, store.data_lock(self.settings, "jobs"):
            if self._busy():
                raise JobRefused("a job is already running")
            job = {"job_id": f"job-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}",
                   "kind": kind, "status": "queued", "org": actor.org, "user": actor.user,
                   "created_at": _now(), "finished_at": None, "result": None, "error": None,
                   "pid": os.getpid()}
            self._save(job)
        haven = ApiHaven(self.settings, self.engine, self.keys, actor)
        arguments = {k: v for k, v in params.items() if v is not None}
        thread = threading.Thread(target=self._run, args=(job, function, haven, arguments),
                                  name=f"haven-{job['job_id']}", daemon=True)
        self.threads[job["job_id"]] = thread
        thread.start()
        return job

    def _run(self, job: dict[str, Any], function: Callable[..., Any], haven: Haven,
             arguments: dict[str, Any]) -> None:
        job["status"] = "running"
        self._save(job)
        try:
            result = function(haven, **arguments)
        except Exception as exc:  # noqa: BLE001 - reported on the job, by kind only
            job.update(status="failed", error=f"{type(exc).__name__} in the {job['kind']} stage")
        else:
            job.update(status="complete", result=_summary(result))
        job["finished_at"] = _now()
        self._save(job)


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
