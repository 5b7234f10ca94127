"""Heat maps for every detection of a two-stage detector (Faster R-CNN): A = RoI features.

Shapes: R RoIs, N detections, C channels, K classes, (s, s) the RoI feature size (7 x 7).

The box head treats RoIs independently, so one backward of ``sum_p Y_p`` (one-hot rows)
gives every detection's dY_p/dA_p on its own RoI's features; detections that share a RoI
(different classes) go into separate rounds. The (s, s) map is pasted into the RoI's box on
the image (the RoI is what the features were pooled from).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmdet.models.layers import multiclass_nms
from mmdet.structures.bbox import bbox2roi
from mmengine.structures import InstanceData

from odamtrain.ops import odam_nms_keep, without_odam_keys

from .heatmap import SIGMA_PER_BOX_SIZE, explanation_maps

__all__ = ['roi_detections', 'roi_candidates', 'roi_target_candidates', 'roi_attribute',
           'roi_boxes', 'paste_roi_maps', 'explain_roi_detector', 'roi_heatmaps', 'roi_footprints',
           'fpn_rounds', 'roi_fpn_grads']


def roi_detections(bbox_head, rois: torch.Tensor, cls_score: torch.Tensor,
                   bbox_pred: torch.Tensor, img_meta: dict, rcnn_cfg) -> InstanceData:
    """mmdet's R-CNN test-time detections for one image plus ``roi``, the index (into
    ``rois``) of the RoI each detection comes from.

    Uses mmdet's own decoding (``_predict_by_feat_single`` without NMS) and
    ``multiclass_nms(..., return_inds=True)``; identical to ``bbox_head.predict_by_feat``.
    """
    per_roi = bbox_head._predict_by_feat_single(rois, cls_score, bbox_pred, img_meta,
                                                rescale=True, rcnn_test_cfg=None)
    det, labels, inds = multiclass_nms(per_roi.bboxes, per_roi.scores, rcnn_cfg.score_thr,
                                       without_odam_keys(rcnn_cfg.nms), rcnn_cfg.max_per_img,
                                       return_inds=True)
    num_classes = per_roi.bboxes.shape[1] // 4
    return InstanceData(bboxes=det[:, :-1], scores=det[:, -1], labels=labels,
                        roi=inds // num_classes)


def roi_candidates(bbox_head, rois: torch.Tensor, cls_score: torch.Tensor,
                   bbox_pred: torch.Tensor, img_meta: dict,
                   score_thr: float = -1.0) -> InstanceData:
    """(RoI, class) pairs scoring above ``score_thr``, RoI-major as in mmdet's
    ``multiclass_nms``: ``bboxes`` in original pixels (mmdet's decoding), ``scores``,
    ``labels``, ``roi`` indexing ``rois``."""
    with torch.no_grad():
        per_roi = bbox_head._predict_by_feat_single(rois, cls_score, bbox_pred, img_meta,
                                                    rescale=True, rcnn_test_cfg=None)
    n, k = per_roi.scores.shape[0], per_roi.scores.shape[1] - 1  # softmax: last = background
    boxes = per_roi.bboxes.view(n, -1, 4).expand(n, k, 4)
    scores = per_roi.scores[:, :-1]
    roi, labels = (scores > score_thr).nonzero(as_tuple=True)
    return InstanceData(bboxes=boxes[roi, labels], scores=scores[roi, labels], labels=labels,
                        roi=roi)


def roi_target_candidates(bbox_head, rois: torch.Tensor, cls_score: torch.Tensor,
                          bbox_pred: torch.Tensor, img_meta: dict,
                          targets: InstanceData) -> InstanceData:
    """For each target (``bboxes`` (T, 4) x1y1x2y2 original pixels, ``labels`` (T,)), the
    RoI and class whose prediction finds it best among all (no score threshold, no NMS):
    :func:`odamtrain.evaluation.functional.target_predictions` of :func:`roi_candidates`."""
    from odamtrain.evaluation.functional import target_predictions
    return target_predictions(roi_candidates(bbox_head, rois, cls_score, bbox_pred, img_meta),
                              targets)


def roi_attribute(bbox_head, target: str, cls_score: torch.Tensor, bbox_pred: torch.Tensor,
                  rois: torch.Tensor, labels: torch.Tensor,
                  scale_factor: torch.Tensor) -> torch.Tensor:
    """Y of N detections from their RoIs' head outputs.

    Args:
        cls_score: (N, K + 1) logits; bbox_pred: (N, 4 K) or (N, 4) deltas; rois: (N, 4)
            x1y1x2y2 input pixels; labels: (N,); scale_factor: (2, N) input / original.
        target: 'score' (softmax probability, as mmdet scores), 'logit', or 'x1' | 'y1' |
            'x2' | 'y2' (decoded box, original pixels, not clipped).
    """
    if target == 'logit':
        return cls_score.gather(1, labels[:, None])[:, 0]
    if target == 'score':
        return cls_score.softmax(-1).gather(1, labels[:, None])[:, 0]
    if target in ('x1', 'y1', 'x2', 'y2'):
        boxes = roi_boxes(bbox_head, bbox_pred, rois, labels)
        i = ('x1', 'y1', 'x2', 'y2').index(target)
        return boxes[:, i] / scale_factor[i % 2]
    raise ValueError(f"target must be 'score', 'logit', 'x1', 'y1', 'x2' or 'y2', "
                     f'got {target!r}')


def roi_boxes(bbox_head, bbox_pred: torch.Tensor, rois: torch.Tensor,
              labels: torch.Tensor) -> torch.Tensor:
    """(N, 4) x1y1x2y2 boxes (input pixels, not clipped) decoded from the deltas of each
    RoI's class ``labels`` (bbox_pred (N, 4 K) or class-agnostic (N, 4); rois (N, 4))."""
    if not bbox_head.reg_class_agnostic:
        idx = labels[:, None] * 4 + torch.arange(4, device=labels.device)
        bbox_pred = bbox_pred.gather(1, idx)
    return bbox_head.bbox_coder.decode(rois, bbox_pred)


def paste_roi_maps(maps: torch.Tensor, boxes: torch.Tensor, out_hw) -> torch.Tensor:
    """Paste (N, s, s) RoI maps into their boxes on an (H, W) image, bilinearly, zero
    outside the box.

    Args:
        boxes: (N, 4) x1y1x2y2 in the output image's pixels.
    Returns:
        (N, H, W).
    """
    h, w = out_hw
    out = maps.new_zeros(maps.shape[0], h, w)
    ys = torch.arange(h, dtype=maps.dtype, device=maps.device) + 0.5
    xs = torch.arange(w, dtype=maps.dtype, device=maps.device) + 0.5
    step = max(1, 2 ** 22 // (h * w))  # the sampling grid is (n, H, W, 2): bound it
    for i in range(0, maps.shape[0], step):
        m, b = maps[i:i + step], boxes[i:i + step]
        n = m.shape[0]
        x1, y1, x2, y2 = (b[:, j, None] for j in range(4))
        gx = 2 * (xs[None] - x1) / (x2 - x1).clamp(min=1e-6) - 1  # [n, W]
        gy = 2 * (ys[None] - y1) / (y2 - y1).clamp(min=1e-6) - 1  # [n, H]
        grid = torch.stack([gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)],
                           -1)
        pasted = F.grid_sample(m[:, None], grid, mode='bilinear', padding_mode='border',
                               align_corners=False)[:, 0]
        inside = (gx.abs() <= 1)[:, None, :] & (gy.abs() <= 1)[:, :, None]
        out[i:i + step] = pasted * inside
    return out


def explain_roi_detector(model, inputs: torch.Tensor, data_samples: list, method: str,
                         target: str, smooth: str | None, map_size='image',
                         features: str = 'roi', targets: list | None = None) -> list:
    """Detections of a two-stage detector and their heat maps (see
    :func:`odamtrain.apis.explain_detector`). ``mode`` does not apply: one backward per
    round is exact.

    Args:
        features: 'roi' (A = the RoI's s x s features, pasted into its box; Phi's sigma is
            0.125 * s cells since the box spans the map) or 'fpn' (A = the FPN level the RoI
            was pooled from, through RoIAlign's backward; sigma by the box as for FCOS).
        targets: per image (``bboxes`` original pixels, ``labels``) to explain instead of
            the detections: each by its best prediction (:func:`roi_target_candidates`).
    """
    if features not in ('roi', 'fpn'):
        raise ValueError(f"features must be 'roi' or 'fpn', got {features!r}")
    roi_head = model.roi_head
    bbox_head = roi_head.bbox_head
    metas = [s.metainfo for s in data_samples]
    extractor = roi_head.bbox_roi_extractor
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        proposals = model.rpn_head.predict(feats, data_samples, rescale=False)
        rois = bbox2roi([p.bboxes for p in proposals])  # [R, 5]
    with torch.enable_grad():
        levels = [f.detach().requires_grad_(features == 'fpn')
                  for f in feats[:extractor.num_inputs]]
        roi_feats = extractor(levels, rois)
        if roi_head.with_shared_head:
            roi_feats = roi_head.shared_head(roi_feats)
        feat = roi_feats if features == 'fpn' else roi_feats.detach().requires_grad_(True)
        cls_score, bbox_pred = bbox_head(feat)
        counts = [len(p) for p in proposals]
        rcnn_cfg = model.test_cfg.rcnn
        odam_nms_cfg = rcnn_cfg.get('nms', {})
        if targets is None and odam_nms_cfg.get('type') == 'odam_nms':
            # the head's own Odam-NMS picks the detections
            dets = roi_head.odam_candidates(feat, cls_score, bbox_pred, rois, counts, metas,
                                            rcnn_cfg)
            dets = [det[odam_nms_keep(det, odam_nms_cfg, rcnn_cfg.max_per_img)]
                    for det in dets]
            for det in dets:
                del det.heatmaps
        else:
            dets, start = [], 0
            for i, meta in enumerate(metas):
                sl = slice(start, start + counts[i])
                if targets is not None:  # (roi_candidates decodes without a graph)
                    det = roi_target_candidates(bbox_head, rois[sl], cls_score[sl],
                                                bbox_pred[sl], meta, targets[i])
                else:
                    with torch.no_grad():
                        det = roi_detections(bbox_head, rois[sl], cls_score[sl],
                                             bbox_pred[sl], meta, rcnn_cfg)
                det.roi = det.roi + start
                dets.append(det)
                start += counts[i]
        if features == 'fpn':
            scale = torch.tensor([m['scale_factor'][:2] for m in metas], dtype=inputs.dtype,
                                 device=inputs.device)
            allb = InstanceData.cat(dets)
            img = torch.cat([torch.full_like(d.labels, i) for i, d in enumerate(dets)])
            return _fpn_level_maps(model, levels, dets, allb, img, rois, cls_score, bbox_pred,
                                   target, method, smooth, scale, metas, map_size)
    roi_heatmaps(bbox_head, feat, cls_score, bbox_pred, rois, dets, metas, method, target,
                 smooth, map_size)
    return dets


def roi_heatmaps(bbox_head, feat: torch.Tensor, cls_score: torch.Tensor,
                 bbox_pred: torch.Tensor, rois: torch.Tensor, dets: list, metas: list,
                 method: str, target: str, smooth: str | None, map_size='image') -> None:
    """Set ``heatmaps`` (N, H, W) on each image's detections (``labels``, ``roi`` indexing
    ``rois`` of the whole batch) from the RoI features.

    Args:
        feat: (R, C, s, s) RoI features requiring grad, from which ``cls_score`` (R, K + 1)
            and ``bbox_pred`` were computed (graph kept); rois: (R, 5) batch index, x1y1x2y2.
    """
    from .dense_explainer import output_size
    scale = torch.tensor([m['scale_factor'][:2] for m in metas], dtype=feat.dtype,
                         device=feat.device)
    allb = InstanceData.cat(dets)
    img = torch.cat([torch.full_like(d.labels, i) for i, d in enumerate(dets)])
    with torch.enable_grad():
        grads = _roi_grads(bbox_head, target, feat, cls_score, bbox_pred, rois, allb, img,
                           scale)
    with torch.no_grad():
        sigma = None
        if method == 'odam' and smooth == 'gaussian':
            sigma = torch.full((len(grads),), SIGMA_PER_BOX_SIZE * feat.shape[-1],
                               dtype=feat.dtype, device=feat.device)
        maps = explanation_maps(method, grads, feat.detach()[allb.roi], sigma)
        start = 0
        for i, (det, meta) in enumerate(zip(dets, metas)):
            out_hw = output_size(meta['ori_shape'][:2], map_size)
            ori_h, ori_w = meta['ori_shape'][:2]
            # the RoI in input pixels -> original pixels -> the output map's pixels
            to_out = scale[i].new_tensor([out_hw[1] / ori_w, out_hw[0] / ori_h]) / scale[i]
            det.heatmaps = paste_roi_maps(maps[start:start + len(det)],
                                          rois[det.roi, 1:] * to_out.repeat(2), out_hw)
            start += len(det)


def _roi_grads(bbox_head, target, feat, cls_score, bbox_pred, rois, det, img, scale):
    """(N, C, s, s) dY_p/dA_roi(p) for all detections, one backward per round of distinct
    RoIs."""
    n = len(det)
    grads = feat.new_zeros(n, *feat.shape[1:])
    if n == 0:
        return grads
    y = roi_attribute(bbox_head, target, cls_score[det.roi], bbox_pred[det.roi],
                      rois[det.roi, 1:], det.labels, scale[img].T)  # [N]
    # round of each detection = how many earlier detections share its RoI
    order = torch.argsort(det.roi, stable=True)
    sorted_roi = det.roi[order]
    first = torch.searchsorted(sorted_roi, sorted_roi)
    rounds = torch.empty_like(order)
    rounds[order] = torch.arange(n, device=order.device) - first
    for r in range(int(rounds.max()) + 1):
        sel = (rounds == r).nonzero()[:, 0]
        g, = torch.autograd.grad(y[sel].sum(), feat, retain_graph=True)
        grads[sel] = g[det.roi[sel]]
    return grads


def fpn_rounds(level: torch.Tensor, cells: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
    """Greedy colouring: detections in one round have disjoint footprints on their level
    (cells (N, 4) x1y1x2y2 inclusive, per ``level``) and distinct RoIs, so one backward
    separates their gradients. Returns (N,) round index."""
    rounds = torch.full_like(level, -1)
    members: list[list[int]] = []
    for i in range(len(level)):
        for r, idx in enumerate(members):
            j = torch.tensor(idx)
            same = level[j] == level[i]
            overlap = ((cells[j, 0] <= cells[i, 2]) & (cells[i, 0] <= cells[j, 2])
                       & (cells[j, 1] <= cells[i, 3]) & (cells[i, 1] <= cells[j, 3]) & same)
            if not overlap.any() and not (roi[j] == roi[i]).any():
                idx.append(i)
                rounds[i] = r
                break
        else:
            members.append([i])
            rounds[i] = len(members) - 1
    return rounds


def roi_footprints(extractor, rois: torch.Tensor, num_levels: int):
    """Where RoIAlign reads each RoI: its FPN level (R,) and the cells it touches on that
    level (R, 4) x1y1x2y2 inclusive (the box in cells, widened by one for bilinear taps)."""
    level = extractor.map_roi_levels(rois, num_levels)  # [R]
    strides = torch.tensor(extractor.featmap_strides, dtype=rois.dtype)[level]
    box = rois[:, 1:] / strides[:, None]
    return level, torch.cat([box[:, :2].floor() - 1, box[:, 2:].ceil() + 1], 1)


def roi_fpn_grads(model, levels, det, img, rois, cls_score, bbox_pred, target, scale):
    """Yield (indices, level, grads (n, C, h, w)): dY_p/d(FPN level of p's RoI) through
    RoIAlign's backward, one backward per round of :func:`fpn_rounds`."""
    roi_level, cells = roi_footprints(model.roi_head.bbox_roi_extractor, rois[det.roi],
                                      len(levels))
    y = roi_attribute(model.roi_head.bbox_head, target, cls_score[det.roi],
                      bbox_pred[det.roi], rois[det.roi, 1:], det.labels, scale[img].T)
    rounds = fpn_rounds(roi_level, cells, det.roi)
    for r in range(int(rounds.max()) + 1 if len(rounds) else 0):
        sel = (rounds == r).nonzero()[:, 0]
        grads = torch.autograd.grad(y[sel].sum(), levels, retain_graph=True,
                                    allow_unused=True)
        for lvl in roi_level[sel].unique().tolist():
            part = sel[roi_level[sel] == lvl]
            g = grads[lvl][img[part]]  # [n, C, h, w]
            h, w = g.shape[-2:]
            ys = torch.arange(h, dtype=cells.dtype)[None, :, None]
            xs = torch.arange(w, dtype=cells.dtype)[None, None, :]
            c = cells[part]
            inside = ((ys >= c[:, 1, None, None]) & (ys <= c[:, 3, None, None])
                      & (xs >= c[:, 0, None, None]) & (xs <= c[:, 2, None, None]))
            yield part, lvl, g * inside[:, None].to(g.dtype)


def _fpn_level_maps(model, levels, dets, allb, img, rois, cls_score, bbox_pred, target,
                    method, smooth, scale, metas, map_size):
    from .dense_explainer import output_size
    strides = model.roi_head.bbox_roi_extractor.featmap_strides
    offsets = torch.cumsum(torch.tensor([0] + [len(d) for d in dets]), 0)
    for det, meta in zip(dets, metas):
        det.heatmaps = rois.new_zeros(len(det), *output_size(meta['ori_shape'][:2], map_size))
    for part, lvl, g in roi_fpn_grads(model, levels, allb, img, rois, cls_score, bbox_pred,
                                      target, scale):
        with torch.no_grad():
            _paste_level_maps(dets, metas, offsets, allb, img, part, lvl, g, levels, method,
                              smooth, scale, strides)
    return dets


def _paste_level_maps(dets, metas, offsets, allb, img, part, lvl, g, levels, method, smooth,
                      scale, strides):
    from .heatmap import box_sigma, resize_maps
    sigma = None
    if method == 'odam' and smooth == 'gaussian':
        sigma = box_sigma(allb.bboxes[part] * scale[img[part]].repeat(1, 2), strides[lvl])
    maps = explanation_maps(method, g, levels[lvl].detach()[img[part]], sigma)
    for j, p in enumerate(part.tolist()):
        b = int(img[p])
        out = dets[b].heatmaps
        out[p - int(offsets[b])] = resize_maps(maps[j:j + 1], strides[lvl],
                                               metas[b]['img_shape'][:2], out.shape[-2:])[0]
