{#-
  The transactions a chunk [start_date, end_date] needs, each with its knowledge day (docs/contract.md section 5):

    known_day = greatest(event_day, batch_day)

  A transaction is in K(D) exactly when known_day <= D (its batch was processed by D and it happened
  before D+1). Only the silver partitions that can matter are read: batches up to end_date, from the
  first day of the longest (90-day) window of start_date on (an event of that window cannot have been
  delivered before it happened).

  Silver keeps only the first delivery of each txn_id; defensively, if a txn_id still appears twice
  among the batches read, the earliest batch (then row number) wins, before the event window is
  applied.
-#}
{%- set r = asof_range() -%}
{%- set lookback = merchant_window_days() - 1 -%}

with deliveries as materialized (

    select txn_id, customer_id, merchant_id, amount, currency, event_time, batch_date, source_row_number
    from {{ ref('stg_silver__transactions') }}
    where batch_date between date '{{ r.start }}' - {{ lookback }} and date '{{ r.end }}'

),

-- silver should hold none: find them with a cheap hash aggregate, rank only those
redelivered_ids as (

    select txn_id
    from deliveries
    group by txn_id
    having count(*) > 1

),

first_deliveries as (

    select deliveries.*
    from deliveries
    anti join redelivered_ids using (txn_id)

    union all

    select *
    from (
        select deliveries.*
        from deliveries
        semi join redelivered_ids using (txn_id)
    ) as redelivered
    qualify row_number() over (partition by txn_id order by batch_date, source_row_number) = 1

),

fx_rates as (

    select * from {{ ref('fx_rates') }}

),

with_days as (

    select
        t.txn_id,
        t.customer_id,
        t.merchant_id,
        t.amount * fx_rates.usd_rate as amount_usd,
        epoch_us(t.event_time) as event_time_us,
        {{ day_number('t.event_time') }} as event_day,
        {{ date_day_number('t.batch_date') }} as batch_day
    from first_deliveries as t
    left join fx_rates on t.currency = fx_rates.currency

)

select
    txn_id,
    customer_id,
    merchant_id,
    amount_usd,
    event_time_us,
    event_day,
    greatest(event_day, batch_day) as known_day
from with_days
where event_day between {{ r.start_day - lookback }} and {{ r.end_day }}
