"""The online store against gold: do served values equal the newest offline rows? (`online_mismatch_rate`)

Also used by `asof verify --online` (flows.operations.integrity), which is why it reads gold through
`GoldView` and never the run records.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.dates import day_start_utc
from flows.monitoring.config import MonitorConfig
from flows.monitoring.gold_views import GoldView, hash_order
from flows.monitoring.measurement import Measurement
from flows.storage import lake

OnlineReader = Callable[[str, str, list, list[str]], dict[Any, dict[str, Any]]]


def feast_online_reader(view: str, entity: str, ids: list, features: list[str]) -> dict[Any, dict[str, Any]]:
    """Online values through the project's Feast store: {entity id: {feature: value}}."""
    from flows.features import featurestore

    store = featurestore.get_store()
    resp = store.get_online_features(
        features=[f"{view}:{f}" for f in features],
        entity_rows=[{entity: int(i)} for i in ids],
        full_feature_names=False,
    ).to_dict()
    return {ids[i]: {f: resp.get(f, [None] * len(ids))[i] for f in features} for i in range(len(ids))}


def _norm(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dt.datetime):
        return (v if v.tzinfo else v.replace(tzinfo=dt.UTC)).timestamp()
    if isinstance(v, dt.date):
        return day_start_utc(v).timestamp()
    if hasattr(v, "to_pydatetime"):  # pandas Timestamp
        return _norm(v.to_pydatetime())
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    return str(v)


def values_equal(a: Any, b: Any, rel_tol: float = 1e-6) -> bool:
    a, b = _norm(a), _norm(b)
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)
    return a == b


def online_mismatch(
    views: dict[str, GoldView], cfg: MonitorConfig, day: dt.date, reader: OnlineReader
) -> list[Measurement]:
    """`online_mismatch_rate` per view: a sample of the entities of `day` (or of the newest date
    before it), online values against the newest gold row of each."""
    out: list[Measurement] = []
    for name, v in views.items():
        if not v.exists or not v.features:
            continue
        key = v.view.entity
        # entities touched on D (for a change log: the newest date at or before D with rows)
        candidates = [d for d in v.dates() if d <= day]
        if not candidates:
            continue
        src_day = day if day in v.dates() else max(candidates)
        ids_all = np.unique(v.rows(src_day)[key].to_numpy(zero_copy_only=False))
        order = hash_order(ids_all, salt=day.toordinal())
        ids = [x.item() if isinstance(x, np.generic) else x for x in ids_all[order[: cfg.online_sample_size]]]
        key_type = v.schema.field(key).type if v.schema is not None else None
        wanted = pc.field(key).isin(pa.array(ids, type=key_type))
        src_rows = v.rows(src_day)
        if "feature_timestamp" in src_rows.column_names:
            # Every sampled entity has a row of src_day, so no row older than the oldest of those
            # can be its newest (the stable sort below puts it before that row): reading only the
            # newer rows selects the same ones, and lets the scan skip the older files by their
            # statistics instead of reading the key column of the whole table (it grew with history).
            sampled = src_rows.filter(
                pc.is_in(src_rows[key], pa.array(ids, type=src_rows.schema.field(key).type))
            )
            oldest = pc.min(sampled["feature_timestamp"])
            if oldest.is_valid:
                # (a null time sorts last, so such a row stays a candidate)
                newer = (pc.field("feature_timestamp") >= oldest) | pc.field("feature_timestamp").is_null()
                wanted = wanted & newer
        expected = lake.read("gold", name, filter=wanted).to_pandas()
        sort_col = "feature_timestamp" if "feature_timestamp" in expected else "as_of_date"
        expected = expected.sort_values(sort_col, kind="stable").drop_duplicates(key, keep="last")
        latest = {row[key]: row for row in expected.to_dict("records")}
        info: dict[str, Any] = {"sampled": len(ids), "entities_from": src_day.isoformat()}
        try:
            online = reader(name, key, ids, v.features)
        except Exception as exc:
            info["error"] = f"{type(exc).__name__}: {exc}"[:500]
            info["summary"] = f"online store read failed: {info['error'][:200]}"
            out.append(Measurement(day, "online_mismatch_rate", name, None, info, none_is_breach=True))
            continue
        mismatched = 0
        examples: list[dict] = []
        per_feature: dict[str, int] = defaultdict(int)
        for i in ids:
            got = online.get(i) or {}
            want = latest.get(i, {})
            bad = [f for f in v.features if not values_equal(got.get(f), want.get(f), cfg.online_rel_tol)]
            if bad:
                mismatched += 1
                for f in bad:
                    per_feature[f] += 1
                if len(examples) < 5:
                    examples.append(
                        {"entity": i, **{f: {"online": got.get(f), "offline": want.get(f)} for f in bad[:3]}}
                    )
        info.update({"mismatched": mismatched, "by_feature": dict(per_feature), "examples": examples})
        if mismatched:
            info["summary"] = f"{mismatched}/{len(ids)} sampled entities differ, e.g. {examples[0]}"[:400]
        out.append(
            Measurement(day, "online_mismatch_rate", name, mismatched / len(ids) if ids else None, info)
        )
    return out


def auto_reader() -> OnlineReader | None:
    """Feast's online reads when the feature store can be imported here, else None."""
    try:
        import flows.features.featurestore  # noqa: F401
    except ImportError:
        return None
    return feast_online_reader
