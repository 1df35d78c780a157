"""Link: build or update the person index over everything landed, record and audit the run."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert

from governance import audit
from governance.schema import runs
from linkage import person_index
from linkage.encodings import KINDS as FIELD_KINDS
from linkage.link_files import link_files
from linkage.person_index import LinkSummary
from pipeline.context import Context, Progress, quiet
from pipeline.engines.dispatch import profile_matching

__all__ = ["FIELD_KINDS", "LinkSummary", "export_link_map", "link", "link_files"]


def link(ctx: Context, progress: Progress = quiet, retrain: bool = False) -> LinkSummary:
    """Add new extracts' rows to the index (and drop destroyed ones'), then record the run;
    with HAVEN_ENGINE=spark each bucket of the register's persons is matched on Spark.
    `retrain`: train every source's linkage model again, not the kept ones."""
    with profile_matching(ctx.settings) as (matcher, quality):
        summary = person_index.update(ctx.settings, ctx.engine, ctx.keys.current("linkage"),
                                      matcher, progress=progress, quality=quality,
                                      retrain=retrain)
    run_id = f"link-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
    with ctx.engine.begin() as connection:
        connection.execute(insert(runs).values(
            run_id=run_id, kind="link", at=datetime.now(UTC), status="complete",
            extract_ids=person_index.indexed_extracts(ctx.settings),
            summary=summary.to_json()))
        audit.record(connection, ctx.actor, "link.run", f"run/{run_id}",
                     n_records=summary.rows,
                     detail={"added": len(summary.extracts_added),
                             "removed": len(summary.extracts_removed),
                             "review_pairs": summary.review_pairs, "retrain": retrain})
    progress(f"person index: {summary.rows:,} rows; {len(summary.extracts_added)} extracts "
             f"added, {len(summary.extracts_removed)} removed; {summary.review_pairs:,} pairs "
             f"for review; written to {ctx.settings.layout.index_dir}")
    return summary


def export_link_map(ctx: Context, out: Path) -> int:
    """Write the auditable map (extract_id, source, row, person_key, method, weight) and audit
    the export; ValueError for an unknown file type."""
    count = person_index.export(ctx.settings, out)
    audit.log(ctx.engine, ctx.actor, "link.export", "index/link_map", n_records=count)
    return count
