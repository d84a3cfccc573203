"""Great Expectations Data Docs that render with no internet access.

GE pages load Bootstrap, jQuery, bootstrap-table, Font Awesome, vega... from CDNs (STACK.md); offline
the index shows no runs and pages are unstyled. The same files, from the npm registry, are vendored in
`flows/validation/datadocs_assets/<package>@<version>/` (see its README). After GE writes a page, every CDN
reference is rewritten to a relative link to the site's own copy (`static/vendor/...`), and GE's
logos, which GE points at S3, to its local `static/images/`.

Cost: per validation only the new result pages and the index are rendered (never the whole site),
and the index reads each run's success from a small cache (`ASOF_HOME/ge/index.json`) instead of
re-parsing every stored result. The index itself still lists every stored result, so it grows with
history (1.2 s to render at ~900 results, ~8 a date): inside a range (`deferred_index`), each date
renders only its own pages and the index is rendered once per chunk. Rendering a date's pages never
lists the results store (`KeyedSiteSectionBuilder`), so it costs the same at any history length.

A pipeline run renders in the background (`rendering_in_background`): the pages of a chunk are GE's
and Jinja's Python (~1 s a bench day, 1-2 s a 31-day chunk with its index), the chunk's transform
right after them is DuckDB's, mostly off the GIL, on a machine with a core to spare. Rendering then
runs during the transform instead of before it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import html
import http.server
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)
from great_expectations.render.renderer.site_builder import (
    DefaultSiteIndexBuilder,
    DefaultSiteSectionBuilder,
)

from flows.config import settings
from flows.pages.static_files import RootOnlyHandler

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent / "datadocs_assets"
SITE_NAME = "local_site"
VENDOR = "static/vendor"
MARKER = '<meta name="asof-offline" content="1">'

# CDN URL (regex) -> vendored file under ASSETS_DIR. Versions are those GE 1.24 pages ask for.
_S3 = r"https://great-expectations-web-assets\.s3\.us-east-2\.amazonaws\.com/"
CDN_MAP: list[tuple[str, str]] = [
    (
        r"https://unpkg\.com/bootstrap-table@1\.19\.1/dist/bootstrap-table\.min\.css",
        "bootstrap-table@1.19.1/bootstrap-table.min.css",
    ),
    (
        r"https://unpkg\.com/bootstrap-table@1\.19\.1/dist/bootstrap-table\.min\.js",
        "bootstrap-table@1.19.1/bootstrap-table.min.js",
    ),
    (
        r"https://unpkg\.com/bootstrap-table@1\.19\.[01]/dist/extensions/filter-control/bootstrap-table-filter-control(\.min)?\.css",
        "bootstrap-table@1.19.1/bootstrap-table-filter-control.min.css",
    ),
    (
        r"https://unpkg\.com/bootstrap-table@1\.19\.[01]/dist/extensions/filter-control/bootstrap-table-filter-control(\.min)?\.js",
        "bootstrap-table@1.19.1/bootstrap-table-filter-control.min.js",
    ),
    (
        r"https://maxcdn\.bootstrapcdn\.com/bootstrap/4\.3\.1/css/bootstrap\.min\.css",
        "bootstrap@4.3.1/bootstrap.min.css",
    ),
    (
        r"https://stackpath\.bootstrapcdn\.com/bootstrap/4\.3\.1/js/bootstrap\.min\.js",
        "bootstrap@4.3.1/bootstrap.min.js",
    ),
    (
        r"https://cdnjs\.cloudflare\.com/ajax/libs/bootstrap-datepicker/1\.9\.0/css/bootstrap-datepicker\.min\.css",
        "bootstrap-datepicker@1.9.0/bootstrap-datepicker.min.css",
    ),
    (
        r"https://cdnjs\.cloudflare\.com/ajax/libs/bootstrap-datepicker/1\.9\.0/js/bootstrap-datepicker\.min\.js",
        "bootstrap-datepicker@1.9.0/bootstrap-datepicker.min.js",
    ),
    (
        r"https://cdn\.jsdelivr\.net/npm/@forevolve/bootstrap-dark@1\.1\.0/dist/css/bootstrap-prefers-dark\.css",
        "bootstrap-dark@1.1.0/bootstrap-prefers-dark.min.css",
    ),
    (
        r"https://cdnjs\.cloudflare\.com/ajax/libs/font-awesome/6\.6\.0/css/all\.min\.css",
        "fontawesome-free@6.6.0/css/all.min.css",
    ),
    (r"https://code\.jquery\.com/jquery-3\.7\.1\.min\.js", "jquery@3.7.1/jquery.min.js"),
    (
        r"https://cdnjs\.cloudflare\.com/ajax/libs/popper\.js/1\.12\.9/umd/popper\.min\.js",
        "popper.js@1.12.9/popper.min.js",
    ),
    (r"https://cdn\.jsdelivr\.net/npm/vega@5", "vega@5.33.1/vega.min.js"),
    (r"https://cdn\.jsdelivr\.net/npm/vega-lite@5", "vega-lite@5.23.0/vega-lite.min.js"),
    (r"https://cdn\.jsdelivr\.net/npm/vega-embed@6", "vega-embed@6.29.0/vega-embed.min.js"),
]
# GE's own images: the templates point them at S3; the site already has them in static/images/.
IMAGE_MAP: list[tuple[str, str]] = [
    (_S3 + r"logo-long\.png(\?[^\"')\s]*)?", "logo-long.png"),
    (_S3 + r"full_logo_dark\.png(\?[^\"')\s]*)?", "logo-long.png"),
    (_S3 + r"short-logo\.png(\?[^\"')\s]*)?", "short-logo.png"),
]
_CDN_RE = [(re.compile(p + r'(?=["\'])'), target) for p, target in CDN_MAP]
_IMG_RE = [(re.compile(p), target) for p, target in IMAGE_MAP]
_SRI_RE = re.compile(r'\s+(integrity="[^"]*"|crossorigin="[^"]*")')
_FAVICON_RE = re.compile(r'href="[./]*static/images/favicon\.ico"')
# what must not remain: a resource (not a plain link) fetched from another host
REMOTE_RESOURCE_RE = re.compile(
    r'<(?:script|link|img|iframe|source)\b[^>]*?(?:src|href)=["\'](?:https?:)?//[^"\']+', re.IGNORECASE
)
REMOTE_CSS_URL_RE = re.compile(r"url\(\s*['\"]?(?:https?:)?//", re.IGNORECASE)


# ----------------------------------------------------------------------------------- paths


def docs_root() -> Path:
    return settings().docs_dir


def page_path(key: ValidationResultIdentifier | ExpectationSuiteIdentifier) -> str:
    """Path of a resource's page, relative to the site root (as GE's HtmlSiteStore lays it out)."""
    if isinstance(key, ValidationResultIdentifier):
        suite = key.expectation_suite_identifier.name
        parts = ["validations", *suite.split("."), *key.run_id.to_tuple(), key.batch_identifier]
    else:
        parts = ["expectations", *key.name.split(".")]
    return "/".join(parts) + ".html"


def _cache_path() -> Path:
    return settings().home / "ge" / "index.json"


def _cache_key(key: ValidationResultIdentifier) -> str:
    return "/".join(key.to_tuple())


@contextlib.contextmanager
def _cache_lock():
    path = _cache_path().with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_index_cache() -> dict[str, dict]:
    try:
        return json.loads(_cache_path().read_text())
    except (FileNotFoundError, ValueError):
        return {}


def remember_results(entries: Iterable[tuple[ValidationResultIdentifier, bool, str | None]]) -> None:
    """Record (result key, success, asset name) so the index never has to re-read the result."""
    entries = list(entries)
    if not entries:
        return
    with _cache_lock():
        cache = load_index_cache()
        for key, success, asset in entries:
            cache[_cache_key(key)] = {"success": bool(success), "asset": asset}
        tmp = _cache_path().with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, sort_keys=True))
        os.replace(tmp, _cache_path())


class CachedSiteIndexBuilder(DefaultSiteIndexBuilder):
    """GE's index builder, minus re-reading every stored validation result on every build.

    GE's DefaultSiteIndexBuilder loads each result JSON only to learn its success flag and asset;
    with `COMPLETE` results that grows with every run. This reads them from the cache written by
    `remember_results` and falls back to GE's way for results it does not know.
    """

    def _add_validations_to_index_links(self, index_links_dict, validation_and_profiling_result_site_keys):
        validations = self.site_section_builders_config.get("validations", "None")
        if not validations or validations in ("None", "False", "false", False, None):
            return
        cache = load_index_cache()
        keys = sorted(
            validation_and_profiling_result_site_keys, key=lambda k: k.run_id.run_time, reverse=True
        )
        unknown = [k for k in keys if _cache_key(k) not in cache]
        learned = []
        for key in unknown:
            try:
                vr = self.data_context.get_validation_result(
                    batch_identifier=key.batch_identifier,
                    expectation_suite_name=key.expectation_suite_identifier.name,
                    run_id=key.run_id,
                    validation_results_store_name=self.source_stores.get("validations"),
                )
                learned.append((key, bool(vr.success), asset_label(key)))
            except Exception:  # a result that cannot be read is left out of the index
                log.warning("validation result %s cannot be read; not listed", key.to_tuple())
        if learned:
            remember_results(learned)
            cache.update({_cache_key(k): {"success": s, "asset": a} for k, s, a in learned})
        for key in keys:
            info = cache.get(_cache_key(key))
            if info is None:
                continue
            self.add_resource_info_to_index_links_dict(
                index_links_dict=index_links_dict,
                expectation_suite_name=key.expectation_suite_identifier.name,
                section_name="validations",
                batch_identifier=key.batch_identifier,
                run_id=key.run_id,
                validation_success=info["success"],
                run_time=key.run_id.run_time,
                run_name=key.run_id.run_name,
                asset_name=info.get("asset"),
                batch_kwargs={},
                batch_spec={},
            )


def asset_label(key: ValidationResultIdentifier) -> str:
    """The data asset a result judged, in asof's words (its page and the index show it)."""
    from flows.validation.suites import data_asset_name

    return data_asset_name(key.expectation_suite_identifier.name, key.run_id.run_name)


