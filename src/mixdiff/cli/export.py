"""`mixdiff export`."""
