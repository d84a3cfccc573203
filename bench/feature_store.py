"""Feature-store measurements (issue 5), each side by side with its alternative:

- historical retrieval: 1M entity rows against `fraud_v2` through `FeatureStore.get_historical_features`
  with the project's Delta+DuckDB offline store, vs the same as-of join written by hand in DuckDB, and
  vs Feast's stock `file` offline store;
- materialization throughput: `flows.features.featurestore.materialize_date` (one execution date) vs Feast's
  stock `FeatureStore.materialize` over the same window with the stock `file` offline store, into
  SQLite and into Redis;
- online read latency for 1 and 100 entities of `fraud_v2`: in process vs over HTTP (`asof serve`),
  SQLite and Redis.

The gold tables are synthetic (numpy) at bench proportions: 40 days x 75k customers, 5k merchants,
profiles — 3.0M customer rows, 200k merchant rows, 120k profile rows. They live in their own home
(`<bench home>/feature_store`), so they never mix with the gold the transform pair writes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import io
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from flows.orchestration.local_server import (
    stop,  # SIGTERM to the process group, SIGKILL after a grace period
)
from flows.storage import lake
from tests.synthetic_gold import GOLD_SCHEMAS, day_ts

TS = pa.timestamp("us", tz="UTC")
START = dt.date(2024, 1, 1)
NDAYS = 40
N_CUST, N_MERCH, N_ENT = 100_000, 5_000, 1_000_000
LAST_DAY = START + dt.timedelta(days=NDAYS - 1)
rng = np.random.default_rng(0)


def _use_home(args) -> Path:
    """The feature-store measurements' own ASOF_HOME under the bench home."""
    home = Path(args.home) / "feature_store"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["ASOF_HOME"] = str(home)
    return home


def _opts(args) -> dict[str, Any]:
    return json.loads(getattr(args, "extra", "") or "{}")


