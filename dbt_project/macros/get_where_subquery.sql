{#-
  Test `where` configs are rendered at parse time, so they cannot read the run's vars. Tests on
  views over the whole silver history use placeholders instead, substituted here at run time:
    __asof_start__ / __asof_end__   the as-of range of this invocation (DATE literals)
  e.g. `where: "batch_date between __asof_start__ and __asof_end__"` tests only the batches of the
  range, so a chunk never re-scans all of silver to test it.
-#}
{% macro duckdb__get_where_subquery(relation) -%}
  {%- set where = config.get('where', '') -%}
  {%- if where -%}
    {%- set r = asof_range() -%}
    {%- set where = where | replace('__asof_start__', "date '" ~ r.start ~ "'") | replace('__asof_end__', "date '" ~ r.end ~ "'") -%}
    {%- set filtered -%}
      (select * from {{ relation }} where {{ where }}) dbt_subquery
    {%- endset -%}
    {% do return(filtered) %}
  {%- else -%}
    {% do return(relation) %}
  {%- endif -%}
{%- endmacro %}
