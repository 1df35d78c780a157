"""Keyed linkage encodings: what probabilistic linkage compares instead of clear identifiers.

`encode_identifiers(frame, key)` turns identifier columns (`forename`, `surname`,
`date_of_birth`, `sex`, `postcode`, `address`, `identifier`, and numbered repeats of a kind such
as `address_2`) into `lk_*` columns that can be compared for equality and similarity only by
someone holding nothing more than the encodings, and reversed only by someone holding the key.

Column layout: `lk_<field>` is the exact encoding of the normalised value, `lk_<field>__<part>`
the other parts (`__` separates field from part, so `lk_address_2__bf` is unambiguous):

| kind            | parts                                                                  |
|-----------------|------------------------------------------------------------------------|
| forename/surname| exact; `ph` keyed Soundex; `bf` keyed bigram Bloom filter (256 bits)   |
| forename        | also `nk`: name variants, the keyed forms of the canonical names it is |
|                 | a nickname of (`nicknames` package) and of itself, 4 x 64 bits         |
| date_of_birth   | exact; `ym`, `yd`, `md` pairs of components (two of three agree =>     |
|                 | exactly one component differs); `swap` year + unordered (month, day)   |
|                 | (equal but exact unequal => day/month swapped)                        |
| sex             | exact (`1` male, `2` female; `0`/`9`/unknown are missing)             |
| postcode        | exact unit; `sector`, `district`; `bf` bigram Bloom filter (128 bits)  |
| address         | exact; `bf` bigram Bloom filter (512 bits)                             |
| identifier      | exact; `bf` bigram Bloom filter (128 bits)                             |

Types: exact/phonetic/partial encodings are nullable int64 (`Int64`): 53 bits of a keyed BLAKE2b
(a PRF), so they survive pandas' float64 conversion of int64 columns with nulls exactly (collision
odds per compared pair 2^-53); Bloom filters are bytes of fixed length per kind (Arrow `binary`;
the engine also reads `fixed_size_binary`). Null or blank in => null out, in every part.

Normalisation (before anything is keyed): Unicode NFKD with accents dropped, upper case; names
keep letters only (`O'Brien`, `o brien` => `OBRIEN`); dates `YYYY-MM-DD`, `YYYYMMDD` and
`DD/MM/YYYY` => `YYYY-MM-DD` (lexically, so a corrupted but well-formed date such as
`1956-02-31` still gets component encodings; anything else is kept as upper-case text and gets
only the exact part); UK postcodes => canonical `LS1 4AB` (sector `LS1 4`, district `LS1`); other
postcodes => upper-case alphanumerics with prefix "sector"/"district" (all but the last one/two
characters); addresses => alphanumeric tokens with common street-type abbreviations expanded
(`RD` => `ROAD`), Bloom filter over the text without spaces; identifiers => alphanumerics.

Name variants (`nk`): the forename and the canonical names the `nicknames` package lists it as
a nickname of ("Bill" -> BILL, ROBERT, WILLIAM, WILL: at most `VARIANT_SLOTS`, the canonical
names with most nicknames first), each keyed like an exact encoding under the `name|nk` sub-key
and packed as one fixed-length binary value (empty slots zero). Two forenames are variants when
any slot of one equals any slot of the other: "Bill" and "William" agree, with no clear name
stored. What it shows beyond the exact encoding: how many canonical forms a name has.

Keys: per part a sub-key `HMAC-SHA256(key, "haven-linkage-v1|<domain>|<part>")`; values are
encoded with keyed BLAKE2b under the sub-key, so parts never collide and encodings under another
key are unrelated. Forename and surname share the `name` domain (so swapped names are detectable);
numbered repeats share their kind's domain (so `address` and `address_2` compare).
A Bloom filter is the OR of per-bigram masks, each bigram setting k keyed bit positions: that is a
keyed substitution of bigrams, the same construction as a field-level CLK (Schnell et al. 2009),
computed once per distinct bigram and OR-reduced in numpy (one keyed hash per distinct value and
per distinct bigram, never per row), which is what makes it fast.

Threat model. The key is held by the landing process (or, in `link-files`, generated per run and
never written). An adversary with the encodings but not the key learns no value by hashing
guesses (dictionary attacks need the key). What remains visible:
- Equality and frequency: equal values encode equally, so frequency analysis can re-identify
  common values (the most frequent surname encoding is probably SMITH; `sex` has two values;
  `md`/`ym` partial dates have few values and known distributions; `birth_ym`, postcode sector and
  district are in clear in the landed schema anyway).
- Bloom filters are the weakest part: bit-pattern and frequent-bigram attacks (Kuzu et al. 2011;
  Niedermeyer et al. 2014; Christen et al. 2018) can recover common names and, given enough
  records, the bigram-to-bit mapping, after which rare values leak too. Identifier filters have a
  ten-symbol alphabet and are easiest. Mitigations here: keyed positions, per-domain keys, few
  bits per bigram; not done: hardening (BLIP/rule-90/balancing/salting), at some cost in accuracy.
- Similarity leaks: pairs of encodings reveal approximately how similar two values are.
Encodings are therefore personal data under pseudonymisation, not anonymous: store them with the
same controls as the rest of the landed data and never publish them.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

KINDS = ("forename", "surname", "date_of_birth", "sex", "postcode", "address", "identifier")
FIELD_RE = re.compile(r"^(" + "|".join(KINDS) + r")(?:_([0-9]+))?$")
PREFIX = "lk_"
SEP = "__"
VERSION = b"haven-linkage-v1"
HASH_MASK = np.int64((1 << 53) - 1)


@dataclass(frozen=True)
class BloomSpec:
    """Size of a field's Bloom filter and bits set per bigram; bounded text length."""

    bits: int
    k: int
    max_len: int

    @property
    def words(self) -> int:
        return self.bits // 64


