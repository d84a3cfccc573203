{#-
  Late transactions (known after their event day) for amount_usd_max_7d: such a cell is in the 7-day
  window of the as-of days [known_day, event_day + 6], spread here over those days of the chunk.
  Late deliveries are a few percent of transactions, so this stays small.
-#}
{%- set r = asof_range() -%}

with late_cells as (

    select customer_id, event_day, known_day, amount_usd_max
    from {{ ref('int_customer_txns__aggregated_to_days') }}
    where known_day > event_day
      and known_day <= event_day + 6

),

spread as (

    select
        customer_id,
        amount_usd_max,
        unnest(range(greatest(known_day, {{ r.start_day }}), least(event_day + 6, {{ r.end_day }}) + 1)) as as_of_day
    from late_cells

)

select
    customer_id,
    as_of_day,
    max(amount_usd_max) as late_amount_usd_max_7d
from spread
group by customer_id, as_of_day
