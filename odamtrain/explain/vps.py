"""VPS, visual precision search (Chen et al., CVPR'25): attribution of one detection by a
search over image sub-regions.

Shapes: n sub-regions (masks (n, H, W) bool partitioning the image), (H, W) the network input.

Sub-regions: SLICO superpixels (the authors' choice; scikit-image's ``slic(...,
slic_zero=True)``) or a grid of cells, over the unpadded image.

For a target (box, class), g(image) = max over the detections d of IoU(d, target) * score(d)
* [same class] (:func:`odamtrain.structures.detection_evidence`, 'vps'), and for a set S of
regions F(S) = g(image keeping only S) + (1 - g(image with S removed)) (removed pixels
become the baseline, e.g. black). The search orders the regions:

* ``'greedy'`` (the paper): S grows by the region that maximises F; each step evaluates
  every remaining region in batched forwards (2 images per candidate): n (n + 1) + 2
  images for the full order;
* ``'windowed'``: the first ``head`` steps are the greedy search's (every remaining region
  evaluated); then each step re-evaluates only the ``window`` remaining regions of highest
  last-known marginal gain F(S + r) - F(S) and adds the best (lazy greedy, Minoux 1978,
  with a fixed window; defaults ``head`` 1, ``window`` 6); with ``window`` 0 the regions
  left follow in the order of their gains at the last step, with no further forwards. In
  the spirit of PhaseWin's phases and LiMA's cheaper search. Images: 2 (head n -
  head (head - 1) / 2 + window (n - head)) + 2 about; with ``head`` or ``window`` >= n it is
  the greedy search exactly. ``box_slots`` of the window's places (default 3 of 6; at most
  all of them) go round-robin to the remaining regions that overlap the target box (the
  longest unevaluated first; docs/benchmarks.md#vps-budgeted-search): F is far
  from submodular there (removing a part of the object matters more once other parts are
  gone), so their remembered gains go stale upwards and a window on remembered gains alone
  never looks at them again. Same number of forwards.

``max_steps`` bounds either. Attribution (:func:`rank_attribution`): the k-th region of the
order gets the sum of the absolute marginal gains ``|F(S_j) - F(S_{j-1})|`` of the steps
after it, j > k (decreasing with rank); regions never reached get 0.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from skimage.segmentation import slic

from odamtrain.inference import image_window, input_to_rgb, pixel_to_input
from odamtrain.structures import detection_evidence

from .evidence import evidence_fn
from .heatmap import output_size, resize_maps
from .settings import VpsSettings

__all__ = ['grid_regions', 'slico_regions', 'box_regions', 'greedy_order', 'search_windows',
           'windowed_order', 'rank_attribution', 'vps_forward_count', 'vps_saliency',
           'vps_target_maps']


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


def slico_regions(image: np.ndarray | torch.Tensor, n: int = 64) -> torch.Tensor:
    """(m, H, W) bool: SLICO superpixels (Achanta et al., TPAMI'12; scikit-image's
    ``slic(..., slic_zero=True)``) of an (H, W, 3) uint8 RGB image, about ``n`` of them
    (scikit-image decides the exact number m), numbered in raster order of first pixel."""
    image = np.asarray(image.cpu() if isinstance(image, torch.Tensor) else image)
    labels = slic(image, n_segments=n, slic_zero=True, start_label=0, channel_axis=-1)
    _, first, inverse = np.unique(labels.ravel(), return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))  # label -> its raster order
    cell = torch.from_numpy(rank[inverse].reshape(labels.shape))
    return cell[None] == torch.arange(len(first))[:, None, None]


def box_regions(regions: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """(n,) bool: the regions (n, H, W) with a pixel centre in ``box`` (x1y1x2y2, the
    regions' pixels)."""
    h, w = regions.shape[-2:]
    box = box.detach().cpu().double()
    ys, xs = torch.arange(h, dtype=box.dtype) + 0.5, torch.arange(w, dtype=box.dtype) + 0.5
    ys, xs = (ys >= box[1]) & (ys <= box[3]), (xs >= box[0]) & (xs <= box[2])
    ys, xs = ys.to(regions.device), xs.to(regions.device)
    return regions[:, ys][:, :, xs].flatten(1).any(1)


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


def search_windows(n: int, window: int, head: int, steps: int | None = None) -> list[int]:
    """How many remaining regions each step of the windowed search evaluates: all of them
    in the first ``head`` steps (exact greedy: they decide the head of the ranking, which
    the insertion and deletion curves weigh most), then ``window`` (never more than
    remain); with ``window`` 0 the search stops evaluating after the head."""
    out = []
    for k in range(n if steps is None else min(n, steps)):
        size = n - k if k < max(head, 1) else min(n - k, window)
        if size == 0:
            break
        out.append(size)
    return out


def windowed_order(objective: Callable, n: int, window: int, head: int = 1,
                   max_steps: int | None = None, start: float | None = None,
                   focus: torch.Tensor | None = None, focus_slots: int = 0):
    """Windowed lazy greedy (module): like :func:`greedy_order` for the first ``head``
    steps, then each step evaluates only ``window`` remaining elements: up to
    ``focus_slots`` of the ``focus`` elements ((n,) bool) evaluated longest ago (ties:
    higher last gain, then lower index), the rest of highest last-known marginal gain
    (ties: the lower index). With ``window`` 0 the elements left after the head follow in
    the order of their last gains, F estimated as the running sum of those gains.
    ``start``: the objective of the empty set (None: evaluated here). ``window >= n`` or
    ``head >= n`` give :func:`greedy_order`'s result. Returns (order, values)."""
    chosen = torch.zeros(n, dtype=torch.bool)
    gain = torch.zeros(n, dtype=torch.float64)
    seen = torch.zeros(n, dtype=torch.long)  # the step each element was last evaluated at
    focus = torch.zeros(n, dtype=torch.bool) if focus is None else focus.bool().cpu()
    current = float(objective(chosen[None])[0]) if start is None else float(start)
    order, values = [], []
    for step, size in enumerate(search_windows(n, window, head, max_steps)):
        rest = (~chosen).nonzero()[:, 0]
        if size < len(rest):
            rest = _window(rest, gain, seen, focus, size, min(focus_slots, size))
        seen[rest] = step
        cand = chosen.repeat(len(rest), 1)
        cand[torch.arange(len(rest)), rest] = True
        f = objective(cand).double()
        gain[rest] = f - current
        best = int(torch.argmax(f))
        chosen[rest[best]] = True
        current = float(f[best])
        order.append(int(rest[best]))
        values.append(current)
    steps = n if max_steps is None else min(n, max_steps)
    if len(order) < steps:  # window 0: the rest by their last gains, without forwards
        rest = (~chosen).nonzero()[:, 0]
        rest = rest[torch.argsort(-gain[rest], stable=True)][:steps - len(order)]
        order += rest.tolist()
        values += (current + torch.cumsum(gain[rest], 0)).tolist()
    return order, values


def _window(rest, gain, seen, focus, size: int, slots: int) -> torch.Tensor:
    """The ``size`` elements of ``rest`` a windowed step evaluates (:func:`windowed_order`),
    in ascending index (ties of F as in greedy)."""
    picked = rest[:0]
    if slots:  # the longest unevaluated first, then the higher last gain, then lower index
        pool = rest[focus[rest]]
        pool = pool[torch.argsort(-gain[pool], stable=True)]
        picked = pool[torch.argsort(seen[pool], stable=True)][:slots]
    others = rest[~torch.isin(rest, picked)]
    top = others[torch.argsort(-gain[others], stable=True)[:size - len(picked)]]
    return torch.cat([picked, top]).sort().values


def rank_attribution(order: list[int], values: list[float], n: int,
                     start: float = 0.0) -> torch.Tensor:
    """(n,) attribution of the paper (and the authors' ``add_value``): region order[k] gets
    the gains of the regions ranked after it, ``sum_{j > k} |F_j - F_{j-1}|``
    (``F_{-1} = start``, the objective of the empty set), so that after min-max the first
    region is 1 and the last 0. Regions not in ``order`` get 0.

    The authors leave one case undefined (their min-max divides 0 by 0): every gain after
    the first is 0, the first region alone reached F(V). Then the first region gets its own
    gain (1 after min-max, the rest 0); with no gain at all the map is 0. The authors also
    accumulate in float16; this is float64."""
    gains = (torch.tensor(values, dtype=torch.float64) - torch.tensor(
        [start] + values[:-1], dtype=torch.float64)).abs()
    after = gains.flip(0).cumsum(0).flip(0) - gains  # sum_{j > k}
    if len(after) and after[0] == 0:
        after[0] = gains[0]
    out = torch.zeros(n, dtype=torch.float64)
    out[torch.tensor(order, dtype=torch.long)] = after
    return out


def vps_forward_count(settings: VpsSettings = VpsSettings(), regions: int | None = None) -> int:
    """Images one VPS search runs through the detector: 2 for the empty set, then 2 per
    evaluated region at each step (greedy: every remaining one, regions (regions + 1) for the
    full order; windowed: :func:`search_windows`).

    Args:
        settings: the search.
        regions: sub-regions (default ``settings.regions``).

    Returns:
        int
    """
    s = settings
    n = s.regions if regions is None else regions
    if s.search == 'windowed':
        return 2 + 2 * sum(search_windows(n, s.window, s.head, s.max_steps))
    steps = n if s.max_steps is None else min(n, s.max_steps)
    return 2 + 2 * sum(n - k for k in range(steps))


def vps_saliency(predict: Callable, inputs: torch.Tensor, target_box: torch.Tensor,
                 target_label: int, regions: torch.Tensor, baseline: torch.Tensor,
                 settings: VpsSettings = VpsSettings(),
                 input_scale: tuple[float, float] = (1.0, 1.0),
                 input_origin: tuple[float, float] = (0.0, 0.0)):
    """VPS map of one target.

    Args:
        predict: images (b, 3, H, W) -> b detections (boxes, labels, scores) in the pixels of
            ``target_box``.
        inputs: (1, 3, H, W).
        target_box: (4,) x1y1x2y2 of the explained object.
        target_label: its class.
        regions: (n, H, W) bool sub-regions.
        baseline: (3, H, W) what removed pixels become.
        settings: the search (``search``, ``window``, ``head``, ``box_slots``,
            ``max_steps``: module) and ``batch_size`` images per forward (its ``regions``
            and ``segmentation`` are the caller's, who made ``regions``).
        input_scale: (w, h) factors from the pixels of ``target_box`` to the input's
            (mmdet's ``scale_factor``), to find the regions of the box.
        input_origin: (x, y) of the image's left and top in the input.
    Returns:
        (saliency (H, W) >= 0, order, values, forwards): the map (attribution of each region
        spread over its pixels), the search order, F after each step and the number of
        images run through the detector.
    """
    image = inputs[0]
    masks = regions.to(image)
    forwards = 0
    s = settings

    def g(images):
        out = []
        for start in range(0, len(images), s.batch_size):
            out += [detection_evidence(*d, target_box, target_label, 'vps')
                    for d in predict(images[start:start + s.batch_size])]
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
    if s.search == 'greedy':
        order, values = greedy_order(objective, len(regions), s.max_steps)
    else:
        box = (target_box * target_box.new_tensor(input_scale).repeat(2)
               + target_box.new_tensor(input_origin).repeat(2))
        order, values = windowed_order(objective, len(regions), s.window, s.head, s.max_steps,
                                       float(empty), box_regions(regions, box), s.box_slots)
    attribution = rank_attribution(order, values, len(regions), float(empty))
    saliency = (attribution.to(masks)[:, None, None] * masks).sum(0)
    return saliency, order, values, forwards


def vps_target_maps(model, inputs: torch.Tensor, meta: dict, boxes: torch.Tensor,
                    labels: torch.Tensor, map_size='image',
                    settings: VpsSettings = VpsSettings()) -> torch.Tensor:
    """VPS maps of T targets (detections, or GT boxes to explain missed objects) of one
    preprocessed image of an mmdet detector. Sub-regions: about ``settings.regions`` SLICO
    superpixels or grid cells (``segmentation``) over the unpadded input, shared by the
    targets; removed pixels black, the padding left as it is. Cost per target:
    :func:`vps_forward_count` images in batches of ``batch_size``.

    Args:
        model: an mmdet detector.
        inputs: (1, 3, H_in, W_in) the data preprocessor's output.
        meta: the image's metainfo.
        boxes: (T, 4) x1y1x2y2 in original pixels.
        labels: (T,).
        map_size: 'image' or the maps' short edge.
        settings: the regions and the search.

    Returns:
        Tensor: (T, H, W) at ``map_size``.
    """
    regions, segmentation = settings.regions, settings.segmentation
    (top, left), (h, w) = image_window(meta)
    window = (slice(None), slice(top, top + h), slice(left, left + w))
    out_hw = output_size(meta['ori_shape'][:2], map_size)
    if not len(boxes):
        return inputs.new_zeros(0, *out_hw)
    cells = (slico_regions(input_to_rgb(model, inputs[0][window]), regions)
             if segmentation == 'slico' else grid_regions((h, w), regions))
    masks = torch.zeros(len(cells), *inputs.shape[-2:], dtype=torch.bool)
    masks[window] = cells
    baseline = inputs[0].clone()  # the padding stays as it is in every image
    baseline[window] = pixel_to_input(model, inputs.new_zeros(3, h, w))
    maps, predict = [], evidence_fn(model, meta, settings.evidence)
    with torch.no_grad():
        for box, label in zip(boxes, labels.tolist()):
            maps.append(vps_saliency(predict, inputs, box, label, masks, baseline, settings,
                                     meta.get('scale_factor', (1.0, 1.0))[:2], (left, top))[0])
    return resize_maps(torch.stack(maps), 1, (h, w), out_hw, (top, left))
