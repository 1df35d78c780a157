"""Probabilistic linkage on keyed encodings: blocking, comparison, Fellegi-Sunter scores, decisions.

Modules, one step each: `encoded` (reading keyed encodings), `blocking`, `comparison`,
`estimation` (m/u, EM, logistic, prior: `MatchModel`), `term_frequencies`, `decision`
(assignment, clusters, `LinkResult`), `execution` (partitioned, threaded `link`/`dedupe`),
`settings` (`LinkageSettings`: what `link`/`dedupe` are told besides the data, saved as JSON).
The names callers use are re-exported here: `from linkage.probabilistic import link`.

Everything here works on frames of `lk_*` columns made by `linkage.encodings` (never on clear
values) and on record *positions* (0..n-1 within the frames given), so a caller can map
positions back to its own ids. `link` and `dedupe` take inputs of any size: blocking is
planned once on the whole inputs, then the left records are scored a partition at a time
(about `LinkageSettings.partition_pairs` candidate pairs each), several at once in threads. A
fitted `MatchModel` serialises with `to_dict` and can be passed back as `model=`; its `prior`
is P(match) for two random records, whatever the partition size.

Pipeline (what `link` and `dedupe` do; each step is also public):
1. `plan_blocking` + `pairs_for_rows` (or `candidate_pairs` for everything at once) - union of
   blocking passes. A pass is a tuple of encoding columns that must all be present and equal
   (e.g. keyed Soundex of surname + year-month of birth). Joins are vectorised (sort, group,
   repeat), never Python loops over pairs; a block whose pair count on the whole inputs
   exceeds `max_block_pairs` is skipped for that pass (other passes still catch its true pairs)
   and counted; a pass keeps only the pairs no earlier pass made, so the union needs no sort.
2. `compare` - one small-integer level per field (0 missing, 1 disagree, higher = closer): exact
   equality of keyed hashes, Dice similarity of keyed bigram Bloom filters (np.bitwise_count on
   AND-ed 64-bit words), phonetic agreement, forename variants (a keyed canonical name shared,
   `VARIANT_LEVEL`, just below exact; weights kept exact >= variant >= phonetic by
   `enforce_monotone`, and term frequencies never take exact below variant), partial dates
   (day/month swap, two of three components), postcode sector/district, swapped names.
   recordlinkage's own Index/Compare classes work on clear strings and loop in Python per pair at
   scale, so blocking and comparison are done here, vectorised; recordlinkage does the
   classification.
3. `fit_model` - a `MatchModel`: a log2 Bayes factor (match weight) per field level, and a prior.
   * `method="ecm"` (default, `fit_fellegi_sunter`): unsupervised Fellegi-Sunter the way Splink
     does it, with recordlinkage's `ECMClassifier` doing the EM. u = P(level | non-match) from
     random pairs (`estimate_u`; exact agreement from the keyed values' frequencies); m =
     P(level | match) from an ECM fit *within each blocking pass*, on the fields that pass does
     not block on, averaged over passes (a pass blocking on a location field leaves the other
     location fields out: a household shares them all; address parts after the first, such
     as a town, get a second EM of their own and their passes estimate nothing, so adding
     one never changes another field's m). The ECM kernel is seeded with an ordered start (stock
     'jaro' accepts binary features only; its naive Bayes one-hot encodes multi-level fields,
     so m is per level), its E-step floors log-probabilities (a level with no mass otherwise
     turns every later step to NaN) and caches the binarised patterns (speed). The missing level
     has weight 0. The prior, P(match) for two random records, is the fixed point of expected
     matches among candidates (`estimate_prior`); u is then corrected for the true matches
     among the random pairs it was counted on (`remove_matches_from_u`) and the prior refitted.
     Why not one ECM over all candidates: its u is conditional on blocking (agreement on a
     blocked field looks common among non-matches; the union of passes makes fields look
     negatively correlated), which underweights the agreements that matter, and when matches are
     a small share of candidates EM can pick the wrong class (it always finds two).
   * `method="logistic"`: `recordlinkage.LogisticRegressionClassifier` on one-hot levels,
     trained on pairs labelled for free by agreement of the NHS-number pseudonym (`person_id`)
     where both records have one (`nhs_labels`). Weight = (log-odds - training prior log-odds)
     / ln 2; its prior is the labelled candidates' match rate.
   Choice, by the figures of bench/linkage.py (encoded only; logistic trained on true labels of
   half the candidate pairs, an optimistic stand-in for NHS-number labels):
     FEBRL4 F1: ecm 1.0000, logistic 0.9994; FEBRL3: both 0.9997.
     Generated 50k x 50k with planted typo'd copies, 50% shared: ecm 0.994, logistic 0.994,
     one ECM over all candidates 0.956; 2% shared: ecm 0.992, logistic 0.970, one ECM over all
     candidates finds no plausible match class. (Third decimals move by about 0.001 with the
     random key, through Bloom-filter collisions.)
   So ECM is the default for `link-files`: as good as labels where labels are plentiful,
   better where matches are rare, and NHS-labelled pairs are biased anyway (records carrying
   an NHS number are better recorded than the ones linkage is for). The person index, which
   links rows to a register of persons, has its own supervised matcher trained on a sample
   of NHS-labelled rows (`linkage/index_matcher.py`).
   `method="auto"` uses logistic only with >= 200 labelled pairs of each kind.
   A fitted model whose match class is implausible (agreement on some field makes a match less
   likely: `MatchModel.implausible_fields`) makes no links and says so in `LinkResult.warnings`.
   Term frequencies (ecm): exact agreement on a name is weighed by how common the keyed value
   is (`term_frequency_adjustment`; `pair_weights` = level weights + these terms).
4. Decisions, on the posterior probability (from the weight and the model's prior, which is fixed
   once fitted, so decisions are consistent across partitions):
   * two files: `one_to_one` greedy assignment by weight (vectorised as rounds of mutually-best
     pairs, which is exactly greedy matching with ties broken by position), or `best_right`
     (each left record's best candidate; for episode records against a register of persons);
   * one file: `clusters` = connected components of pairs at or above `upper`;
   * a review band: pairs with `lower <= probability < upper` that would otherwise be linked
     (assigned one-to-one, or joining two different clusters) are returned in `review`, never
     linked.
"""

