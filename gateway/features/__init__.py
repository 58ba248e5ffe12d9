"""One folder per feature: its policy, its stage, and its store protocol with the memory and Redis backends
where it keeps shared state. See docs/architecture.md.
"""
