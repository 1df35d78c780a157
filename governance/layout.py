"""Every path and file name under the data directory, spelled here and nowhere else.

    $HAVEN_HOME/
      haven.db                      SQLite (the embedded default; PostgreSQL holds this instead)
      keys.json                     keys made on first use when none are passed (mode 0600)
      <name>.lock                   one writer at a time (landing, jobs, the index)
      staging/<extract_id>/         an extract being landed, moved into place in one rename
      staging-runs/<run_id>/        a score run being written, moved into runs/ in one rename
                                    once its runs row commits (landing clears staging/)
      scratch/<pid>-<token>/        a stage's working copy of linked rows (DuckDB files that
                                    spill to disk), score's scores and candidates written a
                                    batch at a time (RunFiles.part), link's buckets of register
                                    profiles (profiles-NNN.parquet); removed when the stage
                                    ends; one whose process is gone is removed by the next
                                    stage or destruction
      cache/linked/<key>/           the last working copy of linked rows a stage made
                                    (sources.duckdb, meta.json; on Spark parquet/<source>/
                                    range=<i>/, hard-linked), copied (linked) into the next
                                    stage's workspace when nothing it depends on changed (the map's
                                    generation, the landed extracts, the opt-outs in force for
                                    the purpose: the key digests them); one entry at a time;
                                    removed by destruction, a purge and a key rotation
      extracts/<extract_id>/rows.parquet     landed, pseudonymised rows
      index/link_map -> map-<token>/  the person index (one row per landed row): a symlink to
                                    the current generation, one Parquet file per extract
                                    (<extract_id>.parquet), each with its persons
                                    (_persons/<extract_id>.parquet: pseudonym, person key, rows)
                                    and _manifest.json (extracts in order, rows per method); an
                                    update writes a new generation (unchanged files hard-linked)
                                    and swaps the symlink in one rename
      index/link_map.parquet        the person index as one file (homes linked before
                                    generations; split into one on the next update)
      index/review.parquet          candidate links held for review
      index/quality.json            the last linkage run's measured error rates
      runs/<run_id>/                a score run: scores.parquet, candidates.parquet, run.json,
                                    model.joblib; refresh.json and refresh.md (drift report)
                                    when `haven refresh` scored it
      runs/<run_id>/                an analysis run (journeys, costs, segments: issue #14):
                                    records.parquet, published.parquet, run.json
      reports/<run_id>/             a run's model report (report.md and plots)
      exports/<export_id>/          a release to a named recipient: export.json and the file
      jobs/<job_id>.json            state of a linkage or scoring job started through the API
      uploads/                      request bodies while an upload is being received
      mdt/<practice>.jsonl          who an MDT marked reviewed at a meeting (person keys, dates)
      runs/<kind>-<stamp>-<digest>/ an impact output (kind: evaluation, forecast, vulnerable):
                                    result.json and Parquet tables named by ImpactFiles; a
                                    run of its kind in the runs table, so destruction voids it

Destruction (governance.retention) and every stage find their files through `Layout`, so a
reviewer can see in one sitting what the data directory can hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROWS_FILE = "rows.parquet"
EXPORT_DESCRIPTION = "export.json"


@dataclass(frozen=True)
class RunFiles:
    """The files of one score run (`runs/<run_id>/`)."""

    folder: Path

    @property
    def scores(self) -> Path:
        return self.folder / "scores.parquet"

    @property
    def candidates(self) -> Path:
        return self.folder / "candidates.parquet"

    def part(self, name: str, number: int) -> Path:
        """Batch `number` of the file `name` (`scores`, `candidates`) while a run is written a
        batch at a time into a stage's scratch workspace (stratify.scoring), before the
        batches are joined into that file."""
        return self.folder / f"{name}.part{number:06d}.parquet"

    @property
    def description(self) -> Path:
        return self.folder / "run.json"

    @property
    def model(self) -> Path:
        return self.folder / "model.joblib"

    @property
    def refresh_json(self) -> Path:
        """`haven refresh`'s drift report on this run against the one before (figures and
        warnings; counts only)."""
        return self.folder / "refresh.json"

    @property
    def refresh_markdown(self) -> Path:
        """The same drift report, to read."""
        return self.folder / "refresh.md"


@dataclass(frozen=True)
class ImpactFiles:
    """The files of one evaluation, forecast or vulnerable-adults count (`runs/<id>/`, id
    `<kind>-...`):
    `result.json` (what was done, figures) and Parquet tables by name (`table(name)`)."""

    folder: Path

    @property
    def result(self) -> Path:
        return self.folder / "result.json"

    def table(self, name: str) -> Path:
        return self.folder / f"{name}.parquet"


@dataclass(frozen=True)
class AnalysisFiles:
    """The files of one analysis run (`runs/<run_id>/`, beside score runs, so destruction
    removes them with the run): pseudonymised records, published tables, description."""

    folder: Path

    @property
    def records(self) -> Path:
        return self.folder / "records.parquet"

    @property
    def published(self) -> Path:
        return self.folder / "published.parquet"

    @property
    def description(self) -> Path:
        return self.folder / "run.json"


@dataclass(frozen=True)
class Layout:
    """Paths under one data directory (`home`); nothing here touches the disk."""

    home: Path

    @property
    def database_file(self) -> Path:
        return self.home / "haven.db"

    @property
    def key_file(self) -> Path:
        return self.home / "keys.json"

    def lock(self, name: str) -> Path:
        return self.home / f"{name}.lock"

    @property
    def staging_dir(self) -> Path:
        return self.home / "staging"

    @property
    def extracts_dir(self) -> Path:
        return self.home / "extracts"

    @property
    def scratch_dir(self) -> Path:
        return self.home / "scratch"

    def scratch(self, owner: int, token: str) -> Path:
        return self.scratch_dir / f"{owner}-{token}"

    @property
    def linked_cache_dir(self) -> Path:
        return self.home / "cache" / "linked"

    def linked_cache(self, key: str) -> Path:
        return self.linked_cache_dir / key

    @staticmethod
    def profile_bucket(scratch: Path, number: int) -> Path:
        """Link's bucket `number` of register profiles, in its scratch workspace."""
        return scratch / f"profiles-{number:03d}.arrow"

    def extract(self, extract_id: str) -> Path:
        return self.extracts_dir / extract_id

    def rows(self, extract_id: str) -> Path:
        return self.extract(extract_id) / ROWS_FILE

    def staged(self, extract_id: str) -> Path:
        return self.staging_dir / extract_id

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def link_map(self) -> Path:
        """The current link map generation (a symlink to a `map_generation` folder)."""
        return self.index_dir / "link_map"

    def map_generation(self, token: str) -> Path:
        """A generation of the link map: one Parquet file per extract, persons, manifest."""
        return self.index_dir / f"map-{token}"

    @property
    def legacy_link_map(self) -> Path:
        """The link map as one file, as homes linked before generations hold it."""
        return self.index_dir / "link_map.parquet"

    @property
    def review(self) -> Path:
        return self.index_dir / "review.parquet"

    @property
    def link_quality(self) -> Path:
        return self.index_dir / "quality.json"

    @property
    def link_models(self) -> Path:
        """The linkage models a later link may reuse (`linkage.kept_models`)."""
        return self.index_dir / "models.json"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    def run(self, run_id: str) -> RunFiles:
        return RunFiles(self.runs_dir / run_id)

    @property
    def run_staging_dir(self) -> Path:
        """Score runs being written, apart from `staging/` (which landing clears)."""
        return self.home / "staging-runs"

    def staged_run(self, run_id: str) -> RunFiles:
        """A score run's files while it is written, before its row commits (pipeline.score)."""
        return RunFiles(self.run_staging_dir / run_id)

    def analysis(self, run_id: str) -> AnalysisFiles:
        return AnalysisFiles(self.runs_dir / run_id)

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def report(self, run_id: str) -> Path:
        return self.reports_dir / run_id

    @property
    def exports_dir(self) -> Path:
        return self.home / "exports"

    def export(self, export_id: str) -> Path:
        return self.exports_dir / export_id

    def export_description(self, export_id: str) -> Path:
        return self.export(export_id) / EXPORT_DESCRIPTION

    def export_file(self, export_id: str, fmt: str) -> Path:
        return self.export(export_id) / f"export.{fmt}"

    def export_descriptions(self) -> list[Path]:
        """Every export's description file, sorted (empty when there are none)."""
        if not self.exports_dir.exists():
            return []
        return sorted(self.exports_dir.glob(f"*/{EXPORT_DESCRIPTION}"))

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    def job(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}.json"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def mdt_reviews_dir(self) -> Path:
        return self.home / "mdt"

    def mdt_reviews(self, practice: str) -> Path:
        return self.mdt_reviews_dir / f"{practice}.jsonl"

    def impact(self, output_id: str) -> ImpactFiles:
        """An impact output's files (under `runs/`, as every run's: destruction voids it)."""
        return ImpactFiles(self.runs_dir / output_id)

    def impact_outputs(self, kind: str) -> list[ImpactFiles]:
        """Every output of `kind` (evaluation, forecast, vulnerable) with a result file,
        oldest id first (empty when none)."""
        if not self.runs_dir.exists():
            return []
        return [ImpactFiles(path.parent)
                for path in sorted(self.runs_dir.glob(f"{kind}-*/result.json"))]
