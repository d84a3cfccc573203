{#-
  gold.customer_profile (docs/contract.md section 7): one row per customer per batch (as_of_date) of the chunk in which
  its profile changed, with the latest CDC values known then. feature_timestamp = batch date + 1 day
  00:00 UTC. Published to Delta by publish_gold.
-#}
with resolved as (

    select * from {{ ref('int_customer_profiles__resolved_per_batch') }}

)

select
    customer_id::bigint as customer_id,
    as_of_date::date as as_of_date,
    {{ feature_timestamp_of(date_day_number('as_of_date')) }} as feature_timestamp,
    country,
    kyc_level::bigint as kyc_level,
    signup_date::date as signup_date
from resolved
