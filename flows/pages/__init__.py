"""Pages a run writes and how a browser reaches them: links to Data Docs and reports, and the
static HTTP handler behind asof's local servers.
"""
