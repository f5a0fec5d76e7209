"""Bit-width search: turn importance and budgets into a per-layer policy."""
