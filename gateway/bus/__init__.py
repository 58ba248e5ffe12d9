"""The message bus events are published to (docs/operations.md): NATS JetStream (``nats.py``) or the Redis
store's streams (``redis_streams.py``), behind one protocol (``base.py``), with subject templates
(``subjects.py``). A publish returns only once the bus acknowledged the message."""
