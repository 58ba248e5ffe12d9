"""Rate limits and concurrency: the limiters and GCRA schedules (policy.py) and the stage (stage.py)."""
