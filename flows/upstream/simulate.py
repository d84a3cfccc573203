"""The upstream systems, simulated (contract §4).

`generate` writes one batch per source per day into `landing/<source>/<YYYY-MM-DD>/<file>`.

Determinism: every random draw is keyed by (seed, purpose, day) through
`numpy.random.default_rng([seed, purpose_id, day_ordinal])`, so a day never depends on which other
days were generated, or in which order. Static attributes (the customer population, the merchants) are
drawn once from the seed; what depends on "when the world started" is anchored on the landing's
*epoch* (the first day ever generated into it), kept with the seed and the scale in
`landing/_simulator.json`. Same seed + scale + epoch + date -> byte-identical files.

How a batch is assembled:

- transactions of day X: a count (weekly seasonality x small noise), then independent streams for
  *who* (fraud split + customer), *delivery* (late 1-3 days, redelivered duplicates), *chargeback*
  (delay, reason) and *detail* (merchant, amount, channel, event time). Batch D holds the rows of days
  D-5..D whose delivery (or redelivery) day is D. Only the cheap streams are redrawn to find which
  transactions of D-60..D-1 charge back on D.
- customers: a CDC feed; 80% of the population is created on the epoch, the rest at a steady rate
  afterwards (a customer transacts only from the day after its create, so the create always arrives
  first); each customer has a static schedule of profile updates (~0.5% of customers per day).
- merchants: the full snapshot of merchants existing on D (a few added over time, risk tiers change).
- chargebacks: txn_id, chargeback_time on D, reason_code.

Faults (`--inject FAULT@DATE[:source]`) alter exactly one (source, day) file, deterministically.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.dates import DateError, parse_date
from flows.sources import Source, get_source

# --------------------------------------------------------------------------------------- sources

# The four upstream systems this simulator plays (what their values mean is modelled below; their
# columns, formats and file names are their contracts'). The order is part of determinism: a fault's
# random stream is keyed by the source's position here. A source added by its contract alone is not
# simulated: its upstream delivers its files.
DEMO_SOURCES: tuple[str, ...] = ("merchants", "customers", "transactions", "chargebacks")


@cache
def _contract(source: str) -> Source:
    return get_source(source)


def _contract_table(source: str, values: dict[str, pa.Array]) -> pa.Table:
    """The simulated values of a batch as the contract's columns, in the contract's order."""
    names = _contract(source).column_names
    if set(values) != set(names):
        raise AssertionError(f"the simulator of {source} produces {sorted(values)}, its contract has {names}")
    return pa.table({c: values[c] for c in names})


# ---------------------------------------------------------------------------------------- scales


@dataclass(frozen=True)
class Scale:
    name: str
    customers: int
    txns_per_day: int


SCALES: dict[str, Scale] = {
    "demo": Scale("demo", 2_000, 5_000),
    "small": Scale("small", 20_000, 50_000),
    "bench": Scale("bench", 100_000, 100_000),
}
_CUSTOM_SCALE = re.compile(r"^(\d+)[xX](\d+)$")
_MIN_CUSTOMERS, _MAX_CUSTOMERS = 10, 10_000_000
_MIN_TXNS, _MAX_TXNS = 10, 5_000_000  # txn ids carry a 7-digit per-day index


def _scale_forms() -> str:
    named = ", ".join(f"{s.name} ({s.customers}x{s.txns_per_day})" for s in SCALES.values())
    return f"{named}, or <customers>x<txns_per_day> such as 500x1000"


def parse_scale(text: str) -> Scale:
    """`demo`, `small`, `bench` or `<customers>x<txns_per_day>`."""
    raw = str(text).strip()
    if raw.lower() in SCALES:
        return SCALES[raw.lower()]
    m = _CUSTOM_SCALE.match(raw)
    if not m:
        raise ValueError(f"invalid scale {text!r}: expected {_scale_forms()}")
    customers, txns = int(m.group(1)), int(m.group(2))
    if not _MIN_CUSTOMERS <= customers <= _MAX_CUSTOMERS:
        raise ValueError(
            f"invalid scale {text!r}: customers must be between {_MIN_CUSTOMERS} and {_MAX_CUSTOMERS}"
        )
    if not _MIN_TXNS <= txns <= _MAX_TXNS:
        raise ValueError(f"invalid scale {text!r}: txns_per_day must be between {_MIN_TXNS} and {_MAX_TXNS}")
    return Scale(f"{customers}x{txns}", customers, txns)


# ---------------------------------------------------------------------------------------- faults

FAULTS: tuple[str, ...] = (
    "nulls",
    "dupes",
    "bad_amounts",
    "unknown_currency",
    "future_times",
    "schema_drop_column",
    "schema_rename_column",
    "schema_add_column",
    "cents",
    "volume_drop",
    "empty_file",
    "malformed_rows",
    "missing_file",
)
_GENERIC_FAULTS = (
    "nulls",
    "dupes",
    "schema_drop_column",
    "schema_rename_column",
    "schema_add_column",
    "empty_file",
    "malformed_rows",
    "missing_file",
)
FAULTS_BY_SOURCE: dict[str, tuple[str, ...]] = {
    name: (FAULTS if name == "transactions" else _GENERIC_FAULTS) for name in DEMO_SOURCES
}
# Faults are applied in this order whatever order they were given in (deterministic combinations).
_FAULT_ORDER = (
    "volume_drop",
    "cents",
    "bad_amounts",
    "unknown_currency",
    "future_times",
    "nulls",
    "dupes",
    "schema_drop_column",
    "schema_rename_column",
    "schema_add_column",
    "empty_file",
    "malformed_rows",
    "missing_file",
)
assert sorted(_FAULT_ORDER) == sorted(FAULTS)

# Per source: which fields `nulls` blanks, what the schema faults drop / rename / add, which field a
# conflicting duplicate changes, and which (never quoted) field receives a stray quote.
_NULL_FIELDS = {
    "transactions": ("customer_id", "amount", "currency", "event_time"),
    "customers": ("customer_id", "updated_at", "country", "kyc_level", "signup_date"),
    "merchants": ("name", "mcc", "country", "risk_tier"),
    "chargebacks": ("chargeback_time", "reason_code"),
}
_DROP_COLUMN = {
    "transactions": "channel",
    "customers": "kyc_level",
    "merchants": "mcc",
    "chargebacks": "reason_code",
}
_RENAME_COLUMN = {
    "transactions": ("amount", "amt"),
    "customers": ("country", "country_code"),
    "merchants": ("risk_tier", "risk"),
    "chargebacks": ("chargeback_time", "cb_time"),
}
_ADD_COLUMN = {
    "transactions": "device_id",
    "customers": "email_domain",
    "merchants": "website",
    "chargebacks": "network",
}
_CONFLICT_FIELD = {
    "transactions": "amount",
    "customers": "kyc_level",
    "merchants": "risk_tier",
    "chargebacks": "reason_code",
}
_STRAY_QUOTE_FIELD = {
    "transactions": "customer_id",
    "merchants": "merchant_id",
    "chargebacks": "chargeback_time",
}


@dataclass(frozen=True)
class Fault:
    name: str
    day: dt.date
    source: str = "transactions"

    def __post_init__(self) -> None:
        if self.name not in FAULTS:
            raise ValueError(f"unknown fault {self.name!r} (valid: {', '.join(FAULTS)})")
        if self.source not in DEMO_SOURCES:
            raise ValueError(
                f"unknown source {self.source!r} for fault {self.name!r} (valid: {', '.join(DEMO_SOURCES)})"
            )
        if self.name not in FAULTS_BY_SOURCE[self.source]:
            raise ValueError(
                f"fault {self.name!r} does not apply to source {self.source!r} "
                f"(valid for {self.source}: {', '.join(FAULTS_BY_SOURCE[self.source])})"
            )
        object.__setattr__(self, "day", parse_date(self.day, f"fault {self.name} date"))

    def __str__(self) -> str:
        return f"{self.name}@{self.day.isoformat()}:{self.source}"


def parse_fault(text: str) -> Fault:
    """`FAULT@YYYY-MM-DD` (transactions) or `FAULT@YYYY-MM-DD:source`."""
    raw = str(text).strip()
    usage = "expected FAULT@YYYY-MM-DD or FAULT@YYYY-MM-DD:SOURCE"
    name, sep, rest = raw.partition("@")
    if not sep or not name or not rest:
        raise ValueError(f"invalid fault {text!r}: {usage} (faults: {', '.join(FAULTS)})")
    day_text, _, source = rest.partition(":")
    if name not in FAULTS:
        raise ValueError(f"invalid fault {text!r}: unknown fault {name!r} (valid: {', '.join(FAULTS)})")
    try:
        day = parse_date(day_text, f"fault {name} date")
    except DateError as exc:
        raise DateError(f"invalid fault {text!r}: {exc}; {usage}") from None
    return Fault(name, day, source or "transactions")


# ------------------------------------------------------------------------------- model constants

STATE_FILE = "_simulator.json"
_STATE_FORMAT = 1

# Every purpose gets a fixed id: never `hash()` (salted per process).
_PURPOSES = {
    "customers": 1,
    "merchants": 2,
    "txn_count": 3,
    "txn_who": 4,
    "txn_delivery": 5,
    "txn_cb": 6,
    "txn_detail": 7,
    "cust_day": 8,
    "cb_day": 9,
}
_FAULT_PURPOSE_BASE = 1000

CURRENCIES = ("USD", "EUR", "GBP")
_CURRENCY_P = (0.80, 0.12, 0.08)
CHANNELS = ("web", "app", "pos")
_CHANNEL_CUM_NORMAL = (0.35, 0.80)
_CHANNEL_CUM_FRAUD = (0.65, 0.95)
COUNTRIES = ("US", "CA", "MX", "GB", "IE", "DE", "FR", "ES", "IT", "NL", "PT", "BE")
# customer country given the preferred currency
_COUNTRY_BY_CURRENCY = {
    0: {"US": 0.85, "CA": 0.10, "MX": 0.05},
    1: {"DE": 0.30, "FR": 0.25, "ES": 0.15, "IT": 0.12, "NL": 0.10, "IE": 0.04, "PT": 0.02, "BE": 0.02},
    2: {"GB": 0.95, "IE": 0.05},
}
_MERCHANT_COUNTRY = {
    "US": 0.6,
    "GB": 0.1,
    "DE": 0.08,
    "FR": 0.07,
    "ES": 0.05,
    "IT": 0.04,
    "NL": 0.03,
    "CA": 0.03,
}
TIERS = ("low", "medium", "high")
# (mcc, weight, high risk)
_MCCS = (
    ("5411", 0.18, False),  # grocery
    ("5812", 0.16, False),  # restaurants
    ("5999", 0.10, False),  # misc retail
    ("4111", 0.06, False),  # transit
    ("5732", 0.07, False),  # electronics
    ("5311", 0.08, False),  # department stores
    ("5541", 0.08, False),  # fuel
    ("7011", 0.05, False),  # hotels
    ("4814", 0.05, False),  # telecom
    ("5691", 0.07, False),  # clothing
    ("5967", 0.04, True),  # direct marketing
    ("6051", 0.03, True),  # quasi-cash / crypto
    ("7995", 0.03, True),  # gambling
)
_NAME_A = (
    "Blue", "Red", "Green", "Golden", "Silver", "Northern", "Southern", "Urban", "Royal", "Little", "Grand",
    "Bright", "Quick", "Happy", "Old", "New", "Sunny", "Iron", "Cedar", "Harbor", "Maple", "Summit",
)  # fmt: skip
_NAME_B = (
    "Oak", "River", "Lake", "Fox", "Bear", "Star", "Bay", "Hill", "Stone", "Bridge", "Field", "Peak",
    "Garden", "Market", "Coast", "Valley", "Lantern", "Anchor", "Meadow", "Forge",
)  # fmt: skip
_NAME_C = (
    "Coffee", "Grocers", "Diner", "Books", "Electronics", "Outfitters", "Pharmacy", "Hardware", "Bakery",
    "Travel", "Hotel", "Fuel", "Mobile", "Apparel", "Gifts", "Games", "Market", "Kitchen", "Supply", "Studio",
)  # fmt: skip
_NAME_SUFFIX = (", Inc.", ", LLC", ", Ltd.", " & Co.")
REASONS_FRAUD = ("10.4", "10.5", "4837", "4863")
REASONS_OTHER = ("13.1", "13.3", "12.6", "4853", "4855")
REASONS = REASONS_FRAUD + REASONS_OTHER

# weekly seasonality, Monday first
SEASONALITY = (0.95, 1.0, 1.0, 1.05, 1.15, 1.10, 0.80)
_HOURLY = np.array(
    [0.30, 0.20, 0.15, 0.12, 0.12, 0.20, 0.40, 0.70, 1.00, 1.20, 1.30, 1.40,
     1.50, 1.45, 1.35, 1.30, 1.35, 1.45, 1.60, 1.70, 1.50, 1.10, 0.80, 0.50]
)  # fmt: skip
_HOUR_CUM = np.cumsum(_HOURLY) / _HOURLY.sum()

_LATE_P = (0.012, 0.006, 0.002)  # delivered 1, 2, 3 days late: 2% in all
_LATE_CUM = np.cumsum(_LATE_P)
_DUP_P = 0.002  # redelivered again 1..5 days after the event day
_MAX_DUP_LAG = 5
_FRAUD_P = 0.01
_NORMAL_CB_P = 0.001
_MAX_CB_LAG = 60
_INITIAL_SHARE = 0.8  # customers created on the epoch
_INITIAL_MERCHANT_SHARE = 0.9
_NEW_CUSTOMERS_PER_DAY = 0.002  # share of N
_NEW_MERCHANTS_PER_DAY = 0.001  # share of M
_UPDATE_GAP_DAYS = 200.0  # ~0.5% of customers updated per day
_UPDATE_SLOTS = 12
_TIER_SLOTS = 4
_FAV_MERCHANTS = 3
_FAV_P = 0.7


def _rng(seed: int, purpose: str, day_ord: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, _PURPOSES[purpose], day_ord])


def _fault_rng(seed: int, fault: str, source: str, day_ord: int) -> np.random.Generator:
    pid = _FAULT_PURPOSE_BASE + FAULTS.index(fault) * 10 + DEMO_SOURCES.index(source)
    return np.random.default_rng([seed, pid, day_ord])


def _pick(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index drawn by a cumulative (not necessarily normalised) weight array and uniforms in [0, 1)."""
    idx = np.searchsorted(cum, u * cum[-1], side="right")
    return np.minimum(idx, len(cum) - 1)


