"""Fit, log and register the acceptance model."""
