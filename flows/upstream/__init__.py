"""Upstream: the simulated source systems that drop the daily landing files."""
