{#-
  Chargebacks that can count in the chunk: delivered by end_date, and not before the first day of
  the 90-day window of start_date (a chargeback references a transaction known by its batch, and
  that transaction must be in the window). One per txn_id: the first delivery wins.
-#}
{%- set r = asof_range() -%}
{%- set lookback = merchant_window_days() - 1 -%}

with deliveries as (

    select * from {{ ref('stg_silver__chargebacks') }}
    where batch_date between date '{{ r.start }}' - {{ lookback }} and date '{{ r.end }}'

)

select
    txn_id,
    chargeback_time,
    reason_code,
    batch_date,
    {{ date_day_number('batch_date') }} as batch_day
from deliveries
qualify row_number() over (partition by txn_id order by batch_date, source_row_number) = 1
