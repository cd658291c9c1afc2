"""Training: state, the one jitted step, optimizers, checkpoints, metric writers, the loop."""
