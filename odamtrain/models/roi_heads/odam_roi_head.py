"""Faster R-CNN RoI head whose test-time NMS can be Odam-NMS."""
from __future__ import annotations

import torch
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox2roi
from mmengine.structures import InstanceData

from odamtrain.explain.roi_explainer import roi_heatmaps

from ..odam_nms_results import odam_nms_results

__all__ = ['OdamRoIHead']

@MODELS.register_module()
class OdamRoIHead(StandardRoIHead):
    """mmdet's StandardRoIHead; with ``test_cfg.rcnn.nms = dict(type='odam_nms',
    iou_threshold=0.5, corr_low=0.2, corr_high=0.8)`` the (RoI, class) candidates above
    ``score_thr`` (as mmdet's ``multiclass_nms`` selects them) are explained with ODAM on their
    RoI features (class logit, maps at short edge 50, one backward per round of distinct
    RoIs) and suppressed with :func:`odamtrain.ops.odam_nms` per class. Other ``nms`` types
    are mmdet's own path. Extra keys: ``target``, ``map_size``, ``keep_heatmaps``."""

    def predict_bbox(self, x, batch_img_metas, rpn_results_list, rcnn_test_cfg,
                     rescale: bool = False):
        nms_cfg = rcnn_test_cfg.get('nms', {}) if rcnn_test_cfg else {}
        proposals = [r.bboxes for r in rpn_results_list]
        rois = bbox2roi(proposals)
        if nms_cfg.get('type') != 'odam_nms' or rois.shape[0] == 0:
            return super().predict_bbox(x, batch_img_metas, rpn_results_list, rcnn_test_cfg,
                                        rescale=rescale)
        with torch.enable_grad():
            feat = self.bbox_roi_extractor(x[:self.bbox_roi_extractor.num_inputs], rois)
            if self.with_shared_head:
                feat = self.shared_head(feat)
            feat = feat.detach().requires_grad_(True)
            cls_score, bbox_pred = self.bbox_head(feat)
        cands, start = [], 0
        for i, meta in enumerate(batch_img_metas):
            sl = slice(start, start + len(proposals[i]))
            cands.append(self._candidates(rois[sl], cls_score[sl], bbox_pred[sl], meta,
                                          rcnn_test_cfg.score_thr, start))
            start += len(proposals[i])
        roi_heatmaps(self.bbox_head, feat, cls_score, bbox_pred, rois, cands, batch_img_metas,
                     'odam', nms_cfg.get('target', 'logit'), 'gaussian',
                     nms_cfg.get('map_size', 50))
        return odam_nms_results(cands, batch_img_metas, nms_cfg, rcnn_test_cfg.max_per_img,
                                rescale)

    def _candidates(self, rois, cls_score, bbox_pred, meta, score_thr, offset) -> InstanceData:
        """(RoI, class) pairs scoring above ``score_thr``, RoI-major as in mmdet's
        ``multiclass_nms``; boxes in original pixels; ``roi`` indexes the batch's RoIs."""
        with torch.no_grad():
            per_roi = self.bbox_head._predict_by_feat_single(rois, cls_score, bbox_pred, meta,
                                                             rescale=True, rcnn_test_cfg=None)
        n, k = per_roi.scores.shape[0], per_roi.scores.shape[1] - 1
        boxes = per_roi.bboxes.view(n, -1, 4).expand(n, k, 4)
        scores = per_roi.scores[:, :-1]
        roi, labels = (scores > score_thr).nonzero(as_tuple=True)
        return InstanceData(bboxes=boxes[roi, labels], scores=scores[roi, labels],
                            labels=labels, roi=roi + offset)