from linkage.probabilistic.blocking import (
    DEFAULT_PASSES,
    BlockingPlan,
    BlockingStats,
    block_pairs,
    candidate_pairs,
    pairs_for_rows,
    plan_blocking,
    usable_passes,
)
from linkage.probabilistic.comparison import (
    DIFFERENT,
    MISSING,
    TOP_LEVEL,
    VARIANT_LEVEL,
    compare,
)
from linkage.probabilistic.decision import (
    LinkResult,
    best_right,
    cluster_pairs,
    clusters,
    one_to_one,
)
from linkage.probabilistic.encoded import (
    Encoded,
    compared_fields,
)
from linkage.probabilistic.estimation import (
    MatchModel,
    enforce_monotone,
    estimate_prior,
    estimate_u,
    fit_ecm,
    fit_fellegi_sunter,
    fit_logistic,
    fit_model,
    nhs_labels,
    pass_membership,
    random_pairs,
)
from linkage.probabilistic.execution import (
    dedupe,
    link,
    score,
)
from linkage.probabilistic.settings import (
    PARTITION_PAIRS,
    LinkageSettings,
)
from linkage.probabilistic.term_frequencies import (
    pair_weights,
    term_frequency_adjustment,
)

__all__ = [
    "DEFAULT_PASSES", "DIFFERENT", "MISSING", "PARTITION_PAIRS", "TOP_LEVEL", "BlockingPlan",
    "BlockingStats", "Encoded", "LinkResult", "LinkageSettings", "MatchModel", "VARIANT_LEVEL",
    "best_right", "block_pairs", "candidate_pairs", "cluster_pairs", "clusters", "compare",
    "compared_fields", "dedupe", "enforce_monotone", "estimate_prior", "estimate_u", "fit_ecm",
    "fit_fellegi_sunter", "fit_logistic",
    "fit_model", "link", "nhs_labels", "one_to_one", "pair_weights", "pairs_for_rows",
    "pass_membership", "plan_blocking", "random_pairs", "score", "term_frequency_adjustment",
    "usable_passes",
]
