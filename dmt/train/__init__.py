"""Training: build the model a job trains, the loop, checkpoints, metrics and the run report."""
