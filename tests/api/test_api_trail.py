"""The API's audit writer: every request's entry committed, in groups, before it answers."""

from __future__ import annotations

import asyncio
import logging

import pytest
from api_matrix import World, build_world
from sqlalchemy import event, func, select

from api import trail
from api.config import ApiConfig
from api.trail import AuditWriter
from governance import audit
from governance.schema import audit_log

NHS_LIKE = "9434765919"  # a valid NHS number


def entry(i: int, **changes) -> dict:
    return {"actor": "ana", "role": "analyst", "org": "X26", "purpose": "commissioning",
            "action": "aggregate.read", "resource": f"/aggregates/{i}", "n_records": i,
            "outcome": "ok", "detail": {"method": "GET", "status": 200}, **changes}


def stored(haven, resource: str) -> list[dict]:
    with haven.engine.connect() as connection:
        return [dict(r) for r in connection.execute(
            select(audit_log).where(audit_log.c.resource == resource)).mappings()]


def test_concurrent_writes_are_committed_together_before_each_returns(haven) -> None:
    commits = []
    event.listen(haven.engine, "commit", lambda _connection: commits.append(1))
    writer = AuditWriter(haven.engine)
    seen_on_return = []

    async def one(i: int) -> None:
        await writer.write(entry(i))
        seen_on_return.append(len(stored(haven, f"/aggregates/{i}")))

    async def many() -> None:
        await asyncio.gather(*(one(i) for i in range(200)))

    try:
        asyncio.run(many())
    finally:
        writer.close()
    assert seen_on_return == [1] * 200  # committed before `write` returned
    assert len(commits) == 1  # one turn of the loop's entries: one transaction
    result = audit.verify(haven.engine)
    assert result.ok and result.entries == 200


def test_an_entry_holding_an_identifier_keeps_the_rest_of_its_batch(haven) -> None:
    writer = AuditWriter(haven.engine)

    async def batch() -> None:
        await asyncio.gather(writer.write(entry(1)),
                             writer.write(entry(2, detail={"method": "GET", "status": 403,
                                                           "sender": NHS_LIKE})),
                             writer.write(entry(3)))

    try:
        asyncio.run(batch())
    finally:
        writer.close()
    assert [stored(haven, f"/aggregates/{i}")[0]["detail"]["status"] for i in (1, 2, 3)] == \
        [200, 403, 200]
    withheld = stored(haven, "/aggregates/2")[0]["detail"]  # the identifier alone withheld
    assert withheld == {"method": "GET", "status": 403, "sender": "(withheld)"}
    assert audit.verify(haven.engine).ok


def test_a_write_that_cannot_be_committed_raises_for_every_waiter(haven, monkeypatch,
                                                                   caplog) -> None:
    def fail(*_args, **_kwargs):
        raise RuntimeError("the database is gone")

    monkeypatch.setattr(trail.audit, "record_many", fail)
    writer = AuditWriter(haven.engine)

    async def batch() -> list:
        return await asyncio.gather(*(writer.write(entry(i)) for i in range(5)),
                                    return_exceptions=True)

    try:
        with caplog.at_level(logging.ERROR, logger="haven.api"):
            outcomes = asyncio.run(batch())
    finally:
        writer.close()
    assert [type(o) for o in outcomes] == [RuntimeError] * 5
    assert "audit entry could not be written: RuntimeError" in caplog.text
    assert "gone" not in caplog.text


def test_no_answer_leaves_without_its_audit_entry(haven, tmp_path, monkeypatch) -> None:
    world: World = build_world(haven, tmp_path, ApiConfig(refresh_seconds=0,
                                                          token_cache_seconds=0))
    assert world.call("analyst", "GET", "/aggregates?by=tier").status_code == 200

    def fail(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(trail.audit, "record_many", fail)
    response = world.call("analyst", "GET", "/aggregates?by=tier")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert "cells" not in response.text and "could not be audited" in response.text


def test_waiters_gone_or_loops_closed_are_passed_over(caplog) -> None:
    loop = asyncio.new_event_loop()
    cancelled, failed, done = loop.create_future(), loop.create_future(), loop.create_future()
    cancelled.cancel()
    trail._resolve([(cancelled, None), (failed, RuntimeError("x")), (done, None)])
    assert isinstance(failed.exception(), RuntimeError) and done.result() is None
    closed = asyncio.new_event_loop()
    waiting = closed.create_future()
    closed.close()
    with caplog.at_level(logging.WARNING, logger="haven.api"):
        trail._settle([(entry(1), closed, waiting), (entry(2), loop, loop.create_future())],
                      [None, None])
    assert "after their event loop closed" in caplog.text and not waiting.done()
    loop.close()


def test_close_drains_what_was_queued(haven) -> None:
    writer = AuditWriter(haven.engine)

    async def some() -> None:
        await asyncio.gather(*(writer.write(entry(i)) for i in range(3)))

    asyncio.run(some())
    writer.close()
    writer.close()  # a second close is harmless
    with haven.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(audit_log)).scalar() == 3


def test_entries_queued_before_a_close_are_committed_first(haven) -> None:
    loop = asyncio.new_event_loop()
    writer = AuditWriter(haven.engine)
    waiting = [(entry(i), loop, loop.create_future()) for i in range(3)]
    writer._queue.put(waiting[:2])
    writer._queue.put(waiting[2:])
    writer._queue.put(None)  # closing, with the batch still being gathered
    writer._ensure_started()
    writer._thread.join(timeout=10)
    assert not writer._thread.is_alive()
    loop.run_until_complete(asyncio.gather(*(future for _, _, future in waiting)))
    loop.close()
    assert audit.verify(haven.engine).entries == 3


@pytest.mark.parametrize("status, outcome", [(200, "ok"), (401, "unauthenticated"),
                                             (403, "denied"), (404, "not_found"),
                                             (422, "refused"), (503, "error")])
def test_outcome_of_a_status(status: int, outcome: str) -> None:
    assert trail.outcome_of(status) == outcome
