"""VPS, visual precision search (Chen et al., CVPR'25): attribution of one detection by a
greedy search over image sub-regions.

Shapes: n sub-regions (masks (n, H, W) bool partitioning the image), (H, W) the network input.

For a target (box, class), g(image) = max over the detections d of IoU(d, target) * score(d)
* [same class] (:func:`odamtrain.evaluation.functional.detection_evidence`, 'vps'), and for
a set S of regions F(S) = g(image keeping only S) + (1 - g(image with S removed)) (removed
pixels become the baseline, e.g. black). Greedy: S grows by the region that maximises F;
each step evaluates every remaining region in batched forwards (2 images per candidate):
about n (n + 1) forwards for the full order, ``max_steps`` bounds it to about
2 n max_steps. Attribution: the k-th region of the order gets the sum of the absolute
marginal gains |F(S_j) - F(S_{j-1})| of steps j >= k (decreasing with rank, > 0 while the
search still changes F); regions never reached get 0.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from odamtrain.inference import pixel_to_input, predict_fn
from odamtrain.structures import detection_evidence

from .heatmap import output_size, resize_maps

__all__ = ['grid_regions', 'greedy_order', 'rank_attribution', 'vps_forward_count',
           'vps_saliency', 'vps_target_maps']


def grid_regions(hw: tuple[int, int], n: int = 64) -> torch.Tensor:
    """(m, H, W) bool: a rows x cols grid of about ``n`` cells shaped like the image
    (rows * cols close to n, rows / cols close to H / W)."""
    h, w = hw
    rows = max(1, round(math.sqrt(n * h / w)))
    cols = max(1, round(n / rows))
    ry = torch.arange(h) * rows // h  # [H] row of each pixel
    rx = torch.arange(w) * cols // w
    cell = ry[:, None] * cols + rx[None, :]
    return cell[None] == torch.arange(rows * cols)[:, None, None]


def greedy_order(objective: Callable, n: int, max_steps: int | None = None):
    """Greedy maximisation of a set function over n elements.

    Args:
        objective: a (c, n) bool tensor of c candidate sets -> (c,) values (called once per
            step with every remaining extension of the current set).
    Returns:
        (order, values): the elements in the order added, and F after each addition.
    """
    chosen = torch.zeros(n, dtype=torch.bool)
    order, values = [], []
    for _ in range(n if max_steps is None else min(n, max_steps)):
        rest = (~chosen).nonzero()[:, 0]
        cand = chosen.repeat(len(rest), 1)
        cand[torch.arange(len(rest)), rest] = True
        f = objective(cand)
        best = int(torch.argmax(f))  # ties: the lowest region index
        chosen[rest[best]] = True
        order.append(int(rest[best]))
        values.append(float(f[best]))
    return order, values


def rank_attribution(order: list[int], values: list[float], n: int,
                     start: float = 0.0) -> torch.Tensor:
    """(n,) attribution: region order[k] gets sum_{j >= k} |F_j - F_{j-1}| (F_{-1} =
    ``start``, the objective of the empty set); regions not in ``order`` get 0."""
    gains = torch.tensor(values, dtype=torch.float64) - torch.tensor(
        [start] + values[:-1], dtype=torch.float64)
    tail = gains.abs().flip(0).cumsum(0).flip(0)
    out = torch.zeros(n, dtype=torch.float64)
    out[torch.tensor(order, dtype=torch.long)] = tail
    return out


def vps_forward_count(regions: int, max_steps: int | None = None) -> int:
    """Images one VPS search runs through the detector: 2 for the empty set, then 2 per
    remaining region at each greedy step (regions (regions + 1) for the full order)."""
    steps = regions if max_steps is None else min(regions, max_steps)
    return 2 + 2 * sum(regions - k for k in range(steps))


def vps_saliency(predict: Callable, inputs: torch.Tensor, target_box: torch.Tensor,
                 target_label: int, regions: torch.Tensor, baseline: torch.Tensor,
                 max_steps: int | None = None, batch_size: int = 32):
    """VPS map of one target.

    Args:
        predict: images (b, 3, H, W) -> b detections (boxes, labels, scores) in the pixels of
            ``target_box``.
        inputs: (1, 3, H, W); regions: (n, H, W) bool; baseline: (3, H, W) removed pixels.
    Returns:
        (saliency (H, W) >= 0, order, values, forwards): the map (attribution of each region
        spread over its pixels), the search order, F after each step and the number of
        images run through the detector.
    """
    image = inputs[0]
    masks = regions.to(image)
    forwards = 0

    def g(images):
        out = []
        for s in range(0, len(images), batch_size):
            out += [detection_evidence(*d, target_box, target_label, 'vps')
                    for d in predict(images[s:s + batch_size])]
        return torch.tensor(out)

    def objective(sets):
        nonlocal forwards
        keep = (sets.to(masks)[:, :, None, None] * masks).sum(1).clamp(max=1)[:, None]
        only = image * keep + baseline * (1 - keep)
        removed = image * (1 - keep) + baseline * keep
        forwards += 2 * len(sets)
        values = g(torch.cat([only, removed]))
        return values[:len(sets)] + 1 - values[len(sets):]

    empty = objective(torch.zeros(1, len(regions), dtype=torch.bool))[0]
    order, values = greedy_order(objective, len(regions), max_steps)
    attribution = rank_attribution(order, values, len(regions), float(empty))
    saliency = (attribution.to(masks)[:, None, None] * masks).sum(0)
    return saliency, order, values, forwards


def vps_target_maps(model, inputs: torch.Tensor, meta: dict, boxes: torch.Tensor,
                    labels: torch.Tensor, map_size='image', regions: int = 64,
                    max_steps: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """VPS maps (T, H, W) at ``map_size`` of T targets (boxes x1y1x2y2 in original pixels +
    labels: detections, or GT boxes to explain missed objects) of one preprocessed image
    (1, 3, H, W) of an mmdet detector. Sub-regions: a grid of about ``regions`` cells over
    the unpadded input; removed pixels black. Cost per target:
    :func:`vps_forward_count` images in batches of ``batch_size``."""
    h, w = meta['img_shape'][:2]
    out_hw = output_size(meta['ori_shape'][:2], map_size)
    cells = torch.zeros(0, *inputs.shape[-2:], dtype=torch.bool)
    if len(boxes):
        grid = grid_regions((h, w), regions)
        cells = torch.zeros(len(grid), *inputs.shape[-2:], dtype=torch.bool)
        cells[:, :h, :w] = grid
    black = pixel_to_input(model, inputs.new_zeros(3, *inputs.shape[-2:]))
    maps = []
    with torch.no_grad():
        for box, label in zip(boxes, labels.tolist()):
            maps.append(vps_saliency(predict_fn(model, meta), inputs, box, label, cells, black,
                                     max_steps, batch_size)[0])
    return (resize_maps(torch.stack(maps), 1, (h, w), out_hw) if maps
            else inputs.new_zeros(0, *out_hw))
