"""Training: one model.fit, checkpoints, progress, one variant's run."""
