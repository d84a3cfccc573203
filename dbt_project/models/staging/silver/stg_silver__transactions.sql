-- Silver transactions, renamed and typed. A view: filters of the models downstream reach the Delta
-- scan (partition pruning on batch_date).
with source as (

    select * from {{ source('silver', 'transactions') }}

)

select
    txn_id::varchar as txn_id,
    customer_id::bigint as customer_id,
    merchant_id::bigint as merchant_id,
    amount::double as amount,
    currency::varchar as currency,
    channel::varchar as channel,
    event_time::timestamptz as event_time,
    _batch_date::date as batch_date,
    _row_number::bigint as source_row_number,
    _ingested_at::timestamptz as ingested_at
from source
