"""Training: the loop on Hugging Face Accelerate, checkpoints, stop signals, experiment trackers."""
