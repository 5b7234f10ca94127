"""Back-propagation through towers of 3x3 ``ConvModule`` s (conv -> norm -> act) without
autograd, for many detections at once: what dense heads put between an FPN level A and
their final convs.

Shapes: n detections, B images, C channels, (k, k) a window, (h, w) a level.

* :func:`window_backward` (``fast``): with the normalisation statistics held constant, a
  location's outputs depend on A only in a window of radius (tower depth + final-conv
  radius). The gradient at the towers' output window is carried down layer by layer on
  growing windows (transposed convs), with the forward's activation inputs and statistics,
  positions off the map dropped (they are the full model's zero padding).
* :func:`map_backward` (``exact``): the same on the whole map, with the exact GroupNorm
  backward from the statistics recorded in the forward.

Supported layers (:func:`tower_support`): mmcv ``ConvModule`` s of a 3x3 stride-1 conv,
norm GroupNorm / BatchNorm (eval: running statistics; training: the batch's, held constant)
/ none, activation ReLU / LeakyReLU / SiLU (mmcv's Swish) / none, in the order
conv-norm-act; or a :class:`ConvAct` (a plain conv and activation module, e.g. of an
``nn.Sequential`` head branch).
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmcv.cnn.bricks import Swish
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['ConvAct', 'tower_support', 'TowerRecord', 'record_towers', 'window_backward',
           'map_backward', 'gather_windows', 'window_on_map', 'paste_windows']


class ConvAct(NamedTuple):
    """A tower layer of two plain modules, a conv and its activation (or None), read as a
    ``ConvModule`` (order conv-act, no norm)."""
    conv: nn.Module
    activate: nn.Module | None = None
    with_norm = False
    norm = None
    order = ('conv', 'norm', 'act')

    @property
    def with_activation(self) -> bool:
        return self.activate is not None


def _last_module(layer) -> nn.Module:
    """The module whose output is the layer's (conv-norm-act: the last one present)."""
    if layer.with_activation:
        return layer.activate
    return layer.norm if layer.with_norm else layer.conv


def _is_same_3x3(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1)


def tower_support(layers) -> str | None:
    """None if :func:`window_backward` / :func:`map_backward` handle these tower layers,
    else the reason they do not."""
    for m in layers:
        if not isinstance(m, (ConvModule, ConvAct)):
            return f'tower layer {type(m).__name__} is not an mmcv ConvModule'
        if not _is_same_3x3(m.conv):
            return (f'tower conv {type(m.conv).__name__} is not a plain 3x3 stride-1 conv '
                    '(e.g. DCN or depthwise)')
        if m.order != ('conv', 'norm', 'act'):
            return f'tower layer order {m.order} is not conv-norm-act'
        norm = m.norm if m.with_norm else None
        if norm is not None and not isinstance(norm, (nn.GroupNorm, _BatchNorm)):
            return f'tower norm {type(norm).__name__} is not GroupNorm or BatchNorm'
        act = m.activate if m.with_activation else None
        if act is not None and not (isinstance(act, (nn.ReLU, nn.SiLU, Swish)) or (
                isinstance(act, nn.LeakyReLU) and act.negative_slope >= 0)):
            return (f'tower activation {type(act).__name__} is not ReLU, LeakyReLU (slope >= '
                    '0) or SiLU')
    return None


class TowerRecord:
    """What the forward of a head recorded for its tower layers, per call (a shared tower
    runs once per level): the activation input ``z``, the norm layer's input (its
    statistics are computed when first asked for: :meth:`norm_stats`), and the outputs of
    the towers' last layers (the final convs' input)."""

    def __init__(self):
        self.z, self.norm_input, self.out = {}, {}, {}
        self._stats = {}

    def get(self, kind: str, module, call: int):
        return getattr(self, kind)[module][call]

    def norm_stats(self, m, call: int) -> tuple:
        """(mean, rstd) (B | 1, G | C) the norm of tower layer ``m`` normalised with in
        that call, and (GroupNorm) its input."""
        key = (m, call)
        if key not in self._stats:
            self._stats[key] = _statistics(m.norm, self.norm_input[m][call])
        return self._stats[key]