def build() -> None:
    if lake.exists("gold", "customer_txn_features_daily"):
        return
    days = [START + dt.timedelta(days=i) for i in range(NDAYS)]
    parts = []
    for d in days:
        ids = np.sort(rng.choice(N_CUST, int(N_CUST * 0.75), replace=False)) + 1
        n = len(ids)
        parts.append(
            pa.table(
                {
                    "customer_id": pa.array(ids, pa.int64()),
                    "as_of_date": pa.array([d] * n, pa.date32()),
                    "feature_timestamp": pa.array([day_ts(d + dt.timedelta(days=1))] * n, TS),
                    "txn_count_1d": rng.integers(0, 5, n),
                    "txn_count_7d": rng.integers(0, 30, n),
                    "txn_count_30d": rng.integers(1, 90, n),
                    "amount_usd_sum_7d": rng.random(n) * 1000,
                    "amount_usd_sum_30d": rng.random(n) * 4000,
                    "amount_usd_avg_30d": rng.random(n) * 100,
                    "amount_usd_max_7d": pa.array(
                        np.where(rng.random(n) < 0.1, np.nan, rng.random(n) * 500), from_pandas=True
                    ),
                    "distinct_merchants_30d": rng.integers(1, 20, n),
                    "seconds_since_last_txn": rng.integers(0, 86400 * 30, n),
                }
            )
        )
    cust = pa.concat_tables(parts)
    parts = []
    for d in days:
        ids = np.arange(1, N_MERCH + 1)
        n = len(ids)
        parts.append(
            pa.table(
                {
                    "merchant_id": pa.array(ids, pa.int64()),
                    "as_of_date": pa.array([d] * n, pa.date32()),
                    "feature_timestamp": pa.array([day_ts(d + dt.timedelta(days=1))] * n, TS),
                    "merchant_txn_count_7d": rng.integers(0, 300, n),
                    "merchant_txn_count_90d": rng.integers(1, 3000, n),
                    "merchant_chargeback_count_90d": rng.integers(0, 10, n),
                    "merchant_chargeback_rate_90d": rng.random(n) / 100,
                }
            )
        )
    merch = pa.concat_tables(parts)
    first = rng.integers(0, 10, N_CUST)
    extra = rng.choice(N_CUST, N_CUST // 5, replace=False)
    cid = np.concatenate([np.arange(1, N_CUST + 1), extra + 1])
    dd = np.concatenate([first, rng.integers(10, NDAYS, len(extra))])
    asof = [START + dt.timedelta(days=int(x)) for x in dd]
    prof = pa.table(
        {
            "customer_id": pa.array(cid, pa.int64()),
            "as_of_date": pa.array(asof, pa.date32()),
            "feature_timestamp": pa.array([day_ts(a + dt.timedelta(days=1)) for a in asof], TS),
            "country": pa.array(rng.choice(["US", "GB", "DE", "FR"], len(cid))),
            "kyc_level": rng.integers(0, 4, len(cid)),
            "signup_date": pa.array(
                [dt.date(2020, 1, 1) + dt.timedelta(days=int(x)) for x in rng.integers(0, 1400, len(cid))],
                pa.date32(),
            ),
        }
    )
    pred = lake.date_predicate("as_of_date", days[0], days[-1])
    for name, t in (
        ("customer_txn_features_daily", cust),
        ("merchant_features_daily", merch),
        ("customer_profile", prof),
    ):
        lake.replace("gold", name, t.cast(GOLD_SCHEMAS[name]), pred, partition_by=["as_of_date"])
    print("gold rows", cust.num_rows, merch.num_rows, prof.num_rows)


def entities():
    span = (NDAYS - 10) * 86400
    secs = rng.integers(0, span, N_ENT)
    base = pd.Timestamp(day_ts(START + dt.timedelta(days=10)))
    return pd.DataFrame(
        {
            "txn_id": [f"t{i}" for i in range(N_ENT)],
            "customer_id": rng.integers(1, N_CUST + 1, N_ENT),
            "merchant_id": rng.integers(1, N_MERCH + 1, N_ENT),
            "event_timestamp": base + pd.to_timedelta(secs, unit="s"),
        }
    )


RAW = """
SELECT e.*,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.txn_count_1d END AS txn_count_1d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.txn_count_7d END AS txn_count_7d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.txn_count_30d END AS txn_count_30d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.amount_usd_sum_7d END AS amount_usd_sum_7d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.amount_usd_sum_30d END AS amount_usd_sum_30d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.amount_usd_avg_30d END AS amount_usd_avg_30d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.amount_usd_max_7d END AS amount_usd_max_7d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.distinct_merchants_30d END AS distinct_merchants_30d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.seconds_since_last_txn END AS seconds_since_last_txn,
  CASE WHEN m.ts > e.event_timestamp - INTERVAL 1 DAY THEN m.merchant_txn_count_7d END AS merchant_txn_count_7d,
  CASE WHEN m.ts > e.event_timestamp - INTERVAL 1 DAY THEN m.merchant_txn_count_90d END AS merchant_txn_count_90d,
  CASE WHEN m.ts > e.event_timestamp - INTERVAL 1 DAY THEN m.merchant_chargeback_count_90d END AS merchant_chargeback_count_90d,
  CASE WHEN m.ts > e.event_timestamp - INTERVAL 1 DAY THEN m.merchant_chargeback_rate_90d END AS merchant_chargeback_rate_90d,
  CASE WHEN p.ts > e.event_timestamp - INTERVAL 3650 DAY THEN p.country END AS country,
  CASE WHEN p.ts > e.event_timestamp - INTERVAL 3650 DAY THEN p.kyc_level END AS kyc_level,
  CASE WHEN p.ts > e.event_timestamp - INTERVAL 3650 DAY THEN p.signup_date END AS signup_date
FROM ent e
ASOF LEFT JOIN (SELECT customer_id, feature_timestamp AS ts, * EXCLUDE (customer_id, feature_timestamp, as_of_date) FROM cust) c
  ON e.customer_id = c.customer_id AND e.event_timestamp >= c.ts
ASOF LEFT JOIN (SELECT merchant_id, feature_timestamp AS ts, * EXCLUDE (merchant_id, feature_timestamp, as_of_date) FROM merch) m
  ON e.merchant_id = m.merchant_id AND e.event_timestamp >= m.ts
ASOF LEFT JOIN (SELECT customer_id, feature_timestamp AS ts, country, kyc_level, signup_date FROM prof) p
  ON e.customer_id = p.customer_id AND e.event_timestamp >= p.ts
"""


def _entity_table(ent: pd.DataFrame) -> pa.Table:
    schema = pa.schema(
        [
            ("txn_id", pa.string()),
            ("customer_id", pa.int64()),
            ("merchant_id", pa.int64()),
            ("event_timestamp", TS),
        ]
    )
    return pa.Table.from_pandas(ent, preserve_index=False).cast(schema)


def retrieval_ours(args) -> dict:
    from flows.features.featurestore import get_store

    _use_home(args)
    build()
    ent = entities()
    store = get_store()
    svc = store.get_feature_service("fraud_v2")
    t = time.perf_counter()
    out = store.get_historical_features(entity_df=ent, features=svc).to_arrow()
    return {"seconds": time.perf_counter() - t, "rows": out.num_rows}


def retrieval_raw(args) -> dict:
    import duckdb

    _use_home(args)
    build()
    ent = _entity_table(entities())
    t = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("ent", ent)
    con.register("cust", lake.dataset("gold", "customer_txn_features_daily"))
    con.register("merch", lake.dataset("gold", "merchant_features_daily"))
    con.register("prof", lake.dataset("gold", "customer_profile"))
    out = con.sql(RAW).to_arrow_table()
    return {"seconds": time.perf_counter() - t, "rows": out.num_rows}


def retrieval_stock(args) -> dict:
    from flows.features.featurestore import get_store
    from tests.synthetic_gold import store_with_offline_store

    _use_home(args)
    build()
    ent = entities()
    svc = get_store().get_feature_service("fraud_v2")
    stock = store_with_offline_store({"type": "file"})
    t = time.perf_counter()
    out = stock.get_historical_features(entity_df=ent, features=svc).to_df()
    return {"seconds": time.perf_counter() - t, "rows": len(out)}


# ------------------------------------------------------------------ online stores for the measurements


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with status {proc.returncode} at start") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} in {timeout_s:.0f}s") from None
            time.sleep(0.05)


