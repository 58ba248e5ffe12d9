"""Fault injection for chaos tests (docs/configuration.md): what to inject and the counts (policy.py), and the
stage that injects it right before the forwarder (stage.py)."""
