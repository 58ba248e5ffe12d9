"""Caller identity and least privilege: who is calling and what it may call (identity.py), who may use
/_gateway/* (admin.py)."""
