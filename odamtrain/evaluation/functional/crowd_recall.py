"""Crowd / sparse recall (ODAM paper, appendix A.4.2).

GT boxes that overlap another (non-ignored) GT box of the image with IoU > 0.5 form the crowd
set, the others the sparse set. Recall of each set is measured at the score threshold that
gives the best JI, with CrowdHuman's JI matching (maximum bipartite matching at IoU >= 0.5).
Higher is better; NaN for an empty set.
"""
from __future__ import annotations

import numpy as np
from mmdet.evaluation.functional.bbox_overlaps import bbox_overlaps

__all__ = ['crowd_mask', 'set_recalls']


def crowd_mask(gt_boxes: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Which GT boxes are in the crowd set (ODAM paper A.4.2).

    Args:
        gt_boxes: (M, 4) x1y1x2y2.
        iou_threshold: a box is in the crowd set if it overlaps another box with a larger
            IoU.

    Returns:
        np.ndarray: (M,) bool.
    """
    if len(gt_boxes) < 2:
        return np.zeros(len(gt_boxes), bool)
    iou = bbox_overlaps(gt_boxes, gt_boxes, mode='iou')
    np.fill_diagonal(iou, 0)
    return iou.max(1) > iou_threshold


def set_recalls(matched: list, crowd: list) -> dict:
    """Recall of all, crowd and sparse GT boxes.

    Args:
        matched: per image an (M_i,) bool array: GT box matched by a detection.
        crowd: per image an (M_i,) bool array: GT box in the crowd set (:func:`crowd_mask`).

    Returns:
        dict: ``recall``, ``crowd_recall``, ``sparse_recall``, floats (NaN for an empty set).
    """
    m = np.concatenate(matched) if matched else np.zeros(0, bool)
    c = np.concatenate(crowd) if crowd else np.zeros(0, bool)

    def rate(sel):
        return float(m[sel].mean()) if sel.any() else float('nan')

    return dict(recall=rate(np.ones_like(m, bool)), crowd_recall=rate(c),
                sparse_recall=rate(~c))
