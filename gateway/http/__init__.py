"""The HTTP edge: the only code that knows the HTTP server (aiohttp): the adapter between its
requests and the gateway's own types (adapter.py), and the application, the admin endpoints,
reload, drain and serving (app.py)."""
