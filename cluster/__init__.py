"""Cluster layer: coordinator, cluster-wide policies, migration, recording, checkpoints, CLI."""
