"""Faithfulness of a heat map: delete (or insert) pixels in the order of their heat and watch
the detector's evidence for the explained object fall (or rise). Pure functions around a
``predict`` callable.

Shapes: image (3, H, W) as the detector takes it; heatmap (H, W) on the same grid; boxes
x1y1x2y2 in the pixels ``predict`` returns.

Protocols:

* ODAM (Zhao & Chan, TPAMI'24, Sec. 5.1): ``steps`` steps of area(target box) / steps pixels;
  deletion replaces pixels by the ``baseline`` (uniform noise in the paper), insertion starts
  from the ``baseline`` (zeros) and restores them; the evidence is
  ``max_d score(d) * [same class] * [IoU(d, target) > 0.5]`` (``evidence='odam'``).
* VPS (Chen et al., CVPR'25): evidence ``max_d IoU(d, target) * score(d) * [same class]``
  (``'vps'``), or its class-only / IoU-only parts (``'class'``, ``'iou'``).

AUC: trapezoid over the fraction of the steps done, in [0, 1]. The metrics of the curves
declare their direction and paper (:func:`deletion_auc`, :func:`insertion_auc`,
:func:`highest_score`, :func:`explanation_success`); NaN where undefined (a curve of fewer
than two points).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from odamtrain.structures import detection_evidence

from .declaration import metric

__all__ = ['perturbed_images', 'curve_auc', 'deletion_insertion', 'deletion_auc',
           'insertion_auc', 'highest_score', 'explanation_success']

def perturbed_images(image: torch.Tensor, order: torch.Tensor, counts: list[int],
                     baseline: torch.Tensor, mode: str) -> torch.Tensor:
    """The images along a deletion or insertion curve.

    Args:
        image: (3, H, W) as the detector takes it.
        order: (H * W,) flat pixel indices, most important first.
        counts: S pixel counts.
        baseline: (3, H, W) what deleted pixels become / what insertion starts from.
        mode: 'deletion' (the first c pixels of ``order`` replaced by the baseline) or
            'insertion' (the baseline with those pixels restored from the image).

    Returns:
        Tensor: (S, 3, H, W).
    """
    if mode not in ('deletion', 'insertion'):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    c, h, w = image.shape
    src, dst = (baseline, image) if mode == 'deletion' else (image, baseline)
    out = dst.reshape(1, c, h * w).repeat(len(counts), 1, 1)
    for i, n in enumerate(counts):
        idx = order[:n]
        out[i][:, idx] = src.reshape(c, h * w)[:, idx]
    return out.reshape(len(counts), c, h, w)


def curve_auc(values: list[float]) -> float:
    """Trapezoid area under values at evenly spaced x in [0, 1].

    Args:
        values: the curve.

    Returns:
        float: the area (NaN for fewer than two values).
    """
    if len(values) < 2:
        return math.nan
    v = torch.tensor(values, dtype=torch.float64)
    return float(((v[1:] + v[:-1]) / 2).mean())


@metric('lower', 'Petsiuk et al., RISE, BMVC 2018 (deletion); protocol of Zhao & Chan, '
                 'ODAM, TPAMI 2024, Sec. 5.1')
def deletion_auc(deletion_curve: list[float]) -> float:
    """Area under the deletion curve (evidence as the top pixels are removed).

    Args:
        deletion_curve: the evidence after each deletion step (``steps + 1`` values).

    Returns:
        float: in [0, 1], lower is more faithful; NaN for fewer than two values.
    """
    return curve_auc(deletion_curve)


@metric('higher', 'Petsiuk et al., RISE, BMVC 2018 (insertion); protocol of Zhao & Chan, '
                  'ODAM, TPAMI 2024, Sec. 5.1')
def insertion_auc(insertion_curve: list[float]) -> float:
    """Area under the insertion curve (evidence as the top pixels are restored).

    Args:
        insertion_curve: the evidence after each insertion step (``steps + 1`` values).

    Returns:
        float: in [0, 1], higher is more faithful; NaN for fewer than two values.
    """
    return curve_auc(insertion_curve)


@metric('higher', "Chen et al., VPS, CVPR 2025 (average highest confidence)")
def highest_score(insertion_curve: list[float]) -> float:
    """The highest evidence along insertion.

    Args:
        insertion_curve: the evidence after each insertion step (``steps + 1`` values).

    Returns:
        float: NaN for an empty curve.
    """
    return max(insertion_curve) if insertion_curve else math.nan


@metric('higher', "Chen et al., VPS, CVPR 2025 (explanation success rate)")
def explanation_success(insertion_curve: list[float], score_thr: float) -> float:
    """Whether the highest evidence along insertion reaches ``score_thr`` (the top pixels alone
    make the detector find the object).

    Args:
        insertion_curve: the evidence after each insertion step (``steps + 1`` values).
        score_thr: the evidence to reach.

    Returns:
        float: 1.0 or 0.0; NaN for an empty curve.
    """
    return float(max(insertion_curve) >= score_thr) if insertion_curve else math.nan


def deletion_insertion(predict: Callable, image: torch.Tensor, heatmap: torch.Tensor,
                       target_box: torch.Tensor, target_label: int, box_area: float,
                       deletion_baseline: torch.Tensor, insertion_baseline: torch.Tensor,
                       steps: int = 100, evidence: str = 'odam',
                       batch_size: int = 16, extra_evidences: tuple = ()) -> dict:
    """Deletion and insertion curves of one explained object.

    Args:
        predict: images (b, 3, H, W) -> b detections, each (boxes, labels, scores).
        image: (3, H, W) as the detector takes it.
        heatmap: (H, W) on the image's grid; ties keep row-major order.
        target_box: (4,) x1y1x2y2 in the pixels ``predict`` returns.
        target_label: the object's class.
        box_area: area of the target box in the image's pixels (the pixels changed in all:
            ``steps`` steps of ceil(box_area / steps)).
        deletion_baseline: (3, H, W) what deleted pixels become.
        insertion_baseline: (3, H, W) what insertion starts from.
        steps: steps per curve.
        evidence: of :data:`odamtrain.structures.EVIDENCES`.
        batch_size: images per ``predict`` call.
        extra_evidences: more of :data:`~odamtrain.structures.EVIDENCES`, read from the
            same predictions (the VPS paper's Table 1 reports three).

    Returns:
        dict: ``deletion`` and ``insertion`` (``steps + 1`` floats each), ``deletion_auc``,
        ``insertion_auc``; per extra evidence E the same keys suffixed ``_E``.
    """
    order = torch.argsort(heatmap.flatten(), descending=True, stable=True)
    per_step = max(1, math.ceil(box_area / steps))
    counts = [min(k * per_step, order.numel()) for k in range(steps + 1)]
    evidences = {'': evidence, **{f'_{e}': e for e in extra_evidences}}  # key suffix -> E
    out = {}
    for mode, baseline in (('deletion', deletion_baseline), ('insertion', insertion_baseline)):
        curves = {suffix: [] for suffix in evidences}
        for start in range(0, len(counts), batch_size):
            imgs = perturbed_images(image, order, counts[start:start + batch_size], baseline,
                                    mode)
            for det in predict(imgs):
                for suffix, e in evidences.items():
                    curves[suffix].append(detection_evidence(*det, target_box, target_label, e))
        for suffix, curve in curves.items():
            out[f'{mode}{suffix}'] = curve
            out[f'{mode}_auc{suffix}'] = curve_auc(curve)
    return out
