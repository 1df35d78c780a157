"""The pipeline: each stage's orchestration as plain functions both faces call.

land -> link -> score -> report, and the governance actions that reach into what the stages
made (destroy, purge, rotate). Each function takes a `Context` (settings, database, keys, the
acting user), returns a typed result and reports progress through an optional callback; the
command line (`cli/`) and the API (`api/`) only parse, call and present.
"""
