{#-
  customer_profile: for every batch day D of the chunk in which a customer's CDC records arrived,
  the customer's profile as known then: the record with the latest updated_at among those delivered
  by D (ties: the later batch, then the later row). Reads the customers' whole CDC history up to
  end_date (a profile can date from any earlier batch); CDC volumes are small.
-#}
{%- set r = asof_range() -%}

with cdc as (

    select * from {{ ref('stg_silver__customers') }}
    where batch_date <= date '{{ r.end }}'

),

changes as (

    select distinct customer_id, batch_date as as_of_date
    from cdc
    where batch_date between date '{{ r.start }}' and date '{{ r.end }}'

),

known as (

    select
        changes.customer_id,
        changes.as_of_date,
        cdc.country,
        cdc.kyc_level,
        cdc.signup_date,
        cdc.updated_at,
        cdc.batch_date,
        cdc.source_row_number
    from changes
    inner join cdc
        on cdc.customer_id = changes.customer_id
        and cdc.batch_date <= changes.as_of_date

)

select
    customer_id,
    as_of_date,
    country,
    kyc_level,
    signup_date,
    updated_at as profile_updated_at
from known
qualify row_number() over (
    partition by customer_id, as_of_date
    order by updated_at desc, batch_date desc, source_row_number desc
) = 1
