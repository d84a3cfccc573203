{#-
  Customer features as step functions of the as-of day.

  Every transaction counts in the w-day window of as-of day D exactly when
      known_day <= D <= event_day + w - 1
  (in K(D), and event_time in [D+1-w, D+1)). So each (customer, event day, known day) cell adds its
  count and amount on known_day and removes them on event_day + w; a running sum over the days of a
  customer gives every windowed count/sum for every as-of day at once, with the point-in-time rule
  built in: a late transaction enters on the day it became known, never before. Distinct merchants
  use the merged spans the same way (+1 on the first day, -1 after the last).

  One row per (customer, change day): the values hold from from_day to to_day (the day before the
  next change, at most end_date). Sums are accumulated exactly (DECIMAL) so that removing a large
  old amount from a running total does not disturb a small window sum.
  amount_usd_max_7d of on-time transactions (known on their event day) is a 7-day range window;
  late ones come from int_customer_late_txns__spread_to_days.
-#}
{%- set r = asof_range() -%}

with cells as (

    select * from {{ ref('int_customer_txns__aggregated_to_days') }}

),

merchant_spans as (

    select * from {{ ref('int_customer_merchants__merged_to_spans') }}

),

{%- set opening_day = r.start_day - 7 %}

-- The changes after the opening day (7 days before the chunk), one row each.
deltas as (

    select
        customer_id,
        known_day as day,
        case when known_day = event_day then txn_count else 0 end as d_txn_count_1d,
        case when known_day <= event_day + 6 then txn_count else 0 end as d_txn_count_7d,
        txn_count as d_txn_count_30d,
        case when known_day <= event_day + 6 then amount_usd_sum_exact else 0 end as d_amount_usd_sum_7d,
        amount_usd_sum_exact as d_amount_usd_sum_30d,
        0 as d_distinct_merchants_30d,
        case when known_day = event_day then amount_usd_max end as on_time_amount_usd_max,
        last_event_time_us
    from cells
    where known_day > {{ opening_day }}

    union all

    select customer_id, event_day + 1, -txn_count, 0, 0, 0, 0, 0, null, null
    from cells
    where known_day = event_day
      and event_day + 1 > {{ opening_day }}

    union all

    select customer_id, event_day + 7, 0, -txn_count, 0, -amount_usd_sum_exact, 0, 0, null, null
    from cells
    where known_day <= event_day + 6
      and event_day + 7 > {{ opening_day }}

    union all

    select customer_id, event_day + 30, 0, 0, -txn_count, 0, -amount_usd_sum_exact, 0, null, null
    from cells
    where event_day + 30 > {{ opening_day }}

    union all

    select customer_id, active_from_day, 0, 0, 0, 0, 0, 1, null, null
    from merchant_spans
    where active_from_day > {{ opening_day }}

    union all

    select customer_id, active_to_day + 1, 0, 0, 0, 0, 0, -1, null, null
    from merchant_spans
    where active_to_day + 1 > {{ opening_day }}

),

-- Every change on or before the opening day is folded into one opening row per customer on that
-- day: the running sums and the running maximum of the chunk's days are the same. Its on-time
-- maximum is its own day's only: an older day is in the 7-day range window of no row that covers a
-- day of the chunk (an on-time transaction of day e adds a row on day e + 7, which ends the row
-- before it, so a row that reaches the chunk has no on-time day in the 7 days before it). The
-- windows below then sort (customers x the chunk's change days and the 7 before) instead of the
-- whole 30-day look-back.
--
-- The opening row sums, per cell, the changes above that fall on or before the opening day,
-- without making a row of each (they were ~40% of the rows sorted at a long history: a cell of
-- the look-back made four). A change on or before the opening day implies its cell was known by
-- then (known_day <= event_day + 29), so the customers with an opening row are those with such a
-- cell. Sums are exact (integers, DECIMAL), so their order does not matter.
opening_cells as (

    select
        customer_id,
        sum(case when known_day = event_day then txn_count else 0 end)
            - sum(case when known_day = event_day and event_day + 1 <= {{ opening_day }} then txn_count else 0 end)
            as d_txn_count_1d,
        sum(case when known_day <= event_day + 6 then txn_count else 0 end)
            - sum(case when known_day <= event_day + 6 and event_day + 7 <= {{ opening_day }} then txn_count else 0 end)
            as d_txn_count_7d,
        sum(txn_count)
            - sum(case when event_day + 30 <= {{ opening_day }} then txn_count else 0 end)
            as d_txn_count_30d,
        sum(case when known_day <= event_day + 6 then amount_usd_sum_exact else 0 end)
            - sum(case when known_day <= event_day + 6 and event_day + 7 <= {{ opening_day }} then amount_usd_sum_exact else 0 end)
            as d_amount_usd_sum_7d,
        sum(amount_usd_sum_exact)
            - sum(case when event_day + 30 <= {{ opening_day }} then amount_usd_sum_exact else 0 end)
            as d_amount_usd_sum_30d,
        max(case when known_day = event_day then amount_usd_max end)
            filter (where known_day = {{ opening_day }}) as on_time_amount_usd_max,
        max(last_event_time_us) as last_event_time_us
    from cells
    where known_day <= {{ opening_day }}
    group by customer_id

),

opening_spans as (

    select
        customer_id,
        sum(case when active_from_day <= {{ opening_day }} then 1 else 0 end)
            - sum(case when active_to_day + 1 <= {{ opening_day }} then 1 else 0 end)
            as d_distinct_merchants_30d
    from merchant_spans
    where active_from_day <= {{ opening_day }}
    group by customer_id

),

timeline as (

    select
        opening_cells.customer_id,
        {{ opening_day }} as day,
        opening_cells.d_txn_count_1d,
        opening_cells.d_txn_count_7d,
        opening_cells.d_txn_count_30d,
        opening_cells.d_amount_usd_sum_7d,
        opening_cells.d_amount_usd_sum_30d,
        coalesce(opening_spans.d_distinct_merchants_30d, 0) as d_distinct_merchants_30d,
        opening_cells.on_time_amount_usd_max,
        opening_cells.last_event_time_us
    from opening_cells
    left join opening_spans on opening_cells.customer_id = opening_spans.customer_id

    union all

    select
        customer_id,
        day,
        sum(d_txn_count_1d) as d_txn_count_1d,
        sum(d_txn_count_7d) as d_txn_count_7d,
        sum(d_txn_count_30d) as d_txn_count_30d,
        sum(d_amount_usd_sum_7d) as d_amount_usd_sum_7d,
        sum(d_amount_usd_sum_30d) as d_amount_usd_sum_30d,
        sum(d_distinct_merchants_30d) as d_distinct_merchants_30d,
        max(on_time_amount_usd_max) as on_time_amount_usd_max,
        max(last_event_time_us) as last_event_time_us
    from deltas
    where day <= {{ r.end_day }}
    group by customer_id, day

),

accumulated as (

    select
        customer_id,
        day as from_day,
        coalesce(lead(day) over by_day - 1, {{ r.end_day }}) as to_day,
        sum(d_txn_count_1d) over by_day as txn_count_1d,
        sum(d_txn_count_7d) over by_day as txn_count_7d,
        sum(d_txn_count_30d) over by_day as txn_count_30d,
        sum(d_amount_usd_sum_7d) over by_day as amount_usd_sum_7d,
        sum(d_amount_usd_sum_30d) over by_day as amount_usd_sum_30d,
        sum(d_distinct_merchants_30d) over by_day as distinct_merchants_30d,
        max(on_time_amount_usd_max) over (
            partition by customer_id order by day range between 6 preceding and current row
        ) as on_time_amount_usd_max_7d,
        max(last_event_time_us) over by_day as last_event_time_us
    from timeline
    window by_day as (partition by customer_id order by day rows between unbounded preceding and current row)

)

select
    customer_id,
    from_day,
    to_day,
    txn_count_1d::bigint as txn_count_1d,
    txn_count_7d::bigint as txn_count_7d,
    txn_count_30d::bigint as txn_count_30d,
    amount_usd_sum_7d::double as amount_usd_sum_7d,
    amount_usd_sum_30d::double as amount_usd_sum_30d,
    distinct_merchants_30d::bigint as distinct_merchants_30d,
    on_time_amount_usd_max_7d,
    last_event_time_us
from accumulated
where to_day >= {{ r.start_day }}
  and txn_count_30d > 0
