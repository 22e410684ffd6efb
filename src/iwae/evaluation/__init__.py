"""Evaluation of a trained model: L_k (seeded, on any number of processes), active units
and the effective sample size, AIS and BDMC, the inference gaps, gradient diagnostics."""
