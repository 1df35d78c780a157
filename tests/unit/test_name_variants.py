"""Name variants as a keyed encoding: "Bill" and "William" agree without clear text, at a
comparison level of their own between the similarity bands and exact agreement, with weights
kept monotone (exact >= variant >= phonetic), in `link_files` as in the engine."""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from linkage import probabilistic as P
from linkage.encodings import column, encode_identifiers, name_variants, variant_keys
from linkage.link_files import link_files

FORMAL = {"William": "Bill", "Robert": "Bob", "Margaret": "Peggy", "James": "Jim",
          "Elizabeth": "Liz", "Richard": "Dick", "Katherine": "Kate", "Thomas": "Tom"}


@pytest.fixture
def key() -> bytes:
    return secrets.token_bytes(32)


def test_variants_share_a_keyed_slot_and_others_do_not(key: bytes) -> None:
    keys = variant_keys(["BILL", "WILLIAM", "BULL", "ZYXW"], key)
    assert keys.shape[1] == 4 and keys.dtype == np.uint64

    def share(a: int, b: int) -> bool:
        x, y = set(keys[a][keys[a] != 0]), set(keys[b][keys[b] != 0])
        return bool(x & y)

    assert share(0, 1)  # Bill ~ William (William is among Bill's canonical names)
    assert not share(0, 2) and not share(1, 3)
    assert name_variants("ZYXW") == ("ZYXW",)  # a name the list does not know: itself only
    other = variant_keys(["BILL"], secrets.token_bytes(32))
    assert not set(other[0]) & set(keys[0])  # keyed: another key, unrelated values


def test_variant_encoding_is_one_binary_column_without_clear_text(key: bytes) -> None:
    out = encode_identifiers(pd.DataFrame({"forename": ["Bill", "William", None]}), key)
    nk = out[column("forename", "nk")]
    assert isinstance(nk.iloc[0], bytes) and len(nk.iloc[0]) == 32
    assert nk.iloc[2] is None
    blob = b"".join(nk.iloc[:2])
    for clear in ("BILL", "WILLIAM", "Bill", "William", "ROBERT"):
        assert clear.encode() not in blob
    assert "lk_surname__nk" not in out.columns  # forenames only


def test_comparison_gives_variants_their_own_level(key: bytes) -> None:
    frame = pd.DataFrame({"forename": ["William", "Bill", "William", "Wiliam", "Peggy"]})
    enc = encode_identifiers(frame, key)
    pairs = pd.DataFrame({"left": [0, 0, 0, 0], "right": [1, 2, 3, 4]})
    levels = P.compare(enc, None, pairs)["forename"].tolist()
    top = P.TOP_LEVEL["forename"]
    assert levels[0] == P.VARIANT_LEVEL  # Bill for William
    assert levels[1] == top  # exact
    assert 1 < levels[2] < P.VARIANT_LEVEL  # a typo: a similarity band
    assert levels[3] == P.DIFFERENT  # Peggy is no William
    # encodings made before variants existed (no `nk` column) still compare, without the level
    old = enc.drop(columns=[column("forename", "nk")])
    assert P.compare(old, None, pairs)["forename"].tolist()[0] < P.VARIANT_LEVEL


def test_enforce_monotone_orders_exact_variant_phonetic() -> None:
    top = P.TOP_LEVEL["forename"]
    weights = {"forename": {0: 0.0, 1: -4.0, 2: 3.0, 3: 4.0, 4: 5.0, P.VARIANT_LEVEL: 1.0,
                            top: 0.5},
               "surname": {0: 0.0, 1: -4.0, 2: 3.0, 5: 1.0}}
    assert P.enforce_monotone(weights) == ["forename"]
    f = weights["forename"]
    assert f[P.VARIANT_LEVEL] == 3.0 and f[top] == 3.0  # raised to the level below
    assert f[4] == 5.0  # similarity bands are not reordered
    assert weights["surname"] == {0: 0.0, 1: -4.0, 2: 3.0, 5: 1.0}  # no variant level there
    assert P.enforce_monotone(weights) == []  # already monotone: nothing changes


