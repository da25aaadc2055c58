"""Placeholder until its owner lands it."""
DispatchHandle = None
combine = None
dispatch = None
