"""Landing: check an extract against its sender's contract and pseudonymise it on arrival.

reader (CSV/Parquet in batches) -> manifest (what the sender declared) -> contracts (the
inbound formats) -> validate (per-row rules) -> pseudonymise (the one place identifiers are
keyed or generalised) -> land (staging, publish, receipt, audit, in one transaction).
"""