BLOOM = {
    "name": BloomSpec(bits=256, k=3, max_len=40),
    "postcode": BloomSpec(bits=128, k=3, max_len=12),
    "address": BloomSpec(bits=512, k=3, max_len=100),
    "identifier": BloomSpec(bits=128, k=3, max_len=24),
}

# Parts each kind produces ("" is the exact encoding) and the key domain of the kind.
PARTS: dict[str, tuple[str, ...]] = {
    "forename": ("", "ph", "bf", "nk"),
    "surname": ("", "ph", "bf"),
    "date_of_birth": ("", "ym", "yd", "md", "swap"),
    "sex": ("",),
    "postcode": ("", "sector", "district", "bf"),
    "address": ("", "bf"),
    "identifier": ("", "bf"),
}
DOMAIN = {"forename": "name", "surname": "name", "date_of_birth": "date", "sex": "sex",
          "postcode": "postcode", "address": "address", "identifier": "identifier"}


def field_kind(field: str) -> str | None:
    """The kind of an input column (`address_2` -> `address`), or None if not an identifier."""
    m = FIELD_RE.match(field)
    return m.group(1) if m else None


def column(field: str, part: str = "") -> str:
    """Name of the encoding column for a field's part (`column("surname", "bf")`)."""
    return f"{PREFIX}{field}{SEP}{part}" if part else f"{PREFIX}{field}"


def bloom_words(field: str) -> int:
    """Number of 64-bit words of a field's Bloom filter."""
    kind = field_kind(field)
    if kind is None:
        raise ValueError("not an identifier field")
    return BLOOM[DOMAIN[kind]].words


# --------------------------------------------------------------------------------------------
# Normalisation (runs once per distinct raw value)

