"""Offline metrics, the dispatch replay, baselines and plots."""
