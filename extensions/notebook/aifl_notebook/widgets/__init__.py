"""Notebook widgets of AI Factory Lab: thin views over the plain Python APIs (one module per view)."""
