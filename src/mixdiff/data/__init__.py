"""Image trees, real/synthetic pairing, view recipes and dataset preparation."""
