{#-
  The as-of range of this invocation, from the run-time vars (never from config(), which is fixed
  at parse time):
    --vars '{start_date: 2024-01-01, end_date: 2024-01-31}'   a range (inclusive), or
    --vars '{execution_date: 2024-01-31}'                     one day.
  Without vars the range is the empty epoch day 1970-01-01 (so `dbt compile`/`docs generate` work)
  and `publish_gold` refuses to publish.

  Days are handled as integer day numbers (days since 1970-01-01, UTC): comparing and shifting them
  is much cheaper in DuckDB than casting timestamps with time zone to dates.
-#}
{% macro asof_range() %}
  {%- set execution_date = var('execution_date', none) -%}
  {%- set start = var('start_date', execution_date) -%}
  {%- set end = var('end_date', start) -%}
  {%- set configured = start is not none -%}
  {%- if not configured and var('end_date', none) is not none -%}
    {{ exceptions.raise_compiler_error("asof: end_date given without start_date (or execution_date)") }}
  {%- endif -%}
  {%- if not configured -%}
    {%- set start = '1970-01-01' -%}
    {%- set end = '1970-01-01' -%}
  {%- endif -%}
  {%- set start_date = asof_parse_date(start, 'start_date') -%}
  {%- set end_date = asof_parse_date(end, 'end_date') -%}
  {%- if end_date < start_date -%}
    {{ exceptions.raise_compiler_error("asof: end_date " ~ end_date ~ " is before start_date " ~ start_date) }}
  {%- endif -%}
  {%- set epoch = modules.datetime.date(1970, 1, 1) -%}
  {{ return({
      'configured': configured,
      'start': start_date.isoformat(),
      'end': end_date.isoformat(),
      'start_day': (start_date - epoch).days,
      'end_day': (end_date - epoch).days,
  }) }}
{% endmacro %}

{% macro asof_parse_date(value, what) %}
  {%- set text = (value | string) | trim -%}
  {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', text) -%}
    {{ exceptions.raise_compiler_error("asof: var " ~ what ~ "=" ~ text ~ " is not an ISO date (YYYY-MM-DD)") }}
  {%- endif -%}
  {%- set parts = text.split('-') -%}
  {%- set ns = namespace(parsed=none) -%}
  {%- if parts[1] | int >= 1 and parts[1] | int <= 12 and parts[2] | int >= 1 -%}
    {%- set month_end = asof_month_length(parts[0] | int, parts[1] | int) -%}
    {%- if parts[2] | int <= month_end -%}
      {%- set ns.parsed = modules.datetime.date(parts[0] | int, parts[1] | int, parts[2] | int) -%}
    {%- endif -%}
  {%- endif -%}
  {%- if ns.parsed is none -%}
    {{ exceptions.raise_compiler_error("asof: var " ~ what ~ "=" ~ text ~ " is not a real calendar date") }}
  {%- endif -%}
  {{ return(ns.parsed) }}
{% endmacro %}

{% macro asof_month_length(year, month) %}
  {%- if month == 12 -%}
    {{ return(31) }}
  {%- endif -%}
  {{ return((modules.datetime.date(year, month + 1, 1) - modules.datetime.date(year, month, 1)).days) }}
{% endmacro %}

{#- Trailing windows of docs/contract.md section 7, in days. -#}
{% macro customer_window_days() %}{{ return(30) }}{% endmacro %}
{% macro merchant_window_days() %}{{ return(90) }}{% endmacro %}

{#- Integer day number (UTC) of a timestamp with time zone; event times are after 1970. -#}
{% macro day_number(ts) -%}
  (epoch_us({{ ts }}) // 86400000000)::integer
{%- endmacro %}

{#- Integer day number of a DATE. -#}
{% macro date_day_number(d) -%}
  ({{ d }} - date '1970-01-01')::integer
{%- endmacro %}

{#- DATE of an integer day number. -#}
{% macro day_to_date(day) -%}
  (date '1970-01-01' + ({{ day }})::integer)
{%- endmacro %}

{#- 00:00:00 UTC of the day after an as-of day number: when features as of that day become known. -#}
{% macro feature_timestamp_of(day) -%}
  make_timestamptz((({{ day }})::bigint + 1) * 86400000000)
{%- endmacro %}
