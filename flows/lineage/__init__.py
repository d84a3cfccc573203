"""Lineage (docs/lineage.md): forward impact of a batch (`impact`), backward trace of a row
(`trace`), the training-set register (`training_sets`), OpenLineage events of every stage run
(`openlineage_events`) and the offline picture of an impact (`graph_html`).

Nothing here is imported by `asof --help`; the pipeline imports only `openlineage_events`, which
imports the OpenLineage client when it first emits.
"""