def _files(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Left: n people with formal forenames; right: the same people, a third under their
    nickname, plus n // 3 others."""
    rng = np.random.default_rng(seed)
    formal = list(FORMAL)

    def surname() -> str:
        return "".join(rng.choice(list("BCDFGHKLMNPRSTVW")) + rng.choice(list("AEIOU"))
                       for _ in range(3)).title()

    def person(i: int) -> dict:
        return {"forename": formal[rng.integers(len(formal))], "surname": surname(),
                "date_of_birth": f"{rng.integers(1930, 2010)}-{rng.integers(1, 13):02d}-"
                                 f"{rng.integers(1, 29):02d}",
                "postcode": f"LS{rng.integers(1, 30)} {rng.integers(1, 10)}"
                            f"{'ABDEFGHJ'[rng.integers(8)]}{'LNPQRSTU'[rng.integers(8)]}"}
    left = pd.DataFrame([person(i) for i in range(n)]).assign(id=[f"L{i}" for i in range(n)])
    right = left.copy()
    right["id"] = [f"R{i}" for i in range(n)]
    nick = np.arange(n) % 3 == 0
    right.loc[nick, "forename"] = right.loc[nick, "forename"].map(FORMAL)
    moved = np.arange(n) % 5 == 1  # some disagreement for EM to learn from
    right.loc[moved, "postcode"] = None
    slip = np.arange(n) % 7 == 2
    right.loc[slip, "date_of_birth"] = [d[:8] + "28" for d in right.loc[slip, "date_of_birth"]]
    others = pd.DataFrame([person(i) for i in range(n // 3)]).assign(
        id=[f"X{i}" for i in range(n // 3)])
    return left, pd.concat([right, others], ignore_index=True)


def test_fitted_weights_are_monotone_and_tf_never_undercuts_a_variant(key: bytes) -> None:
    left, right = _files(600, seed=3)
    fields = ["forename", "surname", "date_of_birth", "postcode"]
    L, R = encode_identifiers(left[fields], key), encode_identifiers(right[fields], key)
    result = P.link(L, R, keep_scored=True)
    w = result.model.level_weights["forename"]
    top = P.TOP_LEVEL["forename"]
    assert w[top] >= w[P.VARIANT_LEVEL] >= w[2]
    assert w[P.VARIANT_LEVEL] > 0  # a variant is evidence for a match
    assert result.scored is not None
    pairs = result.scored[["left", "right"]]
    vectors = P.compare(L, R, pairs, fields=result.model.fields)
    forename_only = P.MatchModel.from_dict(result.model.to_dict())
    forename_only.tf = {"forename": result.model.tf["forename"]}
    adjustment = P.term_frequency_adjustment(forename_only, P.Encoded(L), P.Encoded(R), pairs,
                                             vectors)
    exact = vectors["forename"].to_numpy() == top
    # eight forenames: every one is common, so term frequencies would lower its exact weight
    # below a variant's (u of exact agreement is large); the floor holds it there
    with_tf = w[top] + adjustment[exact]
    assert (with_tf >= w[P.VARIANT_LEVEL] - 1e-9).all()
    assert np.isclose(with_tf, w[P.VARIANT_LEVEL]).any()


def test_link_files_links_nicknames_to_formal_names(tmp_path: Path) -> None:
    left, right = _files(600, seed=5)
    left.to_csv(tmp_path / "left.csv", index=False)
    right.to_csv(tmp_path / "right.csv", index=False)
    fields = {"forename": "forename", "surname": "surname", "date_of_birth": "date_of_birth",
              "postcode": "postcode"}
    link_files(tmp_path / "left.csv", tmp_path / "right.csv", "id", fields,
               tmp_path / "out.csv")
    found = pd.read_csv(tmp_path / "out.csv", dtype=str)
    got = set(zip(found["left_id"], found["right_id"], strict=True))
    nick = {(f"L{i}", f"R{i}") for i in range(0, 600, 3)}
    assert len(got & nick) == len(nick)  # every nickname copy linked to its formal record
    assert all(a[1:] == b[1:] for a, b in got)  # and nothing else wrong