@contextlib.contextmanager
def online_store(kind: str, home: Path) -> Iterator[str]:
    """Point flows.features.featurestore at `kind` for this process. For redis, a private redis-server on a
    free 127.0.0.1 port, no persistence, stopped on exit. Yields a description of the store."""
    from flows.features import featurestore

    if kind not in ("sqlite", "redis"):
        raise ValueError(f"online store {kind!r}: expected sqlite or redis")
    saved = {k: os.environ.get(k) for k in ("ASOF_ONLINE_STORE", "ASOF_REDIS_URL", "ASOF_REDIS_PASSWORD")}
    os.environ.pop("ASOF_REDIS_PASSWORD", None)
    proc: subprocess.Popen | None = None
    try:
        if kind == "sqlite":
            os.environ["ASOF_ONLINE_STORE"] = "sqlite"
            desc = "sqlite"
        else:
            binary = shutil.which("redis-server") or "/usr/bin/redis-server"
            version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()
            port = _free_port()
            workdir = home / "redis"
            workdir.mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
                + ["--dir", str(workdir)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            _wait_port(port, proc, "redis-server", 20)
            os.environ["ASOF_ONLINE_STORE"] = "redis"
            os.environ["ASOF_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            desc = "redis " + next((v.split("=", 1)[1] for v in version if v.startswith("v=")), "?")
        featurestore.reset_store_cache()
        yield desc
    finally:
        featurestore.reset_store_cache()
        if proc is not None:
            stop(proc)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _clear_sqlite_online(store: Any) -> None:
    """Empty the SQLite online tables (untimed), so both materialization paths start alike."""
    path = Path(store.config.online_store.path)
    if not path.exists():
        return
    con = sqlite3.connect(path)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        with con:
            for t in tables:
                con.execute(f'DELETE FROM "{t}"')
    finally:
        con.close()


def _own_sqlite_schema(store: Any, stock: bool) -> None:
    """The online tables as each path's own `update` leaves them (untimed): Feast's SQLite store
    keeps an index on entity_key, asof's store does not (flows/features/feast_online.py). Both paths share
    one database file, so each measurement sets its schema up first."""
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    from flows.features.feast_online import KeyOrderedSqliteOnlineStore

    online = SqliteOnlineStore() if stock else KeyOrderedSqliteOnlineStore()
    online.update(store.config, [], store.list_feature_views(), [], [], partial=False)


def _sqlite_holds_last_day(store: Any) -> bool:
    """True if every SQLite online table holds exactly the last as-of day's rows (what the
    materialization measurements leave behind): the latency measurement then skips re-writing them."""
    import pyarrow.compute as pc

    from flows.dates import feature_timestamp

    path = Path(store.config.online_store.path)
    if not path.exists():
        return False
    ts = int(feature_timestamp(LAST_DAY).timestamp())
    con = sqlite3.connect(path)
    try:
        for fv in store.list_feature_views():
            table = fv.batch_source.path.rstrip("/").rsplit("/", 1)[-1]
            want = lake.dataset("gold", table).count_rows(filter=pc.field("as_of_date") == LAST_DAY)
            got = con.execute(
                f'SELECT count(DISTINCT entity_key), min(event_ts), max(event_ts) FROM "asof_{fv.name}"'
            ).fetchone()
            if tuple(got) != (want, ts, ts):
                return False
    except sqlite3.Error:
        return False
    finally:
        con.close()
    return True


class WriteCounter:
    """Counts the rows Feast hands to the online store's `online_write_batch` (or, on asof's SQLite
    path, `online_write_arrow`), and the time spent inside it (the rest of a materialization is
    the offline read, plus the proto conversion on Feast's path)."""

    def __init__(self, kind: str) -> None:
        from feast.infra.online_stores.online_store import OnlineStore
        from feast.infra.online_stores.redis import RedisOnlineStore
        from feast.infra.online_stores.sqlite import SqliteOnlineStore

        cls: type[OnlineStore] = RedisOnlineStore if kind == "redis" else SqliteOnlineStore
        self.rows = 0
        self.seconds = 0.0
        self._cls = cls
        self._orig: Callable[..., Any] = cls.online_write_batch
        orig = self._orig
        counter = self

        def counted(this: Any, *a: Any, **kw: Any) -> Any:
            data = kw["data"] if "data" in kw else a[2]
            counter.rows += len(data)
            t = time.perf_counter()
            try:
                return orig(this, *a, **kw)
            finally:
                counter.seconds += time.perf_counter() - t

        cls.online_write_batch = counted  # type: ignore[method-assign,assignment]

        # asof's stores take Arrow batches from its batch engine (flows/features/feast_engine.py)
        from flows.features.feast_online import ArrowRedisOnlineStore, KeyOrderedSqliteOnlineStore

        self._arrow_cls = ArrowRedisOnlineStore if kind == "redis" else KeyOrderedSqliteOnlineStore
        self._arrow_orig: Callable[..., Any] = self._arrow_cls.online_write_arrow
        arrow_orig = self._arrow_orig

        def counted_arrow(this: Any, config: Any, table: Any, rows: Any) -> Any:
            counter.rows += rows.num_rows
            t = time.perf_counter()
            try:
                return arrow_orig(this, config, table, rows)
            finally:
                counter.seconds += time.perf_counter() - t

        self._arrow_cls.online_write_arrow = counted_arrow  # type: ignore[method-assign]

    def close(self) -> None:
        self._cls.online_write_batch = self._orig  # type: ignore[method-assign]
        self._arrow_cls.online_write_arrow = self._arrow_orig  # type: ignore[method-assign]


def _stock_store(kind: str) -> Any:
    """A FeatureStore on the same registry and online store, with Feast's stock `file` offline store
    (its `duckdb` store cannot read Delta offline; see STACK.md)."""
    import yaml
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from flows.features import featurestore

    featurestore.get_store()  # registry applied for this ASOF_HOME
    name = "feature_store.redis.yaml" if kind == "redis" else "feature_store.yaml"
    raw = yaml.safe_load(os.path.expandvars((featurestore.REPO_DIR / name).read_text()))
    raw["offline_store"] = {"type": "file"}
    raw.pop("batch_engine", None)  # Feast's local engine and its own SQLite write, not asof's
    raw["online_store"]["type"] = kind  # Feast's own sqlite or redis store
    if kind == "redis":
        raw["online_store"]["connection_string"] = featurestore.redis_connection_string()
    config = RepoConfig(**raw)
    config.repo_path = featurestore.REPO_DIR
    return FeatureStore(repo_path=str(featurestore.REPO_DIR), config=config)


# ------------------------------------------------------------------ materialization throughput


def _materialize(args, stock: bool) -> dict:
    from flows.dates import feature_timestamp
    from flows.features.featurestore import get_store, materialize_date

    kind = _opts(args).get("online", "sqlite")
    home = _use_home(args)
    build()
    start = feature_timestamp(LAST_DAY)
    end = start + dt.timedelta(days=1) - dt.timedelta(microseconds=1)
    with online_store(kind, home) as desc:
        store = _stock_store(kind) if stock else get_store()  # untimed: import, registry
        if kind == "sqlite":
            _clear_sqlite_online(store)
            _own_sqlite_schema(store, stock)
        counter = WriteCounter(kind)
        try:
            t = time.perf_counter()
            if stock:
                with contextlib.redirect_stdout(io.StringIO()):
                    store.materialize(start_date=start, end_date=end)
                reported = None
            else:
                reported = materialize_date(LAST_DAY)["rows"]
            secs = time.perf_counter() - t
        finally:
            counter.close()
    rows = counter.rows
    if reported is not None and reported != rows:
        raise RuntimeError(f"materialize_date reported {reported} rows, the online store got {rows}")
    path = "Feast stock materialize (file offline store)" if stock else "asof materialize_date"
    return {
        "seconds": secs,
        "rows": rows,
        "rows_per_s": rows / secs,
        "online": desc,
        "execution_date": LAST_DAY.isoformat(),
        "online_write_seconds": round(counter.seconds, 3),
        "summary": f"{path}, {desc}: {rows:,} rows in {secs:.2f} s = {rows / secs:,.0f} rows/s "
        f"(online_write_batch {counter.seconds:.2f} s, read + convert {secs - counter.seconds:.2f} s)",
    }


def materialize_ours(args) -> dict:
    """`materialize_date(D)` for the last as-of day (every row of that day is current): what the
    daily flow runs. Reads through the project's offline store (deltalake -> Arrow -> DuckDB,
    window and current-row filter pushed into DuckDB), counts the rows, then Feast writes them."""
    return _materialize(args, stock=False)


def materialize_stock(args) -> dict:
    """Feast's own path over the same window: `FeatureStore.materialize(start, end)` with the stock
    `file` offline store (dask over the Delta directory's Parquet files), same online store."""
    return _materialize(args, stock=True)


# ------------------------------------------------------------------ online latency


def _entity_batches(n_requests: int, size: int, seed: int) -> list[dict[str, list[int]]]:
    """Random customers (a quarter of them have no row on the last day: they read null) and merchants."""
    r = np.random.default_rng(seed)
    return [
        {
            "customer_id": [int(x) for x in r.integers(1, N_CUST + 1, size)],
            "merchant_id": [int(x) for x in r.integers(1, N_MERCH + 1, size)],
        }
        for _ in range(n_requests)
    ]


def _percentiles(lat_ns: list[int]) -> dict[str, float]:
    ms = np.asarray(lat_ns, dtype=np.float64) / 1e6
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "requests": len(ms),
    }


def _start_feature_server(home: Path) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    exe = Path(sys.executable).parent / "asof"
    cmd = [str(exe), "serve"] if exe.exists() else [sys.executable, "-m", "flows.cli.main", "serve"]
    log = open(home / "feature_server.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", str(port)],
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    _wait_port(port, proc, "asof serve", 120)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                break
        except OSError:
            conn.close()
        if time.monotonic() > deadline:
            raise RuntimeError("asof serve: /health never answered 200")
        time.sleep(0.2)
    conn.close()
    return proc, port


def _time_requests(calls: list[Callable[[int], Any]], n: int, warmup: int) -> list[list[int]]:
    """Latencies (ns) of each call(i) for i in 0..warmup+n-1, the first `warmup` untimed. Several
    calls are interleaved request by request, so they see the same machine load, and take turns
    going first: the first to read request i's rows also pays for bringing them into the cache."""
    lat: list[list[int]] = [[] for _ in calls]
    for i in range(warmup + n):
        for j in range(len(calls)):
            k = (i + j) % len(calls)
            t0 = time.perf_counter_ns()
            calls[k](i)
            if i >= warmup:
                lat[k].append(time.perf_counter_ns() - t0)
    return lat


def _helper_call(
    online_features: Callable[..., Any], batches: list[dict[str, list[int]]]
) -> Callable[[int], Any]:
    def call(i: int) -> Any:
        return online_features(batches[i], "fraud_v2")

    return call


def _direct_call(store: Any, svc: Any, rows: list[list[dict[str, int]]]) -> Callable[[int], Any]:
    def call(i: int) -> Any:
        return store.get_online_features(features=svc, entity_rows=rows[i]).to_dict()

    return call


def _poster(conn: http.client.HTTPConnection, batches: list[dict[str, list[int]]]) -> Callable[[int], dict]:
    """post(i): POST batches[i] to /get-online-features over the kept-alive connection."""
    headers = {"Content-Type": "application/json"}
    bodies = [json.dumps({"feature_service": "fraud_v2", "entities": b}).encode() for b in batches]

    def post(i: int) -> dict:
        conn.request("POST", "/get-online-features", bodies[i], headers)
        resp = conn.getresponse()
        payload = json.loads(resp.read())
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {str(payload)[:300]}")
        return payload

    return post


def _cell_name(size: int) -> str:
    return f"{size}_entit{'y' if size == 1 else 'ies'}"


def _cells_text(cells: dict[str, dict[str, float]]) -> str:
    return "; ".join(
        f"{k.replace('_', ' ')} p50 {v['p50_ms']:.2f} / p99 {v['p99_ms']:.2f} ms ({v['requests']:.0f} req)"
        for k, v in cells.items()
    )


def online_latency(args) -> dict:
    """p50/p99 of `fraud_v2` online reads for 1 and 100 entities, after warm-up.

    mode "inproc": `flows.features.featurestore.online_features` (the project's helper around
    FeatureStore.get_online_features + to_dict); for reference the same requests also go straight
    to `FeatureStore.get_online_features` with one FeatureService object reused (reported as
    `feast_direct`, not in `seconds`).
    mode "http": POST /get-online-features to `asof serve` (Feast feature server, gunicorn + uvicorn,
    one worker) on a free 127.0.0.1 port, over one keep-alive connection, response JSON-decoded.
    `seconds` = the timed requests only (so the ratio of a pair is the ratio of mean latencies).
    """
    from flows.features.featurestore import get_store, materialize_date, online_features

    opts = _opts(args)
    kind = opts.get("online", "sqlite")
    mode = opts.get("mode", "inproc")
    if mode not in ("inproc", "http"):
        raise ValueError(f"mode {mode!r}: expected inproc or http")
    counts = {1: int(opts.get("requests_1", 600)), 100: int(opts.get("requests_100", 300))}
    warmup = int(opts.get("warmup", 30))
    home = _use_home(args)
    build()
    cells: dict[str, dict[str, float]] = {}
    direct: dict[str, dict[str, float]] = {}
    timed_ns = 0
    with online_store(kind, home) as desc:
        store = get_store()
        if not (kind == "sqlite" and _sqlite_holds_last_day(store)):
            materialize_date(LAST_DAY)  # untimed: the online store holds the last day's rows
        server: subprocess.Popen | None = None
        conn: http.client.HTTPConnection | None = None
        try:
            if mode == "http":
                server, port = _start_feature_server(home)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for size, n in counts.items():
                batches = _entity_batches(warmup + n, size, seed=size)
                if conn is None:
                    svc = store.get_feature_service("fraud_v2")
                    rows = [
                        [{"customer_id": c, "merchant_id": m} for c, m in zip(*b.values(), strict=True)]
                        for b in batches
                    ]
                    # interleaved request by request, so both see the same machine load
                    lat, ref = _time_requests(
                        [_helper_call(online_features, batches), _direct_call(store, svc, rows)], n, warmup
                    )
                    direct[_cell_name(size)] = _percentiles(ref)
                else:
                    post = _poster(conn, batches)
                    _check_http_answer(post(0), batches[0], online_features)
                    (lat,) = _time_requests([post], n, warmup)
                cells[_cell_name(size)] = _percentiles(lat)
                timed_ns += sum(lat)
        finally:
            if conn is not None:
                conn.close()
            if server is not None:
                stop(server)
    where = "in process (asof online_features)" if mode == "inproc" else "HTTP (asof serve)"
    summary = f"{where}, {desc}: {_cells_text(cells)}"
    if direct:
        summary += f" — FeatureStore.get_online_features direct: {_cells_text(direct)}"
    out: dict[str, Any] = {
        "seconds": timed_ns / 1e9,
        "online": desc,
        "mode": mode,
        "latency": cells,
        "summary": summary,
    }
    if direct:
        out["feast_direct"] = direct
    return out


def _check_http_answer(payload: dict, ent: dict[str, list[int]], online_features: Callable[..., Any]) -> None:
    """The served values equal the in-process ones (same store) for one request."""
    names = payload["metadata"]["feature_names"]
    served = {n: r["values"] for n, r in zip(names, payload["results"], strict=True)}
    local = online_features(ent, "fraud_v2")
    for f in ("txn_count_7d", "merchant_txn_count_90d", "kyc_level"):
        if served[f] != local[f]:
            raise RuntimeError(f"HTTP and in-process values differ for {f}: {served[f]} != {local[f]}")
