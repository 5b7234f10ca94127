"""Adapter of mmdet's query-based RoI heads (Sparse R-CNN, QueryInst): the only code that
knows their internals.

Shapes: B images, P proposals (learned queries), K classes, n predictions, L levels.

A prediction's provenance: ``img``, ``query`` (its proposal) and ``labels``. Each stage
reads every proposal's RoI features from the FPN levels and updates the proposals' object
features, which attend to each other: every prediction depends on every proposal's reads
in every stage. A = the FPN levels the RoI extractors read (as for Deformable DETR's neck
levels); a prediction's map is the sum of its levels' maps at image resolution, from one
vector-Jacobian product per prediction (vectorised where autograd can batch it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from mmdet.models.dense_heads import EmbeddingRPNHead
from mmdet.models.detectors import TwoStageDetector
from mmdet.models.roi_heads import BaseRoIHead, SparseRoIHead
from mmdet.models.roi_heads.bbox_heads import BBoxHead
from mmdet.structures.bbox import bbox2roi
from mmengine.structures import InstanceData

from ..detr_gradients import detr_heatmaps
from ..protocol import BOX_SIDES, DetectorAdapter, Forward, Same, scales

__all__ = ['SparseForward', 'SparseRoIAdapter']


@dataclass
class SparseForward(Forward):
    """One forward of a query-based RoI head from A.

    Attributes:
        feats: the L levels its extractors read (leaves).
        metas: the images' metainfo.
        leaves: the same tensors.
        strides: per level, in input pixels.
        cls: (B, P, K) logits of the last stage, with the graph to A.
        boxes: (B, P, 4) x1y1x2y2 input pixels of the last stage, likewise.
    """
    leaves: list = None
    strides: list = None
    cls: torch.Tensor = None
    boxes: torch.Tensor = None


class SparseRoIAdapter(DetectorAdapter):
    """Sparse R-CNN and QueryInst (``SparseRoIHead`` with ``DIIHead`` stages, proposals from
    ``EmbeddingRPNHead``): set predictions, mmdet's top-k over (proposal, class) of the last
    stage's scores; the box is the last stage's refined proposal. No NMS (Odam-NMS is not
    defined) and Hungarian-matched training (nor is Odam-Train)."""
    head_type = SparseRoIHead
    features = ('auto', 'fpn')
    reproduces = (Same('detector', (TwoStageDetector.predict, TwoStageDetector.extract_feat)),
                  Same('rpn', (EmbeddingRPNHead.predict, EmbeddingRPNHead._decode_init_proposals)),
                  Same('head', (BaseRoIHead.predict, SparseRoIHead.predict_bbox,
                                SparseRoIHead._bbox_forward, SparseRoIHead.predict_mask)),
                  Same('bbox_head', (BBoxHead.refine_bboxes, BBoxHead.regress_by_class)))

    @property
    def roi_head(self):
        return self.head

    @property
    def test_cfg(self):
        return self.roi_head.test_cfg

    def parts(self) -> dict:
        parts = dict(super().parts(), bbox_head=list(self.head.bbox_head))
        if self.model is not None:
            parts['rpn'] = [self.model.rpn_head]
        return parts

    def nms_support(self):
        return 'it makes set predictions (a top-k over proposals and classes, no NMS)'

    def train_support(self):
        return 'its proposals are matched to the GT one to one (Hungarian assignment)'

    def check_features(self, features: str) -> str:
        return 'fpn' if super().check_features(features) == 'auto' else features

    # ------------------------------------------------------------------ forward
    def forward(self, inputs, data_samples, features='auto') -> SparseForward:
        """mmdet's ``predict`` up to the last stage: the learned proposals, then every stage
        from the FPN levels as leaves."""
        self.check_features(features)
        with torch.no_grad():
            feats = self.model.extract_feat(inputs)
            proposals = self.model.rpn_head.predict(feats, data_samples)
        return self.forward_proposals(feats, proposals, [s.metainfo for s in data_samples])

    def forward_proposals(self, feats, proposals: list, metas: list) -> SparseForward:
        """``SparseRoIHead.predict_bbox``'s stages (its own ``_bbox_forward``) with the graph
        from the levels (grad enabled inside); the proposals are not changed."""
        head = self.roi_head
        num_inputs = head.bbox_roi_extractor[0].num_inputs
        with torch.enable_grad():
            levels = [f.detach().requires_grad_(True) for f in feats[:num_inputs]]
            boxes = [p.bboxes for p in proposals]
            object_feats = torch.cat([p.features[None] for p in proposals])
            for stage in range(head.num_stages):
                out = head._bbox_forward(stage, levels, bbox2roi(boxes), object_feats, metas)
                object_feats = out['object_feats']
                boxes = out['detached_proposals']
            # (a view made under no_grad would not carry the graph back)
            last_boxes = out['decoded_bboxes'].view(len(metas), -1, 4)
        return SparseForward(levels, metas, levels, list(head.bbox_roi_extractor[0]
                                                         .featmap_strides[:num_inputs]),
                             out['cls_score'], last_boxes)

    # -------------------------------------------------------------- predictions
    def _probs(self, cls: torch.Tensor) -> torch.Tensor:
        """(..., K) the class scores mmdet ranks: sigmoid, or softmax without background."""
        if self.roi_head.bbox_head[-1].loss_cls.use_sigmoid:
            return cls.sigmoid()
        return cls.softmax(-1)[..., :-1]

    def _pairs(self, fwd, i: int, inds: torch.Tensor, scores: torch.Tensor) -> InstanceData:
        k = self._probs(fwd.cls[:1, :1]).shape[-1]
        query = inds // k
        boxes = fwd.boxes[i, query].detach()
        scale = boxes.new_tensor(fwd.metas[i]['scale_factor']).repeat(2)
        return InstanceData(bboxes=boxes / scale, scores=scores, labels=inds % k, query=query,
                            img=torch.full_like(query, i))

    def predictions(self, fwd, cfg=None) -> list:
        """mmdet's top-k of (proposal, class) scores per image (``max_per_img``, unsorted, as
        mmdet takes them)."""
        cfg = self.test_cfg if cfg is None else cfg
        dets = []
        with torch.no_grad():
            probs = self._probs(fwd.cls)
            for i in range(len(fwd.metas)):
                scores, inds = probs[i].flatten().topk(cfg.max_per_img, sorted=False)
                dets.append(self._pairs(fwd, i, inds, scores))
        return dets

    def every_prediction(self, fwd) -> list:
        """Every (proposal, class) pair."""
        with torch.no_grad():
            probs = self._probs(fwd.cls)
            return [self._pairs(fwd, i, torch.arange(probs[i].numel(), device=probs.device),
                                probs[i].flatten()) for i in range(len(fwd.metas))]

    candidates = every_prediction

    # ---------------------------------------------------------------- attribute
    def attribute(self, target, fwd, preds):
        """'score' mmdet's (sigmoid or softmax), 'logit' the class logit, box sides the last
        stage's refined proposal (original pixels)."""
        cls = fwd.cls[preds.img, preds.query]
        if target in ('score', 'logit'):
            out = self._probs(cls) if target == 'score' else cls
            return out.gather(1, preds.labels[:, None])[:, 0]
        if target in BOX_SIDES:
            boxes = fwd.boxes[preds.img, preds.query]
            i = BOX_SIDES.index(target)
            return boxes[:, i] / scales(fwd.metas, boxes)[preds.img, i % 2]
        raise ValueError(f"target must be 'score', 'logit' or one of {BOX_SIDES}, "
                         f'got {target!r}')

    def leaf_attribute(self, target, fwd, preds):
        with torch.enable_grad():
            y = self.attribute(target, fwd, preds)
        return y, fwd.leaves, preds.img

    def heatmaps(self, fwd, dets, settings) -> None:
        detr_heatmaps(self, fwd, dets, settings)
