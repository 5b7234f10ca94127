"""Box matching: which detections explain which GT objects, which prediction finds a target
best, which GT objects the detector gets wrong, and how much detections still find a target.
Pure functions on x1y1x2y2 boxes."""
from __future__ import annotations

import torch
from mmdet.structures.bbox import bbox_overlaps

__all__ = ['match_detections', 'best_candidates', 'target_predictions', 'failure_sets',
           'EVIDENCES', 'detection_evidence']


def match_detections(det_boxes: torch.Tensor, det_scores: torch.Tensor,
                     gt_boxes: torch.Tensor, iou_thr: float):
    """One-to-one greedy matching by decreasing score: each detection takes the unmatched GT
    box it overlaps most if that IoU is > ``iou_thr`` (0.9 = the explanation papers' "well
    detected" objects).

    Args:
        det_boxes: (N, 4) x1y1x2y2.
        det_scores: (N,).
        gt_boxes: (M, 4) x1y1x2y2 in the same pixels.
        iou_thr: the IoU a match must exceed.

    Returns:
        tuple: ``(det_index, gt_index)``, each (K,) int64 on the detections' device, in
        decreasing score order.
    """
    dets, gts = [], []
    if len(det_boxes) and len(gt_boxes):
        ious = bbox_overlaps(det_boxes.float(), gt_boxes.float().to(det_boxes.device))  # [N, M]
        taken = torch.zeros(len(gt_boxes), dtype=torch.bool, device=ious.device)
        for d in torch.argsort(det_scores, descending=True, stable=True).tolist():
            row = ious[d].masked_fill(taken, -1)
            g = int(row.argmax())
            if float(row[g]) > iou_thr:
                taken[g] = True
                dets.append(d)
                gts.append(g)
    index = dict(dtype=torch.long, device=det_boxes.device)
    return torch.tensor(dets, **index), torch.tensor(gts, **index)


def best_candidates(boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                    target_boxes: torch.Tensor, target_labels: torch.Tensor):
    """For each target, the prediction that finds it best:
    argmax_d IoU(d, t) * [label(d) = label(t)] * score(d) (VPS's g, Chen et al. CVPR'25;
    D-RISE's similarity with one-hot class vectors, Petsiuk et al. CVPR'21).

    Args:
        boxes: (D, 4) x1y1x2y2 the predictions' boxes.
        labels: (D,) their classes.
        scores: (D,) their scores.
        target_boxes: (T, 4) x1y1x2y2 in the same pixels.
        target_labels: (T,).

    Returns:
        tuple: ``(index, value)``, (T,) int64 and (T,) on the predictions' device; index 0
        and value 0 where no prediction of the target's class overlaps it (or D = 0).
    """
    t = len(target_boxes)
    if len(boxes) == 0 or t == 0:
        return (torch.zeros(t, dtype=torch.long, device=boxes.device),
                boxes.new_zeros(t, dtype=target_boxes.dtype))
    sim = bbox_overlaps(target_boxes.to(boxes), boxes)  # [T, D]
    same = target_labels.to(labels.device)[:, None] == labels[None]  # [T, D]
    sim = sim * same * scores[None].to(sim)
    value, index = sim.max(1)
    return index, value


def target_predictions(candidates, targets):
    """The candidate predictions that best find each target, by :func:`best_candidates`.

    Args:
        candidates: an InstanceData with ``bboxes`` (D, 4), ``labels``, ``scores`` and any
            other fields.
        targets: an InstanceData with ``bboxes`` (T, 4) and ``labels`` (T,), the same pixels.

    Returns:
        InstanceData: T rows of ``candidates``, ``labels`` set to the targets'.
    """
    labels = targets.labels.to(candidates.labels)
    index, _ = best_candidates(candidates.bboxes, candidates.labels, candidates.scores,
                               targets.bboxes.to(candidates.bboxes), labels)
    best = candidates[index]
    best.labels = labels
    return best


def failure_sets(det_boxes: torch.Tensor, det_labels: torch.Tensor, det_scores: torch.Tensor,
                 gt_boxes: torch.Tensor, gt_labels: torch.Tensor, score_thr: float,
                 iou_thr: float = 0.5):
    """The GT objects a detector gets wrong at ``score_thr`` (VPS's failure cases): missed
    (no detection with score >= ``score_thr`` overlaps it with IoU > ``iou_thr``) and
    misclassified (some do, none of its class).

    Args:
        det_boxes: (N, 4) x1y1x2y2.
        det_labels: (N,).
        det_scores: (N,).
        gt_boxes: (M, 4) x1y1x2y2 in the same pixels.
        gt_labels: (M,).
        score_thr: detections below it do not count.
        iou_thr: the overlap that counts as finding the object.

    Returns:
        tuple: ``(missed, misclassified)``, int64 GT indices, ascending.
    """
    found = torch.zeros(len(gt_boxes), dtype=torch.bool)
    right = torch.zeros(len(gt_boxes), dtype=torch.bool)
    keep = det_scores >= score_thr
    if keep.any() and len(gt_boxes):
        hit = bbox_overlaps(gt_boxes.float(), det_boxes[keep].float()).cpu() > iou_thr  # [M, N']
        same = gt_labels.cpu()[:, None] == det_labels[keep].cpu()[None]
        found = hit.any(1)
        right = (hit & same).any(1)
    return (~found).nonzero()[:, 0], (found & ~right).nonzero()[:, 0]


EVIDENCES = ('odam', 'vps', 'class', 'iou')


def detection_evidence(boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                       target_box: torch.Tensor, target_label: int,
                       evidence: str = 'odam') -> float:
    """How much the detections still find the target (module: the evidences).

    Args:
        boxes: (D, 4) x1y1x2y2 detections.
        labels: (D,).
        scores: (D,).
        target_box: (4,) x1y1x2y2 in the same pixels.
        target_label: the target's class.
        evidence: of :data:`EVIDENCES`.

    Returns:
        float: the evidence (0 without a detection).
    """
    if evidence not in EVIDENCES:
        raise ValueError(f'evidence must be one of {EVIDENCES}, got {evidence!r}')
    if len(boxes) == 0:
        return 0.0
    iou = bbox_overlaps(target_box.reshape(1, 4).to(boxes), boxes)[0]  # [D]
    same = (labels == target_label).to(scores)
    value = {'odam': scores * same * (iou > 0.5).to(scores), 'vps': iou * scores * same,
             'class': scores * same, 'iou': iou}[evidence]
    return float(value.max())
