"""Training: the run's configuration, the learning-rate schedule, the one training step
(compiled, CUDA graphs, DDP), checkpoints and run directories, the loop behind iwae.fit
and iwae train, and what a run tracks each epoch."""