_NON_ALNUM = re.compile(r"[^A-Z0-9]+")
_NON_ALPHA_ASCII = re.compile(r"[^A-Z]+")
_UK_POSTCODE = re.compile(r"^([A-Z]{1,2}[0-9][A-Z0-9]?)([0-9][A-Z]{2})$")
_DATE_ISO = re.compile(r"^([0-9]{4})-?([0-9]{2})-?([0-9]{2})$")
_DATE_UK = re.compile(r"^([0-9]{1,2})[/.-]([0-9]{1,2})[/.-]([0-9]{4})$")
_ADDRESS_WORDS = {
    "RD": "ROAD", "ST": "STREET", "AVE": "AVENUE", "AV": "AVENUE", "LN": "LANE",
    "DR": "DRIVE", "CRES": "CRESCENT", "CL": "CLOSE", "CT": "COURT", "PL": "PLACE",
    "GDNS": "GARDENS", "SQ": "SQUARE", "TCE": "TERRACE", "TER": "TERRACE", "HWY": "HIGHWAY",
    "PDE": "PARADE", "CIR": "CIRCUIT", "GR": "GROVE", "GRN": "GREEN", "PK": "PARK",
    "APT": "FLAT", "APARTMENT": "FLAT",
}
_SEX = {"1": "1", "M": "1", "MALE": "1", "2": "2", "F": "2", "FEMALE": "2",
        "0": None, "9": None, "U": None, "UNKNOWN": None, "NOT KNOWN": None, "X": None}


def _ascii_upper(value: str) -> str:
    """Upper case with accents removed (NFKD, combining marks dropped)."""
    value = value.upper()
    if value.isascii():
        return value
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def normalise_name(value: str) -> str | None:
    """Letters only, upper case, accents dropped: `O'Brien-Smith` -> `OBRIENSMITH`."""
    text = _ascii_upper(value)
    if text.isascii():
        text = _NON_ALPHA_ASCII.sub("", text)
    else:
        text = "".join(c for c in text if c.isalpha())
    return text or None


def _split_date(value: str) -> tuple[str, str, str] | None:
    text = value.strip()
    m = _DATE_ISO.match(text)
    if m:
        return m.group(1), m.group(2), m.group(3)
    m = _DATE_UK.match(text)
    if m:
        return m.group(3), m.group(2).zfill(2), m.group(1).zfill(2)
    return None


def normalise_date(value: str) -> str | None:
    """`YYYY-MM-DD` for ISO, compact or `DD/MM/YYYY` input; other text upper-cased, no spaces."""
    parts = _split_date(value)
    if parts:
        return "-".join(parts)
    text = re.sub(r"\s+", "", _ascii_upper(value))
    return text or None


def normalise_sex(value: str) -> str | None:
    """`1` or `2` (M/F/MALE/FEMALE accepted); not known/not specified are missing."""
    text = _ascii_upper(value).strip()
    if text in _SEX:
        return _SEX[text]
    return text or None


def normalise_postcode(value: str) -> str | None:
    """Canonical UK form `LS1 4AB`; anything else: upper-case alphanumerics."""
    text = _NON_ALNUM.sub("", _ascii_upper(value))
    m = _UK_POSTCODE.match(text)
    if m:
        return f"{m.group(1)} {m.group(2)}"
    return text or None


def normalise_address(value: str) -> str | None:
    """Alphanumeric tokens, single-spaced, common abbreviations expanded (`RD` -> `ROAD`)."""
    tokens = _NON_ALNUM.sub(" ", _ascii_upper(value)).split()
    text = " ".join(_ADDRESS_WORDS.get(t, t) for t in tokens)
    return text or None


def normalise_identifier(value: str) -> str | None:
    """Upper-case alphanumerics (spaces, hyphens and slashes dropped)."""
    text = _NON_ALNUM.sub("", _ascii_upper(value))
    return text or None


NORMALISERS: dict[str, Callable[[str], str | None]] = {
    "forename": normalise_name, "surname": normalise_name, "date_of_birth": normalise_date,
    "sex": normalise_sex, "postcode": normalise_postcode, "address": normalise_address,
    "identifier": normalise_identifier,
}


