"""FCOS head whose test-time NMS can be Odam-NMS."""
from __future__ import annotations

import torch
from mmdet.models.dense_heads import FCOSHead
from mmdet.registry import MODELS

from odamtrain.explain.dense import dense_detections, record_tower_state
from odamtrain.explain.dense_explainer import dense_heatmaps

from ..odam_nms_results import odam_nms_results

__all__ = ['OdamFCOSHead']

@MODELS.register_module()
class OdamFCOSHead(FCOSHead):
    """mmdet's FCOSHead; with ``test_cfg.nms = dict(type='odam_nms', iou_threshold=0.5,
    corr_low=0.2, corr_high=0.8)`` the candidates that reach NMS (after score threshold and
    ``nms_pre`` top-k) are explained with ODAM (the shared batched code, class logit, maps at
    short edge 50) and suppressed with :func:`odamtrain.ops.odam_nms`, per class. Any other
    ``nms`` type (``'nms'``, ``'soft_nms'``) is mmdet's own path, unchanged.

    Extra ``nms`` keys: ``target`` ('logit', the paper; or 'score'), ``mode`` ('fast' or
    'exact'), ``map_size`` (50), ``keep_heatmaps`` (False; True keeps each kept detection's
    map in ``heatmaps`` for pictures and the audit).
    """

    def predict(self, x, batch_data_samples, rescale: bool = False):
        nms_cfg = self.test_cfg.get('nms', {}) if self.test_cfg else {}
        if nms_cfg.get('type') != 'odam_nms':
            return super().predict(x, batch_data_samples, rescale=rescale)
        metas = [s.metainfo for s in batch_data_samples]
        cands = self.odam_candidates(x, metas, nms_cfg)
        return self.odam_suppress(cands, metas, nms_cfg, rescale)

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
