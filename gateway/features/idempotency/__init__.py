"""Idempotency keys: the stage that claims, stores and replays answers (stage.py), and the records
in the store (store.py, redis_store.py)."""
