{#-
  For distinct_merchants_30d: a merchant counts for a customer on as-of day D when the customer has
  a K(D) transaction with it in the 30-day window, i.e. on the days
      [known_day, event_day + 29]
  of each such transaction. Overlapping (or adjacent) spans of the same (customer, merchant) are
  merged, so each merged span adds exactly one to the count while it lasts.
-#}
{%- set r = asof_range() -%}
{%- set w = customer_window_days() -%}

with spans as (

    select
        customer_id,
        merchant_id,
        min(known_day) as span_start_day,
        event_day + {{ w - 1 }} as span_end_day
    from {{ ref('int_transactions__deduplicated') }}
    where event_day >= {{ r.start_day - (w - 1) }}
      and known_day <= event_day + {{ w - 1 }}
    group by customer_id, merchant_id, event_day

),

flagged as (

    select
        *,
        max(span_end_day) over (
            partition by customer_id, merchant_id
            order by span_start_day, span_end_day
            rows between unbounded preceding and 1 preceding
        ) as previous_end_day
    from spans

),

numbered as (

    select
        *,
        sum(case when previous_end_day is null or span_start_day > previous_end_day + 1 then 1 else 0 end)
            over (
                partition by customer_id, merchant_id
                order by span_start_day, span_end_day
                rows between unbounded preceding and current row
            ) as span_number
    from flagged

)

select
    customer_id,
    merchant_id,
    min(span_start_day) as active_from_day,
    max(span_end_day) as active_to_day
from numbered
group by customer_id, merchant_id, span_number
