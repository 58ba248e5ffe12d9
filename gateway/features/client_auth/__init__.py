"""Caller identity and least privilege: the authenticator and its stage (stage.py)."""
