"""The project's FeatureStore class: Feast's, with feature services kept between calls.

Imported only when a store is built (flows.features.featurestore): importing Feast costs over a second, which
commands that never touch the feature store should not pay.
"""

from __future__ import annotations

from typing import Any

from feast import FeatureService, FeatureStore


class AsofFeatureStore(FeatureStore):
    """`get_feature_service(name, allow_cache=True)` returns the same object for as long as the
    registry's cached proto is the same object.

    Feast rebuilds the FeatureService from the proto on every such call (~0.9 ms, more than the
    rest of a one-entity online read), and its HTTP server makes that call on every request naming
    a feature service. Feast replaces the proto when it refreshes the registry (its cache ttl, or
    `apply()`), which drops the kept objects; `allow_cache=False` always reads afresh."""

    def get_feature_service(self, name: str, allow_cache: bool = False) -> FeatureService:
        if not allow_cache:
            return super().get_feature_service(name, allow_cache)
        kept: dict[str, tuple[Any, FeatureService]] = self.__dict__.setdefault("asof_services", {})
        proto = self.registry.cached_registry_proto
        hit = kept.get(name)
        if hit is not None and hit[0] is proto:
            return hit[1]
        service = super().get_feature_service(name, allow_cache=True)
        kept[name] = (self.registry.cached_registry_proto, service)
        return service
