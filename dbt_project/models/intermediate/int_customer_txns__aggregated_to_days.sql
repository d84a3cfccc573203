{#-
  Customer transactions of the 30-day lookback, aggregated per (customer, event day, known day).
  A transaction known 30 or more days after its event day never enters a 30-day window and is
  dropped.

  Amounts are summed as DECIMAL(18, 8) (exact for amount x rate products with up to 8 decimals, e.g.
  2-decimal amounts and rates): running sums then add and remove exactly, so a window sum does not
  depend on the history before it, on the chunking of the range or on DuckDB's parallel summation
  order (re-runs are byte-identical).
-#}
{%- set r = asof_range() -%}
{%- set w = customer_window_days() -%}

select
    customer_id,
    event_day,
    known_day,
    count(*) as txn_count,
    sum(amount_usd::decimal(18, 8)) as amount_usd_sum_exact,
    max(amount_usd) as amount_usd_max,
    max(event_time_us) as last_event_time_us
from {{ ref('int_transactions__deduplicated') }}
where event_day >= {{ r.start_day - (w - 1) }}
  and known_day <= event_day + {{ w - 1 }}
group by customer_id, event_day, known_day
