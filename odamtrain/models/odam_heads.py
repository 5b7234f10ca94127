"""Odam-NMS and Odam-Train for every covered mmdet head, switched on from the config through
one mechanism (:func:`install_odam`), not a subclass per head.

* Odam-NMS: ``test_cfg.nms = dict(type='odam_nms', iou_threshold=0.5, corr_low=0.2,
  corr_high=0.8)`` (two-stage: ``test_cfg.rcnn.nms``). The candidates that reach NMS are
  explained with ODAM from the forward that made them (class logit, maps at short edge 50;
  keys ``target``, ``mode``, ``map_size``, ``keep_heatmaps``) and suppressed with
  :func:`odamtrain.ops.odam_nms`. Any other NMS type is mmdet's own path (Odam-NMS's keys
  dropped, so ``--cfg-options model.test_cfg.nms.type=nms`` just works).
* Odam-Train: ``model.train_cfg.odam_loss = dict(loss_weight=..., second_order=False,
  max_positives=300, max_positives_per_object=None, map_stride=16, eps=1e-4,
  begin_epoch=0)`` (any detector; Cascade
  R-CNN: every stage).
  The head's own positives (its assigner / sampler, with their GT index) are explained with
  ODAM (Y = the assigned class's logit; dense: A = the FPN level, 'windows' gradients;
  two-stage: A = the RoI features), their maps put on a stride-16 grid, and the loss gains
  ``loss_odam_con`` / ``loss_odam_sep`` (:func:`odamtrain.models.losses.odam_loss_dict`).
  A head's ``odam_loss_active`` (True; :class:`odamtrain.engine.OdamTrainSwitchHook` sets it
  per epoch from ``begin_epoch``) switches the two off, for a warm-up.

:func:`install_odam` gives the detector's head a subclass (made once per head class) that
adds these two; :class:`odamtrain.engine.OdamRunner` calls it on the model it builds,
odamtrain's tools on the model they load.
"""
from __future__ import annotations

import contextlib
import math

import torch
from mmdet.models.dense_heads import DETRHead
from mmdet.models.roi_heads import CascadeRoIHead
from mmdet.models.utils import unpack_gt_instances
from mmdet.structures.bbox import scale_boxes

from odamtrain.explain.adapters import dense_adapter, roi_adapter
from odamtrain.explain.dense_gradients import dense_forward, level_maps
from odamtrain.explain.explainer import odam_nms_candidates, odam_nms_select
from odamtrain.explain.heatmap import resample_maps
from odamtrain.explain.roi_gradients import roi_positive_maps, roi_positives
from odamtrain.explain.settings import ExplanationSettings
from odamtrain.ops import is_odam_nms, plain_nms_config

from .losses import cap_positives, odam_loss_config, odam_loss_dict

__all__ = ['install_odam', 'OdamDenseHeadMixin', 'OdamRoIHeadMixin', 'odam_nms_results',
           'ODAM_LOSS_WEIGHTS']

# the authors' loss weights: one-stage (FCOS) 0.5, two-stage (Faster R-CNN) 0.2
ODAM_LOSS_WEIGHTS = dict(dense=0.5, roi=0.2)
# Odam-Train's maps of dense heads: the assigned class's logit, the paper's Phi, windows
TRAIN_MAPS = ExplanationSettings(method='odam', target='logit', smooth='gaussian',
                                 normalize=None, mode='windows')


def odam_nms_results(kept: list, batch_img_metas: list, nms_cfg: dict,
                     rescale: bool = True) -> list:
    """Odam-NMS's kept predictions in mmdet's result format (``bboxes``, ``scores``,
    ``labels``; ``heatmaps`` too with ``nms_cfg['keep_heatmaps']``); boxes back to the
    network input's scale when ``rescale`` is False."""
    results = []
    for res, meta in zip(kept, batch_img_metas):
        keys = ('bboxes', 'scores', 'labels') + (
            ('heatmaps',) if nms_cfg.get('keep_heatmaps', False) else ())
        for key in list(res.keys()):
            if key not in keys:
                res.pop(key)
        if not rescale:
            res.bboxes = scale_boxes(res.bboxes, meta['scale_factor'])
        results.append(res)
    return results


