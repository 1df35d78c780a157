"""Every request leaves one audit entry: the middleware writes it before the response starts.

The route's guard fills in who, in which role and organisation, for which purpose, which
action on which resource, and how many records were answered; the middleware adds the outcome
from the status code and commits the entry (`governance.audit.record_many`) before the first byte of
the response leaves. An entry holding an identifier is written with it withheld
(`governance.audit.redact_entry`), never dropped. If the entry cannot be written, the caller
gets 503, never unaudited data.

Entries from concurrent requests are committed together (group commit: one transaction for
whatever is waiting), so the hash chain's single head row is not a queue of transactions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from api.problems import PROBLEM_JSON, problem_body
from governance import audit

logger = logging.getLogger("haven.api")
BATCH = 256


@dataclass
class AuditNote:
    """What one request's audit entry will say (filled in by the guard and the route)."""

    actor: str = "anonymous"
    role: str = "anonymous"
    org: str = "-"
    purpose: str = "-"
    action: str = "request"
    resource: str = "unrouted"
    n_records: int = 0
    outcome: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    return {401: "unauthenticated", 403: "denied", 404: "not_found"}.get(
        status, "error" if status >= 500 else "refused")


class AuditWriter:
    """A thread committing queued audit entries in batches (`governance.audit.record_many`);
    `write` waits for its entry's commit.

    The thread is handed each turn of an event loop's entries at once, and wakes a batch's
    waiting requests with one call into their loop: under load a turn and a batch hold tens
    of requests, and waking a thread costs more than appending to a list."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: queue.SimpleQueue[list[_Waiting] | None] = queue.SimpleQueue()
        self._pending: dict[asyncio.AbstractEventLoop, list[_Waiting]] = {}
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def _ensure_started(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._start_lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="haven-audit",
                                                    daemon=True)
                    self._thread.start()

    async def write(self, entry: dict[str, Any]) -> None:
        """Queue one entry and return once it is committed (raises if it could not be)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiting = self._pending.get(loop)
        if waiting is None:  # the first entry of this turn: hand them over after it
            waiting = self._pending[loop] = []
            loop.call_soon(self._hand_over, loop)
        waiting.append((entry, loop, future))
        await future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the writer thread what this loop's last turn queued (runs on the loop)."""
        self._ensure_started()
        self._queue.put(self._pending.pop(loop))

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = list(item)
            stop = False
            while len(batch) < BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.extend(more)
            _settle(batch, self._commit([entry for entry, _, _ in batch]))
            if stop:
                return

    def _commit(self, entries: list[dict[str, Any]]) -> list[BaseException | None]:
        """Commit the entries together; when that fails, one by one, so that one bad entry
        does not lose the others. Returns each entry's error (None: committed)."""
        try:
            audit.record_many(self.engine, entries)
        except Exception:  # noqa: BLE001 - retried one by one below
            pass
        else:
            return [None] * len(entries)
        outcomes: list[BaseException | None] = []
        for entry in entries:
            try:
                try:
                    audit.record_many(self.engine, [entry])
                except ValueError:  # it held an identifier: written with that part withheld
                    audit.record_many(self.engine, [audit.redact_entry(entry)])
            except Exception as exc:  # noqa: BLE001 - reported to the waiting request
                logger.error("audit entry could not be written: %s", type(exc).__name__)
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes


_Waiting = tuple[dict[str, Any], asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def _settle(batch: list[_Waiting], outcomes: list[BaseException | None]) -> None:
    """Tell each waiting request its entry's outcome: one call into each event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None],
                                                        BaseException | None]]] = {}
    for (_, loop, future), outcome in zip(batch, outcomes, strict=True):
        by_loop.setdefault(loop, []).append((future, outcome))
    for loop, waiting in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, waiting)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            logger.warning("audit entries committed after their event loop closed")


def _resolve(waiting: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for future, outcome in waiting:
        if future.done():  # the request was cancelled (the client went away)
            continue
        if outcome is None:
            future.set_result(None)
        else:
            future.set_exception(outcome)


class AuditMiddleware:
    """ASGI middleware: one audit entry per HTTP request, committed before the response."""

    def __init__(self, app: Any, writer: AuditWriter) -> None:
        self.app = app
        self.writer = writer

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        written = False
        blocked = False

        async def audited_send(message: dict) -> None:
            nonlocal written, blocked
            if message["type"] == "http.response.start":
                written = True
                try:
                    await self.writer.write(self._entry(scope, state, message["status"]))
                except Exception:  # noqa: BLE001 - refuse to answer without an audit entry
                    blocked = True
                    body = _unavailable()
                    await send({"type": "http.response.start", "status": 503,
                                "headers": [(b"content-type", PROBLEM_JSON.encode()),
                                            (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                    return
            if blocked:
                return
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            if not written:
                try:
                    await self.writer.write(self._entry(scope, state, 500))
                except Exception:  # noqa: BLE001 - the original error matters more
                    logger.error("audit entry for a failed request could not be written")
            raise

    @staticmethod
    def _entry(scope: dict, state: dict, status: int) -> dict[str, Any]:
        note: AuditNote = state.get("audit_note") or AuditNote()
        detail = {"method": scope.get("method", ""), "status": status, **note.detail}
        return {"actor": note.actor, "role": note.role, "org": note.org,
                "purpose": note.purpose, "action": note.action, "resource": note.resource,
                "n_records": int(note.n_records) if status < 400 else 0,
                "outcome": outcome_of(status) if status >= 400 else (note.outcome or "ok"),
                "detail": detail}


def _unavailable() -> bytes:
    return json.dumps(problem_body(503, "the request could not be audited, so it was not "
                                        "answered")).encode()
