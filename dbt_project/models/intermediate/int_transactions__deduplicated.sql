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

  Cost: at a long history this reads ~120 days of silver (12M rows at bench scale) for a 31-day
  chunk, so nothing here may hold or build on all of them at once. Silver is scanned (it is a lazily
  read Arrow dataset, filtered to the batches above) instead of being kept in a materialized CTE;
  the redelivered ids are found on sorted 64-bit hashes of txn_id (any id whose hash is shared goes
  to the exact ranking by txn_id, so a hash collision changes nothing); and the FX rate is a scalar lookup:
  as a join, DuckDB built its hash table on the 12M transactions instead of the 3 rates
  (profiled at 121 days of history: 22.7 s -> 4.9 s for this model).
-#}
{%- set r = asof_range() -%}
{%- set lookback = merchant_window_days() - 1 -%}
{%- set batches = "batch_date between date '" ~ r.start ~ "' - " ~ lookback ~ " and date '" ~ r.end ~ "'" -%}

-- silver should hold none: find them on hashes, rank only those
with txn_hashes as (

    select hash(txn_id) as txn_hash
    from {{ ref('stg_silver__transactions') }}
    where {{ batches }}
      and txn_id is not null

),

-- once sorted, a hash seen twice is next to its twin: a sort and one comparison a row, 3x cheaper
-- than a GROUP BY with a group per transaction (12M of them at 121 days: 5.4 -> 1.8 s)
redelivered_hashes as (

    select distinct txn_hash
    from (
        select txn_hash, lag(txn_hash) over (order by txn_hash) as previous_hash
        from txn_hashes
    ) as sorted_hashes
    where txn_hash = previous_hash

),

first_deliveries as (

    select
        deliveries.txn_id,
        deliveries.customer_id,
        deliveries.merchant_id,
        deliveries.amount,
        deliveries.currency,
        deliveries.event_time,
        deliveries.batch_date,
        deliveries.source_row_number
    from {{ ref('stg_silver__transactions') }} as deliveries
    anti join redelivered_hashes
        on hash(deliveries.txn_id) = redelivered_hashes.txn_hash
        and deliveries.txn_id is not null
    where deliveries.{{ batches }}

    union all

    select *
    from (
        select
            deliveries.txn_id,
            deliveries.customer_id,
            deliveries.merchant_id,
            deliveries.amount,
            deliveries.currency,
            deliveries.event_time,
            deliveries.batch_date,
            deliveries.source_row_number
        from {{ ref('stg_silver__transactions') }} as deliveries
        semi join redelivered_hashes
            on hash(deliveries.txn_id) = redelivered_hashes.txn_hash
            and deliveries.txn_id is not null
        where deliveries.{{ batches }}
    ) as redelivered
    qualify row_number() over (partition by txn_id order by batch_date, source_row_number) = 1

),

with_days as (

    select
        t.txn_id,
        t.customer_id,
        t.merchant_id,
        -- one rate per currency (the seed's unique test runs before this model)
        t.amount * (
            select fx_rates.usd_rate from {{ ref('fx_rates') }} as fx_rates where fx_rates.currency = t.currency
        ) as amount_usd,
        epoch_us(t.event_time) as event_time_us,
        {{ day_number('t.event_time') }} as event_day,
        {{ date_day_number('t.batch_date') }} as batch_day
    from first_deliveries as t

)

-- txn_id is needed past this model only to find a transaction's chargeback: found here, it is not
-- kept (a third of this table's memory at a long history, which the customer mart then spilled)
select
    t.customer_id,
    t.merchant_id,
    t.amount_usd,
    t.event_time_us,
    t.event_day,
    greatest(t.event_day, t.batch_day) as known_day,
    -- at most one chargeback per txn_id (first delivery wins). A scalar lookup, like the FX rate:
    -- as a join, DuckDB built its hash table on the 12M transactions, not the ~300k chargebacks
    -- (a late chunk: this model 4.3 s -> 8.4 s, the process 2.4 -> 3.1 GB)
    (
        select chargebacks.batch_day
        from {{ ref('int_chargebacks__deduplicated') }} as chargebacks
        where chargebacks.txn_id = t.txn_id
    ) as chargeback_batch_day
from with_days as t
where t.event_day between {{ r.start_day - lookback }} and {{ r.end_day }}
