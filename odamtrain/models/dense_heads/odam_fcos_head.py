"""FCOS head with Odam-Train losses and Odam-NMS."""
from __future__ import annotations

import math

import torch
from mmdet.models.dense_heads import FCOSHead
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_overlaps
from mmengine.structures import InstanceData

from odamtrain.explain.dense import dense_detections, fast_window_support, record_tower_state
from odamtrain.explain.dense_explainer import dense_heatmaps, level_heatmaps
from odamtrain.explain.heatmap import resample_maps
from odamtrain.ops import without_odam_keys

from ..losses import cap_positives, odam_loss_config, odam_loss_dict
from ..odam_nms_results import odam_nms_results

__all__ = ['OdamFCOSHead']


@MODELS.register_module()
class OdamFCOSHead(FCOSHead):
    """mmdet's FCOSHead with Odam-Train and Odam-NMS, each switched on from the config.

    Odam-Train (``odam_loss=dict(loss_weight=0.5, second_order=False, max_positives=300,
    map_stride=16, eps=1e-4)``; None: off): each positive location (FCOS's own assignment)
    is explained with ODAM (the shared batched code, 'fast' windows; Y = the logit of its
    assigned class; A = its FPN level; Phi sized by its predicted box), the maps are put on
    the stride-16 grid, and :func:`odamtrain.models.losses.odam_loss_dict` adds
    ``loss_odam_con`` and ``loss_odam_sep``.

    Odam-NMS (``test_cfg.nms = dict(type='odam_nms', iou_threshold=0.5, corr_low=0.2,
    corr_high=0.8)``): the candidates that reach NMS (after score threshold and ``nms_pre``
    top-k) are explained with ODAM (class logit, maps at short edge 50) and suppressed with
    :func:`odamtrain.ops.odam_nms`, per class. Any other ``nms`` type (``'nms'``,
    ``'soft_nms'``) is mmdet's own path, unchanged. Extra ``nms`` keys: ``target`` ('logit',
    the paper; or 'score'), ``mode`` ('fast', 'windows': cheaper, or 'exact'), ``map_size`` (50),
    ``keep_heatmaps`` (False; True keeps each kept detection's map in ``heatmaps``).
    """

    def __init__(self, *args, odam_loss: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.odam_loss = odam_loss_config(odam_loss, loss_weight=0.5)
        reason = fast_window_support(self)
        if self.odam_loss is not None and reason is not None:
            raise ValueError(f'odam_loss needs the plain FCOS towers of fast ODAM: {reason}')

    # ------------------------------------------------------------------------- training
    def loss(self, x, batch_data_samples) -> dict:
        if self.odam_loss is None:
            return super().loss(x, batch_data_samples)
        with record_tower_state(self) as state:
            cls_scores, bbox_preds, centernesses = self(x)
        gts, gts_ignore, metas = unpack_gt_instances(batch_data_samples)
        losses = self.loss_by_feat(cls_scores, bbox_preds, centernesses, gts, metas,
                                   gts_ignore)
        losses.update(self.loss_odam(x, bbox_preds, state, gts, metas))
        return losses

    def odam_positives(self, featmap_sizes, bbox_preds, batch_gt_instances) -> InstanceData:
        """Every positive location of the batch (FCOS's targets): ``img``, ``level``,
        ``loc`` (y * w + x), ``labels``, ``gt_index`` (into its image's GT), ``bboxes``
        (predicted, input pixels, detached) and ``ious`` with its GT box."""
        points = self.prior_generator.grid_priors(featmap_sizes, dtype=bbox_preds[0].dtype,
                                                  device=bbox_preds[0].device)
        with torch.no_grad():
            labels, targets = self.get_targets(points, batch_gt_instances)
        num_imgs = len(batch_gt_instances)
        parts = []
        for level, (pts, lab, tgt, pred) in enumerate(zip(points, labels, targets, bbox_preds)):
            unit = self.strides[level] if self.norm_on_bbox else 1
            img, loc = (lab.view(num_imgs, -1) < self.num_classes).nonzero(as_tuple=True)
            dist = pred.detach().flatten(2).transpose(1, 2)[img, loc] * unit  # [n, 4]
            gt_dist = tgt.view(num_imgs, -1, 4)[img, loc] * unit
            parts.append(InstanceData(
                img=img, level=torch.full_like(img, level), loc=loc,
                labels=lab.view(num_imgs, -1)[img, loc],
                bboxes=self.bbox_coder.decode(pts[loc], dist),
                gt_bboxes=self.bbox_coder.decode(pts[loc], gt_dist)))
        pos = InstanceData.cat(parts)
        # the target distances rebuild the assigned GT box: its index is the nearest GT box
        pos.gt_index = torch.zeros_like(pos.img)
        for b, gt in enumerate(batch_gt_instances):
            sel = (pos.img == b).nonzero()[:, 0]
            if len(sel):
                gt_boxes = gt.bboxes.tensor if hasattr(gt.bboxes, 'tensor') else gt.bboxes
                dist = (pos.gt_bboxes[sel, None] - gt_boxes[None]).abs().sum(-1)
                pos.gt_index[sel] = dist.argmin(1)
        pos.ious = bbox_overlaps(pos.bboxes, pos.gt_bboxes, is_aligned=True)
        return pos

    def loss_odam(self, x, bbox_preds, tower_state: dict, batch_gt_instances,
                  batch_img_metas) -> dict:
        """``loss_odam_con`` / ``loss_odam_sep`` of the batch's positives (at most
        ``max_positives`` per image), from one forward's features and tower state."""
        pos, maps = self.odam_train_maps(x, bbox_preds, tower_state, batch_gt_instances,
                                         batch_img_metas)
        return odam_loss_dict(maps, pos.gt_index, pos.ious, pos.img,
                              self.odam_loss['loss_weight'], self.odam_loss['eps'])

    def odam_train_maps(self, x, bbox_preds, tower_state: dict, batch_gt_instances,
                        batch_img_metas):
        """The positives Odam-Train compares (:meth:`odam_positives`, capped per image) and
        their ODAM maps (N, ceil(H_pad / map_stride), ceil(W_pad / map_stride)) on the
        common grid, with the graph to ``x`` (and to the head with ``second_order``)."""
        cfg = self.odam_loss
        pos = self.odam_positives([f.shape[-2:] for f in x], bbox_preds, batch_gt_instances)
        pos = pos[cap_positives(pos.img, pos.gt_index, pos.ious, cfg['max_positives'])]
        pad_hw = batch_img_metas[0]['batch_input_shape']
        out_hw = tuple(math.ceil(s / cfg['map_stride']) for s in pad_hw)
        maps = x[0].new_zeros(len(pos), *out_hw)
        scale = x[0].new_ones(len(batch_gt_instances), 2)  # boxes are in input pixels
        for level, feat in enumerate(x):
            idx = (pos.level == level).nonzero()[:, 0]
            if len(idx) == 0:
                continue
            level_maps = level_heatmaps(self, feat, level, pos[idx], 'odam', 'logit',
                                        'gaussian', 'fast', scale, tower_state,
                                        create_graph=cfg['second_order'])
            maps[idx] = resample_maps(level_maps, self.strides[level], cfg['map_stride'],
                                      out_hw)
        return pos, maps

    # -------------------------------------------------------------------------- testing
    def predict(self, x, batch_data_samples, rescale: bool = False):
        nms_cfg = self.test_cfg.get('nms', {}) if self.test_cfg else {}
        if nms_cfg.get('type') != 'odam_nms':  # mmdet's own path
            return super().predict(x, batch_data_samples, rescale=rescale)
        metas = [s.metainfo for s in batch_data_samples]
        cands = self.odam_candidates(x, metas, nms_cfg)
        return self.odam_suppress(cands, metas, nms_cfg, rescale)

    def _bbox_post_process(self, results, cfg, rescale=False, with_nms=True, img_meta=None):
        """mmdet's, with an NMS config switched from odam_nms to 'nms' / 'soft_nms' (e.g.
        ``--cfg-options model.test_cfg.nms.type=nms``) stripped of Odam-NMS's keys."""
        if with_nms and cfg.get('nms'):
            cfg = cfg.copy()
            cfg.nms = without_odam_keys(cfg.nms)
        return super()._bbox_post_process(results, cfg, rescale, with_nms, img_meta)

    def odam_candidates(self, x, batch_img_metas: list, nms_cfg: dict) -> list:
        """Per image the detections that reach NMS (score threshold, ``nms_pre``, score
        factors applied; boxes in original pixels) with their ODAM ``heatmaps``."""
        with torch.no_grad(), record_tower_state(self) as state:
            cls_scores, bbox_preds, centernesses = self(x)
        cands = [dense_detections(self, [c[i] for c in cls_scores], [b[i] for b in bbox_preds],
                                  [f[i] for f in centernesses], meta, rescale=True,
                                  with_nms=False)
                 for i, meta in enumerate(batch_img_metas)]
        dense_heatmaps(self, x, cands, batch_img_metas, 'odam', nms_cfg.get('target', 'logit'),
                       'gaussian', nms_cfg.get('mode', 'fast'), state,
                       nms_cfg.get('map_size', 50))
        return cands

    def odam_suppress(self, cands: list, batch_img_metas: list, nms_cfg: dict,
                      rescale: bool = True) -> list:
        """Odam-NMS of :meth:`odam_candidates` per image (the candidates are not changed)."""
        return odam_nms_results(cands, batch_img_metas, nms_cfg,
                                self.test_cfg.get('max_per_img', -1), rescale)
