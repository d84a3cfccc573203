"""Validation: bronze -> Great Expectations -> silver + quarantine, by each source's data contract.

`stage` runs it for the dates of a run; `contracts`, `parsing`, `frames`, `delivery`, `history`,
`suites`, `verdicts` and `storage` are its steps; `quarantine` inspects and replays quarantined rows;
`datadocs` renders GE's Data Docs so they work without internet access.
"""
