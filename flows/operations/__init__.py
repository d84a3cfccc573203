"""Operations: what the pipeline records about itself (run records, `lake/ops/runs`) and whether the
lake still holds what those records say (`asof verify`, `--repair`).
"""
