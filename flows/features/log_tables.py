"""Where served features are logged: one lake table per feature service, in layer `ops`.

Its own module because two sides need it without each other: flows.features.feature_logging
(capture, and the comparison monitoring runs every date, without Feast) and
flows.features.feast_log_destination (Feast's logging destination, which imports Feast).
"""

from __future__ import annotations

LOG_LAYER = "ops"


def log_table(service: str) -> str:
    """The lake table (layer `ops`) holding what `service` served."""
    return f"feature_log_{service}"