# --------------------------------------------------------------------------------------------
# Derived values per part (clear, in memory only, one per distinct normalised value)

def _soundex(name: str) -> str | None:
    import jellyfish

    return jellyfish.soundex(name) if name.isascii() else name[:4]


def _date_part(part: str) -> Callable[[str], str | None]:
    """Derive a partial-date value from a normalised date (`YYYY-MM-DD`); None for other text."""
    def derive(value: str) -> str | None:
        if len(value) != 10 or value[4] != "-" or value[7] != "-":
            return None
        y, m, d = value[:4], value[5:7], value[8:]
        if not (y + m + d).isdigit():
            return None
        if part == "ym":
            return f"{y}-{m}"
        if part == "yd":
            return f"{y}--{d}"
        if part == "md":
            return f"{m}-{d}"
        return f"{y}|{m}|{d}" if m <= d else f"{y}|{d}|{m}"
    return derive


def _postcode_part(part: str) -> Callable[[str], str | None]:
    def derive(value: str) -> str | None:
        if " " in value:  # canonical UK form
            outward, inward = value.split(" ")
            return f"{outward} {inward[0]}" if part == "sector" else outward
        cut = 1 if part == "sector" else 2
        return value[:-cut] if len(value) >= 4 else None
    return derive


VARIANT_SLOTS = 4  # the name itself and up to three canonical names it is a nickname of


@functools.lru_cache(maxsize=1)
def _nickname_parents() -> dict[str, tuple[str, ...]]:
    """Upper-case name -> the canonical names it is a nickname of (`nicknames` package), those
    with most nicknames first (the usual formal names), then alphabetically."""
    import nicknames

    parents: dict[str, set[str]] = {}
    count: dict[str, int] = {}
    for t in nicknames.name_triplets():
        canonical, nick = t.name1.upper(), t.name2.upper()
        parents.setdefault(nick, set()).add(canonical)
        count[canonical] = count.get(canonical, 0) + 1
    return {nick: tuple(sorted(ps, key=lambda c: (-count.get(c, 0), c)))
            for nick, ps in parents.items()}


def name_variants(name: str) -> tuple[str, ...]:
    """A normalised forename and the canonical names it is a nickname of (clear, in memory
    only; at most `VARIANT_SLOTS`): `BILL` -> (`BILL`, `ROBERT`, `WILLIAM`, `WILL`)."""
    canonical = [c for c in _nickname_parents().get(name, ()) if c != name]
    return (name, *canonical[:VARIANT_SLOTS - 1])


def variant_keys(values: Sequence[str], key: bytes) -> np.ndarray:
    """(n, VARIANT_SLOTS) uint64: the keyed forms of each value's `name_variants` (0 empty)."""
    forms = [name_variants(v) for v in values]
    flat = [f for fs in forms for f in fs]
    hashed, _ = keyed_int64(flat, key)
    out = np.zeros((len(values), VARIANT_SLOTS), dtype=np.uint64)
    rows = np.repeat(np.arange(len(values)), [len(fs) for fs in forms])
    slots = np.concatenate([np.arange(len(fs)) for fs in forms]) if forms else rows
    out[rows, slots] = hashed.astype(np.uint64)
    return out


def _compact(value: str) -> str:
    return value.replace(" ", "")


DERIVE: dict[tuple[str, str], Callable[[str], str | None]] = {
    ("name", "ph"): _soundex,
    ("date", "ym"): _date_part("ym"), ("date", "yd"): _date_part("yd"),
    ("date", "md"): _date_part("md"), ("date", "swap"): _date_part("swap"),
    ("postcode", "sector"): _postcode_part("sector"),
    ("postcode", "district"): _postcode_part("district"),
}


# --------------------------------------------------------------------------------------------
# Keyed primitives

def subkey(key: bytes, domain: str, part: str) -> bytes:
    """The 32-byte sub-key of one (domain, part): encodings of different parts never collide."""
    label = VERSION + b"|" + domain.encode() + b"|" + (part or "x").encode()
    return hmac.digest(key, label, "sha256")


