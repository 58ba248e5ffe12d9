"""Toward vendors: the transport and its connection pool (pool.py), the forwarder (forwarder.py) and OAuth2
tokens over the same transport (credentials.py).
"""
