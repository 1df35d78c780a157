"""Extract manifests: the sender's statement of what a file is: source, sender, digest, rows."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

from linkage.landing.contracts import CONTRACTS

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SENDER_RE = re.compile(r"^[A-Z0-9]{3,10}$")


class ManifestError(ValueError):
    """The manifest is missing, unreadable or wrong; the message names the field."""


@dataclass(frozen=True)
class Manifest:
    source: str
    sender: str
    period_start: date
    period_end: date
    sha256: str
    rows: int

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["period_start"] = self.period_start.isoformat()
        data["period_end"] = self.period_end.isoformat()
        return data


def manifest_path(extract: Path) -> Path:
    return extract.with_name(extract.name + ".manifest.json")


def parse_manifest(fields: dict[str, Any]) -> Manifest:
    """Check every manifest field and return a Manifest, or raise naming the bad field."""
    missing = [f for f in ("source", "sender", "period_start", "period_end", "sha256", "rows")
               if fields.get(f) in (None, "")]
    if missing:
        raise ManifestError(f"manifest is missing {', '.join(missing)}")
    source = str(fields["source"])
    if source not in CONTRACTS:
        raise ManifestError(f"manifest field source: unknown source {source!r} "
                            f"(expected one of {', '.join(sorted(CONTRACTS))})")
    sender = str(fields["sender"]).strip().upper()
    if not SENDER_RE.match(sender):
        raise ManifestError("manifest field sender: not an ODS code")
    dates = {}
    for name in ("period_start", "period_end"):
        try:
            dates[name] = date.fromisoformat(str(fields[name]))
        except ValueError as exc:
            raise ManifestError(f"manifest field {name}: not an ISO 8601 date") from exc
    if dates["period_end"] < dates["period_start"]:
        raise ManifestError("manifest field period_end: before period_start")
    digest = str(fields["sha256"]).strip().lower()
    if not SHA256_RE.match(digest):
        raise ManifestError("manifest field sha256: not a hex SHA-256 digest")
    try:
        rows = int(str(fields["rows"]))
    except ValueError as exc:
        raise ManifestError("manifest field rows: not a whole number") from exc
    if rows < 0:
        raise ManifestError("manifest field rows: negative")
    return Manifest(source, sender, dates["period_start"], dates["period_end"], digest, rows)


def read_manifest(extract: Path) -> Manifest:
    """Read `<file>.manifest.json` beside an extract."""
    path = manifest_path(extract)
    if not path.exists():
        raise ManifestError(f"no manifest: expected {path.name} beside the file")
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {path.name} is not valid JSON") from exc
    if not isinstance(fields, dict):
        raise ManifestError(f"manifest {path.name} is not a JSON object")
    return parse_manifest(fields)
