{#-
  on-run-start hook: resolve every plugin-backed source once, before dbt starts its worker threads.

  dbt-duckdb registers a plugin source's Arrow dataset in a dict that every new cursor iterates;
  two threads registering and opening cursors at the same time can fail with "dictionary changed size
  during iteration". Registering all sources here, single-threaded, means the parallel re-registrations
  later only replace existing entries.
-#}
{% macro preload_sources() %}
  {%- if execute -%}
    {%- for node in graph.sources.values() -%}
      {%- if node.config.meta.get('plugin') or node.source_meta.get('plugin') or node.meta.get('plugin') -%}
        {%- do source(node.source_name, node.name) -%}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {{ return('') }}
{% endmacro %}
