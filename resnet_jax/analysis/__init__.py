"""Analyses of trained and untrained nets: gradient flow."""
