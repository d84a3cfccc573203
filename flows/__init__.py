"""asof: a point-in-time-correct batch feature pipeline (landing -> bronze -> silver -> gold -> Feast)."""

__version__ = "0.1.0"
