"""Placeholder until its owner lands it."""
ExpertParallelMoE = None
