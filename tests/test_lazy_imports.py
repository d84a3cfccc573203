"""scipy.stats and altair load on first use in asof processes (flows/lazy_imports.py)."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys
import flows
import great_expectations
assert type(sys.modules["scipy.stats"]).__name__ == "_LazyModule", type(sys.modules["scipy.stats"])
assert type(sys.modules["altair"]).__name__ == "_LazyModule", type(sys.modules["altair"])
from scipy import stats
assert stats.norm.cdf(0.0) == 0.5
assert type(sys.modules["scipy.stats"]).__name__ == "module"
import altair
assert altair.Chart(data={"values": []}).mark_point().to_dict()["mark"]["type"] == "point"
print("ok")
"""


def test_ge_import_leaves_scipy_stats_and_altair_for_first_use() -> None:
    """After `import great_expectations` in an asof process neither module has run its code; the
    first attribute access loads it, and it works as if imported normally."""
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
