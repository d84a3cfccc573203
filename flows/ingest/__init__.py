"""Ingest: landing files -> bronze Delta tables, whether a batch is complete, and what a date may
cost in memory before anything is read.
"""
