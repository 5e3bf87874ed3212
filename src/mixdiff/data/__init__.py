"""What every stage reads: image trees, decoding, splits, dataset preparation, verify, and the
evaluation transform. Imports no later stage (pre-training's input pipeline: `pretrain/input/`)."""
