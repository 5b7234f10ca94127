"""Faster R-CNN RoI head with Odam-Train losses and Odam-NMS."""
from __future__ import annotations

import math

import torch
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox2roi, bbox_overlaps
from mmengine.structures import InstanceData

from odamtrain.explain.heatmap import SIGMA_PER_BOX_SIZE, odam_heatmap
from odamtrain.explain.roi_explainer import (
    paste_roi_maps,
    roi_boxes,
    roi_candidates,
    roi_heatmaps,
)
from odamtrain.ops import without_odam_keys

from ..losses import cap_positives, odam_loss_config, odam_loss_dict
from ..odam_nms_results import odam_nms_results

__all__ = ['OdamRoIHead']

@MODELS.register_module()
class OdamRoIHead(StandardRoIHead):
    """mmdet's StandardRoIHead with Odam-Train and Odam-NMS, each switched on from the config.

    Odam-Train (``odam_loss=dict(loss_weight=0.2, second_order=False, max_positives=300,
    map_stride=16, eps=1e-4)``; None: off): the sampler's positive RoIs are explained with
    ODAM on their RoI features (Y = the logit of the assigned class; one backward for all,
    since the box head treats RoIs independently), each s x s map is pasted into its RoI on
    the stride-16 grid, and :func:`odamtrain.models.losses.odam_loss_dict` adds
    ``loss_odam_con`` and ``loss_odam_sep`` (pairs within an image only).

    Odam-NMS: with ``test_cfg.rcnn.nms = dict(type='odam_nms',
    iou_threshold=0.5, corr_low=0.2, corr_high=0.8)`` the (RoI, class) candidates above
    ``score_thr`` (as mmdet's ``multiclass_nms`` selects them) are explained with ODAM on their
    RoI features (class logit, maps at short edge 50, one backward per round of distinct
    RoIs) and suppressed with :func:`odamtrain.ops.odam_nms` per class. Other ``nms`` types
    are mmdet's own path. Extra keys: ``target``, ``map_size``, ``keep_heatmaps``."""

    def __init__(self, *args, odam_loss: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.odam_loss = odam_loss_config(odam_loss, loss_weight=0.2)

    def bbox_loss(self, x, sampling_results) -> dict:
        results = super().bbox_loss(x, sampling_results)
        if self.odam_loss is not None:
            results['loss_bbox'].update(self.loss_odam(x, results, sampling_results))
        return results

    def loss_odam(self, x, bbox_results: dict, sampling_results) -> dict:
        """``loss_odam_con`` / ``loss_odam_sep`` of the positive RoIs (at most
        ``max_positives`` per image) from the bbox forward's ``bbox_feats``, ``cls_score``
        and ``bbox_pred``."""
        pos, maps = self.odam_train_maps(x, bbox_results, sampling_results)
        return odam_loss_dict(maps, pos.gt_index, pos.ious, pos.img,
                              self.odam_loss['loss_weight'], self.odam_loss['eps'])

    def odam_train_maps(self, x, bbox_results: dict, sampling_results):
        """The positive RoIs Odam-Train compares (InstanceData: ``roi`` index into the
        batch's sampled RoIs, ``img``, ``labels``, ``gt_index``, ``ious``; capped per image)
        and their ODAM maps pasted on the common grid (N, ceil(H_pad / map_stride),
        ceil(W_pad / map_stride)), with the graph to the RoI features (and to the box head
        with ``second_order``)."""
        cfg = self.odam_loss
        feats = bbox_results['bbox_feats']  # [R, C, s, s]
        rois = bbox2roi([res.priors for res in sampling_results])
        # the sampler puts each image's positives first among its RoIs
        starts = torch.tensor([0] + [len(res.priors) for res in sampling_results]).cumsum(0)
        pos = torch.cat([torch.arange(len(res.pos_inds)) + int(start)
                         for res, start in zip(sampling_results, starts)]).to(rois.device)
        img = rois[pos, 0].long()
        labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        gt_index = torch.cat([res.pos_assigned_gt_inds for res in sampling_results])
        gt_boxes = torch.cat([res.pos_gt_bboxes for res in sampling_results])
        with torch.no_grad():
            boxes = roi_boxes(self.bbox_head, bbox_results['bbox_pred'][pos], rois[pos, 1:],
                              labels)
            ious = bbox_overlaps(boxes, gt_boxes, is_aligned=True)
        keep = cap_positives(img, gt_index, ious, cfg['max_positives'])
        pos, img, labels, gt_index, ious = pos[keep], img[keep], labels[keep], \
            gt_index[keep], ious[keep]
        y = bbox_results['cls_score'][pos, labels]  # the assigned class's logit
        grads, = torch.autograd.grad(y.sum(), feats, retain_graph=True,
                                     create_graph=cfg['second_order'])
        sigma = feats.new_full((len(pos),), SIGMA_PER_BOX_SIZE * feats.shape[-1])
        maps = odam_heatmap(grads[pos], feats[pos], sigma)
        stride0 = self.bbox_roi_extractor.featmap_strides[0]
        out_hw = tuple(math.ceil(n * stride0 / cfg['map_stride']) for n in x[0].shape[-2:])
        maps = paste_roi_maps(maps, rois[pos, 1:] / cfg['map_stride'], out_hw)
        return InstanceData(roi=pos, img=img, labels=labels, gt_index=gt_index,
                            ious=ious), maps

    def predict_bbox(self, x, batch_img_metas, rpn_results_list, rcnn_test_cfg,
                     rescale: bool = False):
        nms_cfg = rcnn_test_cfg.get('nms', {}) if rcnn_test_cfg else {}
        proposals = [r.bboxes for r in rpn_results_list]
        rois = bbox2roi(proposals)
        if nms_cfg.get('type') != 'odam_nms' or rois.shape[0] == 0:  # mmdet's own path
            if nms_cfg:
                rcnn_test_cfg = rcnn_test_cfg.copy()
                rcnn_test_cfg.nms = without_odam_keys(nms_cfg)
            return super().predict_bbox(x, batch_img_metas, rpn_results_list, rcnn_test_cfg,
                                        rescale=rescale)
        with torch.enable_grad():
            feat = self.bbox_roi_extractor(x[:self.bbox_roi_extractor.num_inputs], rois)
            if self.with_shared_head:
                feat = self.shared_head(feat)
            feat = feat.detach().requires_grad_(True)
            cls_score, bbox_pred = self.bbox_head(feat)
        cands = self.odam_candidates(feat, cls_score, bbox_pred, rois,
                                     [len(p) for p in proposals], batch_img_metas,
                                     rcnn_test_cfg)
        return odam_nms_results(cands, batch_img_metas, nms_cfg, rcnn_test_cfg.max_per_img,
                                rescale)

    def odam_candidates(self, feat, cls_score, bbox_pred, rois, counts: list,
                        batch_img_metas: list, rcnn_test_cfg) -> list:
        """Per image the (RoI, class) candidates above ``score_thr`` (:func:`roi_candidates`;
        ``roi`` indexes the batch's ``rois``, of which ``counts`` per image) with the ODAM
        ``heatmaps`` Odam-NMS compares (``rcnn_test_cfg.nms``'s ``target``, ``map_size``).

        Args:
            feat: (R, C, s, s) RoI features requiring grad, from which ``cls_score`` and
                ``bbox_pred`` were computed (graph kept).
        """
        nms_cfg = rcnn_test_cfg.nms
        cands, start = [], 0
        for meta, count in zip(batch_img_metas, counts):
            sl = slice(start, start + count)
            cand = roi_candidates(self.bbox_head, rois[sl], cls_score[sl], bbox_pred[sl], meta,
                                  rcnn_test_cfg.score_thr)
            cand.roi = cand.roi + start
            cands.append(cand)
            start += count
        roi_heatmaps(self.bbox_head, feat, cls_score, bbox_pred, rois, cands, batch_img_metas,
                     'odam', nms_cfg.get('target', 'logit'), 'gaussian',
                     nms_cfg.get('map_size', 50))
        return cands
