"""Shared fixtures: a linear-Gaussian model with a closed-form log p(x)."""
import pytest
import torch
import torch.nn as nn

from benchmarks.closed_form import LinearGaussian


@pytest.fixture(autouse=True, scope="session")
def probe_cache(tmp_path_factory):
    """runtime.decisions caches its machine probe in a test folder, not in the user's home."""
    import iwae.runtime.decisions as decisions
    home, decisions.CACHE = decisions.CACHE, tmp_path_factory.mktemp("cache") / "probes.json"
    yield decisions.CACHE
    decisions.CACHE = home


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on a shared 2-core machine two threads of these small nets
    fight each other (and a forked child inherits fewer surprises)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def lg():
    return LinearGaussian(D=4, d=2)     # 4 observed, 2 latent: small enough for exact checks


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


class DoubledGradient(torch.autograd.Function):
    """The identity, whose backward doubles the gradient: a custom backward its forward does not imply."""

    @staticmethod
    def forward(h):
        return h.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return 2 * g


class Doubled(torch.nn.Module):
    def forward(self, h):
        return DoubledGradient.apply(h)


@pytest.fixture
def custom_backward_model():
    """A float64 1-layer paper net on 12 binary pixels whose decoder output passes through
    DoubledGradient (a model with a custom torch.autograd.Function)."""
    import iwae
    torch.manual_seed(0)
    net = iwae.paper_model(1, input_dim=12).double()
    return iwae.Model(list(net.encoder), torch.nn.Sequential(net.decoder, Doubled()), net.likelihood)
