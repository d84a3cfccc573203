"""Feast's logging destination for a lake table: where `asof serve` logs what it served.

Kept apart from flows.features.feature_logging because it subclasses a Feast class, so importing it imports
Feast; flows.features.feature_logging is imported by monitoring for every date, logs or not.
"""

from __future__ import annotations

from feast.data_format import DeltaFormat
from feast.feature_logging import LOG_TIMESTAMP_FIELD, LoggingDestination
from feast.infra.offline_stores.file_source import FileSource
from feast.protos.feast.core.FeatureService_pb2 import LoggingConfig as LoggingConfigProto

from flows.features.log_tables import LOG_LAYER
from flows.storage import lake

DESTINATION_KIND = "asof_lake"


class LakeLoggingDestination(LoggingDestination):
    """Feature logs in a lake table of layer `ops` (partitioned by `__log_date`), written through
    flows.storage.lake by the project's offline store (`write_logged_features`).

    Stored in the registry as Feast's `custom_destination` (kind `asof_lake`); Feast finds the class
    by that kind, so a process reading the registry must have imported this module (the offline
    store module and flows.features.featurestore do)."""

    _proto_kind = DESTINATION_KIND

    def __init__(self, *, table: str):
        self.table = table

    @classmethod
    def from_proto(cls, config_proto: LoggingConfigProto) -> LoggingDestination:
        return LakeLoggingDestination(table=config_proto.custom_destination.config["table"])

    def to_proto(self) -> LoggingConfigProto:
        return LoggingConfigProto(
            custom_destination=LoggingConfigProto.CustomDestination(
                kind=DESTINATION_KIND, config={"table": self.table}
            )
        )

    def to_data_source(self) -> FileSource:
        return FileSource(
            name=f"{LOG_LAYER}_{self.table}",
            path=lake.uri(LOG_LAYER, self.table),
            file_format=DeltaFormat(),
            timestamp_field=LOG_TIMESTAMP_FIELD,
        )
