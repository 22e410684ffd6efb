"""Deterministic networks of the paper: tanh MLPs with Glorot-uniform weights and zero biases.

Their matmuls can run in bf16 (``matmul_dtype(torch.bfloat16)``): each MatmulDtypeLinear large
enough to gain (BF16_MIN_MACS) multiplies bf16 x, W and b and returns bf16, so the activations
between two such layers (and the tanh) stay bf16; a smaller one runs in its weights' dtype.
The model casts every net's output back to fp32 (iwae.core.model), so everything computed
from it (log densities, log weights, the bound) and the parameters' gradients are fp32. The
training step enters the context inside the function torch.compile traces
(iwae.training.step), so the casts are in the compiled graph and fuse with the elementwise
work around the matmuls. Only these MatmulDtypeLinear layers (``mlp``, the paper's nets)
switch: a user's nn.Linear or convolution stays in its own dtype.
"""
import contextlib

import torch.nn as nn
import torch.nn.functional as F

# rows x in x out below which a MatmulDtypeLinear stays in fp32: bf16's casts cost more than
# it saves there (the paper nets at k=1, and the encoder's first layer, which sees only the batch)
BF16_MIN_MACS = 4_000_000


class _Matmul:
    def __init__(self):     # set on the instance, so that a compiled graph's guards see it there from the first call
        self.dtype = None   # None: the parameters' dtype; torch.bfloat16 inside matmul_dtype


MATMUL = _Matmul()


@contextlib.contextmanager
def matmul_dtype(dtype):
    """Within: the nets' MatmulDtypeLinear layers multiply in dtype (None: as they are)."""
    old, MATMUL.dtype = MATMUL.dtype, dtype
    try:
        yield
    finally:
        MATMUL.dtype = old


def linear(x, weight, bias=None):
    """F.linear(x, weight, bias), in MATMUL.dtype (the result too) when set and the product is
    large enough, else in weight's dtype. Decided from static shapes, so a compiled graph
    holds one choice per layer."""
    dtype = MATMUL.dtype
    if dtype is None or dtype == weight.dtype:
        return F.linear(x, weight, bias)
    if x.numel() * weight.shape[0] < BF16_MIN_MACS:
        return F.linear(x.to(weight.dtype), weight, bias)
    return F.linear(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))


class MatmulDtypeLinear(nn.Linear):
    """nn.Linear whose matmul follows matmul_dtype (same parameters, same state_dict)."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)


def glorot_(linear):
    """Glorot-uniform weights and zero bias, as in [Burda et al. 2016, App. C]."""
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def mlp(sizes, out_features, activation=nn.Tanh):
    """sizes = [in, h1, ..., hn]: Linear-activation for each hidden layer, then a linear output.

    mlp([784, 200, 200], 100) is 784-200-200-100 with tanh after each 200 (the paper's;
    activation: another nn.Module class, e.g. nn.SiLU for iwae.Imputer's nets).
    """
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [glorot_(MatmulDtypeLinear(fan_in, fan_out)), activation()]
    layers.append(glorot_(MatmulDtypeLinear(sizes[-1], out_features)))
    return nn.Sequential(*layers)
