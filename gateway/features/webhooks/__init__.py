"""Vendor webhooks in (docs/http.md): ``POST /_webhooks/NAME`` verified by scheme (verify.py),
deduplicated by event id in the store (store.py, redis_store.py), optionally validated and
transformed, published to the bus and answered 2xx only once the bus acknowledged (receiver.py).
"""
