"""Conformance cases, one module per device (each with a ``cases()`` provider)."""
