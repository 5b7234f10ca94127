"""Masked copies of one image through a black-box detector: the evidence a detector still
gives each target when part of the image is removed (D-RISE, D-HSIC).

Shapes: b masks, T targets, (h, w) the image inside the network input (H, W); the padding
of the input is never masked.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from odamtrain.inference import image_window, pixel_to_input
from odamtrain.structures import best_candidates

from .evidence import evidence_fn
from .heatmap import output_size, resize_maps

__all__ = ['masked_evidence', 'masked_target_maps']


def masked_evidence(predict: Callable, inputs: torch.Tensor, masks: torch.Tensor,
                    target_boxes: torch.Tensor, target_labels: torch.Tensor,
                    fill: torch.Tensor, origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """The detector's evidence for each target on masked copies of one image:
    ``max_d IoU(t, d) * [label(d) = label(t)] * score(d)``
    (:func:`odamtrain.structures.best_candidates`).

    Args:
        predict: images (b, 3, H, W) -> b detections, each (boxes (D, 4), labels (D,),
            scores (D,)) in the pixels of ``target_boxes``.
        inputs: (1, 3, H, W) the image as the detector takes it.
        masks: (b, h, w) in [0, 1]: 1 keeps a pixel, 0 replaces it by ``fill``; they cover
            the image in ``inputs`` from ``origin`` (top, left).
        target_boxes: (T, 4) x1y1x2y2.
        target_labels: (T,).
        fill: (3, 1, 1) what a masked pixel becomes, in ``inputs``' units.
        origin: (top, left) of the image in ``inputs``.

    Returns:
        Tensor: (b, T) evidence, 0 where no detection of the target's class overlaps it.
    """
    (top, left), (h, w) = origin, masks.shape[-2:]
    window = (slice(None), slice(None), slice(top, top + h), slice(left, left + w))
    masked = inputs.repeat(len(masks), 1, 1, 1)
    masked[window] = torch.addcmul(fill, inputs[window] - fill, masks[:, None])
    return torch.stack([best_candidates(*det, target_boxes, target_labels)[1]
                        for det in predict(masked)])


def masked_target_maps(saliency: Callable, model, inputs: torch.Tensor, meta: dict,
                       boxes: torch.Tensor, labels: torch.Tensor, map_size, settings,
                       progress: Callable | None = None) -> torch.Tensor:
    """Maps of T targets of one preprocessed image of an mmdet detector by a masking
    explainer (D-RISE, D-HSIC): masked pixels black, the padding of the input left as it is,
    the evidence read as ``settings.evidence`` says.

    Args:
        saliency: the explainer's ``(predict, inputs, boxes, labels, settings, fill,
            image_hw, progress, origin) -> (T, h, w)``.
        model: an mmdet detector.
        inputs: (1, 3, H_in, W_in) the data preprocessor's output.
        meta: the image's metainfo.
        boxes: (T, 4) x1y1x2y2 in original pixels.
        labels: (T,).
        map_size: 'image' or the maps' short edge.
        settings: the explainer's settings (with ``evidence``).
        progress: called with the number of masked images done after each batch.

    Returns:
        Tensor: (T, H, W) at ``map_size``.
    """
    fill = pixel_to_input(model, inputs.new_zeros(3))
    origin, hw = image_window(meta)
    with torch.no_grad():
        sal = saliency(evidence_fn(model, meta, settings.evidence), inputs, boxes, labels,
                       settings, fill, hw, progress, origin)
    return resize_maps(sal, 1, hw, output_size(meta['ori_shape'][:2], map_size))
