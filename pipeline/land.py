"""Land: check extracts against their contract, pseudonymise them and keep them.

Opt-outs that no purpose may use are applied as rows arrive (governance.optouts), whichever
face sends the file, and the register takes an opt-out only from a sender that may assert it
(`policies/optout_senders.csv`, governance.optouts.sender_check).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from governance.optouts import landing_exclusion, sender_check
from linkage.landing.land import LandingContext, Receipt, land_file
from linkage.landing.land import land_path as _land_path
from linkage.landing.manifest import SENDER_RE, Manifest, ManifestError, parse_manifest
from pipeline.context import Context, Progress, quiet
from pipeline.engines.spark_land import spark_file_preparer
from pipeline.engines.spark_session import session

__all__ = ["SENDER_RE", "Manifest", "ManifestError", "Receipt", "land", "land_upload",
           "parse_manifest"]


def handover_folder(staging: Path, extract_id: str) -> Path:
    """Where a Spark landing's tasks hand its rows back: beside the extract's staging folder."""
    return staging / f"{extract_id}.handover"


@contextmanager
def _landing(ctx: Context, uploaded_by_org: str | None = None) -> Iterator[LandingContext]:
    """The landing's context; with `HAVEN_ENGINE=spark`, the file is read and its batches
    prepared on Spark in a session for the call (receipts, vault and audit stay with this
    process's database)."""
    landing = LandingContext(ctx.settings, ctx.engine, ctx.keys, ctx.actor,
                             exclusion=landing_exclusion(ctx.engine),
                             uploaded_by_org=uploaded_by_org,
                             sender_check=sender_check(ctx.settings, ctx.engine))
    if ctx.settings.engine != "spark":
        yield landing
        return
    layout = ctx.settings.layout
    with session(ctx.settings, "haven-land") as spark:
        # Executors leave each slice's landed rows, sealed, in a folder beside the landing's
        # staging folder (the data directory, which every executor mounts; not inside what
        # is published), for this process to read back; an interrupted landing's is cleared
        # with the staging area.
        # Executors read the file themselves: where it is when they can reach it (a local
        # master, or a file in the data directory: an upload lands from there), else from
        # a copy beside the staging folder, removed with it.
        local = spark.sparkContext.master.startswith("local")
        landing.file_preparer = spark_file_preparer(
            spark, handover=lambda job: handover_folder(layout.staging_dir, job.extract_id),
            readable=lambda path: local or within(path, layout.home),
            inbound=lambda job: layout.staging_dir / f"{job.extract_id}.inbound")
        yield landing


def within(path: Path, folder: Path) -> bool:
    """Whether `path` is inside `folder`, links resolved."""
    return path.resolve().is_relative_to(folder.resolve())


def land(ctx: Context, path: Path, *, remove: bool = False,
         progress: Progress = quiet) -> list[Receipt]:
    """Land a file (its manifest beside it) or every extract in a folder; one receipt each."""
    with _landing(ctx) as landing:
        receipts = _land_path(landing, path, remove=remove)
    for receipt in receipts:
        progress(f"{receipt.status} {receipt.file}: "
                 f"{receipt.counts.get('landed', 0):,} rows landed, "
                 f"{receipt.counts.get('rejected', 0):,} rejected")
    return receipts


def land_upload(ctx: Context, path: Path, manifest: Manifest, filename: str,
                uploaded_by_org: str) -> Receipt:
    """Land one uploaded file whose manifest came with the request."""
    with _landing(ctx, uploaded_by_org) as landing:
        return land_file(landing, path, manifest, False, filename)
