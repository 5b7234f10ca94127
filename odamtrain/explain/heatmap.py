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
           'smooth_windows', 'odam_heatmap', 'gradcam_weights', 'gradcam_pp_weights',
           'ssgradcam_pp_weights',
           'channel_weighted_map', 'explanation_maps', 'normalize_maps', 'resize_maps',
           'resample_maps', 'output_size', 'paste_roi_maps']

# sigma = SIGMA_PER_BOX_SIZE * sqrt(w * h) of the box in feature-map cells.
SIGMA_PER_BOX_SIZE = 0.125


def box_sigma(boxes: torch.Tensor, stride: float | torch.Tensor,
              max_sigma: float | None = None) -> torch.Tensor:
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
        max_sigma: an upper bound (e.g. the map's size: a wider Gaussian only flattens it);
            also what a box of infinite size (an untrained regression) gets. NaN boxes get 0.
    Returns:
        (N,) sigma in feature-map cells.
    """
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)  # [N, 2]
    sigma = SIGMA_PER_BOX_SIZE * torch.sqrt(wh[:, 0] * wh[:, 1]) / torch.as_tensor(
        stride, dtype=boxes.dtype, device=boxes.device)
    if max_sigma is None:
        return sigma.nan_to_num(0.0)
    return sigma.nan_to_num(0.0, posinf=max_sigma).clamp(max=max_sigma)


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, 2 * radius + 1) normalised 1-D Gaussians; sigma <= 0 gives a delta."""
    x = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)  # [K]
    s = sigma.clamp(min=1e-6)[:, None]  # [N, 1]
    k = torch.exp(-0.5 * (x[None] / s) ** 2)  # [N, K]
    return k / k.sum(1, keepdim=True)


