"""Who a practice's MDT has reviewed, and when: so the next case-finding list shows who is new.

A mark is a person key (a pseudonym), the meeting's date, who marked it and when, appended to
one JSON-lines file per practice (`governance.layout.Layout.mdt_reviews`) under a lock, and
audited with a count (never a person key). The latest mark per person counts.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Sequence

from governance import audit, store
from governance.settings import Settings
from pipeline.context import Context

_cache: dict[str, tuple[float, int, dict[str, dt.date]]] = {}
_cache_lock = threading.Lock()


def mark(ctx: Context, practice: str, person_keys: Sequence[str], on: dt.date) -> int:
    """Record that the practice's MDT reviewed these persons at its meeting on `on`."""
    keys = list(dict.fromkeys(person_keys))
    if not keys:
        return 0
    path = ctx.settings.layout.mdt_reviews(practice)
    at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    lines = "".join(json.dumps({"person_key": key, "reviewed_on": on.isoformat(),
                                "by": ctx.actor.user, "at": at}) + "\n" for key in keys)
    with store.data_lock(ctx.settings, "mdt-reviews"):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(lines)
    audit.log(ctx.engine, ctx.actor, "mdt_review.mark", f"practice/{practice}",
              n_records=len(keys), detail={"reviewed_on": on.isoformat()})
    return len(keys)


def latest(settings: Settings, practice: str) -> dict[str, dt.date]:
    """Each reviewed person's latest meeting date (read again only when the file changed)."""
    path = settings.layout.mdt_reviews(practice)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    key = str(path)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] == stat.st_mtime and hit[1] == stat.st_size:
            return hit[2]
    found: dict[str, dt.date] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                item = json.loads(line)
                day = dt.date.fromisoformat(item["reviewed_on"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
            before = found.get(item["person_key"])
            if before is None or day > before:
                found[item["person_key"]] = day
    with _cache_lock:
        _cache[key] = (stat.st_mtime, stat.st_size, found)
    return found
