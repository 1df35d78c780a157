"""Monthly refresh benchmark: linking a month onto a linked history, against linking the history.

    .venv/bin/python bench/refresh.py --persons 1000000 [--month 2025-03-01] [--work DIR]
        [--keep] [--tree DIR]

`haven synth` writes each source's whole history; this cuts it with DuckDB (out of core: a
million persons' 50M rows do not fit pandas) into the history before `--month` and the month
itself (rows dated in it, by each source's event date, `tests/months.DATE_COLUMN`), then runs
`haven land` and `haven link` on the history and again on the month, each as its own process
through the public command line (`bench/pipeline.run_stage`: wall time, peak RSS). It prints
the four stages, the month's share of the rows, the ratio of linking the month to linking the
history, and what the month's link wrote (extracts new, rewritten, unchanged).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.pipeline import HAVEN, Stage, run_stage  # noqa: E402
from tests.months import DATE_COLUMN  # noqa: E402


def cut(src: Path, out: Path, start: str | None, end: str) -> int:
    """Each extract's rows dated in [start, end) (start None: everything before end) written
    to `out` with a manifest for that period; returns the rows written."""
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET memory_limit = '2GB'")
    total = 0
    for manifest_path in sorted(src.glob("*.manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        name = manifest_path.name.removesuffix(".manifest.json")
        day = f'substr("{DATE_COLUMN[manifest["source"]]}", 1, 10)'
        where = f"{day} < '{end}'" + (f" AND {day} >= '{start}'" if start else "")
        target = out / name
        con.execute(f"COPY (SELECT * FROM read_csv('{src / name}', all_varchar = true, "
                    f"header = true) WHERE {where}) TO '{target}' (HEADER, DELIMITER ',')")
        rows = con.execute(f"SELECT count(*) FROM read_csv('{target}', all_varchar = true, "
                           "header = true)").fetchone()[0]
        if rows == 0:
            target.unlink()
            continue
        digest = hashlib.sha256()
        with target.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        last = (dt.date.fromisoformat(end) - dt.timedelta(days=1)).isoformat()
        (out / manifest_path.name).write_text(json.dumps(
            {**manifest, "period_start": start or manifest["period_start"], "period_end": last,
             "sha256": digest.hexdigest(), "rows": rows}, indent=2))
        total += rows
    return total


def next_month(day: str) -> str:
    start = dt.date.fromisoformat(day)
    return (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1).isoformat()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--month", default="2025-03-01", help="first day of the month")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="the source tree to run (this checkout's .venv runs it)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="haven-refresh-"))
    whole, history, month = work / "extracts", work / "history", work / "month"
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, "HAVEN_HOME": str(home), **{
        f"HAVEN_KEY_{p.upper()}": f"b1:{base64.b64encode(secrets.token_bytes(32)).decode()}"
        for p in ("pseudonym", "linkage", "vault", "release")}}
    env.pop("HAVEN_DATABASE_URL", None)
    env.pop("HAVEN_SETTINGS", None)
    env["PYTHONPATH"] = str(args.tree.resolve())  # the tree's code, whatever .venv installed
    stages: list[Stage] = []

    def stage(name: str, *argv: str) -> Stage:
        result = run_stage(name, [str(HAVEN), *argv], env, args.tree.resolve())
        stages.append(result)
        print(f"  {name}: {result.seconds:.1f} s, {result.tree_peak_mb:,.0f} MB "
              f"(exit {result.status}) {result.last_line}", file=sys.stderr, flush=True)
        if result.status:
            print(result.output[-3000:], file=sys.stderr)
            raise SystemExit(1)
        return result

    if not (whole / "truth" / "meta.json").exists():  # a kept folder's extracts are reused
        stage("synth", "synth", "--persons", str(args.persons), "--seed", str(args.seed),
              "--out", str(whole), "--quiet")
    end = next_month(args.month)
    for folder in (history, month):
        shutil.rmtree(folder, ignore_errors=True)
    before = cut(whole, history, None, args.month)
    during = cut(whole, month, args.month, end)
    print(f"cut: {before:,} rows before {args.month}, {during:,} in the month "
          f"({during / max(before + during, 1):.1%})", file=sys.stderr)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    stage("land history", "land", str(history))
    linked = stage("link history", "link")
    stage("land month", "land", str(month))
    again = stage("link month", "link")
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    (work / "link-month.txt").write_text(again.output)
    wrote = re.search(r"writing the person index: (.*?unchanged)", again.output, re.DOTALL)
    print(f"\n{args.persons:,} persons; history {before:,} rows, month {during:,} "
          f"({during / max(before + during, 1):.1%}); load before {' '.join(load_before)}, "
          f"after {' '.join(load_after)} (2 cores)")
    print("| stage | wall s | peak RSS, process tree (MB) | largest process (MB) |")
    print("|---|---:|---:|---:|")
    for s in stages:
        print(f"| {s.name} | {s.seconds:.1f} | {s.tree_peak_mb:,.0f} | {s.process_peak_mb:,.0f} |")
    print(f"\nlinking the month / linking the history: {again.seconds / linked.seconds:.2f} "
          f"(time), {again.process_peak_mb / linked.process_peak_mb:.2f} (peak)")
    if wrote:
        print(f"the month's link wrote: {' '.join(wrote.group(1).split())}")
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
