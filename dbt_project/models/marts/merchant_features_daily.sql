{#-
  gold.merchant_features_daily (docs/contract.md section 7): one row per merchant per as-of day D of the chunk with at
  least one K(D) transaction in the trailing 90 days. Published to Delta by publish_gold.
-#}
{%- set r = asof_range() -%}

with accumulated as (

    select * from {{ ref('int_merchant_txns__accumulated') }}

),

days as (

    select
        *,
        unnest(range(greatest(from_day, {{ r.start_day }}), to_day + 1)) as as_of_day
    from accumulated

)

select
    merchant_id::bigint as merchant_id,
    {{ day_to_date('as_of_day') }} as as_of_date,
    {{ feature_timestamp_of('as_of_day') }} as feature_timestamp,
    merchant_txn_count_7d,
    merchant_txn_count_90d,
    merchant_chargeback_count_90d,
    merchant_chargeback_count_90d::double / merchant_txn_count_90d as merchant_chargeback_rate_90d
from days
