"""Importance indicators: how much each layer suffers from fewer bits."""
