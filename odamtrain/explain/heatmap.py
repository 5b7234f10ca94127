"""The heat-map math shared by every gradient explainer (pure functions on tensors).

Shapes: N predictions, C channels, (h, w) a feature window or map, (H, W) the image.

ODAM (Zhao & Chan, ICLR'23, Sec. 3.1, Eq. 2), for prediction p with attribute Y_p and
feature map A (C, h, w):

    H_p = ReLU( sum_k Phi_p(dY_p / dA_k) * A_k )            (element-wise, per location)

Phi_p is a Gaussian smoothing of the gradient map whose width follows p's box on the feature
map (:func:`box_sigma`); ``None`` is the authors' public code (no smoothing). Grad-CAM and
Grad-CAM++ instead pool the same gradient into one weight per channel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ['SIGMA_PER_BOX_SIZE', 'box_sigma', 'gaussian_kernels', 'gaussian_smooth',
           'odam_heatmap', 'gradcam_weights', 'gradcam_pp_weights', 'channel_weighted_map',
           'explanation_maps', 'normalize_maps', 'resize_maps', 'resample_maps']

# sigma = SIGMA_PER_BOX_SIZE * sqrt(w * h) of the box in feature-map cells.
SIGMA_PER_BOX_SIZE = 0.125


def box_sigma(boxes: torch.Tensor, stride: float | torch.Tensor) -> torch.Tensor:
    """Gaussian width for each prediction: ``0.125 * sqrt(w * h) / stride`` cells.

    Rule: the gradient of one prediction is spatially noisy at the scale of the 3x3 convs
    (a checkerboard around the predicting location); smoothing over an eighth of the object's
    geometric-mean size removes that noise while keeping parts of the object (head vs. legs of
    a person) apart. It grows with the box so that a large object is smoothed as much,
    relative to its size, as a small one (the paper: kernel size follows the predicted box).
    Boxes smaller than 4 cells get sigma < 0.5, i.e. practically no smoothing.

    Args:
        boxes: (N, 4) x1y1x2y2 in the pixels of the network input.
        stride: the feature map's stride (scalar or (N,)).
    Returns:
        (N,) sigma in feature-map cells.
    """
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)  # [N, 2]
    return SIGMA_PER_BOX_SIZE * torch.sqrt(wh[:, 0] * wh[:, 1]) / torch.as_tensor(
        stride, dtype=boxes.dtype, device=boxes.device)


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, 2 * radius + 1) normalised 1-D Gaussians; sigma <= 0 gives a delta."""
    x = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)  # [K]
    s = sigma.clamp(min=1e-6)[:, None]  # [N, 1]
    k = torch.exp(-0.5 * (x[None] / s) ** 2)  # [N, K]
    return k / k.sum(1, keepdim=True)


