"""The linked, pseudonymised view later stages read: landed rows of each source with person_key.

Only extracts that are landed (not destroyed) are read, and an optional row filter (the
opt-out rules for a purpose, from governance) drops what that purpose may not use.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine

from governance.settings import Settings
from linkage.person_index import landed_extracts

# Given a source's linked rows (with person_id, extract_id, sender), a mask of rows to keep.
RowFilter = Callable[[pd.DataFrame, str], "pd.Series"]


def load_sources(settings: Settings, engine: Engine, row_filter: RowFilter | None = None,
                 sources: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Every landed source as one frame with `person_key`, linkage encodings left out."""
    link_path = settings.layout.link_map
    if not link_path.exists():
        raise FileNotFoundError("no person index yet: run `haven link` first")
    link_map = pq.read_table(link_path, columns=["extract_id", "row", "person_key"])
    landed = landed_extracts(engine)
    out: dict[str, pd.DataFrame] = {}
    for source, group in landed.groupby("source"):
        if sources is not None and source not in sources:
            continue
        tables = []
        for item in group.itertuples():
            path = settings.layout.rows(item.extract_id)
            names = [n for n in pq.read_schema(path).names if not n.startswith("lk_")]
            table = pq.read_table(path, columns=names)
            table = table.append_column("sender", pa.array([item.sender] * table.num_rows,
                                                           pa.string()))
            tables.append(table)
        if not tables:
            continue
        table = pa.concat_tables(tables, promote_options="default")
        joined = table.join(link_map, keys=["extract_id", "row"], join_type="inner")
        frame = joined.to_pandas()
        if row_filter is not None and len(frame):
            frame = frame[row_filter(frame, str(source)).to_numpy()]
        out[str(source)] = frame.reset_index(drop=True)
    return out
