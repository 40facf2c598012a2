"""Converters of weights from other frameworks."""
