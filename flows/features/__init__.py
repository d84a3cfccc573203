"""Features: the Feast feature store of the project (offline store over the lake, online stores,
materialization, the HTTP server, feature logging) and training sets with their manifests.
"""
