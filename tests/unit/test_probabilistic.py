"""The linkage engine on keyed encodings: blocking, comparison, scoring and decisions."""

from __future__ import annotations

import json
import secrets

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from linkage import probabilistic as P
from linkage.encodings import column, encode_identifiers
from linkage.probabilistic import LinkageSettings

SYLLABLES = ["an", "ber", "ca", "dor", "el", "fi", "gan", "ha", "is", "jo", "ka", "li", "mar",
             "ne", "o", "pel", "ri", "son", "ta", "vi", "wen", "zel", "ston", "ley", "worth"]


def people(n: int, seed: int) -> pd.DataFrame:
    """Generated people (syllable names, random dates and UK-format postcodes)."""
    rng = np.random.default_rng(seed)

    def name() -> str:
        return "".join(rng.choice(SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()

    days = rng.integers(0, 365 * 80, size=n)
    dob = (np.datetime64("1930-01-01") + days.astype("timedelta64[D]")).astype(str)
    letters = "ABDEFGHJLNPRSTUWY"
    return pd.DataFrame({
        "forename": [name() for _ in range(n)],
        "surname": [name() for _ in range(n)],
        "date_of_birth": dob,
        "sex": rng.choice(["1", "2"], size=n),
        "postcode": [f"{rng.choice(list(letters))}{rng.choice(list(letters))}"
                     f"{rng.integers(1, 30)} {rng.integers(1, 10)}"
                     f"{rng.choice(list(letters))}{rng.choice(list(letters))}"
                     for _ in range(n)],
    })


def typo(text: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(1, len(text) - 1))
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]  # transposition


def corrupt(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Copies with realistic errors: name typos, day/month swap, moved house, blanks."""
    rng = np.random.default_rng(seed)
    out = frame.copy().reset_index(drop=True)
    for i in range(len(out)):
        kind = i % 6
        if kind == 0:
            out.loc[i, "surname"] = typo(out.loc[i, "surname"], rng)
        elif kind == 1:
            y, m, d = out.loc[i, "date_of_birth"].split("-")
            if int(d) <= 12:
                out.loc[i, "date_of_birth"] = f"{y}-{d}-{m}"
        elif kind == 2:
            out.loc[i, "postcode"] = None
            out.loc[i, "forename"] = typo(out.loc[i, "forename"], rng)
        elif kind == 3:
            out.loc[i, "postcode"] = "ZZ9 9ZZ"  # moved
        elif kind == 4:
            out.loc[i, "forename"] = out.loc[i, "forename"].upper()
            out.loc[i, "date_of_birth"] = str(int(out.loc[i, "date_of_birth"][:4]) + 1) + \
                out.loc[i, "date_of_birth"][4:]
    return out


@pytest.fixture(scope="module")
def key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture(scope="module")
def two_files(key: bytes) -> tuple[pd.DataFrame, pd.DataFrame, set[tuple[int, int]]]:
    """Left 600 people; right = 300 corrupted copies of left[0:300] then 300 new people."""
    left = people(600, seed=1)
    right = pd.concat([corrupt(left.iloc[:300], seed=2), people(300, seed=3)],
                      ignore_index=True).sample(frac=1.0, random_state=4)
    truth = {(int(i), int(pos)) for pos, i in enumerate(right.index) if i < 300}
    return (encode_identifiers(left, key), encode_identifiers(right.reset_index(drop=True), key),
            truth)


def f1(found: set, truth: set) -> tuple[float, float]:
    tp = len(found & truth)
    return tp / max(1, len(found)), tp / max(1, len(truth))


def test_link_finds_planted_matches_and_rejects_non_matches(two_files: tuple) -> None:
    left, right, truth = two_files
    result = P.link(left, right)
    found = set(zip(result.matches["left"], result.matches["right"], strict=True))
    precision, recall = f1(found, truth)
    assert precision >= 0.99, precision
    assert recall >= 0.95, recall
    assert not result.warnings
    # every right record that is a new person stays unlinked
    new_people = {pos for pos in range(len(right))} - {r for _, r in truth}
    assert not new_people & set(result.matches["right"])
    assert result.matches["weight"].min() > 0
    assert result.matches["probability"].min() >= 0.9


def test_disjoint_files_make_no_links(key: bytes) -> None:
    left = encode_identifiers(people(400, seed=11), key)
    right = encode_identifiers(people(400, seed=12), key)
    result = P.link(left, right)
    assert len(result.matches) == 0


def test_review_band_is_never_linked(two_files: tuple) -> None:
    left, right, _ = two_files
    # nothing can reach p >= 1.0
    result = P.link(left, right, LinkageSettings(upper=1.0, lower=0.5))
    assert len(result.matches) == 0
    assert len(result.review) > 250
    assert result.review["probability"].between(0.5, 1.0, inclusive="left").all()
    strict = P.link(left, right, LinkageSettings(upper=0.9, lower=0.5))
    both = set(zip(strict.matches["left"], strict.matches["right"], strict=True)) & set(
        zip(strict.review["left"], strict.review["right"], strict=True))
    assert not both


def test_dedupe_clusters_planted_duplicates(key: bytes) -> None:
    base = people(400, seed=21)
    frame = pd.concat([base, corrupt(base.iloc[:150], seed=22)], ignore_index=True)
    result = P.dedupe(encode_identifiers(frame, key))
    assert result.clusters is not None
    labels = result.clusters
    same = sum(labels[i] == labels[400 + i] for i in range(150))
    assert same >= 142
    assert len(np.unique(labels)) == pytest.approx(400, abs=8)
    pairs = P.cluster_pairs(labels)
    assert (pairs["left"] < pairs["right"]).all()
    assert not pairs.duplicated().any()


def test_block_pairs_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    lk = rng.integers(0, 6, 80)
    rk = rng.integers(0, 6, 70)
    a, b, skipped = P.block_pairs(lk, rk, max_block_pairs=10**6)
    got = set(zip(a.tolist(), b.tolist(), strict=True))
    want = {(i, j) for i in range(80) for j in range(70) if lk[i] == rk[j] and lk[i] != 0}
    assert got == want and skipped == 0
    a, b, _ = P.block_pairs(lk, None, max_block_pairs=10**6)
    got = set(zip(a.tolist(), b.tolist(), strict=True))
    want = {(i, j) for i in range(80) for j in range(i + 1, 80) if lk[i] == lk[j] != 0}
    assert got == want
    # oversized blocks are skipped and counted
    a, b, skipped = P.block_pairs(lk, rk, max_block_pairs=50)
    sizes = {k: (lk == k).sum() * (rk == k).sum() for k in range(1, 6)}
    assert skipped == sum(1 for s in sizes.values() if s > 50)
    assert all(lk[i] not in {k for k, s in sizes.items() if s > 50} for i in a)


def test_candidate_pairs_union_is_unique_and_bounded(two_files: tuple) -> None:
    left, right, truth = two_files
    stats = P.BlockingStats()
    pairs = P.candidate_pairs(left, right, stats=stats)
    assert not pairs.duplicated().any()
    assert stats.pairs == len(pairs) <= sum(stats.per_pass.values())
    assert truth <= set(zip(pairs["left"], pairs["right"], strict=True))
    with pytest.raises(MemoryError):
        P.candidate_pairs(left, right, max_pairs=10)


def test_one_to_one_is_greedy() -> None:
    rng = np.random.default_rng(1)
    left, right = rng.integers(0, 30, 300), rng.integers(0, 30, 300)
    weight = rng.normal(size=300)
    chosen = P.one_to_one(left, right, weight)
    used_l, used_r, greedy = set(), set(), np.zeros(300, dtype=bool)
    for i in np.lexsort((right, left, -weight)):
        if left[i] not in used_l and right[i] not in used_r:
            greedy[i] = True
            used_l.add(left[i])
            used_r.add(right[i])
    assert (chosen == greedy).all()


def test_comparison_levels(key: bytes) -> None:
    frame = pd.DataFrame({
        "forename": ["Anna", "Anna", "Bloggs", "Anna", None],
        "surname": ["Bloggs", "Blogss", "Anna", "Zyxwvut", "Bloggs"],
        "date_of_birth": ["1970-03-05", "1970-05-03", "1970-03-06", "1971-03-05", "1970-03-05"],
        "sex": ["2", "2", "2", "1", None],
    })
    enc = encode_identifiers(frame, key)
    pairs = pd.DataFrame({"left": [0, 0, 0, 0], "right": [1, 2, 3, 4]})
    levels = P.compare(enc, None, pairs)
    top = P.TOP_LEVEL
    # pairs: (0,1) d/m swapped and surname typo, (0,2) names swapped and one date component,
    # (0,3) surname and sex differ, another date component, (0,4) forename and sex missing
    assert levels["date_of_birth"].tolist() == [3, 2, 2, top["date_of_birth"]]
    # swapped names: the closest similarity band (below a name variant)
    assert levels["forename"].tolist() == [top["forename"], P.VARIANT_LEVEL - 1,
                                           top["forename"], P.MISSING]
    assert 1 < levels["surname"][0] < top["surname"]  # typo: a fuzzy level
    assert levels["surname"].tolist()[1:] == [top["surname"] - 1, P.DIFFERENT, top["surname"]]
    assert levels["sex"].tolist() == [2, 2, P.DIFFERENT, P.MISSING]


def test_model_weights_are_sensible_and_serialisable(two_files: tuple) -> None:
    left, right, _ = two_files
    result = P.link(left, right)
    model = result.model
    for f in model.fields:
        w = model.level_weights[f]
        assert w[max(w)] > 0 > w[P.DIFFERENT], f
        assert w[P.MISSING] == 0
    assert 0 < model.prior < 0.01
    again = P.MatchModel.from_dict(model.to_dict())
    assert again.tf == model.tf and set(model.tf) == {"forename", "surname"}
    pairs = result.matches[["left", "right"]]
    vectors = P.compare(left, right, pairs)
    L, R = P.Encoded(left), P.Encoded(right)
    assert np.allclose(P.pair_weights(again, L, R, pairs, vectors),
                       P.pair_weights(model, L, R, pairs, vectors))
    assert np.allclose(result.matches["weight"], P.pair_weights(model, L, R, pairs, vectors))


def test_fitted_model_round_trips_through_json(two_files: tuple) -> None:
    left, right, _ = two_files
    result = P.link(left, right)
    text = result.model.to_json()
    again = P.MatchModel.from_json(text)
    assert again == result.model and again.to_json() == text
    saved = json.loads(text)
    assert saved["prior"] == result.model.prior
    assert set(saved["m"]["surname"]) == set(saved["u"]["surname"]) == {
        str(level) for level in range(P.TOP_LEVEL["surname"] + 1)}
    reloaded = P.link(left, right, model=again)  # scores and decides as the fitted model
    pd.testing.assert_frame_equal(reloaded.matches, result.matches)
    pd.testing.assert_frame_equal(reloaded.review, result.review)


def test_exact_agreement_on_a_rare_name_weighs_more_than_on_a_common_one(key: bytes) -> None:
    # 40 Smiths and one Featherstonehaugh on each side; otherwise the same evidence
    names = ["Smith"] * 40 + ["Featherstonehaugh"] + [f"Name{i}" for i in range(59)]
    frame = pd.DataFrame({"surname": names, "forename": ["Ann"] * 100,
                          "date_of_birth": ["1970-01-01"] * 100})
    L = P.Encoded(encode_identifiers(frame, key))
    pairs = pd.DataFrame({"left": [0, 40, 0], "right": [1, 40, 41]})
    vectors = P.compare(L, None, pairs)
    assert vectors["surname"].tolist()[:2] == [P.TOP_LEVEL["surname"]] * 2
    flat = P.MatchModel(fields=("surname",), level_weights={"surname": {
        P.TOP_LEVEL["surname"]: 8.0, P.DIFFERENT: -4.0}}, prior=1e-4, method="ecm")
    tf = P.MatchModel(**{**flat.__dict__, "tf": {"surname": 0.05}})
    plain = P.pair_weights(flat, L, None, pairs, vectors)
    adjusted = P.pair_weights(tf, L, None, pairs, vectors)
    assert plain[0] == plain[1] == 8.0
    # Smith: 40% of records, u 0.05 -> log2(0.05 / 0.40) = -3; the rare name: log2(0.05 / 0.01)
    assert adjusted[0] == pytest.approx(8.0 + np.log2(0.05 / 0.40))
    assert adjusted[1] == pytest.approx(8.0 + np.log2(0.05 / 0.01))
    assert adjusted[2] == plain[2] == -4.0  # disagreement is not adjusted


def test_logistic_with_nhs_labels(two_files: tuple) -> None:
    left, right, truth = two_files
    # person_id pseudonyms on half the records: equal for true pairs, distinct otherwise
    lids = pd.array([f"p{i}" if i % 2 else None for i in range(len(left))], dtype=object)
    rids = [None] * len(right)
    for i, j in truth:
        if i % 2:
            rids[j] = f"p{i}"
    for j in range(len(right)):
        if rids[j] is None and j % 3 == 0:
            rids[j] = f"q{j}"
    lf, rf = left.assign(person_id=lids), right.assign(person_id=rids)
    pairs = P.candidate_pairs(lf, rf)
    labels = P.nhs_labels(lf, rf, pairs)
    assert labels is not None and (labels == 1).sum() > 50 and (labels == -1).any()
    result = P.link(lf, rf, LinkageSettings(method="logistic"))
    assert result.model.method == "logistic"
    found = set(zip(result.matches["left"], result.matches["right"], strict=True))
    precision, recall = f1(found, truth)
    assert precision >= 0.98 and recall >= 0.9


def test_partitioned_auto_fit_may_choose_logistic(key: bytes) -> None:
    # every record has a pseudonym; 600 copies and 600 relatives (same surname and postcode,
    # another forename and birthday): plenty of labelled matches and non-matches in a sample
    left = people(800, seed=86)
    kin = left.iloc[:600].copy()
    kin["forename"] = people(600, seed=82)["forename"].to_numpy()
    kin["date_of_birth"] = people(600, seed=83)["date_of_birth"].to_numpy()
    right = pd.concat([corrupt(left.iloc[:600], seed=84), kin], ignore_index=True)
    lf = encode_identifiers(left, key).assign(person_id=[f"p{i}" for i in range(800)])
    rf = encode_identifiers(right, key).assign(
        person_id=[f"p{i}" for i in range(600)] + [f"k{i}" for i in range(600)])
    plan = P.plan_blocking(P.Encoded(lf), P.Encoded(rf), P.DEFAULT_PASSES)
    settings = LinkageSettings(method="auto", partition_pairs=plan.estimated_pairs // 2 + 1)
    result = P.link(lf, rf, settings)
    assert result.model.method == "logistic"
    precision, recall = f1(_pair_set(result.matches), {(i, i) for i in range(600)})
    assert precision >= 0.99 and recall >= 0.95

def test_engine_reads_encodings_back_from_arrow(two_files: tuple) -> None:
    left, right, _ = two_files
    pairs = P.candidate_pairs(left, right).head(500)
    direct = P.compare(left, right, pairs)
    back = [pa.Table.from_pandas(f, preserve_index=False).replace_schema_metadata(None)
            for f in (left, right)]
    for frame in (back[0].to_pandas(), back[0].to_pandas(types_mapper=pd.ArrowDtype)):
        via = P.compare(frame, back[1].to_pandas(), pairs)
        pd.testing.assert_frame_equal(direct, via)


def test_missing_fields_compare_as_missing(two_files: tuple) -> None:
    left, right, _ = two_files
    pairs = P.candidate_pairs(left, right).head(50)
    slim = right.drop(columns=[c for c in right.columns if c.startswith(column("postcode"))])
    levels = P.compare(left, slim, pairs, fields=["surname", "postcode"])
    assert (levels["postcode"] == P.MISSING).all()
    assert (levels["surname"] > P.MISSING).all()


def test_implausible_model_makes_no_links(two_files: tuple) -> None:
    left, right, _ = two_files
    good = P.link(left, right).model
    weights = {f: dict(w) for f, w in good.level_weights.items()}
    top = max(weights["date_of_birth"])
    weights["date_of_birth"][top] = -10.0  # agreeing on date of birth "makes a match unlikely"
    bad = P.MatchModel(fields=good.fields, level_weights=weights, prior=good.prior, method="ecm")
    assert bad.implausible_fields() == ["date_of_birth"]
    assert good.implausible_fields() == []
    result = P.link(left, right, model=bad)
    assert len(result.matches) == 0 and len(result.review) == 0
    assert result.warnings and "date_of_birth" in result.warnings[0]


def test_no_candidate_pairs_is_a_warning_not_an_error(key: bytes) -> None:
    a = encode_identifiers(pd.DataFrame({"surname": ["Hargreaves"], "forename": ["Amelia"]}), key)
    b = encode_identifiers(pd.DataFrame({"surname": ["Adeyemi"], "forename": ["Seun"]}), key)
    result = P.link(a, b)
    assert len(result.matches) == 0 and result.warnings
    assert P.dedupe(a).clusters.tolist() == [0]


def test_fields_outside_the_default_passes_still_block(key: bytes) -> None:
    frame = encode_identifiers(pd.DataFrame({"address_2": ["1 Mill Rd", "1 mill road", "2 Elm"]}),
                               key)
    enc = P.Encoded(frame)
    assert P.usable_passes(enc, None, P.DEFAULT_PASSES) == [("address_2",)]
    pairs = P.candidate_pairs(frame)
    assert list(zip(pairs["left"], pairs["right"], strict=True)) == [(0, 1)]


def test_best_right_lets_many_left_records_share_a_right_record(two_files: tuple) -> None:
    left, right, truth = two_files
    doubled = pd.concat([right, right], ignore_index=True)  # every person twice on the left
    result = P.link(doubled, left, LinkageSettings(assignment="best_right"))
    found = set(zip(result.matches["left"], result.matches["right"], strict=True))
    want = {(j, i) for i, j in truth} | {(j + len(right), i) for i, j in truth}
    precision, recall = f1(found, want)
    assert precision >= 0.99 and recall >= 0.95
    assert not result.matches["left"].duplicated().any()
    assert result.matches["right"].duplicated().any()
    chosen = P.best_right(np.array([0, 0, 1]), np.array([5, 6, 5]), np.array([1.0, 2.0, 0.5]))
    assert chosen.tolist() == [False, True, True]


def _pair_set(frame: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(frame["left"].tolist(), frame["right"].tolist(), strict=True))


@pytest.mark.parametrize("within", [False, True])
def test_partitions_make_exactly_the_unpartitioned_candidates(two_files: tuple,
                                                              within: bool) -> None:
    left, right, _ = two_files
    if within:  # exact copies and corrupted copies: blocks of three, over the cap below
        left = pd.concat([left, left.iloc[:100], right], ignore_index=True)
    L, R = P.Encoded(left), None if within else P.Encoded(right)
    # a low block cap, so blocks skipped on the whole inputs must be skipped in every part
    whole_stats = P.BlockingStats()
    whole = P.candidate_pairs(L, R, max_block_pairs=1, stats=whole_stats)
    assert sum(whole_stats.skipped_blocks.values()) > 0
    assert not whole.duplicated().any()
    width = len(left) if within else len(right)
    assert (np.diff(whole["left"].to_numpy() * width + whole["right"].to_numpy()) > 0).all()
    plan = P.plan_blocking(L, R, P.DEFAULT_PASSES, max_block_pairs=1)
    parts = [P.pairs_for_rows(plan, rows) for rows in np.array_split(np.arange(L.n), 7)]
    together = pd.concat(parts, ignore_index=True)
    assert not together.duplicated().any()
    assert _pair_set(together) == _pair_set(whole)
    if within:
        assert (together["left"] < together["right"]).all()
    # brute force: a pair is a candidate iff some pass agrees and its block was not skipped
    other = L if within else R
    agree = np.zeros((L.n, other.n), dtype=bool)
    for cols in P.usable_passes(L, R, P.DEFAULT_PASSES):
        a, b = L.pass_key(cols), other.pass_key(cols)
        same = (a[:, None] == b[None, :]) & (a[:, None] != 0)
        size = {k: int((a == k).sum()) * int((b == k).sum()) for k in set(a[a != 0].tolist())}
        if within:
            size = {k: n * (n - 1) // 2 for k, n in ((k, int((a == k).sum())) for k in size)}
        small = np.array([size.get(k, 0) <= 1 for k in a.tolist()])
        agree |= same & small[:, None]
    if within:
        agree = np.triu(agree, 1)
    assert _pair_set(whole) == {(int(i), int(j)) for i, j in zip(*np.nonzero(agree),
                                                                 strict=True)}


def test_right_side_in_parts_sized_on_the_whole_makes_the_whole_candidates(
        two_files: tuple) -> None:
    """A register held a part at a time (buckets of persons): with each left key's count on the
    whole right side (`key_counts` summed over the parts), the parts' pairs are the whole's,
    the same oversized blocks skipped; sized on a part alone they would not be."""
    from linkage.probabilistic.blocking import key_counts

    left, right, _ = two_files
    right = pd.concat([right, right.iloc[:150]], ignore_index=True)  # blocks of two
    L, R = P.Encoded(left), P.Encoded(right)
    whole_stats = P.BlockingStats()
    whole = P.candidate_pairs(L, R, max_block_pairs=1, stats=whole_stats)
    assert sum(whole_stats.skipped_blocks.values()) > 0
    at = np.random.default_rng(3).permutation(len(right)) % 3  # three parts, rows mixed
    parts = [np.flatnonzero(at == i) for i in range(3)]
    encoded = [P.Encoded(right.iloc[rows].reset_index(drop=True)) for rows in parts]
    passes = P.usable_passes(L, R, P.DEFAULT_PASSES)
    totals = [sum(key_counts(L.pass_key(cols), e.pass_key(cols)) for e in encoded)
              for cols in passes]
    sized, alone = [], []
    for rows, part in zip(parts, encoded, strict=True):
        for found, kwargs in ((sized, {"right_totals": totals}), (alone, {})):
            plan = P.plan_blocking(L, part, P.DEFAULT_PASSES, max_block_pairs=1, **kwargs)
            pairs = P.pairs_for_rows(plan)
            found.append(pd.DataFrame({"left": pairs["left"],
                                       "right": rows[pairs["right"].to_numpy()]}))
    assert _pair_set(pd.concat(sized)) == _pair_set(whole)
    assert _pair_set(pd.concat(alone)) != _pair_set(whole)


def test_pair_bounds_bound_each_rows_candidates_and_parts_cover_every_row_once(
        two_files: tuple) -> None:
    from linkage.probabilistic.blocking import pair_bounds, row_parts

    left, right, _ = two_files
    plan = P.plan_blocking(P.Encoded(left), P.Encoded(right), P.DEFAULT_PASSES)
    bounds = pair_bounds(plan)
    made = P.pairs_for_rows(plan)["left"].value_counts().reindex(range(len(left)),
                                                                 fill_value=0).to_numpy()
    assert made.sum() > 0 and (bounds >= made).all()
    # a row's bound is its blocks' sizes summed over passes: equal to brute force
    R = P.Encoded(right)
    L = P.Encoded(left)
    brute = np.zeros(len(left), dtype=np.int64)
    for i, cols in enumerate(plan.passes):
        a, b = plan.left[i], R.pass_key(cols)
        brute += ((a[:, None] == b[None, :]) & (a[:, None] != 0)).sum(axis=1)
    assert L.n == len(bounds) and (bounds == brute).all()
    for pairs, rows in ((1, 10**6), (50, 10**6), (10**9, 7), (10**9, 10**6)):
        parts = row_parts(bounds, pairs, rows)
        assert np.array_equal(np.concatenate(parts), np.arange(len(left)))
        for part in parts:
            assert len(part) <= rows
            assert len(part) == 1 or bounds[part].sum() <= pairs


def test_partitioned_link_decides_as_one_run(two_files: tuple) -> None:
    left, right, truth = two_files
    one = P.link(left, right)
    model = one.model
    for workers in (1, 2):
        parts = P.link(left, right, LinkageSettings(partition_pairs=500, workers=workers),
                       model=model)
        pd.testing.assert_frame_equal(
            parts.matches.sort_values(["left", "right"]).reset_index(drop=True),
            one.matches.sort_values(["left", "right"]).reset_index(drop=True))
        assert parts.blocking.pairs == one.blocking.pairs
    # fitted on a sample of left records when partitioned: as good, same prior scale
    said: list[str] = []
    fitted = P.link(left, right, LinkageSettings(partition_pairs=500, workers=2),
                    progress=said.append)
    scored = [m for m in said if m.startswith("partition ")]
    total = int(said[0].split(", ")[-1].split()[0])  # "... N partition(s)"
    assert total > 1 and len(scored) == total and scored[-1].startswith(f"partition {total}/")
    precision, recall = f1(_pair_set(fitted.matches), truth)
    assert precision >= 0.99 and recall >= 0.95
    assert fitted.model.prior == pytest.approx(model.prior, rel=0.5)


def test_partitioned_dedupe_clusters_as_one_run(key: bytes) -> None:
    base = people(300, seed=31)
    frame = encode_identifiers(pd.concat([base, corrupt(base.iloc[:100], seed=32)],
                                         ignore_index=True), key)
    one = P.dedupe(frame)
    parts = P.dedupe(frame, LinkageSettings(partition_pairs=200, workers=2), model=one.model)
    assert parts.blocking.pairs == one.blocking.pairs
    assert _pair_set(parts.matches) == _pair_set(one.matches)
    fitted = P.dedupe(frame, LinkageSettings(partition_pairs=200))
    same = sum(fitted.clusters[i] == fitted.clusters[300 + i] for i in range(100))
    assert same >= 94


# Results recorded under a fixed key from linkage/probabilistic.py as it was before it became a
# package (commit 0968783): moving code must not move a pair or a weight. Weights re-recorded when
# forenames gained the name-variant level (one more level to estimate; same pairs, clusters and
# review band), and again when u was corrected for the matches among random pairs (exact
# agreement weighs more: the dedupe's four review-band pairs, true copies with a blank postcode
# and a forename typo, are now linked), and again for the surname + postcode district pass and
# typo'd name swaps, and once more when that pass stopped estimating (same pairs; the
# partitioned link's sample fit differs).
FIXED_KEY = bytes(range(32))
GOLDEN_LINK_RIGHT = [
    11, 33, 95, 42, 8, 16, 94, 71, 19, 88, 64, 65, 91, 107, 43, 41, 109, 69, 17, 1, 119,
    113, 59, 45, 46, 22, 10, 105, 29, 32, 60, 101, 98, 12, 84, 82, 58, 2, 14, 108, 89, 21,
    79, 0, 87, 18, 40, 102, 24, 35, 56, 117, 52, 70, 5, 66, 90, 86, 63, 92, 20,
]
GOLDEN_LINK_WEIGHT = [
    32.615372, 38.850576, 18.492508, 25.363127, 33.689366, 36.559936, 32.615372, 38.850576,
    17.492508, 25.363127, 33.689366, 36.559936, 32.615372, 35.559936, 14.895466, 25.363127,
    33.689366, 36.559936, 32.615372, 35.559936, 14.895466, 25.363127, 33.689366, 36.559936,
    32.615372, 36.559936, 18.492508, 25.363127, 33.689366, 36.559936, 32.615372, 38.850576,
    14.895466, 25.363127, 33.689366, 36.559936, 32.615372, 38.850576, 14.395466, 25.363127,
    33.689366, 36.559936, 32.615372, 36.559936, 18.492508, 25.363127, 33.689366, 36.559936,
    32.615372, 38.850576, 14.895466, 25.363127, 32.689366, 36.559936, 32.615372, 35.559936,
    18.492508, 25.363127, 33.689366, 36.559936, 14.59869,
]
GOLDEN_DEDUPE_WEIGHT = [
    31.503439, 37.711877, 12.937772, 25.529803, 33.196525, 37.663847, 29.560769, 37.663847,
    12.937772, 26.114765, 33.196525, 37.663847, 29.560769, 37.663847, 12.937772, 26.114765,
    33.196525, 37.663847, 29.560769, 37.711877, 12.937772, 26.114765, 32.196525, 37.663847,
    29.560769, 37.663847, 15.26689, 26.114765, 33.196525, 37.078884,
]


@pytest.fixture(scope="module")
def fixed_files() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Left 120 people; right: corrupted copies of left[0:60], 30 relatives of left[60:90]
    (same surname and postcode, another forename and birthday), 30 new people; fixed key."""
    left = people(120, seed=61)
    kin = left.iloc[60:90].copy()
    kin["forename"] = people(30, seed=62)["forename"].to_numpy()
    kin["date_of_birth"] = people(30, seed=63)["date_of_birth"].to_numpy()
    right = pd.concat([corrupt(left.iloc[:60], seed=64), kin, people(30, seed=65)],
                      ignore_index=True).sample(frac=1.0, random_state=66)
    return (encode_identifiers(left, FIXED_KEY),
            encode_identifiers(right.reset_index(drop=True), FIXED_KEY))


def test_default_link_gives_the_recorded_pairs_and_weights(fixed_files: tuple) -> None:
    left, right = fixed_files
    result = P.link(left, right, LinkageSettings())
    matches = result.matches.sort_values("left")
    assert matches["left"].tolist() == [*range(60), 88]  # 88: a relative, linked
    assert matches["right"].tolist() == GOLDEN_LINK_RIGHT
    assert matches["weight"].to_numpy() == pytest.approx(GOLDEN_LINK_WEIGHT, abs=1e-6)
    assert len(result.review) == 0 and result.blocking.pairs == 91
    assert result.model.prior == pytest.approx(0.0042753374004869315, rel=1e-6)
    # partitioned, the model fitted on a sample of left records
    parts = P.link(left, right, LinkageSettings(partition_pairs=30, workers=2))
    assert (len(parts.matches), len(parts.review), parts.blocking.pairs) == (56, 5, 91)
    assert parts.model.prior == pytest.approx(0.006214553650323182, rel=1e-6)
    assert parts.matches["weight"].sum() == pytest.approx(1627.433198, abs=1e-5)


def test_default_dedupe_gives_the_recorded_clusters_and_weights() -> None:
    base = people(90, seed=71)
    frame = pd.concat([base, corrupt(base.iloc[:30], seed=72)], ignore_index=True)
    result = P.dedupe(encode_identifiers(frame, FIXED_KEY), LinkageSettings())
    matches = result.matches.sort_values(["left", "right"])
    assert matches["left"].tolist() == list(range(30))  # every copy, none in review
    assert (matches["right"] - matches["left"] == 90).all()
    assert matches["weight"].to_numpy() == pytest.approx(GOLDEN_DEDUPE_WEIGHT, abs=1e-6)
    assert len(result.review) == 0
    # the copies with a blank postcode and a forename typo are the weakest links
    assert set(np.argsort(matches["weight"].to_numpy())[:4]) == {2, 8, 14, 20}
    assert result.clusters is not None and len(np.unique(result.clusters)) == 90
    assert result.model.prior == pytest.approx(0.004184345411135336, rel=1e-6)


def households(n: int, seed: int) -> pd.DataFrame:
    """Households of two: a second person sharing surname, postcode, address and town."""
    first = people(n, seed).assign(address=[f"{i + 1} Elm Road" for i in range(n)],
                                   town=[f"Town{i % 3}" for i in range(n)])
    second = people(n, seed + 100)
    for col in ("surname", "postcode", "address", "town"):
        second[col] = first[col].to_numpy()
    return pd.concat([first, second], ignore_index=True)


@pytest.mark.parametrize("with_town", [False, True])
def test_household_members_sharing_an_address_are_not_linked(key: bytes, with_town: bool
                                                             ) -> None:
    """Left holds both members of 400 households; right holds exact copies of the first 300
    households' first members and the other 100 households' second members only. A second
    member agrees with the first on surname, postcode and address (and town) but not on
    forename or date of birth: one shared place, not three independent agreements."""
    pop = households(400, seed=21)
    left = pop if with_town else pop.drop(columns="town")
    right_rows = list(range(300)) + list(range(400 + 300, 800))
    right = left.iloc[right_rows].reset_index(drop=True)
    # the 100 second members in right are not in left's first members: left has them too,
    # so every right row has its true match; none may go to its household's other member
    cols = lambda f: f.rename(columns={"town": "address_2"})  # noqa: E731
    result = P.link(encode_identifiers(cols(left), key), encode_identifiers(cols(right), key))
    truth = {(r, pos) for pos, r in enumerate(right_rows)}
    got = set(zip(result.matches["left"].tolist(), result.matches["right"].tolist(),
                  strict=True))
    assert got <= truth
    assert len(got) >= 0.99 * len(truth)
    model = result.model
    assert model.given_postcode and "address" in model.given_postcode
    # given the same postcode, a shared address line counts for less than it does alone
    top = max(model.level_weights["address"])
    assert model.given_postcode["address"][top] < model.level_weights["address"][top]
    assert P.MatchModel.from_dict(model.to_dict()).to_dict() == model.to_dict()


def test_u_is_corrected_for_the_matches_among_random_pairs() -> None:
    """Random pairs include true matches: their share of exact agreement is taken out of u,
    so a specific identifier's exact agreement weighs more; disagreement hardly moves; the
    correction is bounded (U_FLOOR_BITS) and a field set aside (all weights 0) stays so."""
    from linkage.probabilistic.estimation import U_FLOOR_BITS, remove_matches_from_u

    u = {"date_of_birth": {0: 0.0, 1: 0.9997, 4: 0.0003},
         "sex": {0: 0.0, 1: 0.5, 2: 0.5},
         "address_2": {0: 0.0, 1: 0.9, 5: 0.1}}
    m = {"date_of_birth": {1: 0.05, 4: 0.95}, "sex": {1: 0.01, 2: 0.99},
         "address_2": {1: 0.2, 5: 0.8}}

    def model(prior: float) -> P.MatchModel:
        weights = {f: {lvl: (0.0 if f == "address_2" else np.log2(m[f][lvl] / u[f][lvl]))
                       for lvl in m[f]} for f in u}
        return P.MatchModel(fields=tuple(u), level_weights=weights, prior=prior, method="ecm",
                            tf={"date_of_birth": 0.0003})

    before = model(1e-4)
    after = model(1e-4)
    assert remove_matches_from_u(after, u, m)
    gain = after.level_weights["date_of_birth"][4] - before.level_weights["date_of_birth"][4]
    assert 0.5 < gain < U_FLOOR_BITS  # about a third of chance agreement was the same person
    assert abs(after.level_weights["date_of_birth"][1]
               - before.level_weights["date_of_birth"][1]) < 1e-3
    assert abs(after.level_weights["sex"][2] - before.level_weights["sex"][2]) < 1e-3
    assert after.level_weights["address_2"] == {1: 0.0, 5: 0.0}
    assert after.tf["date_of_birth"] < 0.0003  # term frequencies weigh against the corrected u
    bounded = model(1e-3)  # the prior would explain more than all exact agreement
    remove_matches_from_u(bounded, u, m)
    assert (bounded.level_weights["date_of_birth"][4] - before.level_weights["date_of_birth"][4]
            == pytest.approx(U_FLOOR_BITS))
    assert not remove_matches_from_u(model(0.0), u, m)  # no prior, nothing to take out


def test_swapped_names_with_a_typo_count_as_their_weaker_side(key: bytes) -> None:
    """FEBRL1's rec-425: "whtie brandon" for "brandon white" (swapped, one typo) agrees on both
    names at the weaker side's level; a shared surname with a same-Soundex forename ("white
    georgia" for "grace white") is raised no further than the weaker side either."""
    frame = pd.DataFrame({"forename": ["brandon", "whtie", "grace", "white", "anna"],
                          "surname": ["white", "brandon", "white", "georgia", "anna"]})
    enc = encode_identifiers(frame, key)
    pairs = pd.DataFrame({"left": [0, 2, 4], "right": [1, 3, 0]})
    levels = P.compare(enc, None, pairs)
    fore, sur = levels["forename"].tolist(), levels["surname"].tolist()
    assert fore[0] == sur[0] == 2  # whtie~white phonetic, brandon exact: both at 2
    assert fore[1] == sur[1] == 2  # grace~georgia phonetic only: not the surname's exact
    assert (fore[2], sur[2]) == (P.DIFFERENT, P.DIFFERENT)  # anna anna: no swap of brandon


def test_surname_within_the_postcode_district_makes_a_candidate(key: bytes) -> None:
    """FEBRL1's rec-264: no forename, no date of birth, street number and street mistyped,
    postcode's last digit wrong; only the surname and the postcode district still agree."""
    frame = pd.DataFrame({"forename": [None, None], "surname": ["weller", "weller"],
                          "date_of_birth": [None, "1999-07-16"],
                          "postcode": ["4656", "4655"],
                          "address": ["2 wittenoom gcrescent", "7 wittenoom crescent"]})
    enc = encode_identifiers(frame, key)
    stats = P.BlockingStats()
    pairs = P.candidate_pairs(enc, None, stats=stats)
    assert list(zip(pairs["left"], pairs["right"], strict=True)) == [(0, 1)]
    assert stats.per_pass["surname+postcode__district"] == 1
    without = [p for p in P.DEFAULT_PASSES if p != ("surname", "postcode__district")]
    assert len(P.candidate_pairs(enc, None, passes=without)) == 0


def test_a_town_is_weighed_by_the_address_line_when_the_postcode_is_missing() -> None:
    """With no postcode, the address line stands for it: agreeing exactly, a town is weighed as
    within one postcode (a household's line and town count once); different, as after a move
    (a mover's line and town do not count against them twice). The line itself is not."""
    pc_top, line_top = P.TOP_LEVEL["postcode"], P.TOP_LEVEL["address"]
    model = P.MatchModel(
        fields=("postcode", "address", "address_2"), prior=1e-4, method="ecm",
        level_weights={"postcode": {0: 0.0, 1: -6.0, pc_top: 12.0},
                       "address": {0: 0.0, 1: -5.0, line_top: 12.0},
                       "address_2": {0: 0.0, 1: -4.0, line_top: 3.0}},
        given_postcode={"address": {0: 0.0, 1: -6.0, line_top: 0.5},
                        "address_2": {0: 0.0, 1: -0.5, line_top: 0.1}},
        postcode_apart={"address": {0: 0.0, 1: -0.2, line_top: 3.0},
                        "address_2": {0: 0.0, 1: -1.0, line_top: 2.0}})
    vectors = pd.DataFrame({"postcode": [0, 0, 0, pc_top, 1],
                            "address": [line_top, 1, 0, line_top, 1],
                            "address_2": [line_top, 1, 1, line_top, 1]}, dtype=np.int8)
    w = model.weight(vectors)
    assert w[0] == pytest.approx(12.0 + 0.1)  # same line: the town as within one postcode
    assert w[1] == pytest.approx(-5.0 - 1.0)  # line differs: the town as after a move
    assert w[2] == pytest.approx(-4.0)  # nothing to stand for the postcode: unconditional
    assert w[3] == pytest.approx(12.0 + 0.5 + 0.1)
    assert w[4] == pytest.approx(-6.0 - 0.2 - 1.0)


def test_passes_on_part_of_a_postcode_estimate_nothing() -> None:
    """A name within a postcode district or sector is mostly relatives and neighbours: such a
    pass finds candidates but its EM would split households, so it is not fitted on (on the
    literature generator at 100k it cost 0.001 of F1 when it was)."""
    from linkage.probabilistic.estimation import _coarse

    assert _coarse(("surname", "postcode__district"))
    assert _coarse(("postcode__sector", "forename__ph"))
    assert not _coarse(("postcode", "surname__ph"))
    assert not _coarse(("surname__ph", "date_of_birth__ym"))
