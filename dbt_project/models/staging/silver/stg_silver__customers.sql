-- Silver customer CDC records, renamed and typed.
with source as (

    select * from {{ source('silver', 'customers') }}

)

select
    customer_id::bigint as customer_id,
    op::varchar as cdc_operation,
    updated_at::timestamptz as updated_at,
    country::varchar as country,
    kyc_level::bigint as kyc_level,
    signup_date::date as signup_date,
    _batch_date::date as batch_date,
    _row_number::bigint as source_row_number
from source
