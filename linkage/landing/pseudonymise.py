"""The pseudonymisation boundary: the one place where clear identifiers become what Haven keeps.

In: a checked batch of text columns (identifiers in clear, in memory only).
Out: an Arrow table in the landed schema (docs/landed-schema.md) and its persons (each
distinct NHS number with its pseudonym: the landing seals the new ones into the vault).
- NHS number -> `person_id`, HMAC-SHA256 under the pseudonymisation key (one hash per distinct
  number), and an AES-GCM copy in the vault (see governance/vault.py).
- Date of birth -> `birth_ym`; postcode -> `postcode_district`, `postcode_sector`.
- Names, full date of birth, sex, full postcode and registered practice -> keyed linkage
  encodings (`lk_*`), made only where probabilistic linkage may need them: every row of the
  registers (`gp_patients`, `social_care`), the rows of other sources that lack a valid NHS
  number, and a fixed 2% sample of persons' NHS-numbered rows (chosen by pseudonym), which are
  the labelled examples that train and measure linkage for that source. Other rows with a
  valid NHS number link on it, so nothing more about them is kept.
- Sender record and client ids -> `record_key`, keyed, so resent rows can be recognised.
Free text is never kept.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from governance.keys import Key
from linkage.landing import contracts as c
from linkage.landing.contracts import Contract
from linkage.landing.validate import Checked
from linkage.sorted_search import search_sorted

ENCODED_SOURCES = frozenset({"gp_patients", "social_care"})
POSTCODE_RE = r"^[A-Z]{1,2}[0-9][A-Z0-9]?[0-9][A-Z]{2}$"
LINKAGE_FIELDS = ("forename", "surname", "date_of_birth", "sex", "postcode", "gp_practice_code")
# The registered practice is encoded as the engine's `identifier` kind (exact + Bloom filter).
ENCODER_NAMES = {"gp_practice_code": "identifier"}
TRAINING_SHARE = 50  # one person in 50: their NHS-numbered rows are encoded as labelled examples


MEMO_LIMIT = 2_000_000
_POWERS = 10 ** np.arange(9, -1, -1, dtype=np.int64)
NHS_STATUS = pa.array(["missing", "invalid", "valid"], pa.string())


class HashMemo:
    """Keyed hashes of 10-digit numbers (NHS numbers) already made, e.g. in one landing.

    Held as a sorted int64 array of the numbers and their hex digests, so a whole batch is
    looked up at once; cleared past `limit` numbers. A number is new exactly when it is not
    in the memo, which is how landing seals each person only once.
    """

    def __init__(self, limit: int = MEMO_LIMIT) -> None:
        self.limit = limit
        self._numbers = np.zeros(0, dtype=np.int64)
        self._digests = np.zeros(0, dtype="S64")

    def __len__(self) -> int:
        return len(self._numbers)

    def lookup(self, numbers: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Digests of distinct `numbers` (blank where unknown) and a mask of the unknown."""
        digests = np.zeros(len(numbers), dtype=f"S{width}")
        if not len(self._numbers) or self._digests.dtype != digests.dtype:
            return digests, np.ones(len(numbers), dtype=bool)
        at = np.minimum(search_sorted(self._numbers, numbers), len(self._numbers) - 1)
        found = self._numbers[at] == numbers
        digests[found] = self._digests[at[found]]
        return digests, ~found

    def add(self, numbers: np.ndarray, digests: np.ndarray) -> None:
        if len(self._numbers) + len(numbers) > self.limit or (
                len(self._numbers) and self._digests.dtype != digests.dtype):
            self._numbers, self._digests = self._numbers[:0], digests[:0]
        order = np.argsort(numbers)
        at = np.searchsorted(self._numbers, numbers[order])
        self._numbers = np.insert(self._numbers, at, numbers[order])
        self._digests = np.insert(self._digests.astype(digests.dtype), at, digests[order])


def keyed_hashes(values: pa.Array, key: Key, domain: str = "", length: int = 64,
                 memo: dict[str, str] | HashMemo | None = None) -> pa.Array:
    """HMAC-SHA256 (hex) of each value under `key`; one hash per distinct value, nulls stay null.

    `domain` separates uses of one key (NHS numbers, record ids) so their outputs never collide.
    `memo` carries hashes from one batch to the next (bounded, cleared past MEMO_LIMIT).
    """
    if len(values) == 0:
        return pa.array([], pa.string())
    distinct = _distinct_keyed_hashes(values, key, domain, length, memo)
    return pc.take(distinct.digests, distinct.indices)


