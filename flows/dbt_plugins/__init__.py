"""dbt-duckdb plugins of the project (loaded by `dbt_project/profiles.yml`)."""
