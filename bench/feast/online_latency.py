"""p50/p99 of online reads (fraud_v2) for 1 and 100 entities: in process and over HTTP."""
import json, os, socket, subprocess, sys, time, urllib.request
import numpy as np
from flows import lake
from flows.featurestore import get_store, materialize_date, online_store_kind, reset_store_cache
from flows.dates import date_range, parse_range

def pct(xs):
    xs = np.array(xs) * 1000
    return f"p50 {np.percentile(xs, 50):.2f} ms  p99 {np.percentile(xs, 99):.2f} ms"

def main(n=300):
    store = get_store(); fs = store.get_feature_service("fraud_v2")
    cust = lake.read("gold", "customer_txn_features_daily", columns=["customer_id"])["customer_id"].to_pylist()
    merch = lake.read("gold", "merchant_features_daily", columns=["merchant_id"])["merchant_id"].to_pylist()
    rng = np.random.default_rng(0)
    for size in (1, 100):
        lat = []
        for _ in range(n):
            rows = [{"customer_id": int(rng.choice(cust)), "merchant_id": int(rng.choice(merch))} for _ in range(size)]
            t0 = time.perf_counter(); store.get_online_features(features=fs, entity_rows=rows).to_dict(); lat.append(time.perf_counter() - t0)
        print(f"{online_store_kind():6s} in-process {size:3d} entities: {pct(lat)}", flush=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli_features", "serve", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); break
            except OSError:
                time.sleep(0.2)
        for size in (1, 100):
            lat = []
            for i in range(n + 20):
                body = {"feature_service": "fraud_v2", "entities": {"customer_id": [int(x) for x in rng.choice(cust, size)], "merchant_id": [int(x) for x in rng.choice(merch, size)]}}
                req = urllib.request.Request(f"http://127.0.0.1:{port}/get-online-features", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
                t0 = time.perf_counter(); urllib.request.urlopen(req).read(); dt_ = time.perf_counter() - t0
                if i >= 20: lat.append(dt_)
            print(f"{online_store_kind():6s} HTTP       {size:3d} entities: {pct(lat)}", flush=True)
    finally:
        proc.terminate(); proc.wait()

if __name__ == "__main__":
    if len(sys.argv) > 2:  # materialize range first
        t0 = time.time(); rows = sum(materialize_date(d)["rows"] for d in date_range(*parse_range(sys.argv[1], sys.argv[2])))
        print(f"{online_store_kind()} materialized {rows} rows in {time.time()-t0:.1f} s ({rows/(time.time()-t0):.0f} rows/s)")
    main()
