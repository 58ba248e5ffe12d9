"""Async delivery and dead letters: accepting (stage.py, queue.py), the workers (workers.py), the durable
queue (store.py, redis_store.py) and gateway dlq (dlq.py).
"""