@contextlib.contextmanager
def record_towers(layers, last_layers):
    """Record a :class:`TowerRecord` during the forward(s) inside (hooks removed on exit,
    also after an exception). Tensors are detached: autograd keeps its own graph."""
    record, handles = TowerRecord(), []

    def norm_hook(owner):
        def hook(module, args):
            record.norm_input.setdefault(owner, []).append(args[0].detach())
        return hook

    def act_hook(owner):
        def hook(module, args):
            # an in-place activation overwrites its input: copy it, but for (leaky) ReLU,
            # whose output is positive exactly where its input is (all the backward needs)
            z = args[0].detach()
            copy = getattr(module, 'inplace', False) and not isinstance(
                module, (nn.ReLU, nn.LeakyReLU))
            record.z.setdefault(owner, []).append(z.clone() if copy else z)
        return hook

    def out_hook(owner):
        def hook(module, args, output):
            record.out.setdefault(owner, []).append(output.detach())
        return hook

    try:
        for m in dict.fromkeys(layers):  # each module once, in order
            if m.with_norm:
                handles.append(m.norm.register_forward_pre_hook(norm_hook(m)))
            if m.with_activation:
                handles.append(m.activate.register_forward_pre_hook(act_hook(m)))
        for m in dict.fromkeys(last_layers):
            handles.append(_last_module(m).register_forward_hook(out_hook(m)))
        yield record
    finally:
        for h in handles:
            h.remove()


def _statistics(norm: nn.Module, x: torch.Tensor) -> tuple:
    """(mean, rstd) (B | 1, G | C) a norm layer normalises ``x`` with, and (GroupNorm) x."""
    if isinstance(norm, nn.GroupNorm):
        xg = x.reshape(x.shape[0], norm.num_groups, -1).float()
        var, mean = torch.var_mean(xg, -1, unbiased=False)
        return mean, torch.rsqrt(var + norm.eps), x
    if norm.training:  # BatchNorm on the batch's statistics
        var, mean = torch.var_mean(x.transpose(0, 1).flatten(1).float(), -1, unbiased=False)
        return mean[None], torch.rsqrt(var + norm.eps)[None], None
    return norm.running_mean[None], torch.rsqrt(norm.running_var + norm.eps)[None], None


def _act_grad(act: nn.Module, z: torch.Tensor) -> torch.Tensor:
    if isinstance(act, nn.ReLU):
        return (z > 0).to(z.dtype)
    if isinstance(act, nn.LeakyReLU):
        return torch.where(z > 0, 1.0, act.negative_slope).to(z.dtype)
    s = torch.sigmoid(z)  # SiLU / Swish: d(z * s) / dz
    return s * (1 + z * (1 - s))


