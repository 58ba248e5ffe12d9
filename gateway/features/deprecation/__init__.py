"""Vendor Deprecation and Sunset notices (tracker.py)."""
