"""The round engine: state transitions (driven by one process at a time, under
a Redis lease) and the streaming aggregation that commits a new version."""
