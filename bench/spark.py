"""Spark engine benchmark: `haven land`, `haven link`, `haven score` on both engines, compared.

    .venv/bin/python bench/spark.py --persons 20000 [--work DIR] [--keep] [--json PATH]
        [--driver-memory 1g] [--no-throughput]

One synthetic population (`haven synth`), landed, linked and scored through the public command
line, each stage as its own process (bench/pipeline.py's `run_stage`: wall time and the peak
resident memory of the whole process tree, so Spark's JVM and its Python workers, children of
the command, are counted), once with HAVEN_ENGINE=embedded and once with HAVEN_ENGINE=spark
(HAVEN_SPARK_MASTER=local[2], a small driver), on two fresh HAVEN_HOMEs with the same generated
keys. Stages alternate between the engines (land, land, link, link, score, score) so both meet
similar load from other work; the load average is printed before and after each stage.

Then the outputs are compared: the same receipts (every count, by the extract's digest), the
same person key for every landed row (the link map by digest, source and row) and, per person,
the same tier and a probability within 1e-9.

Last, what a cost model needs: throughput per Spark task. Landing's, from a small
instrumented run in this process (local[2], the Spark home's keys): rows per second per task
for landing's batch preparation (`prepare_batch` in `mapInArrow`, timed inside the task).
Scoring's, from the Spark command's own run (its run.json: persons per task second of each
pass, features and prediction, then tiers and reasons, measured by the tasks). What is still
on the driver (linkage's survey, training) is timed by the commands themselves.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# bench/pipeline.py and bench/linkage.py would shadow the packages of the same names: keep
# this folder off the import path, and the repository on it (bench.* by their package path).
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from bench.pipeline import HAVEN, Stage, run_stage  # noqa: E402

ENGINES = ("embedded", "spark")
STAGES = ("land", "link", "score")
TOLERANCE = 1e-9
KEY_PURPOSES = ("pseudonym", "linkage", "vault", "release")


def loadavg() -> str:
    """The 1-, 5- and 15-minute load averages, as /proc/loadavg gives them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def generated_keys() -> dict[str, str]:
    """One set of fresh keys (HAVEN_KEY_*), shared by both homes so pseudonyms can agree."""
    return {f"HAVEN_KEY_{p.upper()}": f"b1:{base64.b64encode(secrets.token_bytes(32)).decode()}"
            for p in KEY_PURPOSES}


def engine_env(base: dict[str, str], keys: dict[str, str], home: Path, engine: str,
               master: str, driver_memory: str) -> dict[str, str]:
    """The environment of one engine's commands: its own home, the shared keys, and for Spark
    the master and a small driver (passed through HAVEN_SPARK_CONF_*)."""
    env = {k: v for k, v in base.items()
           if not k.startswith(("HAVEN_", "PYSPARK_", "SPARK_"))}
    env.update(keys)
    env.update({"HAVEN_HOME": str(home), "HAVEN_ENGINE": engine})
    if engine == "spark":
        env.update({"HAVEN_SPARK_MASTER": master,
                    "HAVEN_SPARK_CONF_SPARK_DRIVER_MEMORY": driver_memory,
                    "HAVEN_SPARK_CONF_SPARK_LOCAL_DIR": str(home.parent / "spark-local")})
    return env


@dataclass
class Measured:
    """One stage on one engine: bench/pipeline.py's measurements and the load around it."""

    stage: str
    engine: str
    result: Stage
    load_before: str
    load_after: str


@dataclass
class Outputs:
    """What one home holds after the three commands, in a form both engines can be compared
    on (extract ids differ between homes: extracts are named by their file's digest)."""

    receipts: dict[str, dict[str, Any]]
    links: Links  # the link map's rows and each extract's digest, compared by DuckDB
    scores: pa.Table  # person_key, probability, tier: sorted by person_key
    run: dict[str, Any] = field(default_factory=dict)