@contextlib.contextmanager
def _test_cfg(head, cfg):
    original = head.test_cfg
    head.test_cfg = cfg
    try:
        yield
    finally:
        head.test_cfg = original


class OdamDenseHeadMixin:
    """Odam-NMS and Odam-Train for a one-stage dense head (through its adapter)."""
    odam_mixin = True  # the adapters look through it at the head's own methods
    odam_loss: dict | None = None
    odam_loss_active = True

    def predict(self, x, batch_data_samples, rescale: bool = False):
        if not is_odam_nms(self.test_cfg):  # mmdet's own path
            with _test_cfg(self, plain_nms_config(self.test_cfg)):
                return super().predict(x, batch_data_samples, rescale=rescale)
        adapter = dense_adapter(self)
        metas = [s.metainfo for s in batch_data_samples]
        nms = self.test_cfg.nms
        with torch.no_grad():
            fwd = dense_forward(adapter, x, metas)
            kept = odam_nms_select(odam_nms_candidates(adapter, fwd, nms), nms,
                                   self.test_cfg.get('max_per_img', -1))
        return odam_nms_results(kept, metas, nms, rescale)

    def loss(self, x, batch_data_samples) -> dict:
        if self.odam_loss is None or not self.odam_loss_active:
            return super().loss(x, batch_data_samples)
        adapter = dense_adapter(self)
        gts, gts_ignore, metas = unpack_gt_instances(batch_data_samples)
        fwd = dense_forward(adapter, x, metas)
        with adapter.recording_positives() as recorded:
            losses = self.loss_by_feat(*fwd.outputs, gts, metas, gts_ignore)
        pos, maps = self.odam_train_maps(fwd, recorded, gts, metas)
        losses.update(odam_loss_dict(maps, pos.gt_index, pos.ious, pos.img,
                                     self.odam_loss['loss_weight'], self.odam_loss['eps']))
        return losses

    def odam_train_maps(self, fwd, recorded, batch_gt_instances, metas):
        """The positives Odam-Train compares (the adapter's ``train_positives``, capped by
        :func:`cap_positives`) and their ODAM maps (N, ceil(H_pad / map_stride),
        ceil(W_pad / map_stride)) on the common grid, with the graph to the features (and
        to the head with ``second_order``)."""
        cfg, adapter = self.odam_loss, dense_adapter(self)
        pos = adapter.train_positives(fwd, recorded, batch_gt_instances, metas)
        pos = pos[cap_positives(pos.img, pos.gt_index, pos.ious, cfg['max_positives'],
                                cfg['max_positives_per_object'])]
        grid = tuple(math.ceil(s / cfg['map_stride']) for s in metas[0]['batch_input_shape'])
        maps = fwd.feats[0].new_zeros(len(pos), *grid)
        scale = fwd.feats[0].new_ones(len(metas), 2)  # the positives' boxes: input pixels
        for level in pos.level.unique().tolist():
            idx = (pos.level == level).nonzero()[:, 0]
            level_map = level_maps(adapter, fwd, level, pos[idx], TRAIN_MAPS, 'windows', scale,
                                   create_graph=cfg['second_order'])
            stride = float(adapter.stride(pos.level[idx[:1]], level_map)[0])
            maps[idx] = resample_maps(level_map, stride, cfg['map_stride'], grid)
        return pos, maps


