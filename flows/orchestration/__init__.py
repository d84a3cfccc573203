"""Orchestration: where a flow's tasks run (thread pool or Dask), the Prefect API of a command-line
run, and the local Prefect server with its work pool and deployments (`make serve`).
"""
