"""Placeholder until its owner lands it."""
MigrationStats = None
migrate_experts = None
