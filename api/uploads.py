"""Receive an extract upload: multipart streamed to a temporary file, never held in memory.

The `file` part is written as it arrives to a file under `$HAVEN_HOME/uploads/`, counting bytes:
past the limit the upload stops with 413. Other parts are the manifest's fields, each at most
1 KiB. The caller lands the file and removes it whatever happens (`received` is a context
manager that always does).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from api.problems import Problem

FIELD_LIMIT = 1024
MAX_FIELDS = 20


@dataclass
class Upload:
    path: Path
    filename: str = "upload"
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)


class _Parts:
    """Callbacks of the multipart parser: file bytes queued for writing, fields kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.headers: dict[bytes, bytes] = {}
        self.name = b""
        self.value = b""
        self.current: str | None = None
        self.is_file = False
        self.filename = "upload"
        self.data = bytearray()
        self.pending: list[bytes] = []
        self.size = 0
        self.fields: dict[str, str] = {}
        self.files = 0

    def on_part_begin(self) -> None:
        self.headers, self.current, self.is_file, self.data = {}, None, False, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.name.lower()] = self.value
        self.name, self.value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if name is None:
            raise Problem(422, "multipart: every part needs a name")
        self.current = name.decode("utf-8", "replace")
        if self.current == "file":
            self.files += 1
            if self.files > 1:
                raise Problem(422, "multipart: one file per upload")
            self.is_file = True
            raw = options.get(b"filename", b"upload").decode("utf-8", "replace")
            self.filename = os.path.basename(raw.replace("\\", "/"))[:100] or "upload"
        elif len(self.fields) >= MAX_FIELDS:
            raise Problem(422, "multipart: too many fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.is_file:
            self.size += len(chunk)
            if self.size > self.limit:
                raise Problem(413, f"the extract is larger than the "
                                   f"{self.limit // 2**20} MiB limit")
            self.pending.append(chunk)
        else:
            self.data.extend(chunk)
            if len(self.data) > FIELD_LIMIT:
                raise Problem(422, f"field {self.current}: longer than {FIELD_LIMIT} bytes")

    def on_part_end(self) -> None:
        if not self.is_file and self.current is not None:
            self.fields[self.current] = self.data.decode("utf-8", "replace").strip()


@asynccontextmanager
async def received(request: Request, folder: Path, limit: int) -> AsyncIterator[Upload]:
    """Stream the request's multipart body to a temporary file; removed on leaving."""
    content_type = request.headers.get("content-type", "")
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise Problem(415, "send the extract as multipart/form-data", slug="unsupported-media")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise Problem(413, f"the extract is larger than the {limit // 2**20} MiB limit")
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=folder)
    path = Path(name)
    try:
        parts = _Parts(limit)
        parser = MultipartParser(options[b"boundary"], {
            "on_part_begin": parts.on_part_begin, "on_part_data": parts.on_part_data,
            "on_part_end": parts.on_part_end, "on_header_field": parts.on_header_field,
            "on_header_value": parts.on_header_value, "on_header_end": parts.on_header_end,
            "on_headers_finished": parts.on_headers_finished})
        with os.fdopen(handle, "wb") as out:
            try:
                async for chunk in request.stream():
                    parser.write(chunk)
                    if parts.pending:
                        block, parts.pending = b"".join(parts.pending), []
                        await run_in_threadpool(out.write, block)
                parser.finalize()
            except FormParserError:
                raise Problem(422, "multipart: the body could not be parsed") from None
        if parts.files != 1:
            raise Problem(422, "multipart: the extract must be sent as the part named file")
        yield Upload(path=path, filename=parts.filename, size=parts.size, fields=parts.fields)
    finally:
        path.unlink(missing_ok=True)
