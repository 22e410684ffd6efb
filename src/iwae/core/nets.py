"""Deterministic networks of the paper: tanh MLPs with Glorot-uniform weights and zero biases."""
import torch.nn as nn


def glorot_(linear):
    """Glorot-uniform weights and zero bias, as in [Burda et al. 2016, App. C]."""
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def mlp(sizes, out_features):
    """sizes = [in, h1, ..., hn]: Linear-tanh for each hidden layer, then a linear output.

    mlp([784, 200, 200], 100) is 784-200-200-100 with tanh after each 200.
    """
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [glorot_(nn.Linear(fan_in, fan_out)), nn.Tanh()]
    layers.append(glorot_(nn.Linear(sizes[-1], out_features)))
    return nn.Sequential(*layers)
