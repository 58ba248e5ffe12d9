"""Idempotency keys: the stage that claims, stores and replays answers (stage.py)."""
