"""Pre-training: the Trainer setup, callbacks, loggers, losses, the SSL methods, and the training
input pipeline (`input/`). Imports the floor and `data`; never `evaluate` (nor it this)."""
