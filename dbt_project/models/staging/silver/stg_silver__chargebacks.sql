-- Silver chargebacks, renamed and typed.
with source as (

    select * from {{ source('silver', 'chargebacks') }}

)

select
    txn_id::varchar as txn_id,
    chargeback_time::timestamptz as chargeback_time,
    reason_code::varchar as reason_code,
    _batch_date::date as batch_date,
    _row_number::bigint as source_row_number
from source
