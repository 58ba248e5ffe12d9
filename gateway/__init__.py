"""Egress API gateway: one sidecar between internal services and third-party vendors."""

__version__ = "0.1.0"
