"""D-RISE (Petsiuk et al., CVPR'21): black-box saliency of detections from random masks.

Shapes: M masks, T target detections, D detections of one masked image, (h, w) the image
inside the network input (the padding is never masked), (H, W) the network input.

For each random mask m (an s x s binary grid, cells kept with probability p, upsampled
bilinearly to (s + 1) cells and cropped at a random shift of less than one cell, as RISE;
at the outer half cell the bilinear upsampling repeats the edge cell where RISE's
scikit-image resize reflects), the detector runs on the masked image; the mask's weight for
target t is the best similarity between t and a detection d of the masked image,

    w_t(m) = max_d IoU(t, d) * [label(d) = label(t)] * score(d),

(D-RISE's IoU x cosine(class probabilities) x objectness with mmdet's outputs: a detection
carries one label and one score, so the class vector is one-hot and the score plays the
objectness; :func:`odamtrain.structures.best_candidates`). Three estimators of the
saliency, per pixel x, from the same masks and weights:

* ``'mean'``: sum_m w(m) m(x) / M, the paper's (RISE's) estimator. It carries how often
  each pixel happened to be kept (its coverage) as noise, which dominates at a few hundred
  masks;
* ``'coverage'``: sum_m w(m) m(x) / sum_m m(x) (xaitk-saliency's ``DRISEScoring``): the mean
  weight of the masks that kept x; the coverage divided out, plus a constant offset (the
  mean weight) over the whole image;
* ``'contrast'`` (default): ReLU of the least-squares slope of w on m(x),
  Cov(w, m(x)) / Var(m(x)); for binary masks E[w | x kept] - E[w | x masked]. It uses the
  masks that removed x as well as those that kept it (about twice the signal-to-noise of
  'coverage' at the same M) and has no offset: 0 where keeping x does not raise the score.

docs/benchmarks.md measures their split-half self-agreement against M, beside xaitk's.

Masks go through the detector in batches and are accumulated online; every target of an
image shares the same masks.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .masking import masked_evidence, masked_target_maps
from .settings import DRISE_ESTIMATORS, DriseSettings

__all__ = ['ESTIMATORS', 'DriseSums', 'drise_grids', 'drise_masks', 'drise_accumulate',
           'drise_estimate', 'drise_saliency', 'drise_target_maps']

ESTIMATORS = DRISE_ESTIMATORS


def drise_grids(num: int, grid: int, keep_prob: float, hw: tuple[int, int],
                generator: torch.Generator):
    """The random part of ``num`` masks: cells (num, grid, grid) float 0/1 (kept with
    probability ``keep_prob``) and shifts (num, 2) (dy, dx) in [0, cell) pixels, with cell =
    (ceil(H / grid), ceil(W / grid)). Drawn all at once, so the masks do not depend on how
    they are batched."""
    ch, cw = math.ceil(hw[0] / grid), math.ceil(hw[1] / grid)
    cells = (torch.rand(num, grid, grid, generator=generator) < keep_prob).float()
    shifts = torch.stack([torch.randint(0, ch, (num,), generator=generator),
                          torch.randint(0, cw, (num,), generator=generator)], 1)
    return cells, shifts


def drise_masks(cells: torch.Tensor, shifts: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(n, H, W) masks in [0, 1]: the cells upsampled bilinearly to (grid + 1) cells of
    ceil(H / grid) x ceil(W / grid) pixels, cropped to (H, W) at their shifts."""
    h, w = hw
    grid = cells.shape[-1]
    ch, cw = math.ceil(h / grid), math.ceil(w / grid)
    up = F.interpolate(cells[:, None], size=((grid + 1) * ch, (grid + 1) * cw),
                       mode='bilinear', align_corners=False)[:, 0]
    return torch.stack([up[i, y:y + h, x:x + w]
                        for i, (y, x) in enumerate(shifts.tolist())])


class DriseSums(NamedTuple):
    """What the estimators need, accumulated in float64 over M masks m and weights w (T
    targets): ``weighted`` (T, h, w) sum w m, ``coverage`` (h, w) sum m, ``squares`` (h, w)
    sum m^2, ``weight_sum`` (T,) sum w, ``count`` M."""
    weighted: torch.Tensor
    coverage: torch.Tensor
    squares: torch.Tensor
    weight_sum: torch.Tensor
    count: int


