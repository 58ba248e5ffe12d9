"""Safe retries: the policy and the retry budget (policy.py) and the stage (stage.py)."""
