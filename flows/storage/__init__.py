"""Storage: the lake's Delta tables (the one place that builds paths and commits), the key index
of what a table already holds, and a full disk reported as one line.
"""
