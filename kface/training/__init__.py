"""Training: the feature store, heads, losses, samplers, the training run and its checkpoints."""
