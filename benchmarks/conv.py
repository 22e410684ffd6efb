"""A user's own model: a small convolutional VAE for 28x28 images, built from iwae.Model.

Nothing in iwae knows about it: it trains through iwae.fit and the compiled step like the
paper's nets (benchmarks/step.py times it; tests/test_fit.py trains and resumes it).
"""
import torch.nn as nn

import iwae


def conv_model(latent=16, channels=16):
    """q: two stride-2 3x3 convolutions (28 -> 14 -> 7) and a linear head to (mu, log sigma);
    p: a linear layer to 7x7 maps and two stride-2 transposed convolutions to 28x28 logits."""
    c = channels
    encoder = nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, c, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * c * 7 * 7, 2 * latent))
    decoder = nn.Sequential(
        nn.Linear(latent, 2 * c * 7 * 7), nn.ReLU(), nn.Unflatten(1, (2 * c, 7, 7)),
        nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1), nn.Flatten())
    return iwae.Model(iwae.GaussianLayer(encoder), decoder, iwae.Bernoulli())