def named_result(key: ValidationResultIdentifier, result: Any) -> Any:
    """A stored result as its page shows it: GE names the data asset after the batch spec, which
    for an in-memory frame has no name ("Data asset: None"); asof names the source and the batch
    dates it judged (from the run name, flows.validation.suites.result_run_name). Values that came
    from upstream are escaped (`escaped_values`)."""
    meta = getattr(result, "meta", None)
    if isinstance(meta, dict):
        spec = meta.get("batch_spec")
        spec = dict(spec) if isinstance(spec, dict) else {}
        spec["data_asset_name"] = asset_label(key)
        meta["batch_spec"] = spec
    for evr in getattr(result, "results", None) or []:
        if isinstance(getattr(evr, "result", None), dict):
            evr.result = escaped_values(evr.result)
        info = getattr(evr, "exception_info", None)
        if isinstance(info, dict):
            evr.exception_info = escaped_values(info)
    return result


def escaped_values(value: Any) -> Any:
    """Every string in `value` HTML-escaped. An expectation's result holds data as delivered
    (unexpected values, observed header names, exception messages quoting them), and GE's result
    pages insert it into HTML as is: a landed `<script>` or `<img onerror=...>` ran in the browser
    of whoever opened the report. The stored JSON keeps the values as they are; only pages differ."""
    if isinstance(value, str):
        return html.escape(value, quote=True)
    if isinstance(value, dict):
        return {k: escaped_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(escaped_values(v) for v in value)
    return value


def valued_suite(suite: Any) -> Any:
    """A suite (as its store returns it, a dict) as its page shows it: a run-time parameter
    (`{"$PARAMETER": name}`, rendered by GE as a bare badge) replaced by the value a run starting
    now gives it; the expectation's notes say that it is a parameter and where it comes from."""
    if not isinstance(suite, dict):
        return suite
    from flows.validation.contracts import load_fx_rates
    from flows.validation.suites import expectation_parameters

    values: dict[str, Any] | None = None
    for exp in suite.get("expectations", []):
        kwargs = exp.get("kwargs", {})
        for k, v in list(kwargs.items()):
            if isinstance(v, dict) and "$PARAMETER" in v:
                values = values if values is not None else expectation_parameters(load_fx_rates())
                if v["$PARAMETER"] in values:
                    kwargs[k] = values[v["$PARAMETER"]]
    return suite


class _ListedKeys:
    """A store seen through a fixed list of its keys (all of them: None), whose resources read as
    their pages show them (`named_result`, `valued_suite`); everything else is the store's own."""

    def __init__(self, store, keys: list | None) -> None:
        self._store = store
        self._keys = keys

    def list_keys(self) -> list:
        return list(self._keys) if self._keys is not None else self._store.list_keys()

    def get(self, key):
        resource = self._store.get(key)
        if isinstance(key, ValidationResultIdentifier):
            return named_result(key, resource)
        return valued_suite(resource)

    def __getattr__(self, name: str):
        return getattr(self._store, name)


class KeyedSiteSectionBuilder(DefaultSiteSectionBuilder):
    """GE's section builder, minus listing the whole store to render a few named pages, and with
    asof's names in the pages (`_ListedKeys`).

    GE's `build(resource_identifiers)` lists every key of its source store and keeps those in the
    list; with ~8 results a date that listing grows with history (0.36 s a build at 180 days, two
    builds a validated date). Given keys, this renders exactly those that are in the store, through
    GE's own loop; without keys (a full build) it is GE's loop over the whole store."""

    def build(self, resource_identifiers=None) -> None:
        store = self.source_store
        keys = None
        if resource_identifiers:
            keys = [k for k in resource_identifiers if isinstance(k, store.key_class) and store.has_key(k)]
        self.source_store = _ListedKeys(store, keys)
        try:
            return super().build(resource_identifiers)
        finally:
            self.source_store = store


# ----------------------------------------------------------------------------- offline pages


def install_assets(root: Path | None = None) -> Path:
    """Copy the vendored CSS/JS/fonts into the site (`static/vendor/`), once per file."""
    root = root or docs_root()
    target = root / VENDOR
    for src in ASSETS_DIR.rglob("*"):
        if src.is_dir() or src.name in ("README.md",):
            continue
        dst = target / src.relative_to(ASSETS_DIR)
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    return target


def make_offline(html: str, prefix: str) -> str:
    """Rewrite CDN/S3 references to the site's local copies; `prefix` leads from the page to the root."""
    prefix = prefix.rstrip("/") + "/" if prefix not in ("", ".") else ""
    for rx, target in _CDN_RE:
        html = rx.sub(f"{prefix}{VENDOR}/{target}", html)
    for rx, target in _IMG_RE:
        html = rx.sub(f"{prefix}static/images/{target}", html)
    html = _FAVICON_RE.sub(f'href="{prefix}static/images/favicon.ico"', html)
    html = re.sub(r"(<(?:script|link)\b[^>]*?)" + r'\s+integrity="[^"]*"', r"\1", html)
    html = re.sub(r"(<(?:script|link)\b[^>]*?)" + r'\s+crossorigin="[^"]*"', r"\1", html)
    if MARKER not in html:
        html = html.replace("<head>", "<head>\n    " + MARKER, 1)
    return html


def remote_references(html: str) -> list[str]:
    """Resources a page would still fetch from another host (should be empty)."""
    return REMOTE_RESOURCE_RE.findall(html) + REMOTE_CSS_URL_RE.findall(html)


def offline_page(path: Path, root: Path | None = None) -> bool:
    root = root or docs_root()
    if not path.exists():
        return False
    html = path.read_text(encoding="utf-8")
    prefix = os.path.relpath(root, path.parent)
    new = make_offline(html, prefix)
    left = remote_references(new)
    if left:
        log.warning("%s still references remote resources: %s", path, left[:3])
    if new != html:
        path.write_text(new, encoding="utf-8")
    return True


def _offline_all(root: Path) -> int:
    n = 0
    for path in root.rglob("*.html"):
        if VENDOR in path.as_posix():
            continue
        with open(path, encoding="utf-8") as fh:
            head = fh.read(4096)
        if MARKER not in head or path.name == "index.html":
            offline_page(path, root)
            n += 1
    return n


# ------------------------------------------------------------------------------------ building

_BUILD_LOCK = threading.Lock()
_STATE_LOCK = threading.Lock()
_DEFERRED = 0  # open deferred_index() scopes
_STALE_KEY: ValidationResultIdentifier | None = None  # published since the index was last rendered
_BACKGROUND = 0  # open rendering_in_background() scopes
_RENDERER: ThreadPoolExecutor | None = None  # the one thread that renders in the background
_QUEUED: list[Future] = []  # renderings submitted and not yet waited for


@contextlib.contextmanager
def rendering_in_background() -> Iterator[None]:
    """Within this scope `publish` and `refresh_index` hand their rendering to one thread of its
    own and return at once; it renders in submission order, so an index follows the pages it lists.

    GE's data context is shared with validation, which must not run while a page renders:
    `wait_for_pages()` (the start of every validation calls it) and the end of the scope wait for
    the queue, so a run returns with its pages rendered. A rendering that fails is logged, as the
    pipeline always did with a report that did not render: the data never waits on the report, and
    an index left stale is rendered by the next refresh."""
    global _BACKGROUND
    with _STATE_LOCK:
        _BACKGROUND += 1
    try:
        yield
    finally:
        with _STATE_LOCK:
            _BACKGROUND -= 1
        wait_for_pages()


def wait_for_pages() -> None:
    """Until every rendering handed to the background thread has ended (a no-op outside
    `rendering_in_background`). Never call it from a rendering: it would wait for itself."""
    while True:
        with _STATE_LOCK:
            if not _QUEUED:
                return
            queued = _QUEUED.pop(0)
        queued.result()  # _logged() never raises


def _render(what: str, job: Callable[[], None]) -> None:
    """Run `job` now, or, inside `rendering_in_background`, on the background thread."""
    global _RENDERER
    with _STATE_LOCK:
        if _BACKGROUND:
            if _RENDERER is None:
                _RENDERER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asof-datadocs")
            _QUEUED.append(_RENDERER.submit(_logged, what, job))
            return
    job()


def _logged(what: str, job: Callable[[], None]) -> None:
    try:
        job()
    except Exception:  # a report: never fail the data because it did not render
        log.exception("rendering Data Docs (%s) failed", what)


@contextlib.contextmanager
def deferred_index() -> Iterator[None]:
    """Within this scope `publish` renders the new result pages but not the index; the index is
    rendered by `refresh_index()` (a backfill calls it after each chunk's validation) and once more
    when the outermost scope closes, even on an error. A process killed inside the scope leaves the
    index behind the pages until the next publish or `asof docs`."""
    global _DEFERRED
    with _STATE_LOCK:
        _DEFERRED += 1
    try:
        yield
    finally:
        with _STATE_LOCK:
            _DEFERRED -= 1
            last = _DEFERRED == 0
        if last:
            try:
                refresh_index()
            except Exception:  # the index is a report: never fail the data because it did not render
                log.exception("rendering the Data Docs index failed")


def refresh_index() -> None:
    """Render the index if a page was published without it (no-op otherwise). Inside
    `rendering_in_background` it is queued after the pages, and a failure is logged, not raised."""
    _render("index", _refresh_index_now)


def _refresh_index_now() -> None:
    from flows.validation.suites import ge_context

    global _STALE_KEY
    with _STATE_LOCK:
        key, _STALE_KEY = _STALE_KEY, None
    if key is None:
        return
    ctx = ge_context()
    root = docs_root()
    try:
        with _BUILD_LOCK:
            # GE renders the index only along with some page; an empty list would mean "every page"
            ctx.build_data_docs(site_names=[SITE_NAME], resource_identifiers=[key])
            offline_page(root / "index.html", root)
    except Exception:
        with _STATE_LOCK:  # still stale: the next refresh (or the scope's end) tries again
            _STALE_KEY = _STALE_KEY or key
        raise


def _suite_keys(ctx) -> list[ExpectationSuiteIdentifier]:
    return (
        [ExpectationSuiteIdentifier(name=n) for n in sorted(ctx.suites.all_names())]
        if hasattr(ctx.suites, "all_names")
        else [ExpectationSuiteIdentifier(name=s.name) for s in ctx.suites.all()]
    )


def publish(results: Iterable[tuple[ValidationResultIdentifier, Any]]) -> list[str]:
    """Render the pages of these validation results ((key, result) pairs) and the index (no full
    rebuild); inside `deferred_index()` the index waits for `refresh_index()`, inside
    `rendering_in_background()` the rendering is queued. Returns the pages' paths."""
    results = list(results)
    keys = [key for key, _ in results]
    global _STALE_KEY
    with _STATE_LOCK:  # decided now, by the scopes open now, whenever the pages render
        with_index = _DEFERRED == 0
        if not with_index and keys:
            _STALE_KEY = keys[-1]
    _render(f"{len(keys)} result page(s)", functools.partial(_publish_now, results, with_index))
    return [page_path(k) for k in keys]


def _publish_now(results: list[tuple[ValidationResultIdentifier, Any]], with_index: bool) -> None:
    from flows.validation.suites import ge_context

    ctx = ge_context()
    root = docs_root()
    keys = [key for key, _ in results]
    remember_results([(key, vr.success, asset_label(key)) for key, vr in results])
    missing_suites = [k for k in _suite_keys(ctx) if not (root / page_path(k)).exists()]
    with _BUILD_LOCK:
        ctx.build_data_docs(
            site_names=[SITE_NAME], resource_identifiers=keys + missing_suites, build_index=with_index
        )
        install_assets(root)
        pages = [root / page_path(k) for k in keys + missing_suites]
        if with_index:
            pages.append(root / "index.html")
        for p in pages:
            offline_page(p, root)


def build_site() -> Path:
    """Build what is missing (pages of results without one, suite pages), the index, and make every
    page offline-ready. Returns the index path."""
    from flows.validation.suites import ge_context

    ctx = ge_context()
    root = docs_root()
    store = ctx.stores[ctx.validation_results_store_name]
    result_keys = store.list_keys()
    missing = [k for k in result_keys if not (root / page_path(k)).exists()]
    suites = _suite_keys(ctx)
    with _BUILD_LOCK:
        ctx.build_data_docs(site_names=[SITE_NAME], resource_identifiers=missing + suites)
        install_assets(root)
        _offline_all(root)
    return root / "index.html"


# ------------------------------------------------------------------------------------- serving


class _Handler(RootOnlyHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        log.debug("docs server: " + format, *args)

    def end_headers(self):
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()


def make_server(port: int = 0, host: str = "127.0.0.1", root: Path | None = None):
    """An HTTP server for the site, bound to 127.0.0.1 (not started); returns (server, url)."""
    root = root or docs_root()
    handler = functools.partial(_Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    return server, f"http://{host}:{server.server_address[1]}/"


def start_server(port: int = 0, host: str = "127.0.0.1", root: Path | None = None):
    """Serve the site from a background thread; returns (server, url). Stop with server.shutdown()."""
    server, url = make_server(port, host, root)
    thread = threading.Thread(target=server.serve_forever, name="asof-docs", daemon=True)
    thread.start()
    return server, url
