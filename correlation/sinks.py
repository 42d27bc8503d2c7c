"""Alert sinks. The file sink writes ECS NDJSON: one JSON document per line."""

from __future__ import annotations

import os
from typing import IO

import orjson


class NdjsonSink:
    """Append ECS documents to a file as NDJSON (written atomically on close)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._tmp_path = self.path + ".partial"
        self._fh: IO[bytes] = open(self._tmp_path, "wb")
        self.written = 0

    def write(self, docs: list[dict]) -> None:
        if docs:
            self._fh.write(b"".join(orjson.dumps(d) + b"\n" for d in docs))
            self.written += len(docs)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
            # Rename only when complete, so a crash never leaves a half file under the real name.
            os.replace(self._tmp_path, self.path)

    def __enter__(self) -> NdjsonSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