def drise_accumulate(predict: Callable, inputs: torch.Tensor, target_boxes: torch.Tensor,
                     target_labels: torch.Tensor, cells: torch.Tensor, shifts: torch.Tensor,
                     image_hw: tuple[int, int], fill: torch.Tensor, batch_size: int = 32,
                     progress: Callable | None = None, origin: tuple[int, int] = (0, 0)):
    """Run the masks of ``cells`` / ``shifts`` (:func:`drise_grids`) through the detector.

    Args:
        predict: masked inputs (b, 3, H, W) -> b detections, each (boxes (D, 4), labels (D,),
            scores (D,)) in the pixels of ``target_boxes``.
        inputs: (1, 3, H, W); the masks cover the image in it (``image_hw`` from
            ``origin``, (top, left)), the rest (padding) is left as it is.
        target_boxes: (T, 4) x1y1x2y2.
        target_labels: (T,).
        fill: (3, 1, 1) what a masked pixel becomes, in ``inputs``' units.
    Returns:
        :class:`DriseSums` of these masks.
    """
    h, w = image_hw
    sums = dict(dtype=torch.float64, device=inputs.device)  # contrast subtracts large sums
    weighted = torch.zeros(len(target_boxes), h, w, **sums)
    coverage, squares = torch.zeros(h, w, **sums), torch.zeros(h, w, **sums)
    weight_sum = torch.zeros(len(target_boxes), **sums)
    for start in range(0, len(cells), batch_size):
        sl = slice(start, start + batch_size)
        masks = drise_masks(cells[sl].to(inputs), shifts[sl], (h, w))
        weights = masked_evidence(predict, inputs, masks, target_boxes, target_labels, fill,
                                  origin).double()  # [b, T]
        masks = masks.double()
        weighted += torch.einsum('bt,bhw->thw', weights, masks)
        coverage += masks.sum(0)
        squares += (masks * masks).sum(0)
        weight_sum += weights.sum(0)
        if progress is not None:
            progress(len(masks))
    return DriseSums(weighted, coverage, squares, weight_sum, len(cells))


def drise_estimate(sums: DriseSums, estimator: str = 'contrast') -> torch.Tensor:
    """(T, h, w) saliency from :func:`drise_accumulate`'s sums (see module): 'mean'
    divides by the number of masks, 'coverage' by each pixel's coverage, 'contrast' is
    the ReLU of the slope of w on m(x); 0 where a pixel was never kept (or always)."""
    weighted, coverage, n = sums.weighted, sums.coverage, sums.count
    if estimator == 'mean':
        return weighted / n
    if estimator == 'coverage':
        return torch.where(coverage > 0, weighted / coverage.clamp(min=1e-12), 0.)
    if estimator == 'contrast':
        covariance = weighted - sums.weight_sum[:, None, None] * coverage / n
        variance = sums.squares - coverage * coverage / n
        slope = covariance / variance.clamp(min=1e-12)
        return torch.where(variance > 1e-9 * n, slope, 0.).clamp(min=0)
    raise ValueError(f'estimator must be one of {ESTIMATORS}, got {estimator!r}')


def drise_saliency(predict: Callable, inputs: torch.Tensor, target_boxes: torch.Tensor,
                   target_labels: torch.Tensor, settings: DriseSettings = DriseSettings(),
                   fill: float | torch.Tensor = 0., image_hw: tuple[int, int] | None = None,
                   progress: Callable | None = None,
                   origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """D-RISE saliency of T targets of one image.

    Args:
        predict: masked inputs (b, 3, H, W) -> b detections, each (boxes (D, 4), labels (D,),
            scores (D,)) in the pixels of ``target_boxes``.
        inputs: (1, 3, H, W) the image as the detector takes it.
        target_boxes: (T, 4) x1y1x2y2.
        target_labels: (T,).
        settings: the masks (``num_masks``, ``grid``, ``keep_prob``, ``seed``: same seed,
            same masks), ``batch_size`` masked images per forward and the ``estimator``
            (module).
        fill: what a masked pixel becomes (a value or a (3,) per channel, in ``inputs``'
            units; D-RISE multiplies the image by the mask, i.e. black).
        image_hw: the image's (h, w) inside ``inputs``, from ``origin`` (top, left) (the
            rest is padding, not masked); None: all of it.
        progress: called with the number of masks done after each batch.
        origin: (top, left) of the image inside ``inputs``.
    Returns:
        (T, h, w) saliency.
    """
    s = settings
    hw = tuple(image_hw or inputs.shape[-2:])
    cells, shifts = drise_grids(s.num_masks, s.grid, s.keep_prob, hw,
                                torch.Generator().manual_seed(s.seed))
    fill = torch.as_tensor(fill, dtype=inputs.dtype, device=inputs.device).reshape(-1, 1, 1)
    sums = drise_accumulate(predict, inputs, target_boxes, target_labels, cells, shifts, hw,
                            fill, s.batch_size, progress, origin)
    return drise_estimate(sums, s.estimator).to(inputs.dtype)


def drise_target_maps(model, inputs: torch.Tensor, meta: dict, boxes: torch.Tensor,
                      labels: torch.Tensor, map_size='image',
                      settings: DriseSettings = DriseSettings(),
                      progress: Callable | None = None) -> torch.Tensor:
    """D-RISE maps of T targets (detections, or GT boxes to explain missed objects) of one
    preprocessed image of an mmdet detector; masked pixels become black, the padding of the
    input stays as it is. Cost: ``num_masks / batch_size`` batched forwards, shared by the
    targets.

    Args:
        model: an mmdet detector.
        inputs: (1, 3, H_in, W_in) the data preprocessor's output.
        meta: the image's metainfo.
        boxes: (T, 4) x1y1x2y2 in original pixels.
        labels: (T,).
        map_size: 'image' or the maps' short edge.
        settings: the masks and the estimator.
        progress: called with the number of masks done after each batch.

    Returns:
        Tensor: (T, H, W) at ``map_size``.
    """
    return masked_target_maps(drise_saliency, model, inputs, meta, boxes, labels, map_size,
                              settings, progress)
