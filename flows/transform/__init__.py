"""Transform: silver -> dbt (dbt-duckdb) -> gold Delta feature tables, the gold schema read from the
marts' dbt contract, and the dbt-duckdb plugin that reads and writes the lake.
"""
