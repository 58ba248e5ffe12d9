"""Contract checks (docs/operations.md): example requests listed by routes (examples.py), sent through the
pipeline to the vendor and judged against the route's response schema (check.py), their answers recorded
and re-judged offline (fixtures.py), and ``gateway contract check|verify`` (cli.py)."""
