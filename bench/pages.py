"""Pages benchmark: server time of the MDT case-finding page for a 15,000-patient practice.

Writes a score run of PERSONS synthetic persons (one practice of PRACTICE_SIZE, the rest spread
over other practices) to a fresh data directory, marks a fifth of the practice reviewed at an
MDT meeting, signs an MDT clinician of that practice in through the sign-in form, and requests
the case-finding page with random filters, sorts and pages. Server time is measured inside the
app (from the request reaching it to the last byte of the answer), so it includes everything
a page request does: the session, Casbin, the list, the template and the audit entry's commit.
The JSON route for the same list is timed beside it.

    .venv/bin/python bench/pages.py [--persons 200000] [--practice-size 15000] [--requests 300]

Target: p95 < 300 ms.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import random
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.app import create_app  # noqa: E402
from api.authz import AccessPolicy  # noqa: E402
from api.config import ApiConfig  # noqa: E402
from api.users import add_user  # noqa: E402
from governance.audit import SYSTEM, Actor  # noqa: E402
from governance.db import open_database  # noqa: E402
from governance.schema import runs  # noqa: E402
from governance.settings import Settings  # noqa: E402
from pipeline import mdt_reviews  # noqa: E402
from pipeline.context import Context  # noqa: E402

PRACTICE = "B86001"
TIERS = np.array(["very_high", "high", "moderate", "low"])
AGE_BANDS = ["0-17", "18-44", "45-64", "65-74", "75-84", "85+"]
CONDITIONS = ["COPD", "diabetes", "heart failure", "asthma", "dementia", "hypertension"]
REASONS = [("3 emergency admissions in 12 months", "emergency_admissions"),
           ("9 different medicines in 6 months", "polypharmacy"),
           ("receives home care", "social_care"),
           ("2 A&E attendances in 6 months", "ae_attendances"),
           ("4 long-term conditions", "ltc_count"), ("aged 87", "age")]
SOURCES = ["apc", "ae", "op", "gp_events", "gp_medications", "gp_patients", "social_care"]
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def write_run(settings: Settings, persons: int, practice_size: int, seed: int = 1
              ) -> list[str]:
    """A score run (as `haven score` writes it) and its `runs` row; the practice's keys."""
    rng = np.random.default_rng(seed)
    probability = np.sort(rng.beta(1.2, 12, persons))[::-1]
    cut = np.quantile(probability, [1 - 0.005, 1 - 0.05, 1 - 0.20])
    tier = np.where(probability >= cut[0], 0, np.where(probability >= cut[1], 1,
                                                       np.where(probability >= cut[2], 2, 3)))
    keys = np.char.add("P", np.char.mod("%020x", rng.integers(0, 2**62, persons,
                                                               dtype=np.int64)))
    others = np.array([f"B8{6100 + i:04d}" for i in range(40)])
    practice = others[rng.integers(0, len(others), persons)].astype(object)
    practice[rng.choice(persons, practice_size, replace=False)] = PRACTICE
    pick = rng.integers(0, len(REASONS), (persons, 3))
    text = np.array([r for r, _ in REASONS], dtype=object)
    group = np.array([g for _, g in REASONS], dtype=object)
    conditions = np.array([";".join(c for i, c in enumerate(CONDITIONS) if m >> i & 1)
                           for m in range(64)], dtype=object)
    sources = np.array([";".join(s for i, s in enumerate(SOURCES) if m >> i & 1)
                        for m in range(128)], dtype=object)
    previous = probability - rng.normal(0, 0.02, persons)
    table = pa.table({
        "person_key": keys, "probability": probability, "tier": TIERS[tier],
        "reasons": text[pick[:, 0]] + "; " + text[pick[:, 1]] + "; " + text[pick[:, 2]],
        "reason_group_1": group[pick[:, 0]], "reason_group_2": group[pick[:, 1]],
        "reason_group_3": group[pick[:, 2]], "previous_probability": previous,
        "previous_tier": TIERS[np.clip(tier + rng.integers(-1, 2, persons), 0, 3)],
        "change": probability - previous, "gp_practice_code": practice.astype(str),
        "age_band": np.array(AGE_BANDS)[rng.integers(0, 6, persons)],
        "sex": np.array(["1", "2"])[rng.integers(0, 2, persons)],
        "conditions": conditions[rng.integers(0, 64, persons) & rng.integers(0, 64, persons)],
        "sources": sources[rng.integers(1, 128, persons)],
    })
    folder = settings.layout.runs_dir / "score-bench"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "scores.parquet", compression="zstd")
    engine = open_database(settings)
    with engine.begin() as connection:
        connection.execute(runs.insert().values(
            run_id="score-bench", kind="score", at=dt.datetime.now(dt.UTC),
            status="complete", extract_ids=[],
            summary={"at": "2025-04-01", "model": "bench", "model_version": "bench",
                     "persons": persons, "purpose": "case_finding"}))
    engine.dispose()
    return [str(k) for k, p in zip(keys, practice, strict=True) if p == PRACTICE]