@dataclass
class DistinctHashes:
    """A column's distinct values, their keyed hashes, and each row's place among them."""

    indices: pa.Array  # per row: index of its value among the distinct ones (null for null)
    values: pa.Array   # the distinct values
    digests: pa.Array  # their keyed hashes
    new: np.ndarray    # per distinct value: hashed here, not found in the memo


def _distinct_keyed_hashes(values: pa.Array, key: Key, domain: str, length: int,
                           memo: dict[str, str] | HashMemo | None) -> DistinctHashes:
    """Keyed hashes of the distinct values; only values the memo lacks are hashed."""
    base = hmac.HMAC(key.secret, hashes.SHA256())
    if domain:
        base.update(domain.encode() + b"\x00")

    def digest(value: str) -> str:
        h = base.copy()
        h.update(value.encode())
        return h.finalize().hex()[:length]

    if isinstance(memo, HashMemo):
        numbered = _distinct_numbers(values, base, length, memo)
        if numbered is not None:
            return numbered
        memo = None
    encoded = pc.dictionary_encode(values)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    distinct = encoded.dictionary
    if memo is None:
        memo = {}
    elif len(memo) > MEMO_LIMIT:
        memo.clear()
    get = memo.get
    out = []
    new = np.zeros(len(distinct), dtype=bool)
    for i, value in enumerate(distinct.to_pylist()):
        found = get(value)
        if found is None:
            found = memo[value] = digest(value)
            new[i] = True
        out.append(found)
    return DistinctHashes(encoded.indices, distinct, pa.array(out, pa.string()), new)


