{#-
  gold.customer_txn_features_daily (docs/contract.md section 7): one row per customer per as-of day D of the chunk with
  at least one K(D) transaction in the trailing 30 days. Published to Delta by publish_gold.
-#}
{%- set r = asof_range() -%}

with accumulated as (

    select * from {{ ref('int_customer_txns__accumulated') }}

),

late_maxima as (

    select * from {{ ref('int_customer_late_txns__spread_to_days') }}

),

days as (

    select
        *,
        unnest(range(greatest(from_day, {{ r.start_day }}), to_day + 1)) as as_of_day
    from accumulated

)

select
    days.customer_id::bigint as customer_id,
    {{ day_to_date('days.as_of_day') }} as as_of_date,
    {{ feature_timestamp_of('days.as_of_day') }} as feature_timestamp,
    days.txn_count_1d,
    days.txn_count_7d,
    days.txn_count_30d,
    days.amount_usd_sum_7d,
    days.amount_usd_sum_30d,
    days.amount_usd_sum_30d / days.txn_count_30d as amount_usd_avg_30d,
    greatest(days.on_time_amount_usd_max_7d, late_maxima.late_amount_usd_max_7d) as amount_usd_max_7d,
    days.distinct_merchants_30d,
    ((days.as_of_day::bigint + 1) * 86400000000 - days.last_event_time_us) // 1000000 as seconds_since_last_txn
from days
left join late_maxima
    on days.customer_id = late_maxima.customer_id
    and days.as_of_day = late_maxima.as_of_day
