{#-
  Fails with the rows whose date column lies outside the as-of range of this invocation (the range
  publish_gold replaces). The range is read at run time (macros/asof_range.sql).
-#}
{% test in_asof_range(model, column_name) %}
{%- set r = asof_range() -%}

select *
from {{ model }}
where {{ column_name }} is null
   or {{ column_name }} < date '{{ r.start }}'
   or {{ column_name }} > date '{{ r.end }}'

{% endtest %}
