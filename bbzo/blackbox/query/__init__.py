"""Query layer: requests, ledger, limits, retries, budgets on the way to a target."""
