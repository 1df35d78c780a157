"""Every request leaves one audit entry: the middleware writes it before the response starts.

The route's guard fills in who, in which role and organisation, for which purpose, which
action on which resource, and how many records were answered; the middleware adds the outcome
from the status code and commits the entry (`governance.audit.record`) before the first byte of
the response leaves. If the entry cannot be written, the caller gets 503, never unaudited data.

Entries from concurrent requests are committed together (group commit: one transaction for
whatever is waiting), so the hash chain's single head row is not a queue of transactions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update

from api.problems import PROBLEM_JSON, problem_body
from governance import audit
from governance.audit import Actor
from governance.schema import audit_head, audit_log

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
    """A thread committing queued audit entries in batches; `write` waits for the commit."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: queue.Queue[tuple[dict[str, Any], Future] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def _ensure_started(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._start_lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="haven-audit",
                                                    daemon=True)
                    self._thread.start()

    def submit(self, entry: dict[str, Any]) -> Future:
        future: Future = Future()
        self._ensure_started()
        self._queue.put((entry, future))
        return future

    async def write(self, entry: dict[str, Any]) -> None:
        await asyncio.wrap_future(self.submit(entry))

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[dict[str, Any], Future]]) -> None:
        try:
            with self.engine.begin() as connection:
                record_many(connection, [entry for entry, _ in batch])
        except Exception:  # one bad entry must not lose the others: write them one by one
            for entry, future in batch:
                try:
                    with self.engine.begin() as connection:
                        try:
                            _record(connection, entry)
                        except ValueError:  # the detail held an identifier: keep the rest
                            _record(connection, {**entry, "detail": {
                                key: entry["detail"].get(key) for key in ("method", "status")}
                                | {"detail_withheld": "it held an identifier"}})
                except Exception as exc:  # noqa: BLE001 - reported to the waiting request
                    logger.error("audit entry could not be written: %s", type(exc).__name__)
                    future.set_exception(exc)
                else:
                    future.set_result(None)
            return
        for _, future in batch:
            future.set_result(None)


def record_many(connection: Any, entries: list[dict[str, Any]]) -> None:
    """Append entries to the chain in one transaction, with the hashes `audit.record` would
    give them one by one: the head row is locked and moved once, and the rows are inserted in
    one statement (one `record` call costs about half a millisecond of statement building,
    which at hundreds of requests a second is the API's largest cost).

    Raises ValueError, writing nothing, when any entry holds an identifier.
    """
    for entry in entries:
        audit._refuse_identifiers(entry["resource"], json.dumps(entry["detail"], default=str))
    locked = connection.execute(
        update(audit_head).where(audit_head.c.id == 1).values(seq=audit_head.c.seq))
    if locked.rowcount == 0:
        connection.execute(insert(audit_head).values(id=1, seq=0, hash=audit.GENESIS))
    head = connection.execute(select(audit_head).where(audit_head.c.id == 1)).one()
    seq, previous, now = head.seq, head.hash, datetime.now(UTC)
    rows = []
    for entry in entries:
        seq += 1
        row = {"seq": seq, "at": now, **entry, "prev_hash": previous}
        row["hash"] = previous = audit.entry_hash(previous, row)
        rows.append(row)
    connection.execute(insert(audit_log), rows)
    connection.execute(update(audit_head).where(audit_head.c.id == 1)
                       .values(seq=seq, hash=previous))


def _record(connection: Any, entry: dict[str, Any]) -> None:
    actor = Actor(user=entry["actor"], role=entry["role"], org=entry["org"],
                  purpose=entry["purpose"])
    audit.record(connection, actor, entry["action"], entry["resource"],
                 n_records=entry["n_records"], outcome=entry["outcome"],
                 detail=entry["detail"])


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
