"""How well a heat map localises its object: pure functions, one heat map at a time.

Shapes: heatmap (H, W) >= 0 on the image's pixel grid; boxes x1y1x2y2 in pixels (pixel
(y, x) belongs to a box when its centre (x + 0.5, y + 0.5) lies inside, edges included).

One NaN policy (as Quantus): every metric is NaN where it is undefined, i.e. when the map
has no energy (all zero) or the explained box covers no pixel centre (a sub-pixel box);
the audit's means skip NaN and count it. Each metric declares its better direction and its
paper (:func:`~odamtrain.evaluation.functional.declaration.metric`); tables and plots read
them from the function. Definitions follow the ODAM paper's evaluation (Zhao & Chan,
TPAMI'24, Sec. 5.1; authors' eval code).
"""
from __future__ import annotations

import math

import torch

from .declaration import metric

__all__ = ['box_mask', 'pointing_game', 'energy_pointing_game', 'compactness',
           'object_discrimination_index']


def box_mask(box, hw: tuple[int, int], device=None) -> torch.Tensor:
    """The pixels whose centres lie in a box.

    Args:
        box: (4,) x1y1x2y2 in pixels.
        hw: (H, W) of the grid.
        device: of the mask.

    Returns:
        Tensor: (H, W) bool.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    ys = torch.arange(hw[0], device=device, dtype=torch.float64) + 0.5
    xs = torch.arange(hw[1], device=device, dtype=torch.float64) + 0.5
    return ((ys >= y1) & (ys <= y2))[:, None] & ((xs >= x1) & (xs <= x2))[None, :]


def _defined(heatmap: torch.Tensor, own: torch.Tensor) -> bool:
    """The policy: a map with energy and a box with at least one pixel centre."""
    return bool(own.any()) and float(heatmap.sum()) > 0


def _argmax_yx(heatmap: torch.Tensor) -> tuple[int, int]:
    i = int(torch.argmax(heatmap))  # the first maximum in row-major order
    return i // heatmap.shape[1], i % heatmap.shape[1]


@metric('higher', 'Zhang et al., Top-down neural attention by excitation backprop, ECCV 2016')
def pointing_game(heatmap: torch.Tensor, box) -> float:
    """Whether the map's maximum (the first in row-major order) lies inside the box (no
    tolerance).

    Args:
        heatmap: (H, W) >= 0 on the image's grid.
        box: (4,) x1y1x2y2 of the explained object in the same pixels.

    Returns:
        float: 1.0 or 0.0 (a float, so that means and NaN work); NaN where undefined (module).
    """
    own = box_mask(box, heatmap.shape, heatmap.device)
    if not _defined(heatmap, own):
        return math.nan
    y, x = _argmax_yx(heatmap)
    return float(own[y, x])


@metric('higher', 'Wang et al., Score-CAM, CVPR Workshops 2020')
def energy_pointing_game(heatmap: torch.Tensor, box) -> float:
    """Share of the map's energy inside the box: sum_box H / sum H.

    Args:
        heatmap: (H, W) >= 0 on the image's grid.
        box: (4,) x1y1x2y2 of the explained object in the same pixels.

    Returns:
        float: in [0, 1]; NaN where undefined (module).
    """
    own = box_mask(box, heatmap.shape, heatmap.device)
    if not _defined(heatmap, own):
        return math.nan
    return float(heatmap[own].sum()) / float(heatmap.sum())


@metric('lower', 'Zhao & Chan, ODAM, ICLR 2023 / TPAMI 2024, Sec. 5.1')
def compactness(heatmap: torch.Tensor, box) -> float:
    """Spread of the energy around the map's maximum relative to the box:
    sqrt(sum H d^2 / (sum H * (w^2 + h^2) / 4)), d = pixel distance to the argmax, (w, h) the
    box size.

    Args:
        heatmap: (H, W) >= 0 on the image's grid.
        box: (4,) x1y1x2y2 of the explained object in the same pixels.

    Returns:
        float: ~1 = as spread as the box; NaN where undefined (module).
    """
    if not _defined(heatmap, box_mask(box, heatmap.shape, heatmap.device)):
        return math.nan
    total = float(heatmap.sum())
    w, h = float(box[2]) - float(box[0]), float(box[3]) - float(box[1])
    y0, x0 = _argmax_yx(heatmap)
    ys = torch.arange(heatmap.shape[0], device=heatmap.device, dtype=torch.float64) - y0
    xs = torch.arange(heatmap.shape[1], device=heatmap.device, dtype=torch.float64) - x0
    d2 = ys[:, None] ** 2 + xs[None, :] ** 2
    return math.sqrt(float((heatmap.double() * d2).sum()) / (total * (w * w + h * h) / 4))


@metric('lower', 'Zhao & Chan, ODAM, ICLR 2023 / TPAMI 2024, Sec. 5.1')
def object_discrimination_index(heatmap: torch.Tensor, box, other_boxes) -> float:
    """ODI: the energy on OTHER objects / the energy on all objects; pixels of the target box
    count as the target's even where other boxes overlap it.

    Args:
        heatmap: (H, W) >= 0 on the image's grid.
        box: (4,) x1y1x2y2 of the explained object in the same pixels.
        other_boxes: (M, 4) the image's other GT boxes (M may be 0: ODI 0 when the map has
            energy on its box).

    Returns:
        float: 0 = the map stays on its object; NaN where undefined (module) and when no
        energy falls on any object box.
    """
    own = box_mask(box, heatmap.shape, heatmap.device)
    if not _defined(heatmap, own):
        return math.nan
    others = torch.zeros_like(own)
    for b in other_boxes:
        others |= box_mask(b, heatmap.shape, heatmap.device)
    others &= ~own
    on_own, on_others = float(heatmap[own].sum()), float(heatmap[others].sum())
    if on_own + on_others <= 0:
        return math.nan
    return on_others / (on_own + on_others)
