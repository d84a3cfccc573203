"""Population stability index (PSI): a feature's distribution on one date against its reference window."""

from __future__ import annotations

import numpy as np


def psi_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges: the reference's quantiles at 1/bins .. (bins-1)/bins (numpy method "lower":
    each edge is an observed reference value), duplicates dropped. Bins are (-inf, e1], (e1, e2], ...,
    (e_k, +inf): a discrete feature (counts) gets one bin per frequent value instead of empty slivers."""
    reference = np.asarray(reference, dtype=np.float64)
    if reference.size == 0:
        return np.array([], dtype=np.float64)
    return np.unique(np.quantile(reference, np.arange(1, bins) / bins, method="lower"))


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(edges, values, side="left")  # x == edge falls in the lower (right-closed) bin
    counts = np.bincount(idx, minlength=edges.size + 1)
    return counts / max(values.size, 1)


def psi(
    reference: np.ndarray, current: np.ndarray, bins: int = 10, epsilon: float = 1e-4
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """PSI = sum_i (p_i - q_i) * ln(p_i / q_i), q = reference shares, p = current shares, each share
    floored at `epsilon` (not renormalised). Returns (psi, edges, q, p)."""
    edges = psi_edges(reference, bins)
    q = np.maximum(bin_shares(reference, edges), epsilon)
    p = np.maximum(bin_shares(current, edges), epsilon)
    return float(np.sum((p - q) * np.log(p / q))), edges, q, p
