"""`mixdiff attention`."""
