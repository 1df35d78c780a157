"""API benchmark: latency at 50 concurrent clients on 1,000,000 scored persons, and the cost of a
Casbin decision.

Writes a score run of PERSONS persons straight to a fresh data directory (as `haven score`
would), adds one MDT clinician per practice and an analyst, starts `haven serve` (uvicorn,
127.0.0.1 only) and drives it with CLIENTS keep-alive connections, each sending REQUESTS
requests one after another: the MDT case-finding list (own practice, random filters and pages)
and a published table (one dimension on one geography). Every request is
authenticated, decided by Casbin and audited (SQLite, group commit), as in production.

    .venv/bin/python bench/api.py [--persons 1000000] [--clients 50] [--requests 40] [--keep]

Targets: p99 < 100 ms for both, a Casbin decision < 50 µs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.authz import AccessPolicy  # noqa: E402
from api.users import add_user  # noqa: E402
from governance.audit import SYSTEM  # noqa: E402
from governance.db import open_database  # noqa: E402
from governance.schema import runs  # noqa: E402
from governance.settings import Settings  # noqa: E402

TIERS = np.array(["very_high", "high", "moderate", "low"])
AGE_BANDS = np.array(["0-17", "18-44", "45-64", "65-74", "75-84", "85+"])
CONDITIONS = ["COPD", "diabetes", "heart failure", "asthma", "dementia", "hypertension"]
REASONS = [("3 emergency admissions in 12 months", "emergency_admissions"),
           ("9 different medicines in 6 months", "polypharmacy"),
           ("receives home care", "social_care"), ("2 A&E attendances in 6 months",
                                                   "ae_attendances"),
           ("4 long-term conditions", "ltc_count"), ("aged 87", "age")]
SOURCES = ["apc", "ae", "op", "gp_events", "gp_medications", "gp_patients", "social_care"]


def keys_environment() -> dict[str, str]:
    return {f"HAVEN_KEY_{p.upper()}": f"{p[0]}b1:" + base64.b64encode(
        secrets.token_bytes(32)).decode() for p in ("pseudonym", "linkage", "vault", "release")}


def write_run(settings: Settings, persons: int, practices: list[str], seed: int = 1) -> str:
    """A score run file of `persons` synthetic persons, and its `runs` row."""
    rng = np.random.default_rng(seed)
    probability = np.sort(rng.beta(1.2, 12, persons))[::-1]
    cut = np.quantile(probability, [1 - 0.005, 1 - 0.05, 1 - 0.20])
    tier = np.where(probability >= cut[0], 0, np.where(probability >= cut[1], 1,
                                                       np.where(probability >= cut[2], 2, 3)))
    keys = np.char.add("P", np.char.mod("%020x", rng.integers(0, 2**62, persons,
                                                               dtype=np.int64)))
    pick = rng.integers(0, len(REASONS), (persons, 3))
    reason_text = np.array([r for r, _ in REASONS], dtype=object)
    reason_group = np.array([g for _, g in REASONS], dtype=object)
    reasons = reason_text[pick[:, 0]] + "; " + reason_text[pick[:, 1]] + "; " + \
        reason_text[pick[:, 2]]
    condition_sets = np.array([";".join(c for i, c in enumerate(CONDITIONS) if m >> i & 1)
                               for m in range(64)], dtype=object)
    source_sets = np.array([";".join(s for i, s in enumerate(SOURCES) if m >> i & 1)
                            for m in range(128)], dtype=object)
    previous = probability - rng.normal(0, 0.02, persons)
    table = pa.table({
        "person_key": keys, "probability": probability,
        "tier": TIERS[tier], "reasons": reasons,
        "reason_group_1": reason_group[pick[:, 0]], "reason_group_2": reason_group[pick[:, 1]],
        "reason_group_3": reason_group[pick[:, 2]],
        "previous_probability": previous, "previous_tier": TIERS[np.clip(tier + rng.integers(
            -1, 2, persons), 0, 3)], "change": probability - previous,
        "gp_practice_code": np.array(practices)[rng.integers(0, len(practices), persons)],
        "age_band": AGE_BANDS[rng.integers(0, 6, persons)],
        "sex": np.array(["1", "2"])[rng.integers(0, 2, persons)],
        "conditions": condition_sets[rng.integers(0, 64, persons) & rng.integers(0, 64, persons)],
        "sources": source_sets[rng.integers(1, 128, persons)],
    })
    run_id = "score-bench"
    folder = settings.layout.runs_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "scores.parquet", compression="zstd")
    engine = open_database(settings)
    import datetime as dt

    with engine.begin() as connection:
        connection.execute(runs.insert().values(
            run_id=run_id, kind="score", at=dt.datetime.now(dt.UTC), status="complete",
            extract_ids=[], summary={"at": "2025-04-01", "model": "bench",
                                     "model_version": "bench", "persons": persons}))
    engine.dispose()
    return run_id


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator must not be the bottleneck."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def get(self, path: str) -> tuple[int, bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer "
                          f"{self.token}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":")
                                                         for line in lines[1:] if line)}
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        else:  # chunked
            body = b""
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        return status, body

    def close(self) -> None:
        self.writer.close()


async def drive(port: int, tokens: list[str], paths: list[list[str]]) -> tuple[list[float], int]:
    """Each client sends its paths one after another; returns latencies (ms) and errors."""
    latencies: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}

    async def client(token: str, mine: list[str]) -> None:
        nonlocal errors
        connection = Connection(port, token)
        await connection.open()
        for path in mine:
            start = time.perf_counter()
            status, _ = await connection.get(path)
            latencies.append((time.perf_counter() - start) * 1000)
            errors += status != 200
            statuses[status] = statuses.get(status, 0) + 1
        connection.close()

    await asyncio.gather(*(client(t, p) for t, p in zip(tokens, paths, strict=True)))
    if errors:
        print(f"  answers by status: {statuses}")
    return latencies, errors


def case_finding_paths(rng: random.Random, practice: str, count: int) -> list[str]:
    out = []
    for _ in range(count):
        query = [f"limit={rng.choice([20, 50, 100])}", f"offset={rng.choice([0, 0, 50, 200])}"]
        if rng.random() < 0.6:
            query.append(f"tier={rng.choice(['very_high', 'high', 'moderate'])}")
        if rng.random() < 0.4:
            query.append(f"age_band={rng.choice(list(AGE_BANDS)).replace('+', '%2B')}")
        if rng.random() < 0.3:
            query.append(f"sex={rng.choice(['1', '2'])}")
        if rng.random() < 0.3:
            query.append(f"condition={rng.choice(CONDITIONS).replace(' ', '%20')}")
        out.append(f"/practices/{practice}/case-finding?{'&'.join(query)}")
    return out


def aggregate_paths(rng: random.Random, count: int) -> list[str]:
    options = ["/aggregates?by=tier&geography=practice", "/aggregates?by=age_band&geography=pcn",
               "/aggregates?by=sex&geography=locality", "/aggregates?by=condition",
               "/aggregates?by=tier"]
    return [rng.choice(options) for _ in range(count)]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process and its workers have used so far: a figure other
    load inflates much less than it inflates latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        total += sum(cpu_seconds(int(child)) for child in children)
    return total


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def casbin_decisions(settings: Settings) -> dict[str, float]:
    """Microseconds per decision: through Haven's decision cache and Casbin's own evaluation."""
    engine = open_database(settings)
    policy = AccessPolicy(engine, settings, refresh_seconds=3600)
    requests = [("mdt_clinician", f"B{86000 + i}", "case_finding", "read", "case_finding", "-",
                 f"B{86000 + i}") for i in range(200)]
    requests += [("analyst", "X26", "aggregate", "read", "commissioning", "-", "-"),
                 ("super_user", "X26", "person_data", "read", "commissioning", "gp/gp_events",
                  "-"), ("council_uploader", "E08000035", "person_data", "read",
                         "data_submission", "gp/gp_events", "E08000035")]
    for request in requests:
        policy.allowed(*request)
    n = 200_000
    start = time.perf_counter()
    for i in range(n):
        policy.allowed(*requests[i % len(requests)])
    cached = (time.perf_counter() - start) / n * 1e6
    n = 2_000
    start = time.perf_counter()
    for i in range(n):
        policy.enforcer.enforce(*requests[i % len(requests)])
    evaluated = (time.perf_counter() - start) / n * 1e6
    engine.dispose()
    return {"cached_us": cached, "evaluated_us": evaluated, "rules": len(policy.rules()["p"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--practices", type=int, default=150)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=40, help="per client, per endpoint")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary data directory (removed by default)")
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn workers (SQLite: one writer process is best)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="haven-bench-api-"))
    environ = {"HAVEN_HOME": str(home), **keys_environment(), "HAVEN_API_REFRESH_SECONDS": "5",
               "HAVEN_API_TOKEN_CACHE_SECONDS": "30"}
    settings = Settings.from_environ(environ)
    practices = [f"B{86001 + i}" for i in range(args.practices)]
    start = time.perf_counter()
    write_run(settings, args.persons, practices)
    print(f"score run: {args.persons:,} persons in {args.practices} practices, written in "
          f"{time.perf_counter() - start:.1f} s")
    engine = open_database(settings)
    roles = AccessPolicy(engine, settings).roles()
    mdt = [add_user(engine, SYSTEM, f"mdt{i}", practices[i % len(practices)],
                    ["mdt_clinician"], roles) for i in range(args.clients)]
    analyst = add_user(engine, SYSTEM, "analyst", "X26", ["analyst"], roles)
    engine.dispose()

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys; from cli.main import main; sys.exit(main())",
         "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers)],
        cwd=ROOT, env={**os.environ, **environ}, stdout=subprocess.DEVNULL)
    try:
        started = time.perf_counter()
        while True:  # start-up loads the run (and stratify's catalogue) before listening
            if server.poll() is not None:
                raise SystemExit("the server stopped while starting")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.perf_counter() - started > 600:
                    raise SystemExit("the server did not start within 10 minutes") from None
                time.sleep(0.2)
        print(f"server listening after {time.perf_counter() - started:.1f} s "
              f"(run loaded at start-up)")
        rng = random.Random(7)
        start = time.perf_counter()
        # Warm-up: one request per client, so tokens and per-practice decisions are cached as
        # in a server that has been up a while.
        warm, errors = asyncio.run(drive(port, mdt, [[f"/practices/{practices[i % len(practices)]}"
                                                      "/case-finding?limit=1"]
                                                     for i in range(args.clients)]))
        assert errors == 0, "warm-up failed"
        print(f"warm-up ({args.clients} clients, one request each): "
              f"{time.perf_counter() - start:.1f} s")
        cold, _ = asyncio.run(drive(port, [analyst] * args.workers,
                                    [["/aggregates?by=tier&geography=practice"]] * args.workers))
        print(f"first aggregate over {args.persons:,} persons (computed, then cached per run): "
              f"{max(cold):.0f} ms")
        results = {}
        for name, tokens, paths in (
            ("case-finding list", mdt, [case_finding_paths(rng, practices[i % len(practices)],
                                                           args.requests)
                                        for i in range(args.clients)]),
            ("aggregate", [analyst] * args.clients, [aggregate_paths(rng, args.requests)
                                                     for _ in range(args.clients)]),
        ):
            begun, cpu = time.perf_counter(), cpu_seconds(server.pid)
            latencies, errors = asyncio.run(drive(port, tokens, paths))
            elapsed = time.perf_counter() - begun
            cpu_ms = (cpu_seconds(server.pid) - cpu) / len(latencies) * 1000
            results[name] = latencies
            print(f"{name:<18} {len(latencies):>5} requests, {args.clients} concurrent clients: "
                  f"p50 {percentile(latencies, 50):6.1f} ms  p99 {percentile(latencies, 99):6.1f}"
                  f" ms  max {max(latencies):6.1f} ms  {len(latencies) / elapsed:6.0f} req/s"
                  f"  server CPU {cpu_ms:.2f} ms/request  errors {errors}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    decisions = casbin_decisions(settings)
    if args.keep:
        print(f"data directory kept: {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)  # 1M scored persons and a database
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} while measuring "
          f"(other work on the machine inflates every figure)")
    print(f"Casbin decision: {decisions['cached_us']:.2f} µs through Haven's decision cache; "
          f"{decisions['evaluated_us']:.0f} µs evaluated by pycasbin ({decisions['rules']} "
          f"rules; once per distinct request until the policy changes)")
    ok = all(percentile(v, 99) < 100 for v in results.values()) and \
        decisions["cached_us"] < 50
    print(json.dumps({"p99_ms": {k: round(percentile(v, 99), 1) for k, v in results.items()},
                      "p50_ms": {k: round(percentile(v, 50), 1) for k, v in results.items()},
                      "decision_us": round(decisions["cached_us"], 2),
                      "decision_evaluated_us": round(decisions["evaluated_us"], 1),
                      "targets_met": ok}))


if __name__ == "__main__":
    main()