class OdamRoIHeadMixin:
    """Odam-NMS and Odam-Train for a two-stage RoI head (Standard and Cascade)."""
    odam_mixin = True
    odam_loss: dict | None = None
    odam_loss_active = True

    def predict_bbox(self, x, batch_img_metas, rpn_results_list, rcnn_test_cfg,
                     rescale: bool = False):
        if not is_odam_nms(rcnn_test_cfg) or sum(len(r) for r in rpn_results_list) == 0:
            return super().predict_bbox(x, batch_img_metas, rpn_results_list,
                                        plain_nms_config(rcnn_test_cfg), rescale=rescale)
        adapter = roi_adapter(self)
        nms = rcnn_test_cfg.nms
        fwd = adapter.forward(x, rpn_results_list, batch_img_metas, 'roi')
        kept = odam_nms_select(odam_nms_candidates(adapter, fwd, nms), nms,
                               rcnn_test_cfg.max_per_img)
        return odam_nms_results(kept, batch_img_metas, nms, rescale)

    def bbox_loss(self, *args):
        """mmdet's ``bbox_loss`` (Standard: ``(x, sampling_results)``, Cascade: ``(stage, x,
        sampling_results)``) plus Odam-Train's losses of that stage's positives."""
        results = super().bbox_loss(*args)
        if self.odam_loss is not None and self.odam_loss_active:
            stage = args[0] if isinstance(self, CascadeRoIHead) else None
            pos, maps = self.odam_train_maps(stage, args[-2], results, args[-1])
            results['loss_bbox'].update(odam_loss_dict(
                maps, pos.gt_index, pos.ious, pos.img, self.odam_loss['loss_weight'],
                self.odam_loss['eps']))
        return results

    def odam_train_maps(self, stage, x, bbox_results: dict, sampling_results: list):
        """A stage's positive RoIs (:func:`roi_positives`, capped per image) and their ODAM
        maps pasted on the common grid (N, ceil(H_pad / map_stride), ceil(W_pad /
        map_stride)), with the graph to the RoI features (and the box head with
        ``second_order``). ``stage`` None for a one-stage RoI head."""
        cfg = self.odam_loss
        bbox_head = self.bbox_head if stage is None else self.bbox_head[stage]
        extractor = self.bbox_roi_extractor if stage is None else self.bbox_roi_extractor[stage]
        pos = roi_positives(bbox_head, bbox_results, sampling_results)
        pos = pos[cap_positives(pos.img, pos.gt_index, pos.ious, cfg['max_positives'],
                                cfg['max_positives_per_object'])]
        stride = extractor.featmap_strides[0]
        grid = tuple(math.ceil(n * stride / cfg['map_stride']) for n in x[0].shape[-2:])
        return pos, roi_positive_maps(bbox_results, pos, grid, cfg['map_stride'],
                                      cfg['second_order'])


_ODAM_CLASSES: dict = {}


def _odam_class(cls, mixin):
    """The head class with ``mixin`` in front (one per class, cached)."""
    if issubclass(cls, mixin):
        return cls
    if cls not in _ODAM_CLASSES:
        _ODAM_CLASSES[cls] = type(f'Odam{cls.__name__}', (mixin, cls),
                                  {'__module__': __name__, '__doc__': cls.__doc__})
    return _ODAM_CLASSES[cls]


def install_odam(model):
    """Switch Odam-NMS and Odam-Train on for ``model`` where its config asks (see module):
    its dense head or RoI head gets the Odam subclass of its own class, with the validated
    ``odam_loss`` settings. Checks the head is covered (an adapter exists; for Odam-Train,
    one that knows its positives and, for dense heads, has conv towers) before any work.

    Returns the model (changed in place).
    """
    if hasattr(model, 'roi_head'):
        head, mixin, kind = model.roi_head, OdamRoIHeadMixin, 'roi'
    elif hasattr(model, 'bbox_head'):
        head, mixin, kind = model.bbox_head, OdamDenseHeadMixin, 'dense'
    else:
        return model
    train_cfg = getattr(model, 'train_cfg', None) or {}
    if isinstance(head, DETRHead):
        if train_cfg.get('odam_loss') is not None or is_odam_nms(head.test_cfg):
            raise ValueError(f'{type(head).__name__}: DETR-like detectors make set '
                             'predictions: there is no NMS for Odam-NMS to replace, and '
                             'Odam-Train is not defined for them (the paper trains FCOS and '
                             'Faster R-CNN); ODAM maps work')
        return model
    odam_loss = odam_loss_config(train_cfg.get('odam_loss'), ODAM_LOSS_WEIGHTS[kind])
    if odam_loss is None and not is_odam_nms(head.test_cfg):
        return model
    adapter = (roi_adapter if kind == 'roi' else dense_adapter)(head, model)
    if odam_loss is not None and kind == 'dense':
        reason = adapter.train_support() or adapter.fast_support()
        if reason is not None:
            raise ValueError(f'odam_loss: Odam-Train needs the positives and the conv towers '
                             f'of {type(head).__name__}: {reason}')
    head.__class__ = _odam_class(type(head), mixin)
    head.odam_loss = odam_loss
    return model
