"""The `asof` command line: `main` (the app and the pipeline commands) and one module per command
group; how commands refuse and exit (`usage`); upstream text made safe for a terminal (`terminal`).
"""
