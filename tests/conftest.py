"""Shared fixtures: a linear-Gaussian model with a closed-form log p(x)."""
import pytest
import torch
import torch.nn as nn

import iwae
from iwae.core.densities import Gaussian


class LinearGaussian:
    """p(z) = N(0, I_d), p(x|z) = N(W z + b, s^2 I_D), W with orthogonal columns.

    Orthogonal columns make the exact posterior diagonal, so the library's own
    diagonal-Gaussian encoder can represent it:
        Sigma = (I + W^T W / s^2)^-1,  mu(x) = Sigma W^T (x - b) / s^2.
    """

    def __init__(self, D=4, d=2, s=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
        self.W = q[:, :d] * torch.tensor([1.5, 0.7], dtype=torch.float64)[:d]
        self.b = torch.randn(D, generator=g, dtype=torch.float64)
        self.s, self.D, self.d = s, D, d
        self.post_var = 1.0 / (1.0 + (self.W ** 2).sum(0) / s ** 2)           # [d]

    def model(self, mean_shift=0.0, log_sigma_shift=0.0):
        """The library Model with q = exact posterior, optionally perturbed."""
        enc = nn.Linear(self.D, 2 * self.d).double()
        dec = nn.Linear(self.d, self.D).double()
        A = (self.post_var[:, None] * self.W.T) / self.s ** 2                 # [d, D]
        with torch.no_grad():
            enc.weight.zero_()
            enc.weight[: self.d] = A
            enc.bias[: self.d] = -A @ self.b + mean_shift
            enc.bias[self.d:] = 0.5 * torch.log(self.post_var) + log_sigma_shift
            dec.weight.copy_(self.W)
            dec.bias.copy_(self.b)
        return iwae.Model(iwae.GaussianLayer(enc), dec, Gaussian(scale=self.s))

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s ** 2 * torch.eye(self.D, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def data(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.d, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + self.s * torch.randn(n, self.D, generator=g, dtype=torch.float64)


@pytest.fixture
def lg():
    return LinearGaussian()


class FixedLogWeights(nn.Module):
    """A 'model' whose log weights are a given leaf tensor: isolates the bound and loss."""

    def __init__(self, log_w):
        super().__init__()
        self.log_w = nn.Parameter(log_w)

    def log_weights(self, x, k, stop_q=False, stop_z=False):
        assert k == self.log_w.shape[0]
        return self.log_w

    def encoder_parameters(self):
        return iter(())

    def decoder_parameters(self):
        return iter([self.log_w])


@pytest.fixture
def fixed_log_weights():
    return FixedLogWeights


@pytest.fixture(scope="session")
def data_dir():
    """The real datasets: $IWAE_DATA_DIR, else ../shared/data beside the checkout."""
    import os
    from pathlib import Path
    path = Path(os.environ.get("IWAE_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not (path / "mnist").is_dir():
        pytest.fail(f"the real data files are missing: set IWAE_DATA_DIR (looked in {path})")
    return str(path)


@pytest.fixture
def conv_model():
    """benchmarks/conv.py's conv_model: a user's own convolutional iwae.Model."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "conv.py"
    spec = importlib.util.spec_from_file_location("benchmarks_conv", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.conv_model
