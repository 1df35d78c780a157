"""The linked, pseudonymised view later stages read: landed rows of each source with person_key.

Only extracts that are landed (not destroyed) are read, and an optional row filter (the
opt-out rules for a purpose, from governance) drops what that purpose may not use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
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


def linked_batches(settings: Settings, engine: Engine, row_filter: RowFilter | None = None,
                   sources: list[str] | None = None, batch_rows: int = 250_000
                   ) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """`load_sources`' rows a batch at a time: (source, extract id, rows with `person_key`),
    the same rows after the same filter, in memory bounded by a batch and one extract's slice
    of the link map (read with a filter on its extract id), not by the population."""
    link_path = settings.layout.link_map
    if not link_path.exists():
        raise FileNotFoundError("no person index yet: run `haven link` first")
    landed = landed_extracts(engine)
    for item in landed.sort_values(["source", "extract_id"]).itertuples():
        source = str(item.source)
        if sources is not None and source not in sources:
            continue
        keys = pq.read_table(link_path, columns=["row", "person_key"],
                             filters=[("extract_id", "=", item.extract_id)])
        # Looked up by binary search on the slice sorted by row: a hash join per batch
        # rebuilt its table from the whole slice every batch (quadratic in the extract).
        keys = keys.sort_by("row")
        numbers = keys.column("row").to_numpy()
        person_keys = keys.column("person_key")
        path = settings.layout.rows(item.extract_id)
        names = [n for n in pq.read_schema(path).names if not n.startswith("lk_")]
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=names):
            table = pa.Table.from_batches([batch])
            wanted = table.column("row").to_numpy()
            at = np.minimum(np.searchsorted(numbers, wanted), max(len(numbers) - 1, 0))
            found = (numbers[at] == wanted) if len(numbers) else np.zeros(len(wanted), bool)
            table = table.filter(pa.array(found)).append_column(
                "person_key", person_keys.take(pa.array(at[found])))
            table = table.append_column("sender", pa.array([item.sender] * table.num_rows,
                                                           pa.string()))
            frame = table.to_pandas()
            if row_filter is not None and len(frame):
                frame = frame[row_filter(frame, source).to_numpy()]
            if len(frame):
                yield source, str(item.extract_id), frame.reset_index(drop=True)