class ServerTime:
    """ASGI wrapper: seconds from a request reaching the app to its last body message."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.times: list[float] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed(message: dict) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.times.append(time.perf_counter() - start)

        await self.app(scope, receive, timed)


def queries(rng: random.Random, count: int) -> list[str]:
    out = []
    for _ in range(count):
        query = [f"page={rng.choice([1, 1, 1, 2, 5, 40])}",
                 f"sort={rng.choice(['risk', 'risk', 'change', 'new'])}"]
        if rng.random() < 0.5:
            query.append(f"tier={rng.choice(['very_high', 'high', 'moderate'])}")
        if rng.random() < 0.3:
            query.append(f"age_band={rng.choice(AGE_BANDS).replace('+', '%2B')}")
        if rng.random() < 0.2:
            query.append(f"sex={rng.choice(['1', '2'])}")
        if rng.random() < 0.2:
            query.append(f"condition={rng.choice(CONDITIONS).replace(' ', '%20')}")
        if rng.random() < 0.3:
            query.append("show=new")
        out.append("&".join(query))
    return out


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(1000 * s for s in seconds)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    return (f"{name:<34} n={len(ms):4d}  p50 {statistics.median(ms):6.1f} ms  "
            f"p95 {p95:6.1f} ms  max {ms[-1]:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=200_000)
    parser.add_argument("--practice-size", type=int, default=15_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    home = Path(tempfile.mkdtemp(prefix="haven-bench-pages-"))
    try:
        key_env = {f"HAVEN_KEY_{p.upper()}": f"{p[0]}b1:" + base64.b64encode(
            secrets.token_bytes(32)).decode()
            for p in ("pseudonym", "linkage", "vault", "release")}
        settings = Settings(home=home, key_env=key_env)
        started = time.perf_counter()
        keys = write_run(settings, args.persons, args.practice_size)
        context = Context(settings)
        roles = AccessPolicy(context.engine, settings).roles()
        token = add_user(context.engine, SYSTEM, "dr.bench", PRACTICE, ["mdt_clinician"],
                         roles)
        reviewer = context.acting_as(Actor("dr.bench", "mdt_clinician", PRACTICE,
                                           "case_finding"))
        mdt_reviews.mark(reviewer, PRACTICE, keys[::5], dt.date.today())
        print(f"{args.persons:,} persons scored, {len(keys):,} in practice {PRACTICE}, "
              f"{len(keys[::5]):,} marked reviewed ({time.perf_counter() - started:.1f} s)")
        app = create_app(settings, engine=context.engine, keys=context.keys,
                         config=ApiConfig())
        timer = ServerTime(app)
        rng = random.Random(7)
        with TestClient(timer) as client:
            form = client.get("/pages/sign-in")
            client.post("/pages/sign-in", data={"csrf": CSRF.search(form.text).group(1),
                                                "token": token})
            first = client.get("/pages/case-finding")
            assert first.status_code == 200 and "Case-finding list" in first.text
            for query in queries(rng, 20):  # warm up
                client.get(f"/pages/case-finding?{query}")
            timer.times.clear()
            statuses: dict[int, int] = {}
            for query in queries(rng, args.requests):
                status = client.get(f"/pages/case-finding?{query}").status_code
                statuses[status] = statuses.get(status, 0) + 1
            page_times = list(timer.times)
            timer.times.clear()
            headers = {"Authorization": f"Bearer {token}"}
            for query in queries(rng, args.requests):
                api_query = re.sub(r"(^|&)(page|sort|show)=[^&]*", "", query).strip("&")
                client.get(f"/practices/{PRACTICE}/case-finding?limit=25&{api_query}",
                           headers=headers)
            api_times = list(timer.times)
        print(f"answers by status: {statuses}")
        print(summary("page /pages/case-finding (HTML)", page_times))
        print(summary("API  /practices/{ods}/case-finding", api_times))
        context.close()
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