def gaussian_smooth(maps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Smooth each (C, h, w) map with its own separable Gaussian (zero padding).

    Windows that the kernel spans a good part of are smoothed by two products with banded
    (Toeplitz) matrices per sample (several times faster on a CPU than a depthwise
    convolution of N * C channels); large maps with a narrow kernel by that convolution.

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
    if h + w > 6 * k.shape[1]:  # the matrices would be mostly zeros
        k = k.repeat_interleave(c, 0)  # [N*C, K]
        x = maps.reshape(1, n * c, h, w)
        x = F.conv2d(x, k[:, None, None, :], padding=(0, radius), groups=n * c)
        x = F.conv2d(x, k[:, None, :, None], padding=(radius, 0), groups=n * c)
        return x.reshape(n, c, h, w)
    rows = _band_matrices(k, h)  # [N, h, h]
    cols = rows if w == h else _band_matrices(k, w)
    x = torch.bmm(maps.reshape(n, c * h, w), cols.transpose(1, 2))  # along x
    x = torch.bmm(rows, x.view(n, c, h, w).transpose(1, 2).reshape(n, h, c * w))  # along y
    return x.view(n, h, c, w).transpose(1, 2)


def smooth_windows(windows: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Smooth (N, C, k, k) windows, zero outside, each with its own separable Gaussian into
    the (N, C, k + 2r, k + 2r) windows it spreads to: equal to :func:`gaussian_smooth` of the
    windows zero-padded by ``radius`` = r when the kernels' 3 sigma <= r, at a fraction of
    its cost (band matrices of (k + 2r) x k instead of (k + 2r)^2)."""
    n, c, k, _ = windows.shape
    if n == 0 or radius == 0:
        return F.pad(windows, (radius,) * 4)
    size = k + 2 * radius
    kernels = gaussian_kernels(sigma.to(windows.dtype), radius)  # [N, 2r + 1]
    band = _band_matrices(kernels, size)[:, :, radius:radius + k]  # [N, size, k]
    x = torch.bmm(windows.reshape(n, c * k, k), band.transpose(1, 2))  # along x: [N, C k, size]
    x = x.view(n, c, k, size).transpose(1, 2).reshape(n, k, c * size)
    return torch.bmm(band, x).view(n, size, c, size).transpose(1, 2)  # along y


def _band_matrices(kernels: torch.Tensor, size: int) -> torch.Tensor:
    """(N, size, size) matrices T with (T @ x)[i] = sum_j k[j - i + r] x[j]: the 'same'
    zero-padded 1-D convolution of a length-``size`` signal with each (N, 2r + 1) kernel."""
    radius = kernels.shape[1] // 2
    i = torch.arange(size, device=kernels.device)
    offset = i[None, :] - i[:, None] + radius  # [size, size] kernel tap of (out i, in j)
    inside = (offset >= 0) & (offset <= 2 * radius)
    return kernels[:, offset.clamp(0, 2 * radius)] * inside


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
    map.

    Args:
        grads: (N, C, h, w).
        area: the map's size when ``grads`` is a window of a larger map that is zero
            elsewhere (default h * w).

    Returns:
        Tensor: (N, C).
    """
    return grads.sum((2, 3)) / (area or grads.shape[2] * grads.shape[3])


def _gradcam_pp_alpha(grads: torch.Tensor, activation_sums: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++'s alpha_ij = g_ij^2 / (2 g_ij^2 + S g_ij^3), 0 where that is 0 / 0."""
    g2 = grads ** 2
    denom = 2 * g2 + activation_sums[:, :, None, None] * g2 * grads
    return g2 / torch.where(denom != 0, denom, torch.ones_like(denom))


def gradcam_pp_weights(grads: torch.Tensor, activation_sums: torch.Tensor) -> torch.Tensor:
    """Instance Grad-CAM++ (Chattopadhay et al., WACV'18, Eq. 19 with the exponential-score
    approximation of the authors' code) channel weights: alpha_ij = g_ij^2 / (2 g_ij^2 + S
    g_ij^3) with S the channel's activations summed over the whole map, w_k = sum_ij alpha_ij
    ReLU(g_ij). Positions where the gradient is zero contribute nothing, so a window of the
    gradient suffices (S still comes from the whole map).

    Args:
        grads: (N, C, h, w) on a window or the whole map.
        activation_sums: (N | 1, C) S, the sum of A over its whole map per channel.

    Returns:
        Tensor: (N, C).
    """
    return (_gradcam_pp_alpha(grads, activation_sums) * F.relu(grads)).sum((2, 3))


def ssgradcam_pp_weights(grads: torch.Tensor, activation_sums: torch.Tensor) -> torch.Tensor:
    """Spatial Sensitive Grad-CAM++ (Yamauchi, CVPRW'24) channel weights as the VPS authors'
    baseline computes them: Grad-CAM++'s, with each positive gradient also weighted by the
    space map ``abs(g) / max(abs(g))`` (the maximum over the prediction's whole gradient
    tensor): ``w_k = sum_ij alpha_ij ReLU(g_ij) abs(g_ij) / max(abs(g))``. (Their code also
    multiplies the denominator of alpha by the box mask, so that outside the box alpha =
    g^2 / eps; that is not reproduced: docs/audit.md.)

    Args:
        grads: (N, C, h, w) on a window or the whole map.
        activation_sums: (N | 1, C) the sum of A over its whole map per channel.

    Returns:
        Tensor: (N, C).
    """
    peak = grads.abs().amax((1, 2, 3), keepdim=True)
    space = grads.abs() / torch.where(peak > 0, peak, torch.ones_like(peak))
    return (_gradcam_pp_alpha(grads, activation_sums) * F.relu(grads) * space).sum((2, 3))


CAM_PP_WEIGHTS = {'gradcampp': gradcam_pp_weights, 'ssgradcampp': ssgradcam_pp_weights}


def channel_weighted_map(weights: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """CAM-style map ``ReLU(sum_k w_k A_k)``.

    Args:
        weights: (N, C).
        feats: (N | 1, C, h, w).

    Returns:
        Tensor: (N, h, w).
    """
    return F.relu((weights[:, :, None, None] * feats).sum(1))


def explanation_maps(method: str, grads: torch.Tensor, feats: torch.Tensor,
                     sigma: torch.Tensor | None = None, area: int | None = None,
                     full_feats: torch.Tensor | None = None) -> torch.Tensor:
    """Maps of ``method`` from the same gradients.

    Args:
        method: 'odam' (with Phi's ``sigma``), 'gradcam', 'gradcampp' or 'ssgradcampp'.
        grads: (N, C, h, w) the gradients on a window (or the whole map).
        feats: (N, C, h, w) the features on the same window.
        sigma: (N,) ODAM's Gaussian widths in cells (None: no smoothing).
        area: the whole map's h * w when ``grads`` is a window (Grad-CAM's average).
        full_feats: (N, C, H, W) the whole map for the CAM methods' weighted sum
            (default ``feats``).

    Returns:
        Tensor: (N, h, w) for 'odam', (N, H, W) for the CAM methods.
    """
    if method == 'odam':
        return odam_heatmap(grads, feats, sigma)
    full_feats = feats if full_feats is None else full_feats
    if method == 'gradcam':
        weights = gradcam_weights(grads, area)
    elif method in CAM_PP_WEIGHTS:
        weights = CAM_PP_WEIGHTS[method](grads, full_feats.sum((2, 3)))
    else:
        raise ValueError(f"method must be 'odam', 'gradcam', 'gradcampp' or 'ssgradcampp', "
                         f'got {method!r}')
    return channel_weighted_map(weights, full_feats)


def normalize_maps(maps: torch.Tensor, mode: str | None, inplace: bool = False):
    """Per-map normalisation. All-zero maps stay zero.

    Args:
        maps: (N, H, W).
        mode: 'minmax' (to [0, 1]), 'l2' (to unit norm) or None / 'none' (unchanged).
        inplace: overwrite ``maps`` (contiguous) instead of returning a new tensor (maps at
            image size can be GBs).

    Returns:
        Tensor: (N, H, W).
    """
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


def output_size(ori_hw, map_size) -> tuple[int, int]:
    """The size of output maps.

    Args:
        ori_hw: (H, W) of the original image.
        map_size: 'image' (the original size) or an int, the short edge.

    Returns:
        tuple: (H, W).
    """
    if map_size == 'image':
        return int(ori_hw[0]), int(ori_hw[1])
    s = map_size / min(ori_hw)
    return max(1, round(ori_hw[0] * s)), max(1, round(ori_hw[1] * s))


def resize_maps(maps: torch.Tensor, stride: float, input_hw: tuple[int, int],
                out_hw: tuple[int, int], origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Feature-map heat maps -> image heat maps.

    The map is cropped to the cells that cover the image in the network input
    (``ceil((origin + input) / stride)``), upsampled bilinearly by ``stride``, cropped to
    the image (``input_hw`` from ``origin``) and resized bilinearly to ``out_hw`` (e.g. the
    original image). Both steps take convex combinations of cells, so maps >= 0 stay >= 0.

    Args:
        maps: (N, h, w) on a feature map of the given stride (padded batch size allowed).
        stride: the feature map's stride in input pixels.
        input_hw: (h_in, w_in) the image's size in the network input (unpadded).
        out_hw: (H, W) output size.
        origin: (top, left) of the image in the network input
            (:func:`~odamtrain.inference.image_window`).
    Returns:
        (N, H, W).
    """
    n = maps.shape[0]
    (top, left), (h_in, w_in) = origin, input_hw
    hc, wc = math.ceil((top + h_in) / stride), math.ceil((left + w_in) / stride)
    if n == 0:
        return maps.new_zeros(0, *out_hw)
    out_cells = out_hw[0] * out_hw[1]
    if out_cells * wc > 8 * (h_in * w_in + out_cells):
        # a large output: two bilinear passes cost less than the dense matrices
        x = F.interpolate(maps[:, None, :hc, :wc], size=(hc * int(round(stride)),
                                                          wc * int(round(stride))),
                          mode='bilinear', align_corners=False)[..., top:top + h_in,
                                                                left:left + w_in]
        if tuple(x.shape[-2:]) != tuple(out_hw):
            x = F.interpolate(x, size=tuple(out_hw), mode='bilinear', align_corners=False)
        return x[:, 0]
    # a small output (e.g. Odam-NMS's short edge 50): one matrix per axis
    rows = _resize_matrix(hc, stride, top, h_in, out_hw[0], maps)  # [H, hc]
    cols = _resize_matrix(wc, stride, left, w_in, out_hw[1], maps)  # [W, wc]
    return rows @ maps[:, :hc, :wc] @ cols.T


def _resize_matrix(cells: int, stride: float, start: int, size_in: int, size_out: int,
                   like: torch.Tensor) -> torch.Tensor:
    """(size_out, cells): :func:`resize_maps` along one axis as a matrix: linear upsampling
    of ``cells`` by the integer stride, crop to ``size_in`` from ``start``, linear
    resampling to ``size_out`` (both like ``F.interpolate(..., align_corners=False)``;
    bilinear resizing is separable, so one matrix per axis gives the two-step resize in two
    products)."""
    eye = torch.eye(cells, dtype=like.dtype, device=like.device)[None]  # [1, cells, cells]
    up = F.interpolate(eye, size=cells * int(round(stride)), mode='linear',
                       align_corners=False)[0, :, start:start + size_in]  # [cells, size_in]
    if size_in != size_out:
        up = F.interpolate(up[None], size=size_out, mode='linear', align_corners=False)[0]
    return up.T


def resample_maps(maps: torch.Tensor, stride: float, out_stride: float,
                  out_hw: tuple[int, int]) -> torch.Tensor:
    """Maps on one feature grid -> the grid of another stride over the same input, bilinearly
    with cell centres aligned (output cell i samples input cell (i + 0.5) * out_stride /
    stride - 0.5), cropped or zero-padded to ``out_hw``. Differentiable (Odam-Train compares
    maps of all FPN levels on the stride-16 grid).

    Args:
        maps: (N, h, w) on the stride-``stride`` grid.
        stride: the maps' stride in input pixels.
        out_stride: the output grid's stride.
        out_hw: (h', w') of the output grid.
    Returns:
        ``(N, *out_hw)``.
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


def paste_roi_maps(maps: torch.Tensor, boxes: torch.Tensor, out_hw) -> torch.Tensor:
    """Paste (N, s, s) RoI maps into their boxes on an (H, W) image, bilinearly, zero
    outside the box.

    Args:
        maps: (N, s, s) RoI maps.
        boxes: (N, 4) x1y1x2y2 in the output image's pixels.
        out_hw: (H, W) of the output.
    Returns:
        (N, H, W).
    """
    h, w = out_hw
    out = maps.new_zeros(maps.shape[0], h, w)
    ys = torch.arange(h, dtype=maps.dtype, device=maps.device) + 0.5
    xs = torch.arange(w, dtype=maps.dtype, device=maps.device) + 0.5
    step = max(1, 2 ** 22 // (h * w))  # the sampling grid is (n, H, W, 2): bound it
    for i in range(0, maps.shape[0], step):
        m, b = maps[i:i + step], boxes[i:i + step]
        n = m.shape[0]
        x1, y1, x2, y2 = (b[:, j, None] for j in range(4))
        gx = 2 * (xs[None] - x1) / (x2 - x1).clamp(min=1e-6) - 1  # [n, W]
        gy = 2 * (ys[None] - y1) / (y2 - y1).clamp(min=1e-6) - 1  # [n, H]
        grid = torch.stack([gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)],
                           -1)
        pasted = F.grid_sample(m[:, None], grid, mode='bilinear', padding_mode='border',
                               align_corners=False)[:, 0]
        inside = (gx.abs() <= 1)[:, None, :] & (gy.abs() <= 1)[:, :, None]
        out[i:i + step] = pasted * inside
    return out
