"""Test oracles that change torch's behaviour inside a context (never in library code)."""
import contextlib

import torch
import torch.nn as nn


@contextlib.contextmanager
def frozen_norm_stats():
    """Inside, every ``nn.GroupNorm`` treats its mean and variance as constants (detached),
    so that autograd gives the gradient ``conv_towers.window_backward`` computes for
    GroupNorm towers (the oracle of ``fast`` mode; BatchNorm in eval mode is affine anyway).
    Restored on exit, also after an error."""
    original = nn.GroupNorm.forward

    def forward(self, x):
        xg = x.reshape(x.shape[0], self.num_groups, -1)
        var, mean = torch.var_mean(xg.detach(), -1, unbiased=False, keepdim=True)
        y = ((xg - mean) * torch.rsqrt(var + self.eps)).reshape_as(x)
        if self.affine:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    nn.GroupNorm.forward = forward
    try:
        yield
    finally:
        nn.GroupNorm.forward = original
