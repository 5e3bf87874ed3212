"""Pre-training: the Trainer setup, callbacks, loggers, losses, the SSL methods, and the training input
pipeline (`input/`). Imports the floor and `data`; never `evaluate` (which never imports it)."""
