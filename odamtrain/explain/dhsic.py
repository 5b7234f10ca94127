"""D-HSIC: the HSIC attribution method (Novello, Fel & Vigouroux, "Making Sense of
Dependence: Efficient Black-box Explanations Using Dependence Measure", NeurIPS'22) for a
detection: how much the detector's evidence for the target depends on each cell of a grid
being kept, from one set of masked images shared by the image's targets.

Shapes: p designs, d = grid^2 cells, T targets, (h, w) the image inside the network input
(the padding is never masked).

* Designs: p binary vectors over the cells, a scrambled Sobol sequence thresholded at 1/2
  (xplique's default sampler; the paper's Latin hypercube is the other choice), upsampled
  to the image by nearest neighbour; a masked cell's pixels become ``fill`` (black).
* Output: the evidence y(m) = max_d IoU(t, d) * [label(d) = label(t)] * score(d) of the
  masked image (as D-RISE's weight, :func:`odamtrain.explain.masking.masked_evidence`).
* Estimator (xplique's ``BinaryEstimator``): per cell i, with the binary kernel
  k(x, x') = 1.5 if x = x' else 0.5 on the cell's design values and the RBF kernel
  l(y, y') = exp(-(y - y')^2 / (2 sigma^2)) on the outputs, sigma the median of y,

      HSIC_i = tr(K_i H L H) / p = s_i^T (H L H) s_i / (2 p),   s_i = 2 x_i - 1,

  H = I - 1/p (the double-centred L sums to 0, which leaves the quadratic form). Where the
  median of y is 0 (the target is lost in most masked images) xplique's kernel divides by
  zero; here sigma is then the median of the nonzero ``|y - y'|`` (Gretton's heuristic), and a
  constant y gives a zero map.
* Map: the (grid, grid) scores upsampled bicubically to the image (xplique: OpenCV's cubic
  resize), negative overshoot clipped at 0.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .masking import masked_evidence, masked_target_maps
from .settings import DhsicSettings

__all__ = ['hsic_designs', 'hsic_scores', 'dhsic_saliency', 'dhsic_target_maps']


def hsic_designs(num: int, grid: int, seed: int) -> torch.Tensor:
    """Binary designs: a scrambled Sobol sequence over the cells, kept where >= 1/2.

    Args:
        num: designs (masked images).
        grid: cells per side.
        seed: of the scrambling (same seed, same designs).

    Returns:
        Tensor: (num, grid, grid) float 0 / 1 (1: the cell is kept).
    """
    engine = torch.quasirandom.SobolEngine(grid * grid, scramble=True, seed=seed)
    return (engine.draw(num, dtype=torch.float64) >= 0.5).float().reshape(num, grid, grid)


def _output_width(y: torch.Tensor) -> float:
    """sigma of the outputs' RBF kernel: the median of y, or (median 0) the median of the
    nonzero pairwise distances; 0 for a constant y."""
    if bool((y == y[0]).all()):
        return 0.0
    median = float(torch.quantile(y, 0.5))  # linear between the middle two, as xplique's
    if median > 0:
        return median
    distances = (y[:, None] - y[None]).abs()
    return float(torch.quantile(distances[distances > 0], 0.5))


def hsic_scores(designs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """HSIC between each cell's design values and each target's outputs (module).

    Args:
        designs: (p, d) 0 / 1.
        outputs: (p, T) the evidence of each design's masked image.

    Returns:
        Tensor: (T, d) float64 >= 0 (0 for a target whose outputs are constant).
    """
    p = len(designs)
    signs = 2 * designs.double() - 1  # [p, d]
    centre = torch.eye(p, dtype=torch.float64) - 1.0 / p
    scores = []
    for y in outputs.double().T:  # [p]
        width = _output_width(y)
        if width == 0:
            scores.append(torch.zeros(designs.shape[1], dtype=torch.float64))
            continue
        kernel = torch.exp(-(y[:, None] - y[None]) ** 2 / (2 * width ** 2))  # [p, p]
        centred = centre @ kernel @ centre
        scores.append(torch.einsum('pd,pq,qd->d', signs, centred, signs) / (2 * p))
    return torch.stack(scores).clamp(min=0) if scores else outputs.new_zeros(0, designs.shape[1])


def dhsic_saliency(predict: Callable, inputs: torch.Tensor, target_boxes: torch.Tensor,
                   target_labels: torch.Tensor, settings: DhsicSettings = DhsicSettings(),
                   fill: float | torch.Tensor = 0., image_hw: tuple[int, int] | None = None,
                   progress: Callable | None = None,
                   origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """D-HSIC saliency of T targets of one image.

    Args:
        predict: masked inputs (b, 3, H, W) -> b detections, each (boxes (D, 4), labels (D,),
            scores (D,)) in the pixels of ``target_boxes``.
        inputs: (1, 3, H, W) the image as the detector takes it.
        target_boxes: (T, 4) x1y1x2y2.
        target_labels: (T,).
        settings: the designs (``num_designs``, ``grid``, ``seed``) and ``batch_size``
            masked images per forward.
        fill: what a masked pixel becomes (a value or a (3,) per channel, in ``inputs``'
            units).
        image_hw: the image's (h, w) inside ``inputs``, from ``origin``; None: all of it.
        progress: called with the number of designs done after each batch.
        origin: (top, left) of the image inside ``inputs``.

    Returns:
        Tensor: (T, h, w) saliency >= 0.
    """
    s = settings
    h, w = tuple(image_hw or inputs.shape[-2:])
    designs = hsic_designs(s.num_designs, s.grid, s.seed).to(inputs)
    fill = torch.as_tensor(fill, dtype=inputs.dtype, device=inputs.device).reshape(-1, 1, 1)
    outputs = []
    for start in range(0, len(designs), s.batch_size):
        masks = F.interpolate(designs[start:start + s.batch_size, None], size=(h, w),
                              mode='nearest')[:, 0]
        outputs.append(masked_evidence(predict, inputs, masks, target_boxes, target_labels,
                                       fill, origin))
        if progress is not None:
            progress(len(masks))
    scores = hsic_scores(designs.flatten(1).cpu(), torch.cat(outputs).cpu())  # [T, d]
    cells = scores.reshape(-1, 1, s.grid, s.grid).to(inputs)
    return F.interpolate(cells, size=(h, w), mode='bicubic', align_corners=False)[:, 0] \
        .clamp(min=0)


def dhsic_target_maps(model, inputs: torch.Tensor, meta: dict, boxes: torch.Tensor,
                      labels: torch.Tensor, map_size='image',
                      settings: DhsicSettings = DhsicSettings(),
                      progress: Callable | None = None) -> torch.Tensor:
    """D-HSIC maps of T targets (detections, or GT boxes to explain missed objects) of one
    preprocessed image of an mmdet detector; masked pixels become black, the padding of the
    input stays as it is. Cost: ``num_designs / batch_size`` batched forwards, shared by the
    targets.

    Args:
        model: an mmdet detector.
        inputs: (1, 3, H_in, W_in) the data preprocessor's output.
        meta: the image's metainfo.
        boxes: (T, 4) x1y1x2y2 in original pixels.
        labels: (T,).
        map_size: 'image' or the maps' short edge.
        settings: the designs and the evidence.
        progress: called with the number of designs done after each batch.

    Returns:
        Tensor: (T, H, W) at ``map_size``.
    """
    return masked_target_maps(dhsic_saliency, model, inputs, meta, boxes, labels, map_size,
                              settings, progress)
