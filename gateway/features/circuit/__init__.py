"""Circuit breakers: the policy (policy.py), the stage (stage.py), the shared state (store.py,
redis_store.py).
"""
