"""Placeholder until its owner lands it."""
EplbRuntime = None