def _cum_probs(p: Sequence[float]) -> np.ndarray:
    c = np.cumsum(np.asarray(p, dtype=float))
    return c / c[-1]


@cache
def _clock_strings() -> pa.Array:
    """'HH:MM:SS' for every second of a day."""
    sec = np.arange(86_400)
    parts = [pc.utf8_lpad(_int_str(v), width=2, padding="0") for v in (sec // 3600, sec // 60 % 60, sec % 60)]
    return pc.binary_join_element_wise(*parts, ":")


def _ymd(day_ord: int) -> str:
    return dt.date.fromordinal(day_ord).strftime("%Y%m%d")


def _iso(day_ord: int) -> str:
    return dt.date.fromordinal(day_ord).isoformat()


def _i64(values: np.ndarray) -> pa.Array:
    """numpy -> arrow int64 without going through `pa.array` (which imports pandas to sniff types)."""
    buf = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(buf), [None, pa.py_buffer(buf)])


def _int_str(values: np.ndarray) -> pa.Array:
    return pc.cast(_i64(values), pa.string())


def _fmt_cents(cents: np.ndarray) -> pa.Array:
    """Integer cents -> 'D.CC' strings (exactly 2 decimals)."""
    cents = np.asarray(cents, dtype=np.int64)
    mag = np.abs(cents)
    whole = _int_str(mag // 100)
    frac = pc.utf8_lpad(_int_str(mag % 100), width=2, padding="0")
    out = pc.binary_join_element_wise(whole, frac, ".")
    neg = cents < 0
    if neg.any():
        out = pc.if_else(pc.less(_i64(cents), 0), pc.binary_join_element_wise("-", out, ""), out)
    return out


def _fmt_times(day_ord: int, secs: np.ndarray) -> pa.Array:
    """Seconds of day `day_ord` -> 'YYYY-MM-DDTHH:MM:SSZ'."""
    clock = pc.take(_clock_strings(), _i64(secs))
    return pc.binary_join_element_wise(f"{_iso(day_ord)}T", clock, "Z", "")


def _fmt_dates(ordinals: np.ndarray) -> pa.Array:
    days = (np.asarray(ordinals, dtype=np.int64) - dt.date(1970, 1, 1).toordinal()).astype("datetime64[D]")
    return pa.array(np.datetime_as_string(days, unit="D").tolist(), pa.string())


def _labels(labels: Sequence[str], idx: np.ndarray) -> pa.Array:
    return pc.take(pa.array(list(labels), pa.string()), _i64(idx))


# ------------------------------------------------------------------------------------ the world


@dataclass
class _DayDraws:
    """The raw draws of one event day's transactions, in txn index (= event time) order.

    Everything is drawn for the whole day (so streams stay aligned), but the costly derivations
    (weighted customer / merchant choice, amounts) are done only for the rows a batch needs.
    """

    day_ord: int
    n: int
    n_fraud: int  # existing fraud / non-fraud customers (prefixes of the index lists)
    n_normal: int
    n_merchants: int  # merchants existing that day (a prefix)
    fraud_row: np.ndarray
    u_customer: np.ndarray
    secs: np.ndarray  # second of the day, non-decreasing
    fav: np.ndarray
    fav_k: np.ndarray
    u_merchant: np.ndarray
    z_amount: np.ndarray
    u_channel: np.ndarray
    deliver_lag: np.ndarray  # batch day - event day (0..3)
    dup_lag: np.ndarray  # redelivery batch day - event day (1..5), -1 if none


class _World:
    """Static population for (seed, scale, epoch) plus per-day draws (cached within one `generate`)."""

    def __init__(self, seed: int, scale: Scale, epoch: dt.date) -> None:
        self.seed = seed
        self.scale = scale
        self.e = epoch.toordinal()
        self._days: dict[int, _DayDraws] = {}
        self._cbs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._init_merchants()
        self._init_customers()

    # -- static population ------------------------------------------------------------------

    def _init_merchants(self) -> None:
        r = _rng(self.seed, "merchants")
        m = max(50, self.scale.customers // 20)
        m0 = max(1, round(_INITIAL_MERCHANT_SHARE * m))
        k = np.arange(m) - m0
        rate = _NEW_MERCHANTS_PER_DAY * m
        self.m_count = m
        self.m_initial = m0
        self.m_created = np.where(k < 0, 0, 1 + np.floor(np.maximum(k, 0) / rate)).astype(np.int64)
        self.m_pop = r.lognormal(0.0, 1.3, m)
        self.m_cum_pop = np.cumsum(self.m_pop)
        mcc_idx = _pick(np.cumsum([w for _, w, _ in _MCCS]), r.random(m))
        self.m_mcc = np.array([c for c, _, _ in _MCCS], dtype=object)[mcc_idx]
        self.m_high_risk = np.array([h for _, _, h in _MCCS])[mcc_idx]
        ccodes = list(_MERCHANT_COUNTRY)
        self.m_country = np.array(ccodes, dtype=object)[
            _pick(_cum_probs(list(_MERCHANT_COUNTRY.values())), r.random(m))
        ]
        a = r.integers(0, len(_NAME_A), m)
        b = r.integers(0, len(_NAME_B), m)
        c = r.integers(0, len(_NAME_C), m)
        suffix = np.where(r.random(m) < 0.15, r.integers(0, len(_NAME_SUFFIX), m), -1)
        self.m_name = [
            f"{_NAME_A[a[i]]} {_NAME_B[b[i]]} {_NAME_C[c[i]]}"
            + (_NAME_SUFFIX[suffix[i]] if suffix[i] >= 0 else "")
            for i in range(m)
        ]
        base = _pick(_cum_probs((0.70, 0.25, 0.05)), r.random(m))
        base = np.where(self.m_high_risk, _pick(_cum_probs((0.05, 0.35, 0.60)), r.random(m)), base)
        gaps = 30 + np.floor(r.exponential(365.0, (m, _TIER_SLOTS))).astype(np.int64)
        self.m_tier_change = self.m_created[:, None] + np.cumsum(gaps, axis=1)
        tiers = np.empty((m, _TIER_SLOTS + 1), dtype=np.int64)
        tiers[:, 0] = base
        for j in range(_TIER_SLOTS):
            tiers[:, j + 1] = (tiers[:, j] + 1 + r.integers(0, 2, m)) % 3
        self.m_tiers = tiers

    def _init_customers(self) -> None:
        r = _rng(self.seed, "customers")
        n = self.scale.customers
        n0 = max(1, round(_INITIAL_SHARE * n))
        k = np.arange(n) - n0
        rate = _NEW_CUSTOMERS_PER_DAY * n
        created = np.where(k < 0, 0, 1 + np.floor(np.maximum(k, 0) / rate)).astype(np.int64)
        self.c_count = n
        self.c_created = created  # day offset from the epoch of the `c` record
        # customers created after the epoch transact from the day after their create
        self.c_active_from = np.where(k < 0, 0, created + 1)
        fraud = r.random(n) < _FRAUD_P
        self.c_fraud = fraud
        activity = r.lognormal(0.0, 1.2, n) * np.where(fraud, 2.0, 1.0)
        self.c_mu = r.normal(np.log(35.0), 0.8, n) + np.where(fraud, 0.6, 0.0)
        self.c_sigma = r.uniform(0.45, 1.0, n)
        cur = _pick(_cum_probs(_CURRENCY_P), r.random(n))
        self.c_currency = cur
        country = np.zeros(n, dtype=np.int64)
        u = r.random(n)
        for ci, dist in _COUNTRY_BY_CURRENCY.items():
            codes = np.array([COUNTRIES.index(c) for c in dist])
            sel = cur == ci
            country[sel] = codes[_pick(_cum_probs(list(dist.values())), u[sel])]
        kyc = np.where(
            fraud,
            _pick(_cum_probs((0.35, 0.45, 0.15, 0.05)), r.random(n)),
            _pick(_cum_probs((0.10, 0.40, 0.35, 0.15)), r.random(n)),
        )
        before = 1 + np.minimum(np.floor(r.exponential(500.0, n)), 3650).astype(np.int64)
        self.c_signup = np.where(k < 0, self.e - before, self.e + created)
        # favourite merchants among those existing at the epoch; fraudsters favour high-risk ones
        m0 = self.m_initial
        cum_normal = np.cumsum(self.m_pop[:m0])
        cum_fraud = np.cumsum(self.m_pop[:m0] * np.where(self.m_high_risk[:m0], 8.0, 1.0))
        fav_u = r.random((n, _FAV_MERCHANTS))
        self.c_fav = _pick(cum_normal, fav_u)
        self.c_fav[fraud] = _pick(cum_fraud, fav_u[fraud])
        # profile updates: a static schedule, state after each update
        gaps = 1 + np.floor(r.exponential(_UPDATE_GAP_DAYS, (n, _UPDATE_SLOTS))).astype(np.int64)
        self.c_update_at = created[:, None] + np.cumsum(gaps, axis=1)
        kyc_s = np.empty((n, _UPDATE_SLOTS + 1), dtype=np.int64)
        cty_s = np.empty((n, _UPDATE_SLOTS + 1), dtype=np.int64)
        kyc_s[:, 0], cty_s[:, 0] = kyc, country
        for j in range(_UPDATE_SLOTS):
            up = (r.random(n) < 0.6) & (kyc_s[:, j] < 3)
            new_country = r.integers(0, len(COUNTRIES), n)
            kyc_s[:, j + 1] = kyc_s[:, j] + up
            cty_s[:, j + 1] = np.where(up, cty_s[:, j], new_country)
        self.c_kyc_state, self.c_country_state = kyc_s, cty_s
        # weighted choice among existing customers: existing ones form a prefix of the index
        self.f_idx = np.flatnonzero(fraud)
        self.nf_idx = np.flatnonzero(~fraud)
        self.f_cum = np.cumsum(activity[self.f_idx])
        self.nf_cum = np.cumsum(activity[self.nf_idx])

    # -- per-day draws ------------------------------------------------------------------------

    def n_txns(self, x: int) -> int:
        r = _rng(self.seed, "txn_count", x)
        noise = float(np.clip(r.normal(1.0, 0.04), 0.9, 1.1))
        wd = dt.date.fromordinal(x).weekday()
        return max(1, round(self.scale.txns_per_day * SEASONALITY[wd] * noise))

    def _population(self, x: int) -> tuple[int, int, float]:
        """Existing (fraud, non-fraud) customer counts that transact on day x and the fraud share."""
        n_exist = int(np.searchsorted(self.c_active_from, x - self.e, side="right"))
        nf = int(np.searchsorted(self.f_idx, n_exist))
        nn = int(np.searchsorted(self.nf_idx, n_exist))
        wf = float(self.f_cum[nf - 1]) if nf else 0.0
        wn = float(self.nf_cum[nn - 1]) if nn else 0.0
        return nf, nn, wf / (wf + wn)

    def _who_uniform(self, x: int, n: int) -> tuple[np.random.Generator, np.ndarray]:
        r = _rng(self.seed, "txn_who", x)
        return r, r.random(n)

    def _late_uniform(self, x: int, n: int) -> tuple[np.random.Generator, np.ndarray]:
        r = _rng(self.seed, "txn_delivery", x)
        return r, r.random(n)

    @staticmethod
    def _lag(u: np.ndarray) -> np.ndarray:
        """0 on time, else 1..3 days late."""
        return (np.searchsorted(_LATE_CUM, u, side="right") + 1) % (len(_LATE_P) + 1)

    def _delivery(self, x: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        r, u = self._late_uniform(x, n)
        v = r.random(n)
        lag = self._lag(u)
        dup = v < _DUP_P
        w = v / _DUP_P
        dup_lag = np.where(dup, lag + 1 + np.floor(w * (_MAX_DUP_LAG - lag)).astype(np.int64), -1)
        return lag, dup_lag

    def chargebacks_of(self, x: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the transactions of day x that charge back: (txn index, chargeback day ordinal, reason)."""
        got = self._cbs.get(x)
        if got is not None:
            return got
        n = self.n_txns(x)
        p_fraud = self._population(x)[2]
        _, u = self._who_uniform(x, n)
        fraud_row = u < p_fraud
        cb = fraud_row | (u >= 1.0 - _NORMAL_CB_P * (1.0 - p_fraud))
        idx = np.flatnonzero(cb)
        lag = self._lag(self._late_uniform(x, n)[1][idx])
        r = _rng(self.seed, "txn_cb", x)
        k = idx.size
        delay = np.clip(1 + np.floor(r.gamma(2.0, 8.0, k)).astype(np.int64), 1, _MAX_CB_LAG)
        ru = r.random(k)
        reason = np.where(
            fraud_row[idx],
            np.minimum((ru * len(REASONS_FRAUD)).astype(np.int64), len(REASONS_FRAUD) - 1),
            len(REASONS_FRAUD)
            + np.minimum((ru * len(REASONS_OTHER)).astype(np.int64), len(REASONS_OTHER) - 1),
        )
        # always after the transaction's own delivery
        cb_day = x + np.maximum(delay, lag + 1)
        out = (idx, cb_day, reason)
        self._cbs[x] = out
        return out

    def day(self, x: int) -> _DayDraws:
        got = self._days.get(x)
        if got is not None:
            return got
        n = self.n_txns(x)
        nf, nn, p_fraud = self._population(x)
        r_who, u = self._who_uniform(x, n)
        u_customer = r_who.random(n)
        lag, dup_lag = self._delivery(x, n)
        r = _rng(self.seed, "txn_detail", x)
        hours = np.minimum(np.searchsorted(_HOUR_CUM, r.random(n), side="right"), 23)
        secs = np.sort(hours * 3600 + r.integers(0, 3600, n))
        out = _DayDraws(
            day_ord=x,
            n=n,
            n_fraud=nf,
            n_normal=nn,
            n_merchants=int(np.searchsorted(self.m_created, x - self.e, side="right")),
            fraud_row=u < p_fraud,
            u_customer=u_customer,
            secs=secs,
            fav=r.random(n) < _FAV_P,
            fav_k=r.integers(0, _FAV_MERCHANTS, n),
            u_merchant=r.random(n),
            z_amount=r.standard_normal(n),
            u_channel=r.random(n),
            deliver_lag=lag,
            dup_lag=dup_lag,
        )
        self._days[x] = out
        return out

    def rows(self, t: _DayDraws, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Customer, merchant, amount, currency and channel of the transactions `idx` of a day."""
        fraud = t.fraud_row[idx]
        u = t.u_customer[idx]
        cust = np.empty(idx.size, dtype=np.int64)
        sel = np.flatnonzero(fraud)
        if sel.size:
            cust[sel] = self.f_idx[_pick(self.f_cum[: t.n_fraud], u[sel])]
        sel = np.flatnonzero(~fraud)
        if sel.size:
            cust[sel] = self.nf_idx[_pick(self.nf_cum[: t.n_normal], u[sel])]
        merch = self.c_fav[cust, t.fav_k[idx]]
        sel = np.flatnonzero(~t.fav[idx])
        if sel.size:
            merch[sel] = _pick(self.m_cum_pop[: t.n_merchants], t.u_merchant[idx[sel]])
        amount = np.exp(self.c_mu[cust] + self.c_sigma[cust] * t.z_amount[idx])
        cents = np.clip(np.rint(amount * 100), 50, 2_000_000).astype(np.int64)
        uc = t.u_channel[idx]
        chan = np.where(
            fraud,
            np.searchsorted(_CHANNEL_CUM_FRAUD, uc, side="right"),
            np.searchsorted(_CHANNEL_CUM_NORMAL, uc, side="right"),
        )
        return {
            "customer": cust,
            "merchant": merch,
            "cents": cents,
            "currency": self.c_currency[cust],
            "channel": chan,
        }

    def forget_before(self, d: int) -> None:
        """Drop cached draws no later batch (>= d) needs."""
        for x in [x for x in self._days if x < d - _MAX_DUP_LAG]:
            del self._days[x]
        for x in [x for x in self._cbs if x < d - _MAX_CB_LAG]:
            del self._cbs[x]

    # -- batches ------------------------------------------------------------------------------

    def transactions(self, d: int) -> pa.Table:
        ids, cust, merch, cents, cur, chan, times = [], [], [], [], [], [], []
        for x in range(max(self.e, d - _MAX_DUP_LAG), d + 1):
            t = self.day(x)
            lag = d - x
            idx = np.flatnonzero((t.deliver_lag == lag) | (t.dup_lag == lag))
            if not idx.size:
                continue
            ids.append(
                pc.binary_join_element_wise(
                    f"t{_ymd(x)}", pc.utf8_lpad(_int_str(idx), width=7, padding="0"), ""
                )
            )
            times.append(_fmt_times(x, t.secs[idx]))
            got = self.rows(t, idx)
            cust.append(got["customer"])
            merch.append(got["merchant"])
            cents.append(got["cents"])
            cur.append(got["currency"])
            chan.append(got["channel"])
        if not ids:
            return _contract_table(
                "transactions", {c: pa.array([], pa.string()) for c in _contract("transactions").column_names}
            )
        return _contract_table(
            "transactions",
            {
                "txn_id": pa.concat_arrays(ids),
                "customer_id": _int_str(np.concatenate(cust) + 1),
                "merchant_id": _int_str(np.concatenate(merch) + 1),
                "amount": _fmt_cents(np.concatenate(cents)),
                "currency": _labels(CURRENCIES, np.concatenate(cur)),
                "channel": _labels(CHANNELS, np.concatenate(chan)),
                "event_time": pa.concat_arrays(times),
            },
        )

    def customers(self, d: int) -> pa.Table:
        off = d - self.e
        r = _rng(self.seed, "cust_day", d)
        created = np.flatnonzero(self.c_created == off)
        c_secs = np.zeros(created.size, dtype=np.int64) if off == 0 else r.integers(0, 86_400, created.size)
        ui, uj = np.nonzero(self.c_update_at == off)
        u_secs = r.integers(0, 86_400, ui.size)
        cid = np.concatenate([created, ui])
        state = np.concatenate([np.zeros(created.size, dtype=np.int64), uj + 1])
        secs = np.concatenate([c_secs, u_secs])
        op = np.concatenate([np.zeros(created.size, dtype=np.int64), np.ones(ui.size, dtype=np.int64)])
        order = np.lexsort((cid, secs))
        cid, state, secs, op = cid[order], state[order], secs[order], op[order]
        return _contract_table(
            "customers",
            {
                "customer_id": _int_str(cid + 1),
                "op": _labels(("c", "u"), op),
                "updated_at": _fmt_times(d, secs),
                "country": _labels(COUNTRIES, self.c_country_state[cid, state]),
                "kyc_level": _int_str(self.c_kyc_state[cid, state]),
                "signup_date": _fmt_dates(self.c_signup[cid]),
            },
        )

    def merchants(self, d: int) -> pa.Table:
        off = d - self.e
        cnt = int(np.searchsorted(self.m_created, off, side="right"))
        slot = (self.m_tier_change[:cnt] <= off).sum(axis=1)
        tier = self.m_tiers[np.arange(cnt), slot]
        return _contract_table(
            "merchants",
            {
                "merchant_id": _int_str(np.arange(1, cnt + 1)),
                "name": pa.array(self.m_name[:cnt], pa.string()),
                "mcc": pa.array(self.m_mcc[:cnt].tolist(), pa.string()),
                "country": pa.array(self.m_country[:cnt].tolist(), pa.string()),
                "risk_tier": _labels(TIERS, tier),
            },
        )

    def chargebacks(self, d: int) -> pa.Table:
        ids: list[str] = []
        reasons: list[np.ndarray] = []
        for x in range(max(self.e, d - _MAX_CB_LAG), d):
            idx, cb_day, reason = self.chargebacks_of(x)
            sel = cb_day == d
            if sel.any():
                ymd = _ymd(x)
                ids.extend(f"t{ymd}{i:07d}" for i in idx[sel].tolist())
                reasons.append(reason[sel])
        k = len(ids)
        secs = _rng(self.seed, "cb_day", d).integers(0, 86_400, k)
        order = np.argsort(secs, kind="stable")
        reason = np.concatenate(reasons) if reasons else np.zeros(0, dtype=np.int64)
        return _contract_table(
            "chargebacks",
            {
                "txn_id": pa.array([ids[i] for i in order.tolist()], pa.string()),
                "chargeback_time": _fmt_times(d, secs[order]),
                "reason_code": _labels(REASONS, reason[order]),
            },
        )

    def batch(self, source: str, d: int) -> pa.Table:
        return getattr(self, source)(d)


# --------------------------------------------------------------------------------- fault logic


def _set_values(table: pa.Table, name: str, rows: np.ndarray, values: Sequence[str | None]) -> pa.Table:
    col = table.column(name).to_pylist()
    for r, v in zip(rows.tolist(), values, strict=True):
        col[r] = v
    return table.set_column(table.column_names.index(name), name, pa.array(col, pa.string()))


def _some_rows(r: np.random.Generator, n: int, share: float) -> np.ndarray:
    """A sorted random subset of about `share` of n rows (at least one when n > 0)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    k = min(n, max(1, int(share * n)))
    return np.sort(r.choice(n, size=k, replace=False))


def _amount_to_cents(text: str) -> int | None:
    if text is None or not re.fullmatch(r"-?\d+\.\d{2}", text):
        return None
    return int(text.replace(".", ""))


def _cents_str(c: int) -> str:
    sign = "-" if c < 0 else ""
    return f"{sign}{abs(c) // 100}.{abs(c) % 100:02d}"


def _conflicting(source: str, value: str | None, r: np.random.Generator) -> str:
    """A different value for the conflict field of a duplicate."""
    if source == "transactions":
        c = _amount_to_cents(value)
        if c is None or c <= 0:
            return "1.00"
        return _cents_str(max(c + 1, round(c * r.uniform(1.1, 1.9))))
    if source == "customers":
        return str((int(value) + 1) % 4) if value and value.isdigit() else "0"
    if source == "merchants":
        return TIERS[(TIERS.index(value) + 1) % 3] if value in TIERS else "low"
    return REASONS[(REASONS.index(value) + 1) % len(REASONS)] if value in REASONS else REASONS[0]


def _apply_table_fault(
    table: pa.Table, fault: str, source: str, r: np.random.Generator, d: int
) -> tuple[pa.Table, int]:
    """Apply a row/column fault; returns the new table and the number of rows affected."""
    n = table.num_rows
    names = table.column_names
    if fault == "volume_drop":
        keep = _some_rows(r, n, 0.05)
        return table.take(_i64(keep)), n - keep.size
    if fault == "cents":
        amounts = table.column("amount").to_pylist()
        cents = np.array([_amount_to_cents(a) for a in amounts], dtype=np.int64) * 100
        return table.set_column(names.index("amount"), "amount", _fmt_cents(cents)), n
    if fault == "bad_amounts":
        rows = _some_rows(r, n, 0.02)
        kinds = (r.integers(0, 5) + np.arange(rows.size)) % 5  # every kind once there are 5 rows
        big = r.integers(100_000_001, 999_999_999, rows.size)
        old = table.column("amount").to_pylist()
        values = []
        for row, kind, b in zip(rows.tolist(), kinds.tolist(), big.tolist(), strict=True):
            cur = _amount_to_cents(old[row]) or 1250
            values.append(
                ["0.00", _cents_str(-abs(cur)), _cents_str(b), _cents_str(abs(cur)).replace(".", ","), "abc"][
                    kind
                ]
            )
        return _set_values(table, "amount", rows, values), rows.size
    if fault == "unknown_currency":
        rows = _some_rows(r, n, 0.02)
        pool = ("JPY", "XXX", "CHF", "AUD")
        return _set_values(
            table, "currency", rows, [pool[i] for i in r.integers(0, len(pool), rows.size)]
        ), rows.size
    if fault == "future_times":
        rows = _some_rows(r, n, 0.02)
        ahead = r.integers(2, 31, rows.size)
        secs = r.integers(0, 86_400, rows.size)
        values = [_fmt_times(d + int(a), np.array([s]))[0].as_py() for a, s in zip(ahead, secs, strict=True)]
        return _set_values(table, "event_time", rows, values), rows.size
    if fault == "nulls":
        rows = _some_rows(r, n, 0.03)
        fields = [f for f in _NULL_FIELDS[source] if f in names]
        which = r.integers(0, len(fields), rows.size)
        for f_i, field in enumerate(fields):
            sel = rows[which == f_i]
            if sel.size:
                table = _set_values(table, field, sel, [None] * sel.size)
        return table, rows.size
    if fault == "dupes":
        if n == 0:
            return table, 0
        same = _some_rows(r, n, 0.01)
        conflict = _some_rows(r, n, 0.005)
        field = _CONFLICT_FIELD[source]
        copies = table.take(_i64(np.concatenate([same, conflict])))
        if field in names:
            old = copies.column(field).to_pylist()
            for i in range(same.size, len(old)):
                old[i] = _conflicting(source, old[i], r)
            copies = copies.set_column(names.index(field), field, pa.array(old, pa.string()))
        # each copy lands somewhere after its original
        key = np.concatenate(
            [
                np.arange(n, dtype=float),
                np.concatenate([same, conflict]) + r.uniform(0.5, 1 + 0.1 * n, copies.num_rows),
            ]
        )
        both = pa.concat_tables([table, copies])
        return both.take(_i64(np.argsort(key, kind="stable"))), copies.num_rows
    if fault == "schema_drop_column":
        col = _DROP_COLUMN[source]
        return (table.drop_columns([col]) if col in names else table), n
    if fault == "schema_rename_column":
        old, new = _RENAME_COLUMN[source]
        return table.rename_columns([new if c == old else c for c in names]), n
    if fault == "schema_add_column":
        col = _ADD_COLUMN[source]
        if source == "transactions":
            values = [f"d{v:010x}" for v in r.integers(0, 2**40, n).tolist()]
        elif source == "customers":
            pool = ("gmail.com", "yahoo.com", "outlook.com", "proton.me", "icloud.com")
            values = [pool[i] for i in r.integers(0, len(pool), n).tolist()]
        elif source == "merchants":
            values = [f"https://m{v}.example.com" for v in table.column("merchant_id").to_pylist()]
        else:
            values = [("visa", "mastercard")[i] for i in r.integers(0, 2, n).tolist()]
        return table.append_column(col, pa.array(values, pa.string())), n
    if fault == "empty_file":
        return table.slice(0, 0), n
    raise AssertionError(fault)  # pragma: no cover


def _break_lines(lines: list[str], header: list[str], source: str, r: np.random.Generator) -> int:
    """`malformed_rows`: break ~1% of the data lines in place, each staying on its own line."""
    rows = _some_rows(r, len(lines), 0.01)
    kinds = (r.integers(0, 3) + np.arange(rows.size)) % 3  # every kind once there are 3 broken rows
    jsonl = _contract(source).fmt == "jsonl"
    quote_field = _STRAY_QUOTE_FIELD.get(source)
    quote_at = header.index(quote_field) if quote_field in header else None
    for row, kind in zip(rows.tolist(), kinds.tolist(), strict=True):
        line = lines[row]
        if jsonl:
            lines[row] = [line[: max(1, len(line) // 2)], line[:-1], line.replace('"', "'")][kind]
            continue
        if kind == 2 and quote_at is not None:
            # a stray quote inside an unquoted field (never at its start): csv keeps it as a character
            parts = line.split(",", quote_at + 1)
            field = parts[quote_at] if len(parts) > quote_at else ""
            if field and not field.startswith('"'):
                cut = max(1, len(field) // 2)
                parts[quote_at] = field[:cut] + '"' + field[cut:]
                lines[row] = ",".join(parts)
                continue
            kind = 0
        if kind == 1 and line.count(",") >= 2:
            lines[row] = line.rsplit(",", 2)[0]  # two fields missing
        else:
            lines[row] = line + ",x"  # one field too many
    return rows.size


# ------------------------------------------------------------------------------------ rendering


def _csv_field(col: pa.Array) -> pa.Array:
    need = pc.match_substring_regex(col, r'[",\r\n]')
    if pc.any(need).as_py():
        quoted = pc.binary_join_element_wise('"', pc.replace_substring(col, '"', '""'), '"', "")
        col = pc.if_else(need, quoted, col)
    return col


def _csv_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"' if re.search(r'[",\r\n]', name) else name


_JSON_INT_FIELDS = frozenset({"customer_id", "kyc_level"})


def _json_field(name: str, col: pa.Array) -> pa.Array:
    if name in _JSON_INT_FIELDS:
        val = col
    elif pc.any(pc.match_substring_regex(col, r'["\\\x00-\x1f]')).as_py():
        val = pa.array([None if v is None else json.dumps(v) for v in col.to_pylist()], pa.string())
    else:
        val = pc.binary_join_element_wise('"', col, '"', "")
    val = pc.if_else(pc.is_null(col), pa.scalar("null"), val)
    return pc.binary_join_element_wise(json.dumps(name) + ": ", val, "")


def _lines(table: pa.Table, fmt: str) -> pa.Array:
    cols = [table.column(i).combine_chunks() for i in range(table.num_columns)]
    if fmt == "csv":
        return pc.binary_join_element_wise(
            *[_csv_field(c) for c in cols], ",", null_handling="replace", null_replacement=""
        )
    pieces = [_json_field(name, c) for name, c in zip(table.column_names, cols, strict=True)]
    return pc.binary_join_element_wise("{", pc.binary_join_element_wise(*pieces, ", "), "}", "")


def _join_lines(lines: pa.Array) -> bytes:
    """Each line followed by a newline, as one bytes object (no per-row Python work)."""
    if len(lines) == 0:
        return b""
    arr = pc.binary_join_element_wise(lines, "\n", "")
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    off_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=off_type)[arr.offset : arr.offset + len(arr) + 1]
    return arr.buffers()[2].to_pybytes()[int(offsets[0]) : int(offsets[-1])]


def _render(source: str, table: pa.Table, break_rng: np.random.Generator | None) -> tuple[bytes, int]:
    """File content and the number of lines broken by `malformed_rows` (when `break_rng` is given)."""
    fmt = _contract(source).fmt
    header = ",".join(_csv_name(c) for c in table.column_names) + "\n" if fmt == "csv" else ""
    lines = _lines(table, fmt) if table.num_rows else pa.array([], pa.string())
    n_broken = 0
    if break_rng is not None and table.num_rows:
        py_lines = lines.to_pylist()
        n_broken = _break_lines(py_lines, table.column_names, source, break_rng)
        body = "".join(line + "\n" for line in py_lines).encode()
    else:
        body = _join_lines(lines)
    return header.encode() + body, n_broken


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ------------------------------------------------------------------------------------ landing state


def _describe(scale: Scale) -> str:
    dims = f"{scale.customers}x{scale.txns_per_day}"
    return dims if scale.name == dims else f"{scale.name} ({dims})"


def _check_state(landing: Path, seed: int, scale: Scale, start: dt.date) -> dt.date:
    """Return the landing's epoch, creating the state file on first use."""
    path = landing / STATE_FILE
    if path.exists():
        try:
            state = json.loads(path.read_text())
            st_seed = int(state["seed"])
            st_scale = Scale(**state["scale"])
            epoch = parse_date(state["epoch"], "epoch")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path} is not a valid simulator state file ({exc}); use a fresh ASOF_HOME"
            ) from None
        if st_seed != seed or (st_scale.customers, st_scale.txns_per_day) != (
            scale.customers,
            scale.txns_per_day,
        ):
            raise ValueError(
                f"landing {landing} was generated with seed {st_seed} and scale {_describe(st_scale)}, "
                f"not seed {seed} and scale {_describe(scale)}; generate with the same --seed/--scale, "
                "or use a fresh ASOF_HOME for a different one"
            )
        if start < epoch:
            raise ValueError(
                f"landing {landing} starts on {epoch.isoformat()}: cannot generate {start.isoformat()}, "
                "which is earlier (the simulated world begins on the first day generated there); "
                "use a fresh ASOF_HOME"
            )
        return epoch
    landing.mkdir(parents=True, exist_ok=True)
    state = {"format": _STATE_FORMAT, "seed": seed, "scale": asdict(scale), "epoch": start.isoformat()}
    _atomic_write(path, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())
    return start


# -------------------------------------------------------------------------------------- generate


def generate(
    landing: Path,
    start: dt.date,
    end: dt.date,
    scale: Scale,
    seed: int = 42,
    faults: Sequence[Fault] = (),
    progress: Callable[[dt.date], None] | None = None,
) -> dict:
    """Write every source's batch for each day in [start, end] into `landing`; return a summary.

    Summary: {"landing", "seed", "scale", "epoch", "start", "end",
              "dates": {"YYYY-MM-DD": {source: {"path": str | None, "rows": int | None}}},
              "faults": [{"name", "source", "date", "rows_affected"}]}
    `rows` counts data rows (lines after the header); a `missing_file` batch has path and rows None.
    """
    landing = Path(landing)
    start, end = parse_date(start, "start"), parse_date(end, "end")
    if end < start:
        raise DateError(f"end {end.isoformat()} is before start {start.isoformat()}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if not isinstance(scale, Scale):
        scale = parse_scale(scale)
    by_batch: dict[tuple[str, int], list[str]] = {}
    for f in faults:
        if not isinstance(f, Fault):
            f = parse_fault(f)
        if not start <= f.day <= end:
            raise ValueError(
                f"fault {f} is outside the generated range {start.isoformat()}..{end.isoformat()}"
            )
        names = by_batch.setdefault((f.source, f.day.toordinal()), [])
        if f.name not in names:
            names.append(f.name)

    epoch = _check_state(landing, seed, scale, start)
    world = _World(seed, scale, epoch)
    summary: dict = {
        "landing": str(landing),
        "seed": seed,
        "scale": asdict(scale),
        "epoch": epoch.isoformat(),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "dates": {},
        "faults": [],
    }
    for d in range(start.toordinal(), end.toordinal() + 1):
        day = dt.date.fromordinal(d)
        per_day: dict[str, dict] = {}
        for source in DEMO_SOURCES:
            path = landing / source / day.isoformat() / _contract(source).default_file
            todo = sorted(by_batch.get((source, d), []), key=_FAULT_ORDER.index)
            if "missing_file" in todo:
                path.unlink(missing_ok=True)
                per_day[source] = {"path": None, "rows": None}
                summary["faults"].append(
                    {"name": "missing_file", "source": source, "date": day.isoformat(), "rows_affected": None}
                )
                continue
            table = world.batch(source, d)
            for name in todo:
                if name == "malformed_rows":
                    continue
                table, affected = _apply_table_fault(
                    table, name, source, _fault_rng(seed, name, source, d), d
                )
                summary["faults"].append(
                    {"name": name, "source": source, "date": day.isoformat(), "rows_affected": affected}
                )
            break_rng = _fault_rng(seed, "malformed_rows", source, d) if "malformed_rows" in todo else None
            data, n_broken = _render(source, table, break_rng)
            if break_rng is not None:
                summary["faults"].append(
                    {
                        "name": "malformed_rows",
                        "source": source,
                        "date": day.isoformat(),
                        "rows_affected": n_broken,
                    }
                )
            _atomic_write(path, data)
            per_day[source] = {"path": str(path), "rows": table.num_rows}
        summary["dates"][day.isoformat()] = per_day
        world.forget_before(d + 1)
        if progress is not None:
            progress(day)
    return summary
