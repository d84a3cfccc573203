"""The handler behind asof's static HTTP servers (Data Docs, the artifact server of `make serve`).

Python's `SimpleHTTPRequestHandler` lists directories and follows symlinks wherever they lead. The
served trees hold pages built from upstream data, and a symlink placed in one (by a bug, a restored
backup, a careless operator) would publish whatever it points to, the lake or a home directory
included, even on 127.0.0.1 to every local user and browser tab. So: a path that resolves outside
the served root is 404, and a directory is served only through its own index.html, never listed.
"""

from __future__ import annotations

import http.server
import os
from http import HTTPStatus
from pathlib import Path

from flows.config import resolves_inside

NOT_SERVED = str(Path(os.devnull) / "not-served")  # a path that never exists: 404


class RootOnlyHandler(http.server.SimpleHTTPRequestHandler):
    def translate_path(self, path: str) -> str:
        full = super().translate_path(path)
        return full if resolves_inside(full, self.directory) else NOT_SERVED

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(HTTPStatus.NOT_FOUND, "not found")
        return None
