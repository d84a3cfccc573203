{#-
  on-run-end hook: publish the marts of this invocation to their gold Delta tables.

  Runs after every model and test of the invocation, and publishes only when none of them failed,
  errored or was skipped: a failing dbt test therefore never leaves bad rows in gold. Each mart
  that ran (config.meta.gold_table) is handed to the `lake` plugin (flows/transform/lake_io.py),
  which replaces exactly the as-of dates [start_date, end_date] of its Delta table in one commit.

  With --vars '{asof_release_tables: true}' (flows/transform/stage.py passes it) the tables of the run are
  dropped afterwards, so a long backfill in one process does not keep the previous chunk in memory.
-#}
{% macro publish_gold(results) %}
  {%- if not execute -%}
    {{ return('') }}
  {%- endif -%}
  {%- set bad_statuses = ['error', 'fail', 'runtime error', 'skipped', 'partial success'] -%}
  {%- set problems = [] -%}
  {%- set marts = [] -%}
  {%- for res in results -%}
    {%- if (res.status | string) in bad_statuses -%}
      {%- do problems.append(res.node.unique_id ~ ' (' ~ res.status ~ ')') -%}
    {%- elif res.node.resource_type == 'model' and res.node.config.meta.get('gold_table') -%}
      {%- do marts.append(res.node) -%}
    {%- endif -%}
  {%- endfor -%}
  {%- if problems -%}
    {{ log("publish_gold: gold tables NOT published, " ~ problems | length ~ " node(s) did not pass: " ~ problems | join(', '), info=True) }}
  {%- elif flags.EMPTY -%}
    {{ log("publish_gold: --empty run, gold tables not published", info=True) }}
  {%- elif marts -%}
    {%- set r = asof_range() -%}
    {%- if not r.configured -%}
      {{ exceptions.raise_compiler_error("publish_gold: no as-of range given (pass --vars '{start_date: ..., end_date: ...}' or '{execution_date: ...}'); gold tables not published") }}
    {%- endif -%}
    {%- for node in marts -%}
      {%- set relation = api.Relation.create(database=node.database, schema=node.schema, identifier=node.alias) -%}
      {%- set table = node.config.meta.get('gold_table') -%}
      {%- do adapter.store_relation('lake', relation, [], 'gold/' ~ table, 'delta',
            {'table': table, 'start_date': r.start, 'end_date': r.end}) -%}
      {{ log("publish_gold: " ~ relation ~ " -> gold/" ~ table ~ " as_of_date " ~ r.start ~ ".." ~ r.end, info=True) }}
    {%- endfor -%}
  {%- endif -%}
  {%- if var('asof_release_tables', false) -%}
    {%- for schema in ['gold', 'intermediate'] -%}
      {%- do run_query('drop schema if exists ' ~ adapter.quote(schema) ~ ' cascade') -%}
    {%- endfor -%}
  {%- endif -%}
  {{ return('') }}
{% endmacro %}
