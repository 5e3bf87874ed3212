"""`mixdiff robustness`."""
