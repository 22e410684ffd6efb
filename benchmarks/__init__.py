"""Benchmarks: ``python -m benchmarks.step`` (training step and evaluation, ratios to the
matrix-multiplication floor) and ``python -m benchmarks.evaluate`` (evaluation only).
Results go to benchmarks/results/."""
