"""Training: the run specification, the learning-rate schedule, the one training step
(compiled, CUDA graphs, DDP), checkpoints and the run directory, the loop behind iwae.fit and
iwae train, and what a run tracks each epoch."""
