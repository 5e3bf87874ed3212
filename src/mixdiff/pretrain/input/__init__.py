"""The training input pipeline: samples and their synthetic twins, view recipes, the data module,
batched augmentation, device decoding, and the stream that moves batches beside the step."""
