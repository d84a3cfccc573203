{#-
  Merchant features as step functions of the as-of day (see int_customer_txns__accumulated for the
  method). A transaction counts in the w-day window of as-of day D when
      known_day <= D <= event_day + w - 1,
  and its chargeback counts in merchant_chargeback_count_90d when, in addition, the chargeback's
  batch is <= D: on the days [greatest(known_day, chargeback batch day), event_day + 89].
  One row per (merchant, change day); values hold from from_day to to_day.
-#}
{%- set r = asof_range() -%}
{%- set w = merchant_window_days() -%}

with transactions as (

    select merchant_id, event_day, known_day, chargeback_batch_day
    from {{ ref('int_transactions__deduplicated') }}
    where known_day <= event_day + {{ w - 1 }}

),

cells as (

    select merchant_id, event_day, known_day, count(*) as txn_count
    from transactions
    group by merchant_id, event_day, known_day

),

chargebacks as (

    select
        merchant_id,
        event_day,
        greatest(known_day, chargeback_batch_day) as chargeback_known_day
    from transactions
    where chargeback_batch_day is not null
      and greatest(known_day, chargeback_batch_day) <= event_day + {{ w - 1 }}

),

deltas as (

    select
        merchant_id,
        known_day as day,
        case when known_day <= event_day + 6 then txn_count else 0 end as d_txn_count_7d,
        txn_count as d_txn_count_90d,
        0 as d_chargeback_count_90d
    from cells

    union all

    select merchant_id, event_day + 7, -txn_count, 0, 0
    from cells
    where known_day <= event_day + 6

    union all

    select merchant_id, event_day + {{ w }}, 0, -txn_count, 0
    from cells

    union all

    select merchant_id, chargeback_known_day, 0, 0, 1
    from chargebacks

    union all

    select merchant_id, event_day + {{ w }}, 0, 0, -1
    from chargebacks

),

-- Every change before the chunk is folded into one opening row on its first day: the running sums
-- of the chunk's days are the same, and the window below sorts (merchants x the chunk's change days)
-- instead of the whole 90-day look-back (a one-day chunk: ~1 row a merchant instead of ~90).
timeline as (

    select
        merchant_id,
        greatest(day, {{ r.start_day }}) as day,
        sum(d_txn_count_7d) as d_txn_count_7d,
        sum(d_txn_count_90d) as d_txn_count_90d,
        sum(d_chargeback_count_90d) as d_chargeback_count_90d
    from deltas
    where day <= {{ r.end_day }}
    group by merchant_id, greatest(day, {{ r.start_day }})

),

accumulated as (

    select
        merchant_id,
        day as from_day,
        coalesce(lead(day) over by_day - 1, {{ r.end_day }}) as to_day,
        sum(d_txn_count_7d) over by_day as merchant_txn_count_7d,
        sum(d_txn_count_90d) over by_day as merchant_txn_count_90d,
        sum(d_chargeback_count_90d) over by_day as merchant_chargeback_count_90d
    from timeline
    window by_day as (partition by merchant_id order by day rows between unbounded preceding and current row)

)

select
    merchant_id,
    from_day,
    to_day,
    merchant_txn_count_7d::bigint as merchant_txn_count_7d,
    merchant_txn_count_90d::bigint as merchant_txn_count_90d,
    merchant_chargeback_count_90d::bigint as merchant_chargeback_count_90d
from accumulated
where to_day >= {{ r.start_day }}
  and merchant_txn_count_90d > 0