def _distinct_numbers(values: pa.Array, base: hmac.HMAC, length: int,
                      memo: HashMemo) -> DistinctHashes | None:
    """`_distinct_keyed_hashes` for 10-digit numbers, found and memoised as integers.

    None when some value is not 10 ASCII digits (the caller then takes the general path).
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
    present = pc.filter(values, pa.array(valid)) if not valid.all() else values
    m = len(present)
    offsets = np.frombuffer(present.buffers()[1], dtype=np.int32)[
        present.offset:present.offset + m + 1]
    if m and not (np.diff(offsets) == 10).all():
        return None
    data = np.frombuffer(present.buffers()[2], dtype=np.uint8)[
        offsets[0]:offsets[0] + 10 * m].reshape(m, 10)
    if m and not ((data >= ord("0")) & (data <= ord("9"))).all():
        return None
    numbers = (data - ord("0")).astype(np.int64) @ _POWERS
    codes, distinct = pd.factorize(numbers)  # in order of first appearance
    first = np.empty(len(distinct), dtype=np.int64)
    first[codes[::-1]] = np.arange(m - 1, -1, -1)  # each number's first row
    digits = data[first]  # its ten digit bytes, as given
    texts = fixed_width_text(digits.view("S10").ravel(), 10)
    digests, new = memo.lookup(distinct, length)
    if new.any():
        copy, made = base.copy, []
        for value in np.ascontiguousarray(digits[new]).view("S10").ravel().tolist():
            h = copy()
            h.update(value)
            made.append(h.finalize())
        hexed = np.frombuffer(binascii.hexlify(b"".join(made)), dtype=np.uint8)
        digests[new] = np.ascontiguousarray(hexed.reshape(-1, 64)[:, :length]).view(
            f"S{length}").ravel()
        memo.add(distinct[new], digests[new])
    rows = np.zeros(len(values), dtype=np.int64)
    rows[valid] = codes
    return DistinctHashes(pa.array(rows, mask=~valid), texts, fixed_width_text(digests, length),
                          new)


def fixed_width_text(data: np.ndarray | bytes, width: int) -> pa.Array:
    """A string array over ASCII values of one width laid end to end (no copy, no objects).

    Building it from a NumPy `S<width>` array with `pa.array` goes value by value: about a
    third of a second for 200,000 hex digests; this takes a millisecond.
    """
    count = len(data) // width if isinstance(data, bytes) else len(data)
    offsets = np.arange(0, width * (count + 1), width, dtype=np.int32)
    values = np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data
    return pa.Array.from_buffers(pa.string(), count,
                                 [None, pa.py_buffer(offsets), pa.py_buffer(values)])


def keyed_record_ids(values: pa.Array, key: Key, domain: str) -> pa.Array:
    """Keyed pseudonyms (32 hex) for sender record ids, vectorised.

    Ids of up to 16 ASCII bytes are encrypted as one AES-256 block under a key derived for
    `domain` (a keyed permutation: as unlinkable without the key as an HMAC, and a thousand
    times faster over a million ids); longer ids fall back to HMAC-SHA256.
    """
    return record_keys(values, key, domain)[0]


def record_keys(values: pa.Array, key: Key, domain: str) -> tuple[pa.Array, np.ndarray]:
    """`keyed_record_ids`, and per row a 64-bit fingerprint of the id for finding duplicates.

    The fingerprint is part of the keyed pseudonym, so equal ids have equal fingerprints and
    different ids collide with odds of about one in 2**64 a pair. Nothing of the id itself.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n = len(values)
    fingerprints = np.zeros(n, dtype=np.uint64)
    if n == 0:
        return pa.array([], pa.string()), fingerprints
    derive = hmac.HMAC(key.secret, hashes.SHA256())
    derive.update(b"record-id\x00" + domain.encode())
    cipher = Cipher(algorithms.AES(derive.finalize()), modes.ECB()).encryptor()
    valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.binary_length(values), 99).to_numpy(zero_copy_only=False)
    ascii_ok = pc.fill_null(pc.string_is_ascii(values), False).to_numpy(zero_copy_only=False)
    short = (lengths <= 16) & ascii_ok & valid
    long_ids = valid & ~short
    parts, order = [], np.full(n, -1, dtype=np.int64)
    if short.any():
        padded = pc.utf8_rpad(pc.filter(values, pa.array(short)), width=16, padding="\x00")
        if isinstance(padded, pa.ChunkedArray):
            padded = padded.combine_chunks()
        offsets = np.frombuffer(padded.buffers()[1], dtype=np.int32)[padded.offset:]
        start = int(offsets[0])
        block = padded.buffers()[2].to_pybytes()[start:start + 16 * len(padded)]
        encrypted = cipher.update(block) + cipher.finalize()
        parts.append(fixed_width_text(binascii.hexlify(encrypted), 32))
        fingerprints[short] = np.frombuffer(encrypted, dtype=np.uint64)[::2]
        order[short] = np.arange(int(short.sum()))
    if long_ids.any():
        hashed = keyed_hashes(pc.filter(values, pa.array(long_ids)), key,
                              domain="record-id|" + domain, length=32)
        parts.append(hashed)
        fingerprints[long_ids] = [int(h[:16], 16) for h in hashed.to_pylist()]
        order[long_ids] = np.arange(int(long_ids.sum())) + int(short.sum())
    if not parts:
        return pa.nulls(n, pa.string()), fingerprints
    keyed = pa.concat_arrays(parts) if len(parts) > 1 else parts[0]
    return pc.take(keyed, pa.array(order, mask=order < 0)), fingerprints


def person_hashes(normalised: pa.Array, key: Key,
                  memo: dict[str, str] | HashMemo | None = None) -> DistinctHashes:
    """The person pseudonyms of normalised NHS numbers (null where invalid): one HMAC-SHA256
    per distinct number not in `memo`, with each row's place among the distinct numbers."""
    return _distinct_keyed_hashes(normalised, key, "nhs_number", 64, memo)


def pseudonymise_nhs(normalised: pa.Array, key: Key,
                     memo: dict[str, str] | HashMemo | None = None) -> pa.Array:
    """The person pseudonym: HMAC-SHA256 of the 10-digit NHS number."""
    return keyed_hashes(normalised, key, domain="nhs_number", memo=memo)


