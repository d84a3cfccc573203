-- Silver merchant snapshots (one full snapshot per batch), renamed and typed.
with source as (

    select * from {{ source('silver', 'merchants') }}

)

select
    merchant_id::bigint as merchant_id,
    name::varchar as merchant_name,
    mcc::varchar as mcc,
    country::varchar as country,
    risk_tier::varchar as risk_tier,
    _batch_date::date as batch_date,
    _row_number::bigint as source_row_number
from source
