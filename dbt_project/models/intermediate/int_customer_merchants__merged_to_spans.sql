{#-
  For distinct_merchants_30d: a merchant counts for a customer on as-of day D when the customer has
  a K(D) transaction with it in the 30-day window, i.e. on the days
      [known_day, event_day + 29]
  of each such transaction. The spans of one (customer, merchant) are swept in order of their first
  day and cut into disjoint pieces (each span keeps only the days after the furthest end seen so
  far), so each piece adds exactly one to the count while it lasts, whatever the overlaps.
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

swept as (

    select
        *,
        max(span_end_day) over (
            partition by customer_id, merchant_id
            order by span_start_day, span_end_day
            rows between unbounded preceding and 1 preceding
        ) as covered_until_day
    from spans

)

select
    customer_id,
    merchant_id,
    greatest(span_start_day, coalesce(covered_until_day + 1, span_start_day)) as active_from_day,
    span_end_day as active_to_day
from swept
where covered_until_day is null or span_end_day > covered_until_day