def keyed_int64(values: Sequence[str | None], key: bytes, distinct: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """Keyed BLAKE2b (53 bits) of each value, one hash per distinct value; (values, valid).

    `distinct=True` promises the values are already distinct and not null (skips factorising).
    """
    if distinct:
        codes, uniques = np.arange(len(values), dtype=np.int64), values
    else:
        codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
    n = len(uniques)
    if n:
        raw = b"".join(hashlib.blake2b(u.encode(), key=key, digest_size=8).digest()
                       for u in uniques)
        hashed = np.frombuffer(raw, dtype="<i8") & HASH_MASK  # exact in float64 too
        hashed[hashed == 0] = 1  # 0 is the engine's "missing"
    else:
        hashed = np.zeros(0, dtype=np.int64)
    valid = codes >= 0
    out = np.zeros(len(codes), dtype=np.int64)
    out[valid] = hashed[codes[valid]]
    return out, valid


def _bigram_masks(bigrams: np.ndarray, key: bytes, spec: BloomSpec) -> np.ndarray:
    """Keyed bit mask of each distinct bigram (k positions), plus a final all-zero row."""
    masks = np.zeros((len(bigrams) + 1, spec.words), dtype=np.uint64)
    if len(bigrams) == 0:
        return masks
    raw = b"".join(hashlib.blake2b(int(b).to_bytes(8, "little"), key=key,
                                   digest_size=2 * spec.k).digest() for b in bigrams)
    pos = np.frombuffer(raw, dtype="<u2").reshape(len(bigrams), spec.k).astype(np.int64)
    pos %= spec.bits
    rows = np.repeat(np.arange(len(bigrams)), spec.k)
    words = (pos >> 6).ravel()
    bits = np.left_shift(np.uint64(1), (pos & 63).ravel().astype(np.uint64))
    np.bitwise_or.at(masks, (rows, words), bits)
    return masks


def bloom_filters(values: Sequence[str], key: bytes, spec: BloomSpec,
                  chunk: int = 16384) -> np.ndarray:
    """Keyed bigram Bloom filters (padded bigrams) of distinct values: (n, words) uint64."""
    n = len(values)
    out = np.zeros((n, spec.words), dtype=np.uint64)
    start_mark = np.uint32(1)  # code points 1 never occur in normalised text
    for lo in range(0, n, chunk):
        part = values[lo:lo + chunk]
        arr = np.array(part, dtype=f"<U{spec.max_len}")  # truncates over-long text
        width = max(1, int(np.char.str_len(arr).max())) if len(arr) else 1
        arr = arr.astype(f"<U{width}")
        codes = arr.view(np.uint32).reshape(len(arr), width)
        lengths = (codes != 0).sum(axis=1)
        padded = np.zeros((len(arr), width + 2), dtype=np.uint32)
        padded[:, 0] = start_mark
        padded[:, 1:width + 1] = codes
        padded[np.arange(len(arr)), lengths + 1] = start_mark
        first = padded[:, :-1].astype(np.int64)
        second = padded[:, 1:].astype(np.int64)
        valid = (first != 0) & (second != 0)
        grams = (first << 21) | second
        uniq, inverse = np.unique(grams[valid], return_inverse=True)
        masks = _bigram_masks(uniq, key, spec)
        ids = np.full(grams.shape, len(uniq), dtype=np.int64)
        ids[valid] = inverse
        acc = masks[ids[:, 0]]
        for p in range(1, ids.shape[1]):
            acc |= masks[ids[:, p]]
        out[lo:lo + len(part)] = acc
    return out


# --------------------------------------------------------------------------------------------
# Output columns

def _int_column(values: np.ndarray, valid: np.ndarray) -> pd.arrays.IntegerArray:
    return pd.arrays.IntegerArray(values, ~valid)


def _binary_column(per_value: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Bloom filters as bytes objects (one object per distinct value, shared by its rows).

    Object bytes convert to Arrow `binary` and survive `from_pandas`/`to_pandas` round trips
    (pandas' fixed-size-binary ArrowDtype does not, today).
    """
    data = np.ascontiguousarray(per_value.astype("<u8", copy=False))
    objects = np.empty(len(data) + 1, dtype=object)
    objects[:-1] = [row.tobytes() for row in data]
    objects[-1] = None
    return objects[np.where(codes >= 0, codes, len(data))]


def _take(codes: np.ndarray, per_value: np.ndarray, per_valid: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Spread per-distinct results to rows (codes -1 = null)."""
    valid = codes >= 0
    safe = np.where(valid, codes, 0)
    if len(per_value) == 0:
        shape = (len(codes),) + per_value.shape[1:]
        return np.zeros(shape, dtype=per_value.dtype), np.zeros(len(codes), dtype=bool)
    return per_value[safe], valid & per_valid[safe]


def _distinct_normalised(series: pd.Series, kind: str) -> tuple[np.ndarray, list[str]]:
    """Row codes into the list of distinct normalised values (-1 = null/blank)."""
    codes, uniques = pd.factorize(series.astype(object), use_na_sentinel=True)
    normalise = NORMALISERS[kind]
    normalised = [normalise(u) if isinstance(u, str) else normalise(str(u)) for u in uniques]
    codes2, uniques2 = pd.factorize(pd.Series(normalised, dtype=object), use_na_sentinel=True)
    row = np.full(len(codes), -1, dtype=np.int64)
    ok = codes >= 0
    row[ok] = codes2[codes[ok]]
    return row, [str(u) for u in uniques2]


def encode_field(series: pd.Series, field: str, key: bytes) -> dict[str, Any]:
    """All encoding columns of one identifier field (a column named like `surname`)."""
    kind = field_kind(field)
    if kind is None:
        raise ValueError("not an identifier field")
    domain = DOMAIN[kind]
    rows, distinct = _distinct_normalised(series, kind)
    out: dict[str, Any] = {}
    for part in PARTS[kind]:
        sub = subkey(key, domain, part)
        if part == "nk":
            out[column(field, part)] = _binary_column(variant_keys(distinct, sub), rows)
            continue
        if part == "bf":
            spec = BLOOM[domain]
            bits = bloom_filters([_compact(v) for v in distinct], sub, spec)
            out[column(field, part)] = _binary_column(bits, rows)
            continue
        derive = DERIVE.get((domain, part))
        if derive is None:
            hashed, per_valid = keyed_int64(distinct, sub, distinct=True)
        else:
            hashed, per_valid = keyed_int64([derive(v) for v in distinct], sub)
        values, valid = _take(rows, hashed, per_valid)
        out[column(field, part)] = _int_column(values, valid)
    return out


def encode_identifiers(frame: pd.DataFrame, key: bytes) -> pd.DataFrame:
    """Keyed linkage encodings (`lk_*` columns only) of the identifier columns of `frame`.

    Columns that are not identifier kinds are ignored. Same index as `frame`; nulls stay null.
    """
    if not isinstance(key, bytes | bytearray) or len(key) < 16:
        raise ValueError("linkage key must be at least 16 random bytes")
    columns: dict[str, Any] = {}
    for name in frame.columns:
        if isinstance(name, str) and field_kind(name) is not None:
            columns.update(encode_field(frame[name], name, bytes(key)))
    return pd.DataFrame(columns, index=frame.index)


def encoded_fields(frame: pd.DataFrame) -> list[str]:
    """Identifier fields that have encodings in `frame` (from its `lk_<field>` columns)."""
    fields = []
    for name in frame.columns:
        if isinstance(name, str) and name.startswith(PREFIX) and SEP not in name:
            field = name[len(PREFIX):]
            if field_kind(field) is not None:
                fields.append(field)
    return fields
