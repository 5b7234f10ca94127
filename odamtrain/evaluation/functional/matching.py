"""Which detections explain which GT objects."""
from __future__ import annotations

import torch
from mmdet.structures.bbox import bbox_overlaps

__all__ = ['match_detections']


def match_detections(det_boxes: torch.Tensor, det_scores: torch.Tensor,
                     gt_boxes: torch.Tensor, iou_thr: float):
    """One-to-one greedy matching by decreasing score: each detection takes the unmatched GT
    box it overlaps most if that IoU is > ``iou_thr`` (0.9 = the explanation papers' "well
    detected" objects).

    Args:
        det_boxes: (N, 4), gt_boxes: (M, 4) x1y1x2y2 in the same pixels; det_scores: (N,).
    Returns:
        (det_index, gt_index), each (K,) int64, in decreasing score order.
    """
    dets, gts = [], []
    if len(det_boxes) and len(gt_boxes):
        ious = bbox_overlaps(det_boxes.float(), gt_boxes.float())  # [N, M]
        taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
        for d in torch.argsort(det_scores, descending=True, stable=True).tolist():
            row = ious[d].masked_fill(taken, -1)
            g = int(row.argmax())
            if float(row[g]) > iou_thr:
                taken[g] = True
                dets.append(d)
                gts.append(g)
    return torch.tensor(dets, dtype=torch.long), torch.tensor(gts, dtype=torch.long)