def gaussian_smooth(maps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Smooth each (C, h, w) map with its own separable Gaussian (zero padding).

    Args:
        maps: (N, C, h, w).
        sigma: (N,) widths in cells; the kernel is truncated at 3 sigma.
    Returns:
        (N, C, h, w).
    """
    n, c, h, w = maps.shape
    radius = int(math.ceil(3 * float(sigma.max()))) if n else 0
    if radius == 0:
        return maps
    k = gaussian_kernels(sigma.to(maps.dtype), radius)  # [N, K]
    k = k.repeat_interleave(c, 0)  # [N*C, K]
    x = maps.reshape(1, n * c, h, w)
    x = F.conv2d(x, k[:, None, None, :], padding=(0, radius), groups=n * c)
    x = F.conv2d(x, k[:, None, :, None], padding=(radius, 0), groups=n * c)
    return x.reshape(n, c, h, w)


def odam_heatmap(grads: torch.Tensor, feats: torch.Tensor,
                 sigma: torch.Tensor | None = None) -> torch.Tensor:
    """ODAM maps ``ReLU(sum_k Phi(grad_k) * A_k)``.

    Args:
        grads: (N, C, h, w) dY_p / dA for each prediction p.
        feats: (N, C, h, w) or (1, C, h, w) the features A (broadcast over N).
        sigma: (N,) Gaussian widths in cells for Phi, or None for no smoothing.
    Returns:
        (N, h, w) non-negative maps.
    """
    if sigma is not None:
        grads = gaussian_smooth(grads, sigma)
    return F.relu((grads * feats).sum(1))


def gradcam_weights(grads: torch.Tensor, area: int | None = None) -> torch.Tensor:
    """Instance Grad-CAM (Selvaraju et al.) channel weights: the gradient averaged over the
    map. grads (N, C, h, w) -> (N, C); ``area`` is the map's size when ``grads`` is a window
    of a larger map that is zero elsewhere (default h * w)."""
    return grads.sum((2, 3)) / (area or grads.shape[2] * grads.shape[3])


def gradcam_pp_weights(grads: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Instance Grad-CAM++ (Chattopadhay et al., Eq. 19 with the exponential-score
    approximation of the authors' code) channel weights: alpha = g^2 / (2 g^2 + sum_xy A g^3),
    w_k = sum_xy alpha * ReLU(g). grads (N, C, h, w), feats (N|1, C, h, w) -> (N, C).
    Positions where the gradient is zero contribute nothing, so a window suffices."""
    g2, g3 = grads ** 2, grads ** 3
    denom = 2 * g2 + (feats * g3).sum((2, 3), keepdim=True)
    alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    return (alpha * F.relu(grads)).sum((2, 3))


def channel_weighted_map(weights: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """CAM-style map ``ReLU(sum_k w_k A_k)``: weights (N, C), feats (N|1, C, h, w) ->
    (N, h, w)."""
    return F.relu((weights[:, :, None, None] * feats).sum(1))


def explanation_maps(method: str, grads: torch.Tensor, feats: torch.Tensor,
                     sigma: torch.Tensor | None = None, area: int | None = None,
                     full_feats: torch.Tensor | None = None) -> torch.Tensor:
    """Maps of ``method`` from the same gradients.

    Args:
        method: 'odam' (with Phi's ``sigma``), 'gradcam' or 'gradcampp'.
        grads, feats: (N, C, h, w) gradient and features on the same window (or whole map).
        area: the whole map's h * w when ``grads`` is a window (Grad-CAM's average).
        full_feats: (N, C, H, W) the whole map for the CAM methods' weighted sum
            (default ``feats``).
    Returns:
        (N, h, w) for 'odam', (N, H, W) for the CAM methods.
    """
    if method == 'odam':
        return odam_heatmap(grads, feats, sigma)
    if method == 'gradcam':
        weights = gradcam_weights(grads, area)
    elif method == 'gradcampp':
        weights = gradcam_pp_weights(grads, feats)
    else:
        raise ValueError(f"method must be 'odam', 'gradcam' or 'gradcampp', got {method!r}")
    return channel_weighted_map(weights, feats if full_feats is None else full_feats)


def normalize_maps(maps: torch.Tensor, mode: str | None, inplace: bool = False):
    """Per-map normalisation of (N, H, W): ``'minmax'`` to [0, 1], ``'l2'`` to unit norm,
    ``None``/``'none'`` unchanged. All-zero maps stay zero. ``inplace`` overwrites ``maps``
    (contiguous) instead of returning a new tensor (maps at image size can be GBs)."""
    if mode in (None, 'none'):
        return maps
    if mode not in ('minmax', 'l2'):
        raise ValueError(f"normalize must be 'none', 'minmax' or 'l2', got {mode!r}")
    if inplace and not maps.is_contiguous():
        raise ValueError('normalize_maps(inplace=True) needs contiguous maps')
    flat = maps.flatten(1) if inplace else maps.flatten(1).clone()  # a view when inplace
    if mode == 'minmax':
        lo = flat.min(1, keepdim=True).values
        span = flat.max(1, keepdim=True).values - lo
        flat.sub_(lo).div_(torch.where(span > 0, span, torch.ones_like(span)))
    else:
        norm = flat.norm(dim=1, keepdim=True)
        flat.div_(torch.where(norm > 0, norm, torch.ones_like(norm)))
    return flat.view_as(maps)


def resize_maps(maps: torch.Tensor, stride: float, input_hw: tuple[int, int],
                out_hw: tuple[int, int]) -> torch.Tensor:
    """Feature-map heat maps -> image heat maps.

    The map is cropped to the cells that cover the unpadded network input
    (``ceil(input / stride)``), upsampled bilinearly by ``stride``, cropped to the input size
    and resized bilinearly to ``out_hw`` (e.g. the original image). Values stay >= 0.

    Args:
        maps: (N, h, w) on a feature map of the given stride (padded batch size allowed).
        input_hw: (h_in, w_in) unpadded network input size.
        out_hw: (H, W) output size.
    Returns:
        (N, H, W).
    """
    n = maps.shape[0]
    hc, wc = math.ceil(input_hw[0] / stride), math.ceil(input_hw[1] / stride)
    x = maps[:, None, :hc, :wc]
    if n == 0:
        return maps.new_zeros(0, *out_hw)
    x = F.interpolate(x, size=(hc * int(round(stride)), wc * int(round(stride))),
                      mode='bilinear', align_corners=False)[..., :input_hw[0], :input_hw[1]]
    if tuple(x.shape[-2:]) != tuple(out_hw):
        x = F.interpolate(x, size=tuple(out_hw), mode='bilinear', align_corners=False)
    return x[:, 0].clamp(min=0)


def resample_maps(maps: torch.Tensor, stride: float, out_stride: float,
                  out_hw: tuple[int, int]) -> torch.Tensor:
    """Maps on one feature grid -> the grid of another stride over the same input, bilinearly
    with cell centres aligned (output cell i samples input cell (i + 0.5) * out_stride /
    stride - 0.5), cropped or zero-padded to ``out_hw``. Differentiable (Odam-Train compares
    maps of all FPN levels on the stride-16 grid).

    Args:
        maps: (N, h, w) on the stride-``stride`` grid.
    Returns:
        (N, *out_hw).
    """
    out = maps.new_zeros(maps.shape[0], *out_hw)
    if maps.shape[0] == 0:
        return out
    x = F.interpolate(maps[:, None], scale_factor=stride / out_stride, mode='bilinear',
                      align_corners=False, recompute_scale_factor=False)[:, 0]
    h, w = min(out_hw[0], x.shape[1]), min(out_hw[1], x.shape[2])
    if (h, w) == tuple(out_hw):
        return x[:, :h, :w]
    out[:, :h, :w] = x[:, :h, :w]
    return out