def _norm_scale(m: ConvModule, mean_rstd) -> torch.Tensor:
    """(B | 1, C): what the norm multiplies a gradient by with its statistics constant."""
    norm = m.norm
    rstd = mean_rstd[1]
    if isinstance(norm, nn.GroupNorm):
        c = norm.num_channels
        rstd = rstd.repeat_interleave(c // norm.num_groups, 1)  # [B, C]
    if norm.affine:
        rstd = rstd * norm.weight
    return rstd


def window_on_map(ys: torch.Tensor, xs: torch.Tensor, radius: int, hw) -> torch.Tensor:
    """(n, 1, 2r+1, 2r+1) bool: which cells of the windows centred at (ys, xs) lie on an
    (h, w) map."""
    h, w = hw
    ar = torch.arange(-radius, radius + 1, device=ys.device)
    yy, xx = ys[:, None] + ar, xs[:, None] + ar  # [n, k]
    return (((yy >= 0) & (yy < h))[:, :, None] & ((xx >= 0) & (xx < w))[:, None, :])[:, None]


def gather_windows(feat: torch.Tensor, b: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                   radius: int) -> torch.Tensor:
    """Windows (n, C, 2r+1, 2r+1) of ``feat`` (B, C, h, w) centred at (ys, xs) of images b,
    zero outside the map (differentiable; the map itself is not padded)."""
    h, w = feat.shape[-2:]
    ar = torch.arange(-radius, radius + 1, device=feat.device)
    yy, xx = ys[:, None] + ar, xs[:, None] + ar  # [n, k]
    win = feat[b[:, None, None], :, yy.clamp(0, h - 1)[:, :, None],
               xx.clamp(0, w - 1)[:, None, :]].permute(0, 3, 1, 2)  # [n, C, k, k]
    inside = window_on_map(ys, xs, radius, (h, w))
    return win if bool(inside.all()) else win * inside.to(win.dtype)


def paste_windows(maps: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                  hw: tuple[int, int]) -> torch.Tensor:
    """Place (N, ..., k, k) windows centred at (ys, xs) into (N, ..., h, w) zero maps
    (clipped at the borders)."""
    n, k = maps.shape[0], maps.shape[-1]
    r = k // 2
    h, w = hw
    flat = maps.reshape(-1, k, k)  # [N * M, k, k], M windows per detection
    rep = flat.shape[0] // n if n else 1
    ys, xs = ys.repeat_interleave(rep), xs.repeat_interleave(rep)
    canvas = maps.new_zeros(flat.shape[0], h + 2 * r, w + 2 * r)
    ar = torch.arange(k, device=maps.device)
    canvas[torch.arange(len(flat), device=maps.device)[:, None, None],
           (ys[:, None] + ar)[:, :, None], (xs[:, None] + ar)[:, None, :]] = flat
    return canvas[:, r:r + h, r:r + w].reshape(*maps.shape[:-2], h, w)


def window_backward(layers, record: TowerRecord, calls: dict, delta: torch.Tensor,
                    b: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, hw) -> torch.Tensor:
    """Carry ``delta`` = dY/d(tower output) on (n, C, k, k) windows centred at (ys, xs) of
    images b down the tower ``layers`` to its input: (n, C, k + 2 L, k + 2 L), with the
    recorded activations, statistics held constant, positions off the map zero.

    Args:
        calls: {layer: which of its recorded calls made this level}.
    """
    for m in reversed(list(layers)):
        r = delta.shape[-1] // 2
        call = calls[m]
        if m.with_activation:
            z = gather_windows(record.get('z', m, call), b, ys, xs, r)
            delta = delta * _act_grad(m.activate, z)
        if m.with_norm:
            scale = _norm_scale(m, record.norm_stats(m, call))
            delta = delta * scale[b if scale.shape[0] > 1 else 0][..., None, None]
        delta = F.conv_transpose2d(delta, m.conv.weight)
        delta = delta * window_on_map(ys, xs, r + 1, hw)
    return delta


def map_backward(layers, record: TowerRecord, calls: dict, delta: torch.Tensor,
                 img: int) -> torch.Tensor:
    """Carry ``delta`` = dY/d(tower output), (n, C, h, w) on the whole map of image ``img``,
    down the tower to its input, exactly: the recorded activations, and for GroupNorm its
    backward with the statistics differentiated (``dx = rstd * (t - mean(t) - x_hat *
    mean(t * x_hat))`` per group, t = gamma * dy); BatchNorm in eval mode is affine."""
    n = delta.shape[0]
    for m in reversed(list(layers)):
        call = calls[m]
        if m.with_activation:
            delta = delta * _act_grad(m.activate, record.get('z', m, call)[img:img + 1])
        if m.with_norm:
            norm = m.norm
            mean, rstd, x = record.norm_stats(m, call)
            if isinstance(norm, nn.GroupNorm):
                if norm.affine:
                    delta = delta * norm.weight.to(delta.dtype)[:, None, None]
                g = norm.num_groups
                mean, rstd, x = mean[img], rstd[img], x[img]
                x_hat = ((x.reshape(g, -1) - mean[:, None]) * rstd[:, None]).to(delta.dtype)
                t = delta.reshape(n, g, -1)  # [n, G, C / G * h * w]
                t_mean = t.mean(-1, keepdim=True)
                tx_mean = torch.einsum('ngm,gm->ng', t, x_hat)[..., None] / x_hat.shape[1]
                delta = ((t - t_mean - x_hat * tx_mean) * rstd[:, None].to(t.dtype)
                         ).reshape(delta.shape)
            else:
                delta = delta * _norm_scale(m, (mean, rstd))[0][:, None, None]
        delta = F.conv_transpose2d(delta, m.conv.weight, padding=1)
    return delta
