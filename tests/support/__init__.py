"""Helpers shared by tests: small models made on the spot."""
