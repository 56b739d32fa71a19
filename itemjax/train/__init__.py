"""The jitted step, device placement, checkpoints, tracking and the training loop (fit / run)."""
