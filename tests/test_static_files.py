"""asof's static servers serve their root only: no directory listing, no symlink out of the root
(issue 23 item 5). Both real servers: the Data Docs server and `make serve`'s artifact server."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from flows.orchestration import local_server as serve
from flows.validation import datadocs


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _tree(root: Path, outside: Path) -> None:
    root.mkdir(parents=True)
    (root / "index.html").write_text("<html>ok</html>")
    (root / "pages").mkdir()
    (root / "pages" / "a.html").write_text("a")
    (root / "linked.html").symlink_to(root / "pages" / "a.html")  # inside: fine
    (outside / "secret.txt").write_text("secret")
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "leakdir").symlink_to(outside)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    return d


def test_docs_server(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "docs"
    _tree(root, outside)
    server, url = datadocs.start_server(root=root)
    try:
        assert _status(url + "index.html") == 200 and _status(url) == 200  # index of the root
        assert _status(url + "linked.html") == 200
        assert _status(url + "pages/") == 404  # no listing
        assert _status(url + "leak.txt") == 404
        assert _status(url + "leakdir/secret.txt") == 404
        assert _status(url + "../outside/secret.txt") == 404
    finally:
        server.shutdown()


def test_artifact_server(tmp_path: Path, outside: Path) -> None:
    home = tmp_path / "home"
    _tree(home / "docs", outside)
    (home / "reports").mkdir()
    (home / "reports" / "monitoring.html").write_text("m")
    (home / "lake").mkdir()
    (home / "lake" / "x.parquet").write_text("data")
    (home / "reports" / "lake").symlink_to(home / "lake")  # a symlink to a sibling of the root
    server, url = serve.start_artifact_server(home)
    try:
        assert _status(url + "docs/index.html") == 200 and _status(url + "reports/monitoring.html") == 200
        assert _status(url + "docs/pages/") == 404
        assert _status(url + "docs/leak.txt") == 404 and _status(url + "docs/leakdir/secret.txt") == 404
        assert _status(url + "reports/lake/x.parquet") == 404
        assert _status(url + "lake/x.parquet") == 404
    finally:
        server.shutdown()
