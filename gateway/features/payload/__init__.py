"""Payload validation and transforms: JSON Schemas (schemas.py) and the request and response stages
(stage.py).
"""
