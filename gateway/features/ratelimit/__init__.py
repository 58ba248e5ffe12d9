"""Rate limits and concurrency: the limiters and GCRA schedules (policy.py), the stage (stage.py), and
the shared schedules in the store (store.py, redis_store.py)."""
