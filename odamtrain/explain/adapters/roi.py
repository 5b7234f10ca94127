"""Adapters of mmdet's two-stage RoI heads: the only code that knows their internals.

Shapes: R RoIs of the batch, n predictions, C channels, (s, s) the RoI feature size, K
classes (+1 background).

A prediction's provenance: ``roi`` (index into the batch's RoIs, the same in every stage),
``labels`` and ``img``. A = the RoI features of every stage the score reads, each a leaf of
the graph (:meth:`StandardRoIAdapter.forward`): Faster / Mask R-CNN one stage, Cascade
R-CNN all stages (mmdet averages the stages' class logits, then softmax; the box is the last
stage's regression of the last stage's RoIs). The box head treats RoIs independently, so
one backward of a sum of predictions on distinct RoIs gives each its own gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from mmdet.models.layers import multiclass_nms
from mmdet.models.roi_heads import CascadeRoIHead, StandardRoIHead
from mmdet.structures.bbox import bbox2roi, get_box_tensor
from mmengine.structures import InstanceData

from .dense import BOX_SIDES, UnsupportedHeadError, resolved

__all__ = ['RoIForward', 'StandardRoIAdapter', 'CascadeRoIAdapter', 'ROI_ADAPTERS']


@dataclass
class RoIForward:
    """One forward of the RoI head with its RoI features as leaves: per stage ``rois``
    (R, 5) (batch index, x1y1x2y2 input pixels) and ``feats`` (R, C, s, s) requiring grad;
    ``cls_score`` (R, K + 1) logits as mmdet scores them (Cascade: the stages' mean) and
    ``bbox_pred`` (R, 4 K | 4) of the last stage, with the graph to ``feats``; ``counts``
    RoIs per image; ``levels`` the FPN levels, leaves when ``features='fpn'``; ``metas``
    the images' metainfo."""
    rois: list
    feats: list
    cls_score: torch.Tensor
    bbox_pred: torch.Tensor
    counts: list
    levels: list
    metas: list


class StandardRoIAdapter:
    """``StandardRoIHead`` (Faster R-CNN, Mask R-CNN and the like): A = each RoI's
    features (the paper), or with ``features='fpn'`` the RoI's FPN level through
    RoIAlign's backward."""
    head_type = StandardRoIHead
    features = ('roi', 'fpn')

    def __init__(self, roi_head):
        self.roi_head = roi_head
        actual = resolved(type(roi_head), 'predict_bbox')
        if actual is not self.head_type.predict_bbox:
            raise UnsupportedHeadError(
                f'{type(self.roi_head).__name__}.predict_bbox is '
                f'{actual.__qualname__}, not the '
                f'{self.head_type.__name__} one that {type(self).__name__} reproduces')

    @property
    def bbox_head(self):
        """The box head whose decoding and test config give the detections (last stage)."""
        return self.roi_head.bbox_head

    @property
    def extractor(self):
        return self.roi_head.bbox_roi_extractor

    def _stage_forward(self, stage: int, levels, rois, features: str):
        """(feats (R, C, s, s) leaf or with the graph to the levels, cls_score, bbox_pred)."""
        extractor = (self.roi_head.bbox_roi_extractor[stage]
                     if isinstance(self.roi_head, CascadeRoIHead) else self.extractor)
        bbox_head = (self.roi_head.bbox_head[stage]
                     if isinstance(self.roi_head, CascadeRoIHead) else self.bbox_head)
        feat = extractor(levels[:extractor.num_inputs], rois.detach())
        if getattr(self.roi_head, 'with_shared_head', False):
            feat = self.roi_head.shared_head(feat)
        if features == 'roi':
            feat = feat.detach().requires_grad_(True)
        cls_score, bbox_pred = bbox_head(feat)
        return feat, cls_score, bbox_pred

    def forward(self, feats, proposals: list, metas: list, features: str = 'roi') -> RoIForward:
        """The box head on the proposals with the graph from A (grad enabled inside)."""
        if features not in self.features:
            raise ValueError(f'{type(self.roi_head).__name__}: features must be one of '
                             f'{self.features}, got {features!r}')
        rois = bbox2roi([p.bboxes for p in proposals])
        with torch.enable_grad():
            levels = [f.detach().requires_grad_(features == 'fpn') for f in feats]
            feat, cls_score, bbox_pred = self._stage_forward(0, levels, rois, features)
        return RoIForward([rois], [feat], cls_score, bbox_pred, [len(p) for p in proposals],
                          levels, metas)

    # -------------------------------------------------------------- predictions
    def _per_roi(self, fwd: RoIForward, sl: slice, meta: dict) -> InstanceData:
        """mmdet's per-RoI decoding for one image (boxes (r, 4 K) original pixels, scores
        (r, K + 1)), without NMS and without a graph."""
        with torch.no_grad():
            return self.bbox_head._predict_by_feat_single(
                fwd.rois[-1][sl], fwd.cls_score[sl], fwd.bbox_pred[sl], meta, rescale=True,
                rcnn_test_cfg=None)

    def _slices(self, fwd: RoIForward):
        start = 0
        for count in fwd.counts:
            yield slice(start, start + count)
            start += count

    def predictions(self, fwd: RoIForward, cfg=None) -> list:
        """mmdet's detections per image (``bboxes`` original pixels, ``scores``,
        ``labels``) with ``roi`` (batch index) and ``img``: mmdet's decoding and
        ``multiclass_nms(..., return_inds=True)``, as ``bbox_head.predict_by_feat``;
        ``cfg`` replaces the RoI head's ``test_cfg``."""
        rcnn_cfg = self.roi_head.test_cfg if cfg is None else cfg
        dets = []
        for i, (sl, meta) in enumerate(zip(self._slices(fwd), fwd.metas)):
            per_roi = self._per_roi(fwd, sl, meta)
            num_classes = per_roi.scores.shape[1] - 1  # (the boxes may be class-agnostic)
            det, labels, inds = multiclass_nms(per_roi.bboxes, per_roi.scores,
                                               rcnn_cfg.score_thr, rcnn_cfg.nms,
                                               rcnn_cfg.max_per_img, return_inds=True)
            dets.append(InstanceData(bboxes=det[:, :-1], scores=det[:, -1], labels=labels,
                                     roi=inds // num_classes + sl.start,
                                     img=torch.full_like(labels, i)))
        return dets

    def candidates(self, fwd: RoIForward, score_thr: float = -1.0) -> list:
        """Per image the (RoI, class) pairs scoring above ``score_thr``, RoI-major as in
        mmdet's ``multiclass_nms`` (what reaches NMS), with ``roi`` and ``img``."""
        cands = []
        for i, (sl, meta) in enumerate(zip(self._slices(fwd), fwd.metas)):
            per_roi = self._per_roi(fwd, sl, meta)
            n, k = per_roi.scores.shape[0], per_roi.scores.shape[1] - 1
            boxes = per_roi.bboxes.view(n, -1, 4).expand(n, k, 4)
            scores = per_roi.scores[:, :-1]
            roi, labels = (scores > score_thr).nonzero(as_tuple=True)
            cands.append(InstanceData(bboxes=boxes[roi, labels], scores=scores[roi, labels],
                                      labels=labels, roi=roi + sl.start,
                                      img=torch.full_like(labels, i)))
        return cands

    # ---------------------------------------------------------------- attribute
    def attribute(self, target: str, fwd: RoIForward, preds: InstanceData,
                  scale: torch.Tensor) -> torch.Tensor:
        """Y (n,) of predictions (``roi``, ``labels``, ``img``) with the graph to A.

        Args:
            target: 'score' (softmax probability, as mmdet scores), 'logit', or a box side
                'x1' | 'y1' | 'x2' | 'y2' (decoded, original pixels, not clipped).
            scale: (B, 2) input / original (w, h).
        """
        cls_score = fwd.cls_score[preds.roi]
        if target == 'logit':
            return cls_score.gather(1, preds.labels[:, None])[:, 0]
        if target == 'score':
            return cls_score.softmax(-1).gather(1, preds.labels[:, None])[:, 0]
        if target in BOX_SIDES:
            boxes = self.boxes(fwd.bbox_pred[preds.roi], fwd.rois[-1][preds.roi, 1:],
                               preds.labels)
            i = BOX_SIDES.index(target)
            return boxes[:, i] / scale[preds.img, i % 2]
        raise ValueError(f"target must be 'score', 'logit' or one of {BOX_SIDES}, "
                         f'got {target!r}')

    def boxes(self, bbox_pred: torch.Tensor, rois: torch.Tensor,
              labels: torch.Tensor) -> torch.Tensor:
        """(n, 4) x1y1x2y2 boxes (input pixels, not clipped) decoded from the deltas of each
        RoI's class (bbox_pred (n, 4 K) or class-agnostic (n, 4); rois (n, 4))."""
        bbox_head = self.bbox_head
        if not bbox_head.reg_class_agnostic:
            idx = labels[:, None] * 4 + torch.arange(4, device=labels.device)
            bbox_pred = bbox_pred.gather(1, idx)
        return bbox_head.bbox_coder.decode(rois, bbox_pred)

    def every_prediction(self, fwd: RoIForward) -> list:
        """Every (RoI, class) pair (to find the prediction that explains a target best)."""
        return self.candidates(fwd, score_thr=-1.0)


class CascadeRoIAdapter(StandardRoIAdapter):
    """``CascadeRoIHead`` (Cascade R-CNN): A = the RoI features of every stage. Y reads
    all of them (mmdet's score is the softmax of the stages' mean class logit; its box is
    the last stage's regression of RoIs the earlier stages refined), so a map is the sum of
    the stages' maps, each pasted into the RoI that stage pooled."""
    head_type = CascadeRoIHead
    features = ('roi',)

    @property
    def bbox_head(self):
        return self.roi_head.bbox_head[-1]

    @property
    def extractor(self):
        return self.roi_head.bbox_roi_extractor[-1]

    def forward(self, feats, proposals: list, metas: list, features: str = 'roi') -> RoIForward:
        """mmdet's ``_refine_roi`` with each stage's RoI features as leaves."""
        if features not in self.features:
            raise ValueError(f'{type(self.roi_head).__name__}: features must be one of '
                             f'{self.features}, got {features!r}')
        head = self.roi_head
        counts = [len(p) for p in proposals]
        rois = bbox2roi([p.bboxes for p in proposals])
        all_rois, all_feats, scores = [], [], []
        with torch.enable_grad():
            levels = [f.detach() for f in feats]
            for stage in range(head.num_stages):
                feat, cls_score, bbox_pred = self._stage_forward(stage, levels, rois, features)
                all_rois.append(rois)
                all_feats.append(feat)
                scores.append(cls_score)
                if stage < head.num_stages - 1:
                    rois = self._refine(stage, rois, cls_score, bbox_pred, counts, metas)
            mean_score = sum(scores) / len(scores)
        return RoIForward(all_rois, all_feats, mean_score, bbox_pred, counts, levels, metas)

    def _refine(self, stage, rois, cls_score, bbox_pred, counts, metas):
        """The next stage's RoIs as mmdet's ``_refine_roi`` makes them (with the graph of
        the regression: the final box depends on it)."""
        bbox_head = self.roi_head.bbox_head[stage]
        if bbox_head.custom_activation:
            cls_score = bbox_head.loss_cls.get_activation(cls_score)
        refined = []
        for r, s, d, meta in zip(rois.split(counts), cls_score.split(counts),
                                 bbox_pred.split(counts), metas):
            if len(r):
                boxes = get_box_tensor(bbox_head.regress_by_class(r[:, 1:], s[:, :-1].argmax(1),
                                                                  d, meta))
                refined.append(torch.cat([r[:, [0]], boxes], 1))
        return torch.cat(refined) if refined else rois


ROI_ADAPTERS = (CascadeRoIAdapter, StandardRoIAdapter)