def read_outputs(env: dict[str, str]) -> Outputs:
    """Receipts, link map and scores of the home `env` names (its newest score run)."""
    from sqlalchemy import select

    from governance.schema import extracts
    from governance.settings import Settings
    from linkage import map_store
    from pipeline.context import Context

    haven = Context(Settings.from_environ(env))
    try:
        with haven.engine.connect() as connection:
            found = connection.execute(select(
                extracts.c.extract_id, extracts.c.sha256, extracts.c.source, extracts.c.sender,
                extracts.c.status, extracts.c.rows_landed, extracts.c.counts)).all()
    finally:
        haven.engine.dispose()
    receipts = {r.sha256: {"source": r.source, "sender": r.sender, "status": r.status,
                           "rows_landed": r.rows_landed, "counts": r.counts} for r in found}
    digest_of = {r.extract_id: r.sha256 for r in found}
    layout = haven.settings.layout
    links = Links(sorted(str(p) for p in map_store.files(haven.settings)), digest_of)
    runs = sorted(layout.runs_dir.glob("score-*"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise SystemExit(f"no score run in {layout.runs_dir}")
    scores = pq.read_table(runs[-1] / "scores.parquet",
                           columns=["person_key", "probability", "tier"])
    run = json.loads((runs[-1] / "run.json").read_text())
    run["folder"] = str(runs[-1])
    return Outputs(receipts, links, scores.sort_by("person_key"), run)


@dataclass
class Links:
    """A home's link map: its Parquet files (or, in tests, a table of the same columns) and
    each extract's file digest, by which two homes' rows are matched (extract ids differ)."""

    rows: list[str] | pa.Table  # extract_id, source, row, person_key, method, person_id,
    digest_of: dict[str, str]   # client_key


def comparable_links(con: duckdb.DuckDBPyConnection, name: str, links: Links) -> None:
    """View `name` of the link map keyed by (extract digest, source, row) with each row's
    person key, whether that key is the row's own (an unlinked row with neither pseudonym
    nor client key: its key hashes its extract id, which each landing draws afresh, so two
    homes differ there by design) and `first`: the position, in key order, of the person's
    first row, which names the grouping of rows into persons independently of the keys.
    DuckDB, within its memory limit: a 1M-person map is 50M rows. A KeyError says only that
    an extract id has no receipt (no identifier)."""
    con.register(f"{name}_digests", pa.table({
        "extract_id": pa.array(list(links.digest_of), pa.string()),
        "digest": pa.array(list(links.digest_of.values()), pa.string())}))
    if isinstance(links.rows, pa.Table):
        con.register(f"{name}_map", links.rows)
    else:
        files = ", ".join("'" + f.replace("'", "''") + "'" for f in links.rows)
        con.execute(f"CREATE VIEW {name}_map AS SELECT * FROM read_parquet([{files}])")
    unknown = con.execute(f"""SELECT count(DISTINCT extract_id) FROM {name}_map
        WHERE extract_id NOT IN (SELECT extract_id FROM {name}_digests)""").fetchall()[0][0]
    if unknown:
        raise KeyError(f"{unknown} extract id(s) in the link map have no receipt")
    con.execute(f"""CREATE TEMP TABLE {name} AS
        SELECT *, min(position) OVER (PARTITION BY person_key) AS first FROM (
            SELECT d.digest, m.source, m."row", coalesce(m.person_key, '') AS person_key,
                coalesce(m.method = 'unlinked' AND m.person_id IS NULL
                         AND m.client_key IS NULL, false) AS own,
                row_number() OVER (ORDER BY d.digest, m.source, m."row") AS position
            FROM {name}_map m JOIN {name}_digests d USING (extract_id))""")


def compare_links(embedded: Links, spark: Links) -> list[tuple[str, bool, str]]:
    """The link map checks of `compare`: the same landed rows, the same person key for each
    (rows keyed by their own extract id compared by grouping only), the same grouping."""
    with tempfile.TemporaryDirectory(prefix="haven-bench-compare-") as spill:
        con = duckdb.connect()
        try:
            con.execute("SET memory_limit = '4GB'")
            con.execute(f"SET temp_directory = '{spill}'")
            comparable_links(con, "a", embedded)
            comparable_links(con, "b", spark)
            rows_a, rows_b = (con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                              for t in ("a", "b"))
            joined, differing, own_rows, own_differs, regrouped = con.execute("""SELECT
                count(*),
                count(*) FILTER (WHERE a.person_key <> b.person_key AND NOT (a.own OR b.own)),
                count(*) FILTER (WHERE a.own OR b.own),
                count(*) FILTER (WHERE a.own <> b.own),
                count(*) FILTER (WHERE a.first <> b.first)
                FROM a JOIN b USING (digest, source, "row")""").fetchall()[0]
        finally:
            con.close()
    if not rows_a == rows_b == joined:
        return [("landed rows in the link map", False,
                 f"{rows_a:,} vs {rows_b:,} rows, not the same rows")]
    return [("person key of every landed row (by digest, source, row)",
             differing == 0 and own_differs == 0,
             f"{rows_a:,} rows, {differing:,} with a different key; {own_rows:,} unlinked rows "
             f"keyed by their own extract id and row (a per-landing id: differs between homes "
             f"by design) compared by grouping only"),
            ("the same rows grouped into the same persons", regrouped == 0,
             f"{regrouped:,} rows grouped differently")]


def compare(embedded: Outputs, spark: Outputs) -> list[tuple[str, bool, str]]:
    """Each equality check as (what, held, figures): receipts; the person key of every landed
    row (rows whose key is their own counted apart, see `comparable_links`) and the same
    grouping of rows into persons; scored persons, tiers, probabilities within TOLERANCE."""
    checks: list[tuple[str, bool, str]] = []
    same_receipts = embedded.receipts == spark.receipts
    rows = sum(int(r["rows_landed"] or 0) for r in embedded.receipts.values())
    checks.append(("receipts (status, rows landed, every count; by file digest)", same_receipts,
                   f"{len(embedded.receipts)} vs {len(spark.receipts)} extracts, "
                   f"{rows:,} rows landed"))
    checks.extend(compare_links(embedded.links, spark.links))
    x, y = embedded.scores, spark.scores
    same_persons = x.column("person_key").equals(y.column("person_key"))
    checks.append(("scored persons (person keys)", same_persons,
                   f"{x.num_rows:,} vs {y.num_rows:,} persons"))
    if same_persons:
        gap = pc.max(pc.abs(pc.subtract(x.column("probability"), y.column("probability"))))
        largest = float(gap.as_py() or 0.0)
        checks.append((f"probability within {TOLERANCE:g} per person", largest <= TOLERANCE,
                       f"largest difference {largest:.3g}"))
        tiers_differ = int(pc.sum(pc.invert(pc.equal(x.column("tier"), y.column("tier")))
                                  ).as_py() or 0)
        checks.append(("tier per person", tiers_differ == 0, f"{tiers_differ} differ"))
    return checks


def run_commands(inbound: Path, at: str, envs: dict[str, dict[str, str]]) -> list[Measured]:
    """land, link and score on each engine, alternating engines stage by stage."""
    measured: list[Measured] = []
    argv = {"land": ["land", str(inbound)], "link": ["link"], "score": ["score", "--at", at]}
    for stage in STAGES:
        for engine in ENGINES:
            before = loadavg()
            result = run_stage(f"{stage} ({engine})", [str(HAVEN), *argv[stage]], envs[engine])
            after = loadavg()
            measured.append(Measured(stage, engine, result, before, after))
            print(f"  {stage} on {engine}: {result.seconds:.1f} s, {result.tree_peak_mb:,.0f} MB"
                  f" (exit {result.status}); load {before} -> {after}; {result.last_line}",
                  file=sys.stderr, flush=True)
            if result.status:
                print(result.output[-3000:], file=sys.stderr)
                raise SystemExit(f"{stage} on {engine} failed (exit {result.status})")
    return measured


def stage_table(measured: list[Measured]) -> list[str]:
    """Markdown: per stage, both engines' wall time and process-tree peak RSS, and ratios."""
    lines = ["| stage | embedded s | spark s | time ratio | embedded MB | spark MB | "
             "memory ratio | load before -> after (embedded; spark) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    by = {(m.stage, m.engine): m for m in measured}
    for stage in STAGES:
        e, s = by[(stage, "embedded")], by[(stage, "spark")]
        lines.append(
            f"| {stage} | {e.result.seconds:.1f} | {s.result.seconds:.1f} | "
            f"{s.result.seconds / max(e.result.seconds, 1e-9):.2f} | "
            f"{e.result.tree_peak_mb:,.0f} | {s.result.tree_peak_mb:,.0f} | "
            f"{s.result.tree_peak_mb / max(e.result.tree_peak_mb, 1e-9):.2f} | "
            f"{e.load_before} -> {e.load_after}; {s.load_before} -> {s.load_after} |")
    return lines


def source_rows(inbound: Path) -> dict[str, int]:
    """Rows per source in the synthetic extracts (from their manifests)."""
    rows: dict[str, int] = {}
    for manifest in sorted(inbound.glob("*.manifest.json")):
        meta = json.loads(manifest.read_text())
        rows[meta["source"]] = rows.get(meta["source"], 0) + int(meta["rows"])
    return rows


# -- per-task throughput, in this process --------------------------------------------------


def task_rates(records: list[dict[str, Any]], unit: str) -> dict[str, Any]:
    """Per Spark task (partition): `unit`s and seconds inside the task, and their rate; plus
    the lower median of the task rates and the pooled rate (all units over all task seconds:
    what a cost model multiplies by task slots). Records: {"task", "n", "seconds"}, one per
    timed piece."""
    tasks: dict[int, list[float]] = {}
    for record in records:
        n, seconds = tasks.setdefault(int(record["task"]), [0.0, 0.0])
        tasks[int(record["task"])] = [n + record["n"], seconds + record["seconds"]]
    rates = sorted(n / s for n, s in tasks.values() if s > 0)
    middle = rates[(len(rates) - 1) // 2] if rates else float("nan")  # the lower median
    total_n, total_s = sum(n for n, _ in tasks.values()), sum(s for _, s in tasks.values())
    return {"unit": unit, "tasks": len(tasks),
            "per_task": {str(t): {unit: int(n), "seconds": round(s, 3),
                                  "rate": round(n / s, 1) if s else None}
                         for t, (n, s) in sorted(tasks.items())},
            "median_rate": round(middle, 1),
            "pooled_rate": round(total_n / total_s, 1) if total_s else float("nan")}


def prepare_throughput(spark: Any, env: dict[str, str], inbound: Path, batch_rows: int,
                       max_batches: int) -> dict[str, Any]:
    """Rows/s per task of landing's preparation on Spark, for each source's largest file: its
    first `max_batches` splits (`linkage.landing.splits`, about 4 MB each), each read,
    numbered and prepared in slices of at most `batch_rows` rows by `read_and_prepare` and
    pickled by `handed_back` (what `spark_land` runs, without the hand-over file) in
    `mapInArrow`, each split timed inside its task."""
    import pickle

    from governance.settings import Settings
    from linkage.landing.batches import Job
    from linkage.landing.pseudonymise import HashMemo
    from linkage.landing.reader import read_header
    from linkage.landing.splits import count_split, csv_splits, numbered
    from pipeline.context import Context
    from pipeline.engines.spark_land import Seen, ToRead, executor_job

    keys = Context(Settings.from_environ(env)).keys
    shared_keys = {p: keys.current(p) for p in ("pseudonym", "linkage", "vault")}
    largest: dict[str, tuple[int, Path, str]] = {}
    for manifest in inbound.glob("*.manifest.json"):
        meta = json.loads(manifest.read_text())
        if meta["source"] == "optouts":
            continue  # small, and checked against the register by the landing
        path = manifest.with_name(manifest.name[: -len(".manifest.json")])
        if meta["rows"] > largest.get(meta["source"], (-1, path, ""))[0]:
            largest[meta["source"]] = (int(meta["rows"]), path, meta["sender"])
    out: dict[str, Any] = {}
    slots = max(spark.sparkContext.defaultParallelism, 1)  # tasks that can run at once
    for source, (_, path, sender) in sorted(largest.items()):
        job = executor_job(Job(source, "bench-throughput", sender, shared_keys))
        names = read_header(path)
        splits = csv_splits(path)[:max_batches]
        seen = Seen.of(path.resolve())
        counts = [count_split(path, names, split) for split in splits]
        plan = numbered(counts)
        shipped = [(split.index, pickle.dumps(ToRead(
            str(path.resolve()), names, split, first, batch_rows, seen, count.split_rows)))
            for split, first, count in zip(splits, plan.firsts, counts, strict=True)]
        shared = spark.sparkContext.broadcast(job)

        def run(chunks: Iterator[pa.RecordBatch], shared: Any = shared) -> Iterator[
                pa.RecordBatch]:
            from pyspark import TaskContext

            from pipeline.engines.spark_land import handed_back, read_and_prepare
            task = TaskContext.get().partitionId()
            memo, on_executor = HashMemo(), shared.value
            for chunk in chunks:
                for number, blob in zip(chunk.column("batch").to_pylist(),
                                        chunk.column("payload").to_pylist(), strict=True):
                    start, rows = time.perf_counter(), 0
                    for _, prepared in read_and_prepare(number, blob, on_executor, memo):
                        rows += len(prepared.rows)
                        handed_back(prepared, None)
                    yield pa.RecordBatch.from_pydict({
                        "task": [task], "n": [rows],
                        "seconds": [time.perf_counter() - start]})

        frame = spark.createDataFrame(shipped, "batch long, payload binary").repartition(
            min(2, len(shipped)), "batch")
        start = time.perf_counter()
        records = [r.asDict() for r in frame.mapInArrow(
            run, "task long, n long, seconds double").collect()]
        wall = time.perf_counter() - start
        shared.destroy()
        rates = task_rates(records, "rows")
        n = sum(r["n"] for r in records)
        rates.update(batches=len(shipped), rows=n, job_wall_s=round(wall, 2),
                     effective_rate=round(n / wall / min(rates["tasks"], slots), 1))
        out[source] = rates
    return out


def score_tasks(env: dict[str, str]) -> dict[str, Any]:
    """Per-task figures of the Spark home's newest score run, as its tasks measured them
    (`metrics.tasks` in its run.json: persons, ranges, and each pass's persons a second per
    task), with the driver's own stage seconds (`metrics.seconds`)."""
    from governance.settings import Settings

    runs_dir = Settings.from_environ(env).layout.runs_dir
    runs = sorted(runs_dir.glob("score-*"), key=lambda p: p.stat().st_mtime)
    metrics = json.loads((runs[-1] / "run.json").read_text())["metrics"]
    return {**metrics["tasks"], "driver_seconds": metrics["seconds"]}


def throughput(env: dict[str, str], inbound: Path, master: str, driver_memory: str,
               batch_rows: int, max_batches: int) -> dict[str, Any]:
    """Both throughput measurements in one local Spark session of this process."""
    from governance.settings import Settings
    from pipeline.engines.spark_session import spark_session

    settings = Settings.from_environ({**env, "HAVEN_SPARK_MASTER": master,
                                      "HAVEN_SPARK_CONF_SPARK_DRIVER_MEMORY": driver_memory})
    spark = spark_session(settings, "haven-bench-throughput")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        before = loadavg()
        prepared = prepare_throughput(spark, env, inbound, batch_rows, max_batches)
        return {"load_before": before, "load_after": loadavg(), "prepare": prepared,
                "score": score_tasks(env)}
    finally:
        spark.stop()


def print_throughput(found: dict[str, Any]) -> None:
    """The per-task rates as Markdown."""
    print(f"\nper-task throughput on local[2] (in-process instrumented run; load "
          f"{found['load_before']} -> {found['load_after']})")
    print("inside a task: the stage function alone; per task, whole job: what went in over "
          "the job's wall time and the tasks running at once (Spark's own costs included)")
    print("| work | source | rows or persons | tasks | inside a task, pooled (/s) | "
          "per task, whole job (/s) | job wall s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for source, rates in found["prepare"].items():
        print(f"| prepare (check + pseudonymise) | {source} | {rates['rows']:,} | "
              f"{rates['tasks']} | {rates['pooled_rate']:,.0f} rows | "
              f"{rates['effective_rate']:,.0f} rows | {rates['job_wall_s']} |")
    score = found["score"]
    print(f"\nscore on Spark (the command's own run, {score['ranges']} tasks of a range of "
          f"persons each, two passes; per task: persons over the seconds the tasks spent)")
    print("| pass | persons | task seconds (sum) | persons per task second |")
    print("|---|---:|---:|---:|")
    print(f"| features + every candidate's probability | {score['persons']:,} | "
          f"{score['features_predict_seconds']} | "
          f"{score['features_predict_persons_per_task_second']:,} |")
    print(f"| tiers + reasons + scores file | {score['persons']:,} | "
          f"{score['reasons_seconds']} | {score['reasons_persons_per_task_second']:,} |")
    print(f"driver: {score['driver_seconds']}")


def save_keys(work: Path, keys: dict[str, str]) -> None:
    """The run's keys beside its homes (owner-only), so `--compare-only` can open them later;
    they are the benchmark's own, made for it, never a deployment's."""
    path = work / "keys.env"
    path.touch(mode=0o600)
    path.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))


def compare_only(work: Path, args: argparse.Namespace) -> None:
    """Compare the homes of an earlier run in `work` (its keys.env, or fresh keys: reading
    receipts, map and scores decrypts nothing) and measure the per-task throughput."""
    saved = work / "keys.env"
    keys = (dict(line.split("=", 1) for line in saved.read_text().splitlines() if "=" in line)
            if saved.exists() else generated_keys())
    envs = {e: engine_env(dict(os.environ), keys, work / e, e, args.master, args.driver_memory)
            for e in ENGINES}
    checks = compare(*(read_outputs(envs[e]) for e in ENGINES))
    print("equality, embedded vs spark (homes of an earlier run):")
    for what, held, figures in checks:
        print(f"- {'EQUAL' if held else 'DIFFERENT'}: {what}: {figures}")
    if not args.no_throughput:
        print_throughput(throughput(envs["spark"], work / "extracts", args.master,
                                    args.driver_memory, args.sample_batch_rows,
                                    args.sample_batches))
    if not all(held for _, held, _ in checks):
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None,
                        help="working folder (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="1g")
    parser.add_argument("--no-throughput", action="store_true",
                        help="skip the in-process per-task throughput run")
    parser.add_argument("--sample-batch-rows", type=int, default=20_000,
                        help="slice size of the throughput run's landing sample")
    parser.add_argument("--sample-batches", type=int, default=6,
                        help="splits (about 4 MB each) per source in the throughput run's "
                             "landing sample")
    parser.add_argument("--compare-only", action="store_true",
                        help="compare the two homes already in --work (and measure throughput)"
                             " without running the commands again")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="haven-spark-bench-"))
    inbound = work / "extracts"
    if args.compare_only:
        return compare_only(work, args)
    for old in (inbound, *(work / e for e in ENGINES), work / "spark-local"):
        shutil.rmtree(old, ignore_errors=True)
    keys = generated_keys()
    work.mkdir(parents=True, exist_ok=True)  # a --work folder not made yet
    save_keys(work, keys)
    envs = {e: engine_env(dict(os.environ), keys, work / e, e, args.master, args.driver_memory)
            for e in ENGINES}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    before = loadavg()
    synth = run_stage("synth", [str(HAVEN), "synth", "--persons", str(args.persons), "--seed",
                                str(args.seed), "--out", str(inbound), "--quiet"],
                      envs["embedded"])
    if synth.status:
        print(synth.output[-3000:], file=sys.stderr)
        raise SystemExit("haven synth failed")
    meta = json.loads((inbound / "truth" / "meta.json").read_text())
    rows = source_rows(inbound)
    print(f"  synth: {synth.seconds:.1f} s, {sum(rows.values()):,} rows", file=sys.stderr)
    measured = run_commands(inbound, str(meta["score_date"]), envs)
    outputs = {e: read_outputs(envs[e]) for e in ENGINES}
    checks = compare(outputs["embedded"], outputs["spark"])
    found = None if args.no_throughput else throughput(
        envs["spark"], inbound, args.master, args.driver_memory, args.sample_batch_rows,
        args.sample_batches)

    print(f"\n{args.persons:,} persons, {sum(rows.values()):,} rows ({started}; history "
          f"{meta['history_start']} to {meta['period_end']}); Spark {args.master}, driver "
          f"{args.driver_memory}; load average before {before}, after {loadavg()} (2 cores)")
    print("rows per source: " + ", ".join(f"{s} {n:,}" for s, n in sorted(rows.items())))
    print("peak RSS is the whole process tree's (the command, the JVM, Spark's Python "
          "workers); link runs the embedded linkage on both engines\n")
    print("\n".join(stage_table(measured)))
    for engine in ENGINES:
        seconds = outputs[engine].run.get("metrics", {}).get("seconds", {})
        print(f"score on {engine}, its own split (run.json): "
              + ", ".join(f"{k} {v} s" for k, v in seconds.items()))
    print("\nequality, embedded vs spark:")
    for what, held, figures in checks:
        print(f"- {'EQUAL' if held else 'DIFFERENT'}: {what}: {figures}")
    if found:
        print_throughput(found)
    if args.json:
        args.json.write_text(json.dumps({
            "persons": args.persons, "started": started, "rows": rows, "meta": meta,
            "stages": [{"stage": m.stage, "engine": m.engine, "seconds": m.result.seconds,
                        "tree_peak_mb": m.result.tree_peak_mb,
                        "process_peak_mb": m.result.process_peak_mb,
                        "load_before": m.load_before, "load_after": m.load_after}
                       for m in measured],
            "score_seconds": {e: outputs[e].run.get("metrics", {}).get("seconds", {})
                              for e in ENGINES},
            "checks": [{"what": w, "held": h, "figures": f} for w, h, f in checks],
            "throughput": found}, indent=1, default=str))
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    if not all(held for _, held, _ in checks):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
