"""The key-independent training order (stratify.train.stable_order) hashes rows a column at a
time (issue #12: no float64 copy of the feature table) and must order exactly as the whole-frame
hash it replaced, or every model trained on the same data would change."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stratify.train import _row_hashes, stable_order


def test_row_hashes_equal_pandas_whole_frame_hash():
    rng = np.random.default_rng(7)
    X = pd.DataFrame(rng.normal(size=(3000, 9)).astype(np.float32),
                     columns=[f"f{i}" for i in range(9)])
    X.iloc[::5, 3] = np.nan
    X.iloc[::11, 0] = 0.0
    y = rng.integers(0, 2, len(X))
    frame = pd.DataFrame(X.to_numpy(dtype=np.float64, na_value=np.nan), copy=False)
    frame["outcome"] = np.asarray(y, dtype=np.float64)
    hashes = {}
    for key in ("haven-order-0001", "haven-order-0002"):
        whole = pd.util.hash_pandas_object(frame, index=False, hash_key=key).to_numpy()
        hashes[key] = whole
        np.testing.assert_array_equal(_row_hashes(X, y, key), whole)
    expected = np.lexsort((hashes["haven-order-0002"], hashes["haven-order-0001"]))
    np.testing.assert_array_equal(stable_order(X, y), expected)
    assert not np.array_equal(stable_order(X, 1 - y), expected)  # the outcome is hashed too
