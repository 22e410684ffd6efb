"""What the Imputer's encoder reads of a mixed table: each column as numbers a network can
use, built from the same coded table the likelihoods score (``iwae.missing.types``).

The likelihoods need a categorical cell as its code 0..C-1 and a count as the count, but a
code read as a number orders categories that have no order, and a count of 3,000 beside
standardised columns swamps the first layer. So q(z | x_o, s) reads (docs/missing.md):
real and binary columns as they are (standardised, 0/1); a categorical or ordinal column as C
one-hot inputs, all 0 when the cell is missing; a count as log(1 + x) and a positive value
as log x, each standardised with its observed values' statistics, 0 when missing; then,
when the Imputer's mask_input asks, the mask. The model hands the encoder [x with missing
cells 0, mask] (``Model(mask_input=True)``): a missing categorical cell is told from category
0 by the mask, not by its value.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PLAIN = ("real", "binary")
ONE_HOT = ("categorical", "ordinal")
NEEDED = ONE_HOT + ("count", "positive")     # a table with none of these reads x as it is


class TableInput(nn.Module):
    """[..., 2 D] = [x (missing 0), mask] -> [..., width]: the encoder's input features.

    kinds: each modelled column's type; categories: each one's C (0 where not one-hot);
    log_stats: [(mean, std)] of the count columns' log(1 + x), then the positive columns' log x;
    mask: append the mask (the Imputer's mask_input)."""

    def __init__(self, kinds, categories, log_stats, mask):
        super().__init__()
        d = len(kinds)
        index = lambda which: torch.tensor([j for j, k in enumerate(kinds) if k in which], dtype=torch.long)
        self.register_buffer("plain", index(PLAIN), persistent=False)
        self.register_buffer("coded", index(ONE_HOT), persistent=False)
        self.register_buffer("count", index(("count",)), persistent=False)
        self.register_buffer("positive", index(("positive",)), persistent=False)
        sizes = [categories[j] for j in self.coded.tolist()]
        widest = max(sizes, default=1)
        valid = torch.zeros(len(sizes), widest, dtype=torch.bool)          # [D_coded, C_max]
        for row, c in enumerate(sizes):
            valid[row, :c] = True
        self.register_buffer("valid", valid.flatten().nonzero().squeeze(1), persistent=False)   # [sum C]
        self.widest = widest
        stats = torch.tensor(log_stats, dtype=torch.float32).reshape(-1, 2)
        self.register_buffer("log_mean", stats[:, 0], persistent=False)
        self.register_buffer("log_scale", stats[:, 1], persistent=False)
        self.d, self.mask = d, bool(mask)
        self.width = len(self.plain) + sum(sizes) + len(stats) + (d if mask else 0)

    def forward(self, h):
        x, mask = h[..., :self.d], h[..., self.d:]                       # [..., D] each
        parts = [x[..., self.plain]]
        if len(self.coded):
            codes = x[..., self.coded].long().clamp(0, self.widest - 1)  # [..., D_coded]
            one_hot = F.one_hot(codes, self.widest).to(x.dtype) * mask[..., self.coded, None]
            parts.append(one_hot.flatten(-2).index_select(-1, self.valid))
        if self.log_mean.numel():
            observed = torch.cat([mask[..., self.count], mask[..., self.positive]], -1) > 0
            raw = torch.cat([x[..., self.count], x[..., self.positive]], -1)
            raw = torch.where(observed, raw, torch.ones_like(raw))          # no log of a missing 0
            values = torch.cat([torch.log1p(raw[..., :len(self.count)]), torch.log(raw[..., len(self.count):])], -1)
            standard = (values - self.log_mean) / self.log_scale
            parts.append(torch.where(observed, standard, torch.zeros_like(standard)))
        if self.mask:
            parts.append(mask)
        return torch.cat(parts, -1)


def table_input(kinds, categories, values, mask):
    """The TableInput for the modelled columns' kinds and categories, its log statistics from
    values [N, D] (the coded table, NaN = missing); mask: append the mask."""
    stats = []
    for name, log in (("count", np.log1p), ("positive", np.log)):
        for j in (j for j, k in enumerate(kinds) if k == name):
            logged = log(values[~np.isnan(values[:, j]), j])
            stats.append((float(logged.mean()), float(logged.std()) or 1.0))
    return TableInput(kinds, categories, stats, mask)