def generalise_postcode(postcode: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Postcode district (`LS1`) and sector (`LS1 4`); null where blank or not a UK postcode."""
    if isinstance(postcode, pa.ChunkedArray):
        postcode = postcode.combine_chunks()
    upper = pc.utf8_upper(postcode)
    # Removing spaces is enough for nearly every postcode; other whitespace takes the regex.
    compact = pc.replace_substring(upper, " ", "")
    ok = pc.fill_null(pc.match_substring_regex(compact, POSTCODE_RE), False)
    retry = pc.and_(pc.is_valid(compact), pc.invert(ok))
    if pc.any(retry).as_py():
        again = pc.replace_substring_regex(pc.filter(upper, retry), r"\s+", "")
        compact = pc.replace_with_mask(compact, retry, again)
        ok = pc.replace_with_mask(ok, retry, pc.fill_null(
            pc.match_substring_regex(again, POSTCODE_RE), False))
    compact = pc.if_else(ok, compact, pa.scalar(None, pa.string()))
    district = pc.utf8_slice_codeunits(compact, 0, -3)
    sector_digit = pc.utf8_slice_codeunits(compact, -3, -2)
    sector = pc.binary_join_element_wise(district, sector_digit, " ")
    return district, sector


@dataclass
class Persons:
    """The persons of a pseudonymised batch: each row's person, and each person's number."""

    codes: np.ndarray   # per row: index into `numbers`/`digests`, -1 where no valid NHS number
    numbers: pa.Array   # distinct normalised NHS numbers (10-digit text)
    digests: pa.Array   # their pseudonyms


@dataclass
class Pseudonymised:
    """A batch in the landed form, and its persons (the landing decides who to seal)."""

    table: pa.Table
    encoded_rows: int
    persons: Persons | None = None  # None for sources without an NHS number
    encoded: np.ndarray | None = None  # per row: were its linkage encodings made


def pseudonymise(checked: Checked, contract: Contract, extract_id: str, keys: dict[str, Key],
                 sender: str, memo: dict[str, str] | HashMemo | None = None,
                 record_key: pa.Array | None = None,
                 hashed: DistinctHashes | None = None) -> Pseudonymised:
    """Turn the good rows of a checked batch into the landed form. Only good rows may be passed.

    `memo` spares re-hashing NHS numbers hashed for an earlier batch. `record_key` and `hashed`,
    when given, are the keyed record ids and the person pseudonyms (`person_hashes`) already
    made for these rows.
    """
    t = checked.table
    n = t.num_rows
    pkey, lkey = keys["pseudonym"], keys["linkage"]
    out: dict[str, pa.Array] = {
        "extract_id": pa.repeat(pa.scalar(extract_id, pa.string()), n),
        "row": checked.rows,
    }
    persons: Persons | None = None
    names = contract.names
    chosen: np.ndarray | None = None
    if "nhs_number" in names:
        # Normalised numbers are null unless valid: each distinct one is a person to vault.
        distinct = hashed if hashed is not None else person_hashes(checked.nhs_normalised,
                                                                   pkey, memo)
        out["person_id"] = pc.take(distinct.digests, distinct.indices)
        out["key_id"] = pa.repeat(pa.scalar(pkey.key_id, pa.string()), n)
        status = checked.nhs_valid * 2 + (checked.nhs_invalid & ~checked.nhs_valid)
        out["nhs_status"] = pc.take(NHS_STATUS, pa.array(status.astype(np.int8)))
        persons = Persons(pc.fill_null(distinct.indices, -1).to_numpy(zero_copy_only=False)
                          .astype(np.int64), distinct.values, distinct.digests)
        sampled = np.append(_sampled(distinct.digests), False)
        chosen = sampled[pc.fill_null(distinct.indices, len(distinct.values))
                         .to_numpy(zero_copy_only=False)]
    for col in contract.columns:
        name = col.name
        value = t.column(name)
        if col.kind in (c.NHS, c.NAME):
            continue
        if col.kind == c.DOB:
            # Checked dates are `YYYY-MM-DD` text: the year and month are its first 7 characters.
            out["birth_ym"] = pc.if_else(pc.is_valid(checked.parsed[name]),
                                         pc.utf8_slice_codeunits(value, 0, 7),
                                         pa.scalar(None, pa.string()))
        elif col.kind == c.POSTCODE:
            out["postcode_district"], out["postcode_sector"] = generalise_postcode(value)
        elif col.kind == c.RECORD_ID:
            out["record_key"] = record_key if record_key is not None else keyed_record_ids(
                value, pkey, f"{contract.source}|{sender}")
        elif col.kind in (c.DATE, c.DATETIME, c.NUMBER):
            out[name] = checked.parsed[name]
        elif col.kind == c.INTEGER:
            out[name] = pc.cast(value, pa.int8())
        elif col.kind in (c.ICD10, c.ICD10_LIST):
            out[name] = pc.replace_substring(value, ".", "")
        elif col.kind == c.FLAG or name == "withdrawn":
            out[name] = pc.equal(value, "Y")
        elif name == contract.consent_column:
            continue  # only consented rows land; the flag itself says nothing more
        elif name == "code" and contract.source == "gp_events":
            out[name] = pc.replace_substring(pc.utf8_upper(value), ".", "")
        else:
            out[name] = value
    encoded_rows = 0
    selector = np.zeros(n, dtype=bool)
    wanted = [f for f in LINKAGE_FIELDS if f in names]
    if any(f in names for f in ("date_of_birth", "forename")):
        if contract.source in ENCODED_SOURCES or "nhs_number" not in names:
            selector = np.ones(n, dtype=bool)
        else:
            selector = ~checked.nhs_valid | chosen
        encoded_rows = int(selector.sum())
        lk = _encode(t, checked, wanted, selector, lkey)
        for name in lk.column_names:
            out[name] = lk.column(name)
    return Pseudonymised(pa.table(out), encoded_rows, persons, selector)


def training_sample(person_id: pa.Array) -> np.ndarray:
    """The fixed sample of persons whose rows are encoded as labelled linkage examples."""
    encoded = pc.dictionary_encode(person_id)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    chosen = np.append(_sampled(encoded.dictionary), False)
    indices = pc.fill_null(encoded.indices, len(encoded.dictionary))
    return chosen[indices.to_numpy(zero_copy_only=False)]


def _sampled(person_ids: pa.Array) -> np.ndarray:
    """Per distinct pseudonym (64 hex): is it in the training sample (first 6 hex mod 50 == 0)."""
    if isinstance(person_ids, pa.ChunkedArray):
        person_ids = person_ids.combine_chunks()
    if len(person_ids) == 0:
        return np.zeros(0, dtype=bool)
    if person_ids.null_count or pc.any(pc.not_equal(pc.binary_length(person_ids), 64)).as_py():
        return np.array([p is not None and int(p[:6], 16) % TRAINING_SHARE == 0
                         for p in person_ids.to_pylist()], dtype=bool)
    head = pc.utf8_slice_codeunits(person_ids, 0, 6)
    data = np.frombuffer(head.buffers()[2], dtype=np.uint8)
    offsets = np.frombuffer(head.buffers()[1], dtype=np.int32)[head.offset:]
    digits = data[offsets[0]:offsets[0] + 6 * len(head)].reshape(-1, 6).astype(np.int64)
    nibbles = np.where(digits >= ord("a"), digits - ord("a") + 10, digits - ord("0"))
    return (nibbles @ (16 ** np.arange(5, -1, -1))) % TRAINING_SHARE == 0


def _encode(t: pa.Table, checked: Checked, fields: list[str], selector: np.ndarray,
            key: Key) -> pa.Table:
    """Keyed linkage encodings for the selected rows; other rows get nulls."""
    from linkage.encodings import encode_identifiers  # the linkage engine's own encoder

    chosen = pa.array(selector)
    columns = {}
    for f in fields:
        value = t.column(f)
        if f == "date_of_birth":  # checked text, null where it did not parse
            value = pc.if_else(pc.is_valid(checked.parsed[f]), value,
                               pa.scalar(None, pa.string()))
        columns[ENCODER_NAMES.get(f, f)] = pc.filter(value, chosen).to_pandas()
    frame = pd.DataFrame(columns)
    encoded = encode_identifiers(frame, key.secret)
    table = pa.Table.from_pandas(encoded, preserve_index=False)
    # A Bloom filter or name-variant column with no value in this batch (no row selected, or
    # every selected value blank) comes out of pandas typed null; it is binary in every batch,
    # or a later batch with values could not be written beside an earlier one.
    table = pa.table({name: table.column(name).cast(pa.binary())
                      if pa.types.is_null(table.column(name).type) else table.column(name)
                      for name in table.column_names})
    # Spread the encoded rows back to their places; unselected rows get nulls.
    indices = np.full(len(selector), -1, dtype=np.int64)
    indices[np.flatnonzero(selector)] = np.arange(int(selector.sum()))
    take = pa.array(indices, mask=indices < 0)
    return pa.table({name: pc.take(table.column(name).combine_chunks(), take)
                     for name in table.column_names})
